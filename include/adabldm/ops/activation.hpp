#pragma once
// Element-wise activations (out-of-place and in-place `_` forms) and GEGLU, with their derivatives.
#include <cmath>

#include "adabldm/core/autograd_record.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"

namespace adabldm::ops {

/// The activation functions the models use, by their PyTorch names.
enum class Activation { Identity, SiLU, GeluErf, GeluTanh, QuickGelu, ReLU, Tanh };

template <class T>
inline T activate(Activation a, T x) noexcept {
  switch (a) {
    case Activation::Identity: return x;
    case Activation::SiLU: return x / (T(1) + std::exp(-x));
    case Activation::GeluErf: return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752440)));
    case Activation::GeluTanh: {
      const T k = T(0.79788456080286535588);  // sqrt(2/pi)
      return T(0.5) * x * (T(1) + std::tanh(k * (x + T(0.044715) * x * x * x)));
    }
    case Activation::QuickGelu: return x / (T(1) + std::exp(T(-1.702) * x));
    case Activation::ReLU: return x > T(0) ? x : T(0);
    case Activation::Tanh: return std::tanh(x);
  }
  return x;
}

/// d activate(a, x) / dx (ReLU: 0 at x = 0, as PyTorch).
template <class T>
inline T activation_derivative(Activation a, T x) noexcept {
  switch (a) {
    case Activation::Identity: return T(1);
    case Activation::SiLU: {
      const T s = T(1) / (T(1) + std::exp(-x));
      return s * (T(1) + x * (T(1) - s));
    }
    case Activation::GeluErf:
      return T(0.5) * (T(1) + std::erf(x * T(0.70710678118654752440))) +
             x * T(0.39894228040143267794) * std::exp(T(-0.5) * x * x);  // 1/sqrt(2 pi)
    case Activation::GeluTanh: {
      const T k = T(0.79788456080286535588), c = T(0.044715);
      const T t = std::tanh(k * (x + c * x * x * x));
      return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * k * (T(1) + T(3) * c * x * x);
    }
    case Activation::QuickGelu: {
      const T s = T(1) / (T(1) + std::exp(T(-1.702) * x));
      return s + T(1.702) * x * s * (T(1) - s);
    }
    case Activation::ReLU: return x > T(0) ? T(1) : T(0);
    case Activation::Tanh: {
      const T t = std::tanh(x);
      return T(1) - t * t;
    }
  }
  return T(1);
}

/// Applies `a` to every element of x -> a new tensor.
template <class T>
Tensor<T, Cpu> activate(const Tensor<T, Cpu>& x_in, Activation a) {
  const auto x = x_in.contiguous();
  auto y = Tensor<T, Cpu>::empty(x.shape());
  const T* xp = x.data();
  T* yp = y.data();
  parallel_for(x.numel(), [&](int64_t i) { yp[i] = activate(a, xp[i]); }, 1 << 14);
  if (autograd::should_record(x))
    autograd::record("activation", y, [sx = autograd::slot(x), x = x.detach(), a](const Tensor<T, Cpu>& g) {
      auto dx = Tensor<T, Cpu>::empty(x.shape());
      const T *xp = x.data(), *gp = g.data();
      T* dp = dx.data();
      parallel_for(x.numel(), [&](int64_t i) { dp[i] = gp[i] * activation_derivative(a, xp[i]); }, 1 << 14);
      sx.add(dx);
    });
  return y;
}

/// Applies `a` to every element of x in place (x contiguous). While a tape records, it runs out of place and
/// rebinds x instead (a tensor saved for a backward must never be overwritten; see docs/autograd.md).
template <class T>
Tensor<T, Cpu>& activate_(Tensor<T, Cpu>& x, Activation a) {
  if (autograd::recording()) return x = activate(x, a);
  check<ShapeError>(x.is_contiguous(), "activation: in-place needs a contiguous tensor");
  T* p = x.data();
  parallel_for(x.numel(), [&](int64_t i) { p[i] = activate(a, p[i]); }, 1 << 14);
  return x;
}

template <class T> Tensor<T, Cpu> silu(const Tensor<T, Cpu>& x) { return activate(x, Activation::SiLU); }
template <class T> Tensor<T, Cpu> gelu(const Tensor<T, Cpu>& x, bool tanh_approx = false) {
  return activate(x, tanh_approx ? Activation::GeluTanh : Activation::GeluErf);
}
template <class T> Tensor<T, Cpu> quick_gelu(const Tensor<T, Cpu>& x) { return activate(x, Activation::QuickGelu); }

/// GEGLU as in diffusers: x[..., 2D] = [h, gate] (h first) -> h * gelu(gate) (exact erf GELU) -> [..., D].
template <class T>
Tensor<T, Cpu> geglu(const Tensor<T, Cpu>& x_in) {
  check<ShapeError>(x_in.rank() >= 1 && x_in.dim(-1) % 2 == 0, "geglu: last dimension must be even, got ",
                    x_in.shape().str());
  const auto x = x_in.contiguous();
  const int64_t two_d = x.dim(-1), d = two_d / 2, rows = x.numel() / std::max<int64_t>(1, two_d);
  Shape s = x.shape();
  s[s.rank() - 1] = d;
  auto y = Tensor<T, Cpu>::empty(s);
  const T* xp = x.data();
  T* yp = y.data();
  parallel_for(rows, [&](int64_t r) {
    const T* h = xp + r * two_d;
    const T* g = h + d;
    for (int64_t i = 0; i < d; ++i) yp[r * d + i] = h[i] * activate(Activation::GeluErf, g[i]);
  }, grain_for(d));
  if (autograd::should_record(x))
    autograd::record("geglu", y, [sx = autograd::slot(x), x = x.detach(), rows, d](const Tensor<T, Cpu>& gy) {
      auto dx = Tensor<T, Cpu>::empty(x.shape());
      const T *xp = x.data(), *gp = gy.data();
      T* dp = dx.data();
      parallel_for(rows, [&](int64_t r) {
        const T* h = xp + r * 2 * d;
        const T* g = h + d;
        T* dh = dp + r * 2 * d;
        T* dg = dh + d;
        for (int64_t i = 0; i < d; ++i) {
          const T go = gp[r * d + i];
          dh[i] = go * activate(Activation::GeluErf, g[i]);
          dg[i] = go * h[i] * activation_derivative(Activation::GeluErf, g[i]);
        }
      }, grain_for(d));
      sx.add(dx);
    });
  return y;
}

}  // namespace adabldm::ops
