#pragma once
// Helpers shared by the CUDA tests (tests/cuda/test_cuda_*.cu): the skip when no device is present, random
// inputs, and the comparison of a CUDA op with its CPU twin.
//
// Tolerances (max |cuda - cpu| <= tol * max(1, max |cpu|), the reference being the CPU op in float32 on the very
// same input values, i.e. 16-bit inputs rounded first):
// - float32, no reduction: 1e-5 (a few ulps; libm functions differ by <= 2 ulp between CUDA and glibc).
// - float32 with reductions of length K (GEMM, convolution, norms, softmax, attention): 1e-5 * sqrt(K). Both
//   sides round every partial sum to float32 but in different orders (blocked tree sums on the GPU, sequential or
//   Eigen-blocked on the CPU); the difference of two such sums is a random walk of ~K roundings of relative size
//   2^-24 ~ 6e-8 relative to the largest partial sum, i.e. ~6e-8 * sqrt(K) typically; 1e-5 * sqrt(K) leaves a
//   margin of more than 100 for the heavy tails and for intermediate values larger than the output.
// - half: the kernels compute in float32 and round each stored result once to binary16 (relative error <= 2^-11
//   ~ 4.9e-4); tolerance 1e-3 (twice the rounding) plus the float32 term.
// - bfloat16: one rounding to 8 significant bits (<= 2^-8 ~ 3.9e-3); tolerance 8e-3 plus the float32 term.
// Backward passes chain at most a few such roundings of quantities of the gradient's own scale, so the same
// tolerances hold for gradients (normalised by their own largest entry).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "adabldm/autograd/backward.hpp"
#include "adabldm/core/rng.hpp"
#include "adabldm/cuda.cuh"

