#pragma once
// CUDA twin of ops/softmax.hpp: softmax over the last dimension (max-subtracted) and its backward
// dx = y * (dy - sum(dy * y)), one block per row.
#include "adabldm/core/autograd_record.hpp"
#include "adabldm/ops/cuda/norm.cuh"
#include "adabldm/ops/softmax.hpp"

namespace adabldm::ops {

namespace cuda_detail {
template <class T>
__global__ void softmax_kernel(const T* x, T* y, int64_t D) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const T* xr = x + r * D;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) m = fmaxf(m, cuda::detail::ld(xr, i));
  m = cuda::detail::block_max(m, scratch);
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += expf(cuda::detail::ld(xr, i) - m);
  const float inv = 1.0f / cuda::detail::block_sum(s, scratch);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) cuda::detail::st(y, r * D + i, expf(cuda::detail::ld(xr, i) - m) * inv);
}
template <class T>
__global__ void softmax_backward_kernel(const T* dy, const T* y, T* dx, int64_t D) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += cuda::detail::ld(dy, r * D + i) * cuda::detail::ld(y, r * D + i);
  s = cuda::detail::block_sum(s, scratch);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const float yv = cuda::detail::ld(y, r * D + i);
    cuda::detail::st(dx, r * D + i, yv * (cuda::detail::ld(dy, r * D + i) - s));
  }
}
}  // namespace cuda_detail

/// dx of y = softmax(x) given dy and y.
template <class T>
Tensor<T, Cuda> softmax_backward(const Tensor<T, Cuda>& dy_in, const Tensor<T, Cuda>& y_in) {
  const auto dy = dy_in.contiguous();
  const auto y = y_in.contiguous();
  const int64_t D = y.dim(-1), rows = y.numel() / std::max<int64_t>(1, D);
  auto dx = Tensor<T, Cuda>::empty(y.shape());
  if (rows > 0 && D > 0) {
    check(rows <= INT32_MAX, "softmax: too many rows");
    cuda_detail::softmax_backward_kernel<T><<<static_cast<unsigned>(rows), cuda_detail::row_threads(D), 0,
                                              cuda::current_stream()>>>(dy.data(), y.data(), dx.data(), D);
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  return dx;
}

template <class T>
Tensor<T, Cuda> softmax(const Tensor<T, Cuda>& x_in) {
  static_assert(cuda::is_cuda_float_v<T>, "CUDA ops: float, half or bfloat16 tensors");
  check<ShapeError>(x_in.rank() >= 1, "softmax: needs rank >= 1");
  const auto x = x_in.contiguous();
  const int64_t D = x.dim(-1), rows = x.numel() / std::max<int64_t>(1, D);
  auto y = Tensor<T, Cuda>::empty(x.shape());
  if (rows > 0 && D > 0) {
    check(rows <= INT32_MAX, "softmax: too many rows");
    cuda_detail::softmax_kernel<T><<<static_cast<unsigned>(rows), cuda_detail::row_threads(D), 0,
                                     cuda::current_stream()>>>(x.data(), y.data(), D);
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  if (autograd::should_record(x))
    autograd::record("softmax", y, [sx = autograd::slot(x), y = y.detach()](const Tensor<T, Cuda>& g) {
      sx.add(softmax_backward(g, y));
    });
  return y;
}

}  // namespace adabldm::ops
