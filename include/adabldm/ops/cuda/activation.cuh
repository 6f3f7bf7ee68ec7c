#pragma once
// CUDA twins of ops/activation.hpp: element-wise activations (out of place and in place), GEGLU, and their
// backward kernels. Float arithmetic with CUDA's accurate libm (expf, erff, tanhf: <= 2 ulp), so float results
// differ from the CPU's by a few ulp.
#include "adabldm/core/autograd_record.hpp"
#include "adabldm/core/cuda/tensor.cuh"
#include "adabldm/ops/activation.hpp"

namespace adabldm::ops {

namespace cuda_detail {

__device__ __forceinline__ float activate_f(Activation a, float x) {
  switch (a) {
    case Activation::Identity: return x;
    case Activation::SiLU: return x / (1.0f + expf(-x));
    case Activation::GeluErf: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
    case Activation::GeluTanh: {
      const float k = 0.79788456080286535588f;
      return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
    }
    case Activation::QuickGelu: return x / (1.0f + expf(-1.702f * x));
    case Activation::ReLU: return x > 0.0f ? x : 0.0f;
    case Activation::Tanh: return tanhf(x);
  }
  return x;
}
__device__ __forceinline__ float activation_derivative_f(Activation a, float x) {
  switch (a) {
    case Activation::Identity: return 1.0f;
    case Activation::SiLU: {
      const float s = 1.0f / (1.0f + expf(-x));
      return s * (1.0f + x * (1.0f - s));
    }
    case Activation::GeluErf:
      return 0.5f * (1.0f + erff(x * 0.70710678118654752440f)) + x * 0.39894228040143267794f * expf(-0.5f * x * x);
    case Activation::GeluTanh: {
      const float k = 0.79788456080286535588f, c = 0.044715f;
      const float t = tanhf(k * (x + c * x * x * x));
      return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * c * x * x);
    }
    case Activation::QuickGelu: {
      const float s = 1.0f / (1.0f + expf(-1.702f * x));
      return s + 1.702f * x * s * (1.0f - s);
    }
    case Activation::ReLU: return x > 0.0f ? 1.0f : 0.0f;
    case Activation::Tanh: {
      const float t = tanhf(x);
      return 1.0f - t * t;
    }
  }
  return 1.0f;
}

template <class T>
__global__ void activate_kernel(const T* x, T* y, Activation a, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) cuda::detail::st(y, i, activate_f(a, cuda::detail::ld(x, i)));
}
template <class T>
__global__ void activation_backward_kernel(const T* g, const T* x, T* dx, Activation a, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) {
    cuda::detail::st(dx, i, cuda::detail::ld(g, i) * activation_derivative_f(a, cuda::detail::ld(x, i)));
  }
}
template <class T>
__global__ void geglu_kernel(const T* x, T* y, int64_t d, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) {  // i over the output [rows, d]
    const int64_t r = i / d, c = i % d;
    const float h = cuda::detail::ld(x, r * 2 * d + c), g = cuda::detail::ld(x, r * 2 * d + d + c);
    cuda::detail::st(y, i, h * activate_f(Activation::GeluErf, g));
  }
}
template <class T>
__global__ void geglu_backward_kernel(const T* gy, const T* x, T* dx, int64_t d, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) {
    const int64_t r = i / d, c = i % d;
    const float h = cuda::detail::ld(x, r * 2 * d + c), g = cuda::detail::ld(x, r * 2 * d + d + c);
    const float go = cuda::detail::ld(gy, i);
    cuda::detail::st(dx, r * 2 * d + c, go * activate_f(Activation::GeluErf, g));
    cuda::detail::st(dx, r * 2 * d + d + c, go * h * activation_derivative_f(Activation::GeluErf, g));
  }
}

}  // namespace cuda_detail

