#pragma once
// CUDA twins of autograd/loss.hpp: mse (F.mse_loss, mean) and masked_mse, each one differentiable op. The sum of
// squared errors is reduced in fixed-size chunks (one block each, a float tree sum), then the chunks' sums are
// added in order in double: deterministic. The loss is a rank-0 device tensor.
#include "adabldm/autograd/loss.hpp"
#include "adabldm/core/autograd_record.hpp"
#include "adabldm/ops/cuda/elementwise.cuh"

namespace adabldm::autograd {

namespace cuda_detail {
inline constexpr int64_t kLossChunk = 1 << 14;

/// partial[c] = sum over chunk c of w * (a - b)^2 (w = 1 when weight is null), in float per block.
template <class T>
__global__ void squared_error_partials_kernel(const T* a, const T* b, const T* weight, float* partial, int64_t n) {
  __shared__ float scratch[32];
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kLossChunk, end = min(n, begin + kLossChunk);
  float s = 0.0f;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float d = cuda::detail::ld(a, i) - cuda::detail::ld(b, i);
    s += (weight ? cuda::detail::ld(weight, i) : 1.0f) * d * d;
  }
  s = cuda::detail::block_sum(s, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
/// out = (sum of the partials, in order, in double) / norm; one thread.
template <class T>
__global__ void finish_loss_kernel(const float* partial, int64_t chunks, double norm, T* out) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  double s = 0;
  for (int64_t c = 0; c < chunks; ++c) s += static_cast<double>(partial[c]);
  *out = cuda::detail::from_f32<T>(static_cast<float>(s / norm));
}
/// da = scale * w * (a - b) with scale = 2 * dloss / norm read from the device.
template <class T>
__global__ void mse_backward_kernel(const T* g, const T* a, const T* b, const T* weight, T* da, double norm, int64_t n) {
  const float scale = static_cast<float>(2.0 * static_cast<double>(cuda::detail::to_f32(*g)) / norm);
  ADABLDM_GRID_STRIDE(i, n) {
    const float w = weight ? cuda::detail::ld(weight, i) : 1.0f;
    cuda::detail::st(da, i, scale * w * (cuda::detail::ld(a, i) - cuda::detail::ld(b, i)));
  }
}

template <class T>
Tensor<T, Cuda> weighted_mse(const Tensor<T, Cuda>& a, const Tensor<T, Cuda>& b, const Tensor<T, Cuda>& weight,
                             double norm, const char* name) {
  const int64_t n = a.numel(), chunks = (n + kLossChunk - 1) / kLossChunk;
  cudaStream_t stream = cuda::current_stream();
  const T* wp = weight.defined() ? weight.data() : nullptr;
  auto partial = Tensor<float, Cuda>::empty({chunks});
  auto loss = Tensor<T, Cuda>::empty(Shape{});
  squared_error_partials_kernel<T><<<static_cast<unsigned>(chunks), cuda::detail::kThreads, 0, stream>>>(
      a.data(), b.data(), wp, partial.data(), n);
  ADABLDM_CUDA_CHECK_LAUNCH();
  finish_loss_kernel<T><<<1, 32, 0, stream>>>(partial.data(), chunks, norm, loss.data());
  ADABLDM_CUDA_CHECK_LAUNCH();
  if (should_record(a, b))
    record(name, loss, [sa = slot(a), sb = slot(b), a = a.detach(), b = b.detach(), weight, norm](const Tensor<T, Cuda>& g) {
      auto da = Tensor<T, Cuda>::empty(a.shape());
      mse_backward_kernel<T><<<cuda::detail::grid_for(a.numel()), cuda::detail::kThreads, 0, cuda::current_stream()>>>(
          g.data(), a.data(), b.data(), weight.defined() ? weight.data() : nullptr, da.data(), norm, a.numel());
      ADABLDM_CUDA_CHECK_LAUNCH();
      if (sa) sa.add(da);
      if (sb) sb.add(ops::affine(da, T(-1.0f)));
    });
  return loss;
}
}  // namespace cuda_detail

/// mean((a - b)^2) over all elements -> a rank-0 device tensor.
template <class T>
Tensor<T, Cuda> mse(const Tensor<T, Cuda>& a_in, const Tensor<T, Cuda>& b_in) {
  check<ShapeError>(a_in.shape() == b_in.shape(), "mse: shapes differ: ", a_in.shape().str(), " vs ", b_in.shape().str());
  check<ShapeError>(a_in.numel() > 0, "mse: empty tensors");
  const auto a = a_in.contiguous(), b = b_in.contiguous();
  return cuda_detail::weighted_mse(a, b, Tensor<T, Cuda>{}, static_cast<double>(a.numel()), "mse");
}

/// sum(mask * (a - b)^2) / sum(mask broadcast to a's shape); the mask gets no gradient. Reads the mask's sum back
/// to the host (one small synchronisation) to check that it selects something.
template <class T>
Tensor<T, Cuda> masked_mse(const Tensor<T, Cuda>& a_in, const Tensor<T, Cuda>& b_in, const Tensor<T, Cuda>& mask) {
  check<ShapeError>(a_in.shape() == b_in.shape(), "masked_mse: shapes differ: ", a_in.shape().str(), " vs ",
                    b_in.shape().str());
  check<ShapeError>(ops::broadcast_shape(a_in.shape(), mask.shape()) == a_in.shape(), "masked_mse: mask ",
                    mask.shape().str(), " does not broadcast to ", a_in.shape().str());
  const auto a = a_in.contiguous(), b = b_in.contiguous();
  Tensor<T, Cuda> w;
  {
    NoGradScope constant_mask;
    w = ops::add(cuda::zeros<T>(a.shape()), mask.detach());
  }
  // Summed in float: a sum stored in T would be rounded to 8 (bf16) / 11 (f16) bits, or overflow f16 past 65504.
  const auto w_host = cuda::to_host(ops::sum_to_shape(cuda::convert<float>(w), Shape{1}));
  const double total = static_cast<double>(w_host.data()[0]);
  check(total > 0, "masked_mse: the mask selects nothing");
  return cuda_detail::weighted_mse(a, b, w, total, "masked_mse");
}

}  // namespace adabldm::autograd
