#pragma once
// One knob for CPU parallelism: ADABLDM_NUM_THREADS (read once) or set_num_threads(), and one way to use it:
// parallel_for over a small persistent thread pool. Workers spin briefly, then sleep on a condition variable,
// so a machine whose cores are shared with other processes never stalls on busy-waiting threads (OpenMP's and
// Eigen's spinning barriers do). Results never depend on the thread count: every output element is computed by
// exactly one thread in a fixed order; the GEMM splits its work the same way (Eigen always runs single-threaded
// inside it).
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "adabldm/core/error.hpp"

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
  static int n = default_num_threads();
  return n;
}
inline thread_local bool in_parallel_region = false;

/// A fixed set of workers that run one job at a time: job(i) for every worker i in [1, size), while the caller
/// runs job(0). Jobs are tiny closures; the pool is shared by the whole process and grows on demand.
class ThreadPool {
 public:
  static ThreadPool& instance() {
    static ThreadPool pool;
    return pool;
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  /// Runs job(0) .. job(n - 1) on n threads (the caller is thread 0) and returns when all have finished.
  void run(int n, const std::function<void(int)>& job) {
    std::lock_guard<std::mutex> serial(run_mutex_);  // one job at a time (parallel_for from several threads)
    grow(n - 1);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      participants_ = n - 1;
      remaining_.store(n - 1, std::memory_order_relaxed);
      ++generation_;
    }
    wake_.notify_all();
    in_parallel_region = true;
    job(0);
    in_parallel_region = false;
    // Wait for the workers: spin a little (the common case on an idle machine), then sleep.
    for (int spin = 0; spin < 2000 && remaining_.load(std::memory_order_acquire) > 0; ++spin) std::this_thread::yield();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return remaining_.load(std::memory_order_acquire) == 0; });
    job_ = nullptr;
  }

 private:
  ThreadPool() = default;
  void grow(int workers) {
    while (static_cast<int>(workers_.size()) < workers) {
      const int id = static_cast<int>(workers_.size()) + 1;
      workers_.emplace_back([this, id] { loop(id); });
    }
  }
  void loop(int id) {
    uint64_t seen = 0;
    in_parallel_region = true;
    for (;;) {
      const std::function<void(int)>* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        if (id > participants_) continue;  // this job needs fewer threads
        job = job_;
      }
      (*job)(id);
      if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_.notify_one();
      }
    }
  }

  std::mutex run_mutex_, mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* job_ = nullptr;
  int participants_ = 0;
  std::atomic<int> remaining_{0};
  uint64_t generation_ = 0;
  bool stop_ = false;
};
}  // namespace detail

/// Threads used by CPU ops (ADABLDM_NUM_THREADS, else the hardware concurrency).
inline int num_threads() { return detail::num_threads_slot(); }

/// Sets the threads used by CPU ops from now on (n >= 1).
inline void set_num_threads(int n) {
  check(n >= 1, "set_num_threads: need at least 1 thread, got ", n);
  detail::num_threads_slot() = n;
}

/// The smallest number of items a thread should get when one item costs `work_per_item` elementary
/// operations: a thread is worth waking only for some 32k operations (tiny tensors stay on one thread).
inline int64_t grain_for(int64_t work_per_item) {
  constexpr int64_t kMinWorkPerThread = int64_t{1} << 15;
  return std::max<int64_t>(1, kMinWorkPerThread / std::max<int64_t>(1, work_per_item));
}

/// Runs body(i) for i in [0, n), split statically into contiguous ranges over up to num_threads() threads,
/// each getting at least `min_per_thread` items. Nested calls (from inside a body) run serially.
template <class F>
inline void parallel_for(int64_t n, F&& body, int64_t min_per_thread = 1) {
  if (n <= 0) return;
  const int threads =
      static_cast<int>(std::min<int64_t>(num_threads(), std::max<int64_t>(1, n / std::max<int64_t>(1, min_per_thread))));
  if (threads <= 1 || detail::in_parallel_region) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  const std::function<void(int)> job = [&](int t) {
    const int64_t begin = n * t / threads, end = n * (t + 1) / threads;
    for (int64_t i = begin; i < end; ++i) body(i);
  };
  detail::ThreadPool::instance().run(threads, job);
}

}  // namespace adabldm