/// dx = g * activation'(x).
template <class T>
Tensor<T, Cuda> activation_backward(const Tensor<T, Cuda>& g_in, const Tensor<T, Cuda>& x_in, Activation a) {
  check<ShapeError>(g_in.shape() == x_in.shape(), "activation_backward: ", g_in.shape().str(), " vs ", x_in.shape().str());
  const auto g = g_in.contiguous(), x = x_in.contiguous();
  auto dx = Tensor<T, Cuda>::empty(x.shape());
  if (x.numel() > 0) {
    cuda_detail::activation_backward_kernel<T><<<cuda::detail::grid_for(x.numel()), cuda::detail::kThreads, 0,
                                                 cuda::current_stream()>>>(g.data(), x.data(), dx.data(), a,
                                                                           x.numel());
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  return dx;
}

/// Applies `a` to every element of x -> a new tensor.
template <class T>
Tensor<T, Cuda> activate(const Tensor<T, Cuda>& x_in, Activation a) {
  static_assert(cuda::is_cuda_float_v<T>, "CUDA ops: float, half or bfloat16 tensors");
  const auto x = x_in.contiguous();
  auto y = Tensor<T, Cuda>::empty(x.shape());
  if (x.numel() > 0) {
    cuda_detail::activate_kernel<T><<<cuda::detail::grid_for(x.numel()), cuda::detail::kThreads, 0,
                                      cuda::current_stream()>>>(x.data(), y.data(), a, x.numel());
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  if (autograd::should_record(x))
    autograd::record("activation", y, [sx = autograd::slot(x), x = x.detach(), a](const Tensor<T, Cuda>& g) {
      sx.add(activation_backward(g, x, a));
    });
  return y;
}
/// In place (x contiguous); out of place, rebinding x, while a tape records (see the CPU op).
template <class T>
Tensor<T, Cuda>& activate_(Tensor<T, Cuda>& x, Activation a) {
  if (autograd::recording()) return x = activate(x, a);
  check<ShapeError>(x.is_contiguous(), "activation: in-place needs a contiguous tensor");
  if (x.numel() > 0) {
    cuda_detail::activate_kernel<T><<<cuda::detail::grid_for(x.numel()), cuda::detail::kThreads, 0,
                                      cuda::current_stream()>>>(x.data(), x.data(), a, x.numel());
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  return x;
}
template <class T> Tensor<T, Cuda> silu(const Tensor<T, Cuda>& x) { return activate(x, Activation::SiLU); }
template <class T> Tensor<T, Cuda> gelu(const Tensor<T, Cuda>& x, bool tanh_approx = false) {
  return activate(x, tanh_approx ? Activation::GeluTanh : Activation::GeluErf);
}
template <class T> Tensor<T, Cuda> quick_gelu(const Tensor<T, Cuda>& x) { return activate(x, Activation::QuickGelu); }

/// dx of geglu given dy (x = [..., 2D], dy = [..., D]).
template <class T>
Tensor<T, Cuda> geglu_backward(const Tensor<T, Cuda>& gy_in, const Tensor<T, Cuda>& x) {
  const auto gy = gy_in.contiguous();
  const int64_t d = x.dim(-1) / 2;
  auto dx = Tensor<T, Cuda>::empty(x.shape());
  if (gy.numel() > 0) {
    cuda_detail::geglu_backward_kernel<T><<<cuda::detail::grid_for(gy.numel()), cuda::detail::kThreads, 0,
                                            cuda::current_stream()>>>(gy.data(), x.data(), dx.data(), d, gy.numel());
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  return dx;
}
/// GEGLU as in diffusers: x[..., 2D] = [h, gate] -> h * gelu(gate) (exact erf GELU) -> [..., D].
template <class T>
Tensor<T, Cuda> geglu(const Tensor<T, Cuda>& x_in) {
  check<ShapeError>(x_in.rank() >= 1 && x_in.dim(-1) % 2 == 0, "geglu: last dimension must be even, got ",
                    x_in.shape().str());
  const auto x = x_in.contiguous();
  Shape s = x.shape();
  s[s.rank() - 1] = x.dim(-1) / 2;
  auto y = Tensor<T, Cuda>::empty(s);
  if (y.numel() > 0) {
    cuda_detail::geglu_kernel<T><<<cuda::detail::grid_for(y.numel()), cuda::detail::kThreads, 0,
                                   cuda::current_stream()>>>(x.data(), y.data(), s[s.rank() - 1], y.numel());
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  if (autograd::should_record(x))
    autograd::record("geglu", y, [sx = autograd::slot(x), x = x.detach()](const Tensor<T, Cuda>& g) {
      sx.add(geglu_backward(g, x));
    });
  return y;
}

}  // namespace adabldm::ops
