#pragma once
// Group norm and layer norm (PyTorch semantics: biased variance, eps inside the square root), with an optional
// fused activation after the affine transform (GroupNorm + SiLU is the most common pair in the UNet and VAE).
#include <cmath>

#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"
#include "adabldm/ops/activation.hpp"

namespace adabldm::ops {

namespace detail {
/// Mean and 1/sqrt(var + eps) of n values, accumulated in double (two passes: no cancellation).
template <class T>
inline void moments(const T* x, int64_t n, double eps, double& mean, double& rstd) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]);
  mean = s / static_cast<double>(n);
  double v = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(x[i]) - mean;
    v += d * d;
  }
  rstd = 1.0 / std::sqrt(v / static_cast<double>(n) + eps);
}
}  // namespace detail

/// nn.GroupNorm over x[N, C, ...] with `groups` groups; gamma/beta [C] may be undefined (no affine).
template <class T>
Tensor<T, Cpu> group_norm(const Tensor<T, Cpu>& x_in, int64_t groups, const Tensor<T, Cpu>& gamma,
                          const Tensor<T, Cpu>& beta, double eps, Activation act = Activation::Identity) {
  check<ShapeError>(x_in.rank() >= 2, "group_norm: input must be [N, C, ...], got ", x_in.shape().str());
  const int64_t N = x_in.dim(0), C = x_in.dim(1);
  check<ShapeError>(groups > 0 && C % groups == 0, "group_norm: ", C, " channels are not divisible into ", groups,
                    " groups");
  if (gamma.defined()) check<ShapeError>(gamma.numel() == C, "group_norm: weight ", gamma.shape().str(), " for ", C, " channels");
  if (beta.defined()) check<ShapeError>(beta.numel() == C, "group_norm: bias ", beta.shape().str(), " for ", C, " channels");
  const auto x = x_in.contiguous();
  const int64_t spatial = x.numel() / std::max<int64_t>(1, N * C), cpg = C / groups;
  auto y = Tensor<T, Cpu>::empty(x.shape());
  const T* xp = x.data();
  T* yp = y.data();
  parallel_for(N * groups, [&](int64_t ng) {
    const int64_t off = ng * cpg * spatial;
    double mean, rstd;
    detail::moments(xp + off, cpg * spatial, eps, mean, rstd);
    for (int64_t cc = 0; cc < cpg; ++cc) {
      const int64_t c = (ng % groups) * cpg + cc;
      const T g = gamma.defined() ? gamma.data()[c] : T(1), b = beta.defined() ? beta.data()[c] : T(0);
      const T scale = static_cast<T>(rstd) * g, shift = b - static_cast<T>(mean * rstd) * g;
      const T* xs = xp + off + cc * spatial;
      T* ys = yp + off + cc * spatial;
      for (int64_t i = 0; i < spatial; ++i) ys[i] = activate(act, xs[i] * scale + shift);
    }
  });
  return y;
}

/// nn.LayerNorm over the last dimension of x; gamma/beta [D] may be undefined.
template <class T>
Tensor<T, Cpu> layer_norm(const Tensor<T, Cpu>& x_in, const Tensor<T, Cpu>& gamma, const Tensor<T, Cpu>& beta,
                          double eps) {
  check<ShapeError>(x_in.rank() >= 1, "layer_norm: needs rank >= 1");
  const auto x = x_in.contiguous();
  const int64_t D = x.dim(-1), rows = x.numel() / std::max<int64_t>(1, D);
  if (gamma.defined()) check<ShapeError>(gamma.numel() == D, "layer_norm: weight ", gamma.shape().str(), " for dim ", D);
  if (beta.defined()) check<ShapeError>(beta.numel() == D, "layer_norm: bias ", beta.shape().str(), " for dim ", D);
  auto y = Tensor<T, Cpu>::empty(x.shape());
  const T* xp = x.data();
  T* yp = y.data();
  parallel_for(rows, [&](int64_t r) {
    double mean, rstd;
    detail::moments(xp + r * D, D, eps, mean, rstd);
    for (int64_t i = 0; i < D; ++i) {
      const T v = static_cast<T>((static_cast<double>(xp[r * D + i]) - mean) * rstd);
      yp[r * D + i] = v * (gamma.defined() ? gamma.data()[i] : T(1)) + (beta.defined() ? beta.data()[i] : T(0));
    }
  }, 16);
  return y;
}

}  // namespace adabldm::ops
