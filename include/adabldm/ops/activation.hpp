#pragma once
// Element-wise activations (out-of-place and in-place `_` forms) and GEGLU.
#include <cmath>

#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"

namespace adabldm::ops {

/// The activation functions the models use, by their PyTorch names.
enum class Activation { Identity, SiLU, GeluErf, GeluTanh, QuickGelu, ReLU };

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
  }
  return x;
}

/// Applies `a` to every element of x in place (x contiguous).
template <class T>
Tensor<T, Cpu>& activate_(Tensor<T, Cpu>& x, Activation a) {
  check<ShapeError>(x.is_contiguous(), "activation: in-place needs a contiguous tensor");
  T* p = x.data();
  parallel_for(x.numel(), [&](int64_t i) { p[i] = activate(a, p[i]); }, 1 << 14);
  return x;
}
template <class T>
Tensor<T, Cpu> activate(const Tensor<T, Cpu>& x, Activation a) {
  auto y = x.clone();
  return activate_(y, a);
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
  }, 16);
  return y;
}

}  // namespace adabldm::ops
