#pragma once
// Element-wise activations (out-of-place and in-place `_` forms) and GEGLU, with their derivatives.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include "adabldm/core/autograd_record.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"
#include "adabldm/ops/vec_exp.hpp"

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

/// y[i] = activate(a, x[i]) for i < n (y may be x). For float the exponentials are ours (vec_exp.hpp), erf and tanh
/// Eigen's, all vectorised (a few ulp; the scalar std:: calls they replace took a tenth of an SD UNet step).
template <class T>
void activate_span(Activation a, const T* x, T* y, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    if (a != Activation::Identity && a != Activation::ReLU) {  // those two vectorise by themselves
      using Arr = Eigen::Array<float, Eigen::Dynamic, 1>;
      float t[256];  // chunks, so that y may be x
      for (int64_t i0 = 0; i0 < n; i0 += 256) {
        const int64_t m = std::min<int64_t>(256, n - i0);
        const float* xs = x + i0;
        float* ys = y + i0;
        const Eigen::Map<const Arr> X(xs, m);
        Eigen::Map<Arr> Y(ys, m), Tm(t, m);
        switch (a) {
          case Activation::SiLU:
          case Activation::QuickGelu:  // x / (1 + exp(-c x))
            detail::exp_span(xs, t, m, a == Activation::SiLU ? -1.0f : -1.702f);
            Y = X / (1.0f + Tm);
            break;
          case Activation::GeluErf:
            Tm = (X * 0.70710678118654752440f).erf();
            Y = 0.5f * X * (1.0f + Tm);
            break;
          case Activation::GeluTanh:
            Tm = (0.79788456080286535588f * (X + 0.044715f * X * X * X)).tanh();
            Y = 0.5f * X * (1.0f + Tm);
            break;
          default:  // Tanh
            Y = X.tanh();
        }
      }
      return;
    }
  }
  for (int64_t i = 0; i < n; ++i) y[i] = activate(a, x[i]);
}

/// d[i] = g[i] * activation_derivative(a, x[i]) for i < n (d may be x or g); vectorised as activate_span.
template <class T>
void activation_derivative_span(Activation a, const T* x, const T* g, T* d, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    if (a != Activation::Identity && a != Activation::ReLU) {
      using Arr = Eigen::Array<float, Eigen::Dynamic, 1>;
      float t[256], u[256];
      for (int64_t i0 = 0; i0 < n; i0 += 256) {
        const int64_t m = std::min<int64_t>(256, n - i0);
        const float* xs = x + i0;
        const Eigen::Map<const Arr> X(xs, m), G(g + i0, m);
        Eigen::Map<Arr> D(d + i0, m), Tm(t, m), Um(u, m);
        switch (a) {
          case Activation::SiLU:  // s (1 + x (1 - s)), s = sigmoid(x)
            detail::exp_span(xs, t, m, -1.0f);
            Tm = 1.0f / (1.0f + Tm);
            D = G * Tm * (1.0f + X * (1.0f - Tm));
            break;
          case Activation::QuickGelu:  // s + 1.702 x s (1 - s), s = sigmoid(1.702 x)
            detail::exp_span(xs, t, m, -1.702f);
            Tm = 1.0f / (1.0f + Tm);
            D = G * (Tm + 1.702f * X * Tm * (1.0f - Tm));
            break;
          case Activation::GeluErf:  // (1 + erf(x / sqrt 2)) / 2 + x exp(-x^2 / 2) / sqrt(2 pi)
            Tm = (X * 0.70710678118654752440f).erf();
            Um = X * X;
            detail::exp_span(u, u, m, -0.5f);
            D = G * (0.5f * (1.0f + Tm) + X * 0.39894228040143267794f * Um);
            break;
          case Activation::GeluTanh: {
            const float k = 0.79788456080286535588f, c = 0.044715f;
            Tm = (k * (X + c * X * X * X)).tanh();
            D = G * (0.5f * (1.0f + Tm) + 0.5f * X * (1.0f - Tm * Tm) * k * (1.0f + 3.0f * c * X * X));
            break;
          }
          default:  // Tanh
            Tm = X.tanh();
            D = G * (1.0f - Tm * Tm);
        }
      }
      return;
    }
  }
  for (int64_t i = 0; i < n; ++i) d[i] = g[i] * activation_derivative(a, x[i]);
}

namespace detail {
/// fn(begin, count) over [0, n) in blocks of 4096 elements, in parallel.
template <class F>
void for_blocks(int64_t n, F&& fn) {
  constexpr int64_t kBlock = 4096;
  parallel_for((n + kBlock - 1) / kBlock, [&](int64_t b) { fn(b * kBlock, std::min(kBlock, n - b * kBlock)); }, 4);
}
}  // namespace detail

/// Applies `a` to every element of x -> a new tensor.
template <class T>
Tensor<T, Cpu> activate(const Tensor<T, Cpu>& x_in, Activation a) {
  const auto x = x_in.contiguous();
  auto y = Tensor<T, Cpu>::empty(x.shape());
  const T* xp = x.data();
  T* yp = y.data();
  detail::for_blocks(x.numel(), [&](int64_t i, int64_t n) { activate_span(a, xp + i, yp + i, n); });
  if (autograd::should_record(x))
    autograd::record("activation", y, [sx = autograd::slot(x), x = x.detach(), a](const Tensor<T, Cpu>& g) {
      auto dx = Tensor<T, Cpu>::empty(x.shape());
      const T *xp = x.data(), *gp = g.data();
      T* dp = dx.data();
      detail::for_blocks(x.numel(), [&](int64_t i, int64_t n) { activation_derivative_span(a, xp + i, gp + i, dp + i, n); });
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
  detail::for_blocks(x.numel(), [&](int64_t i, int64_t n) { activate_span(a, p + i, p + i, n); });
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
    T* yr = yp + r * d;
    activate_span(Activation::GeluErf, h + d, yr, d);
    for (int64_t i = 0; i < d; ++i) yr[i] *= h[i];
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
        const T* go = gp + r * d;
        activate_span(Activation::GeluErf, g, dh, d);
        activation_derivative_span(Activation::GeluErf, g, go, dg, d);
        for (int64_t i = 0; i < d; ++i) {
          dh[i] *= go[i];
          dg[i] *= h[i];
        }
      }, grain_for(d));
      sx.add(dx);
    });
  return y;
}

}  // namespace adabldm::ops
