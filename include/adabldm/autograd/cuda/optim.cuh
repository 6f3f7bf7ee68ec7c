#pragma once
// The AdamW update on the device: the same formula and operation order as autograd::AdamW (torch.optim.AdamW's
// single-tensor path), with every float operation rounded separately (__fmul_rn, __fadd_rn, ...: no fused
// multiply-adds), so a float32 update matches torch's bit for bit. autograd::AdamW<T, Cuda> calls it (found by
// argument-dependent lookup), so training a module whose parameters live on the device needs no other change.
#include "adabldm/autograd/optim.hpp"
#include "adabldm/core/cuda/tensor.cuh"

namespace adabldm {

namespace cuda::detail {
struct AdamWScalars {
  float decay, b1, one_minus_b1, b2, one_minus_b2, neg_step_size, bc2_sqrt, eps;
};
template <class T>
__global__ void adamw_kernel(T* p, const T* g, T* m, T* v, AdamWScalars s, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) {
    const float gi = to_f32(g[i]);
    float pi = __fmul_rn(to_f32(p[i]), s.decay);
    float mi = __fmul_rn(to_f32(m[i]), s.b1);
    mi = __fadd_rn(mi, __fmul_rn(s.one_minus_b1, gi));
    float vi = __fmul_rn(to_f32(v[i]), s.b2);
    vi = __fadd_rn(vi, __fmul_rn(__fmul_rn(s.one_minus_b2, gi), gi));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
    pi = __fadd_rn(pi, __fdiv_rn(__fmul_rn(s.neg_step_size, mi), denom));
    p[i] = from_f32<T>(pi);
    m[i] = from_f32<T>(mi);
    v[i] = from_f32<T>(vi);
  }
}
}  // namespace cuda::detail

/// One AdamW step (number `step`, counted from 1) of parameter p with gradient g and moments m, v, in place.
template <class T>
void adamw_update(Tensor<T, Cuda>& p, const Tensor<T, Cuda>& g_in, Tensor<T, Cuda>& m, Tensor<T, Cuda>& v,
                  const autograd::AdamWOptions& o, int64_t step) {
  static_assert(cuda::is_cuda_float_v<T>, "adamw_update: float, half or bfloat16 parameters");
  check<ShapeError>(p.is_contiguous() && m.is_contiguous() && v.is_contiguous() && g_in.shape() == p.shape() &&
                        m.shape() == p.shape() && v.shape() == p.shape(),
                    "adamw_update: contiguous parameter and moments of one shape expected, got ", p.shape().str());
  const auto g = g_in.contiguous();
  // The scalars exactly as the host optimiser forms them (in double, then rounded once).
  const double bias_correction1 = 1.0 - std::pow(o.beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(o.beta2, static_cast<double>(step));
  cuda::detail::AdamWScalars s{};
  s.decay = static_cast<float>(1.0 - o.lr * o.weight_decay);
  s.b1 = static_cast<float>(o.beta1);
  s.one_minus_b1 = static_cast<float>(1.0 - o.beta1);
  s.b2 = static_cast<float>(o.beta2);
  s.one_minus_b2 = static_cast<float>(1.0 - o.beta2);
  s.neg_step_size = static_cast<float>(-(o.lr / bias_correction1));
  s.bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  s.eps = static_cast<float>(o.eps);
  if (p.numel() == 0) return;
  cuda::detail::adamw_kernel<T><<<cuda::detail::grid_for(p.numel()), cuda::detail::kThreads, 0, cuda::current_stream()>>>(
      p.data(), g.data(), m.data(), v.data(), s, p.numel());
  ADABLDM_CUDA_CHECK_LAUNCH();
}

/// Zeros of t's shape on t's device (the optimiser's first moments; found by argument-dependent lookup).
template <class T>
Tensor<T, Cuda> autograd_zeros_like(const Tensor<T, Cuda>& t) {
  return cuda::zeros<T>(t.shape());
}

}  // namespace adabldm
