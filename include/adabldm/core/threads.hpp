#pragma once
// One knob for CPU parallelism: ADABLDM_NUM_THREADS (read once) or set_num_threads(). It drives our OpenMP
// loops and Eigen's GEMM. Results never depend on the thread count: work is split so that every output element
// is computed by exactly one thread in a fixed order.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <thread>

#include <Eigen/Core>

#include "adabldm/core/error.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace adabldm {

namespace detail {
inline int default_num_threads() {
  if (const char* env = std::getenv("ADABLDM_NUM_THREADS"); env && *env) {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (end && *end == '\0' && n > 0 && n <= 4096) return static_cast<int>(n);
    throw Error(std::string("ADABLDM_NUM_THREADS must be a positive integer, got \"") + env + "\"");
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw ? static_cast<int>(hw) : 1;
}
inline int& num_threads_slot() {
  static int n = [] {
    const int v = default_num_threads();
    Eigen::setNbThreads(v);
    return v;
  }();
  return n;
}
}  // namespace detail

/// Threads used by CPU ops (ADABLDM_NUM_THREADS, else the hardware concurrency).
inline int num_threads() { return detail::num_threads_slot(); }

/// Sets the threads used by CPU ops from now on (n >= 1).
inline void set_num_threads(int n) {
  check(n >= 1, "set_num_threads: need at least 1 thread, got ", n);
  detail::num_threads_slot() = n;
  Eigen::setNbThreads(n);
}

/// Runs body(i) for i in [0, n), split over num_threads() threads (statically: thread-count independent results
/// as long as body(i) only writes its own outputs). Runs serially when n is small or without OpenMP.
template <class F>
inline void parallel_for(int64_t n, F&& body, int64_t min_per_thread = 1) {
  const int threads = static_cast<int>(std::min<int64_t>(num_threads(), std::max<int64_t>(1, n / min_per_thread)));
#ifdef _OPENMP
  if (threads > 1 && !omp_in_parallel()) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#endif
  (void)threads;
  for (int64_t i = 0; i < n; ++i) body(i);
}

}  // namespace adabldm