namespace cuda_test {

using namespace adabldm;
using F32 = Tensor<float, Cpu>;
using H = adabldm::half;
using BF = adabldm::bfloat16;

/// Runs the statement(s) once for each storage type T (variadic: commas in the body are fine).
#define FOR_EACH_TYPE(...)            \
  do {                                \
    { using T = float; __VA_ARGS__; } \
    { using T = H; __VA_ARGS__; }     \
    { using T = BF; __VA_ARGS__; }    \
  } while (0)

/// Whether this process sees no CUDA device (asked once).
inline bool no_device() {
  static const bool none = !adabldm::cuda_available();
  return none;
}
/// A test case that needs a device: doctest reports it as skipped (exit code 0) when there is none.
#define CUDA_TEST_CASE(name) TEST_CASE(name * doctest::skip(::cuda_test::no_device()))
/// And its first statement, for runs that force skipped cases (--no-skip): without a device, report and pass.
#define ADABLDM_REQUIRE_CUDA()                                                                 \
  do {                                                                                         \
    if (::cuda_test::no_device()) {                                                            \
      MESSAGE("skipped: no CUDA device (cudaGetDeviceCount reports none or no driver)");       \
      return;                                                                                  \
    }                                                                                          \
  } while (0)
/// One line at start-up saying why the CUDA cases are skipped.
struct SkipNotice {
  SkipNotice() {
    if (no_device())
      std::printf("no CUDA device (cudaGetDeviceCount reports none, or no driver): the CUDA test cases are skipped\n");
  }
};
inline SkipNotice skip_notice;

inline Rng& rng() {
  static Rng r(20240607);
  return r;
}
inline F32 randn(const Shape& s, double scale = 1.0) { return rng().normal<float>(s, 0.0, scale); }

/// Relative part of the tolerance for storage type T (see the top of this file).
template <class T>
constexpr double storage_tolerance() {
  if constexpr (std::is_same_v<T, adabldm::half>) return 1e-3;
  else if constexpr (std::is_same_v<T, adabldm::bfloat16>) return 8e-3;
  else return 0.0;
}
/// The tolerance for an op whose outputs involve reductions of length k (k = 1: none).
template <class T>
double tolerance(double k = 1) {
  return 1e-5 * std::sqrt(std::max(1.0, k)) + storage_tolerance<T>();
}

/// The float values of x rounded to T (exactly what a T tensor holds).
template <class T>
F32 round_to(const F32& x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else return x.to<T>().template to<float>();
}
/// A device tensor of type T holding x's values (rounded to T).
template <class T>
Tensor<T, Cuda> up(const F32& x) {
  if constexpr (std::is_same_v<T, float>) return cuda::to_device(x);
  else return cuda::to_device(x.to<T>());
}
/// A device tensor's values as host floats.
template <class T>
F32 down(const Tensor<T, Cuda>& x) {
  if constexpr (std::is_same_v<T, float>) return cuda::to_host(x);
  else return cuda::to_host(x).template to<float>();
}

struct Diff {
  double max_diff = 0, max_ref = 0, floor = 1.0;
  double relative() const { return max_diff / std::max(floor, max_ref); }
};
inline Diff compare(const F32& got, const F32& ref) {
  REQUIRE(got.shape() == ref.shape());
  const auto g = got.to_vector(), r = ref.to_vector();
  Diff d;
  for (std::size_t i = 0; i < r.size(); ++i) {
    d.max_ref = std::max(d.max_ref, std::abs(static_cast<double>(r[i])));
    const double e = std::abs(static_cast<double>(g[i]) - static_cast<double>(r[i]));
    if (std::isnan(e)) d.max_diff = e;  // NaN sticks (a later finite e must not overwrite it): a failure
    else if (e > d.max_diff) d.max_diff = e;
  }
  return d;
}
/// Checks a CUDA result against the CPU reference and prints the error (kept in the test log as evidence).
/// floor: the smallest scale the error is measured against (1: outputs; ~0: gradients, against their own largest
/// entry as the top of this file says).
inline void expect_close(const std::string& what, const F32& got, const F32& ref, double tol, double floor = 1.0) {
  Diff d = compare(got, ref);
  d.floor = floor;
  std::printf("  %-52s max|diff| %.3e  max|ref| %.3e  rel %.3e  (tol %.1e)\n", what.c_str(), d.max_diff, d.max_ref,
              d.relative(), tol);
  CAPTURE(what);
  CHECK(d.relative() <= tol);
}

template <class T>
const char* type_name() {
  if constexpr (std::is_same_v<T, adabldm::half>) return "f16";
  else if constexpr (std::is_same_v<T, adabldm::bfloat16>) return "bf16";
  else return "f32";
}

/// Runs `f` (a generic lambda over a std::vector of tensors, returning one tensor) on the CPU in float32 and on
/// the device in T on the same values, then the backward with the same random output gradient through the
/// autograd tape on both sides; compares the output and the gradient of every input marked in `differentiable`.
/// `k` is the longest reduction the op performs (for the tolerance).
template <class T, class Fn>
void check_op(const std::string& name, Fn f, const std::vector<F32>& inputs_in, double k,
              std::vector<bool> differentiable = {}, double k_backward = 0) {
  if (differentiable.empty()) differentiable.assign(inputs_in.size(), true);
  if (k_backward == 0) k_backward = k;
  std::vector<F32> host;
  for (const auto& x : inputs_in) host.push_back(round_to<T>(x));
  const std::string tag = name + " [" + type_name<T>() + "]";
  // CPU twin, float32.
  std::vector<F32> cpu_in;
  for (std::size_t i = 0; i < host.size(); ++i)
    cpu_in.push_back(differentiable[i] ? autograd::leaf(host[i]) : host[i]);
  F32 cpu_out, gout;
  {
    autograd::TrainingScope scope;
    cpu_out = f(cpu_in);
    gout = round_to<T>(randn(cpu_out.shape()));
    autograd::backward(cpu_out, gout);
  }
  // CUDA, storage type T.
  std::vector<Tensor<T, Cuda>> dev_in;
  for (std::size_t i = 0; i < host.size(); ++i) dev_in.push_back(differentiable[i] ? autograd::leaf(up<T>(host[i])) : up<T>(host[i]));
  Tensor<T, Cuda> dev_out;
  {
    autograd::TrainingScope scope;
    dev_out = f(dev_in);
    autograd::backward(dev_out, up<T>(gout));
  }
  expect_close(tag + " forward", down(dev_out), cpu_out.detach(), tolerance<T>(k));
  for (std::size_t i = 0; i < host.size(); ++i) {
    if (!differentiable[i]) continue;
    const auto g_dev = autograd::grad(dev_in[i]);
    const auto g_cpu = autograd::grad(cpu_in[i]);
    REQUIRE(g_cpu.defined());
    REQUIRE(g_dev.defined());
    expect_close(tag + " d(input " + std::to_string(i) + ")", down(g_dev), g_cpu, tolerance<T>(k_backward), 1e-30);
  }
}

/// Forward only (ops without a gradient, or a gradient checked elsewhere).
template <class T, class Fn>
void check_forward(const std::string& name, Fn f, const std::vector<F32>& inputs_in, double k) {
  std::vector<F32> host;
  std::vector<Tensor<T, Cuda>> dev;
  for (const auto& x : inputs_in) {
    host.push_back(round_to<T>(x));
    dev.push_back(up<T>(host.back()));
  }
  expect_close(name + " [" + type_name<T>() + "]", down(f(dev)), f(host), tolerance<T>(k));
}

}  // namespace cuda_test
