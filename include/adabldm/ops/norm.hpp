#pragma once
// Group norm and layer norm (PyTorch semantics: biased variance, eps inside the square root), with an optional
// fused activation after the affine transform (GroupNorm + SiLU is the most common pair in the UNet and VAE),
// and their backward kernels (the statistics are saved by the forward; the activation's input is recomputed).
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "adabldm/core/autograd_record.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"
#include "adabldm/ops/activation.hpp"

namespace adabldm::ops {

namespace detail {
/// Accumulator of the vectorised sums below: float lanes for f32 (and narrower) data, double for double.
template <class T>
using LaneT = std::conditional_t<std::is_same_v<T, double>, double, float>;
inline constexpr int kLanes = 16;         // one AVX-512 register of floats
inline constexpr int64_t kLaneBlock = 512;  // elements per block; each block's lanes are added in double

/// The sums of f(i) and g(i) over i in [0, n) in double. A plain `s += f(i)` is one serial chain of additions
/// (the compiler may not reorder it); here kLanes independent lanes over blocks of kLaneBlock elements vectorise,
/// and each block's lanes (32 values each) are added in double, so the error stays at float rounding of short sums.
template <class T, class F, class G>
inline void lane_sums(int64_t n, F&& f, G&& g, double& sum_f, double& sum_g) {
  using L = LaneT<T>;
  sum_f = sum_g = 0;
  for (int64_t b = 0; b < n; b += kLaneBlock) {
    const int64_t e = std::min(n, b + kLaneBlock);
    L lf[kLanes] = {}, lg[kLanes] = {};
    int64_t i = b;
    for (; i + kLanes <= e; i += kLanes)
      for (int j = 0; j < kLanes; ++j) lf[j] += f(i + j), lg[j] += g(i + j);
    for (; i < e; ++i) lf[0] += f(i), lg[0] += g(i);
    for (int j = 0; j < kLanes; ++j) sum_f += static_cast<double>(lf[j]), sum_g += static_cast<double>(lg[j]);
  }
}

/// Mean and 1/sqrt(var + eps) of n values (two passes: no cancellation).
template <class T>
inline void moments(const T* x, int64_t n, double eps, double& mean, double& rstd) {
  using L = LaneT<T>;
  double s = 0, unused = 0;
  lane_sums<T>(n, [&](int64_t i) { return static_cast<L>(x[i]); }, [](int64_t) { return L(0); }, s, unused);
  mean = s / static_cast<double>(n);
  const L m = static_cast<L>(mean);
  double v = 0, d1 = 0;  // d1 = sum of (x - m): corrects for m being mean rounded to L
  lane_sums<T>(n, [&](int64_t i) { const L d = static_cast<L>(x[i]) - m; return d * d; },
               [&](int64_t i) { return static_cast<L>(x[i]) - m; }, v, d1);
  const double nn = static_cast<double>(n), dm = d1 / nn;
  rstd = 1.0 / std::sqrt(std::max(0.0, v / nn - dm * dm) + eps);
}

/// Rows per partial sum when a parameter gradient is reduced over rows: a fixed split (not per thread), so the
/// result does not depend on the thread count.
inline constexpr int64_t kRowsPerPartial = 64;
}  // namespace detail

/// The gradients of group_norm given dy (see group_norm; stats = [mean, rstd] per (n, group)). dx, dgamma and
/// dbeta are computed when wanted (need_*), else left undefined.
template <class T>
void group_norm_backward(const Tensor<T, Cpu>& dy, const Tensor<T, Cpu>& x, int64_t groups, const Tensor<T, Cpu>& gamma,
                         const Tensor<T, Cpu>& beta, Activation act, const std::vector<double>& stats, bool need_dx,
                         bool need_dgamma, bool need_dbeta, Tensor<T, Cpu>& dx, Tensor<T, Cpu>& dgamma,
                         Tensor<T, Cpu>& dbeta) {
  const int64_t N = x.dim(0), C = x.dim(1), spatial = x.numel() / std::max<int64_t>(1, N * C), cpg = C / groups;
  // dpre (the gradient before the activation) is staged in dx's buffer.
  auto work = Tensor<T, Cpu>::empty(x.shape());
  std::vector<T> sum_dpre(static_cast<std::size_t>(N * C)), sum_dpre_xhat(static_cast<std::size_t>(N * C));
  const T* xp = x.data();
  const T* gp = dy.data();
  T* wp = work.data();
  parallel_for(N * groups, [&](int64_t ng) {
    const int64_t off = ng * cpg * spatial;
    const double mean = stats[static_cast<std::size_t>(2 * ng)], rstd = stats[static_cast<std::size_t>(2 * ng + 1)];
    double a = 0, b = 0;  // sums over the group of dxhat and dxhat * xhat
    for (int64_t cc = 0; cc < cpg; ++cc) {
      const int64_t c = (ng % groups) * cpg + cc;
      const T g = gamma.defined() ? gamma.data()[c] : T(1), bt = beta.defined() ? beta.data()[c] : T(0);
      const T scale = static_cast<T>(rstd) * g, shift = bt - static_cast<T>(mean * rstd) * g;
      const T* xs = xp + off + cc * spatial;
      const T* gs = gp + off + cc * spatial;
      T* ws = wp + off + cc * spatial;
      // dpre = dy * act'(the pre-activation); sums of dpre and dpre * xhat.
      for (int64_t i = 0; i < spatial; ++i) ws[i] = xs[i] * scale + shift;
      activation_derivative_span(act, ws, gs, ws, spatial);
      using L = detail::LaneT<T>;
      const L m = static_cast<L>(mean), r = static_cast<L>(rstd);
      double s1 = 0, s2 = 0;
      detail::lane_sums<T>(spatial, [&](int64_t i) { return static_cast<L>(ws[i]); },
                           [&](int64_t i) { return static_cast<L>(ws[i]) * ((static_cast<L>(xs[i]) - m) * r); }, s1, s2);
      sum_dpre[static_cast<std::size_t>(ng / groups * C + c)] = static_cast<T>(s1);
      sum_dpre_xhat[static_cast<std::size_t>(ng / groups * C + c)] = static_cast<T>(s2);
      a += s1 * static_cast<double>(g);
      b += s2 * static_cast<double>(g);
    }
    if (!need_dx) return;
    // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), as rstd * dxhat - (c0 + c1 * x).
    const double n = static_cast<double>(cpg * spatial), ma = a / n, mb = b / n;
    // dxhat = dpre * gamma, so per channel: dx = (rstd * gamma) * dpre - (c0 + c1 * x).
    const T c1 = static_cast<T>(rstd * rstd * mb), c0 = static_cast<T>(rstd * ma - mean * rstd * rstd * mb);
    for (int64_t cc = 0; cc < cpg; ++cc) {
      const int64_t c = (ng % groups) * cpg + cc;
      const T rg = static_cast<T>(rstd) * (gamma.defined() ? gamma.data()[c] : T(1));
      T* w = wp + off + cc * spatial;
      const T* xv = xp + off + cc * spatial;
      for (int64_t i = 0; i < spatial; ++i) w[i] = rg * w[i] - (c0 + c1 * xv[i]);
    }
  }, grain_for(6 * cpg * spatial));
  if (need_dx) dx = work;
  auto reduce_over_batch = [&](const std::vector<T>& per_nc) {
    auto out = Tensor<T, Cpu>::empty({C});
    for (int64_t c = 0; c < C; ++c) {
      T s = 0;
      for (int64_t n = 0; n < N; ++n) s += per_nc[static_cast<std::size_t>(n * C + c)];
      out.data()[c] = s;
    }
    return out;
  };
  if (need_dgamma) dgamma = reduce_over_batch(sum_dpre_xhat);
  if (need_dbeta) dbeta = reduce_over_batch(sum_dpre);
}

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
  const bool record = autograd::should_record(x, gamma, beta);
  std::vector<double> stats(record ? static_cast<std::size_t>(2 * N * groups) : 0);  // [mean, rstd] per group
  const T* xp = x.data();
  T* yp = y.data();
  parallel_for(N * groups, [&](int64_t ng) {
    const int64_t off = ng * cpg * spatial;
    double mean, rstd;
    detail::moments(xp + off, cpg * spatial, eps, mean, rstd);
    if (record) {
      stats[static_cast<std::size_t>(2 * ng)] = mean;
      stats[static_cast<std::size_t>(2 * ng + 1)] = rstd;
    }
    for (int64_t cc = 0; cc < cpg; ++cc) {
      const int64_t c = (ng % groups) * cpg + cc;
      const T g = gamma.defined() ? gamma.data()[c] : T(1), b = beta.defined() ? beta.data()[c] : T(0);
      const T scale = static_cast<T>(rstd) * g, shift = b - static_cast<T>(mean * rstd) * g;
      const T* xs = xp + off + cc * spatial;
      T* ys = yp + off + cc * spatial;
      for (int64_t i = 0; i < spatial; ++i) ys[i] = xs[i] * scale + shift;
      activate_span(act, ys, ys, spatial);
    }
  }, grain_for(4 * cpg * spatial));
  if (record) {
    autograd::record("group_norm", y, [sx = autograd::slot(x), sg = autograd::slot(gamma), sb = autograd::slot(beta),
                                       x = x.detach(), gamma = gamma.detach(), beta = beta.detach(), groups, act,
                                       stats = std::move(stats)](const Tensor<T, Cpu>& g) {
      Tensor<T, Cpu> dx, dgamma, dbeta;
      group_norm_backward(g, x, groups, gamma, beta, act, stats, bool(sx), bool(sg), bool(sb), dx, dgamma, dbeta);
      if (sx) sx.add(dx);
      if (sg) sg.add(dgamma.reshape(sg.shape()));
      if (sb) sb.add(dbeta.reshape(sb.shape()));
    });
  }
  return y;
}

/// The gradients of layer_norm given dy (stats = [mean, rstd] per row); see group_norm_backward.
template <class T>
void layer_norm_backward(const Tensor<T, Cpu>& dy, const Tensor<T, Cpu>& x, const Tensor<T, Cpu>& gamma,
                         const std::vector<double>& stats, bool need_dx, bool need_dgamma, bool need_dbeta,
                         Tensor<T, Cpu>& dx, Tensor<T, Cpu>& dgamma, Tensor<T, Cpu>& dbeta) {
  const int64_t D = x.dim(-1), rows = x.numel() / std::max<int64_t>(1, D);
  const T* xp = x.data();
  const T* gp = dy.data();
  if (need_dx) {
    dx = Tensor<T, Cpu>::empty(x.shape());
    T* dp = dx.data();
    parallel_for(rows, [&](int64_t r) {
      const double mean = stats[static_cast<std::size_t>(2 * r)], rstd = stats[static_cast<std::size_t>(2 * r + 1)];
      double a = 0, b = 0;
      for (int64_t i = 0; i < D; ++i) {
        const double dxhat = static_cast<double>(gp[r * D + i]) * (gamma.defined() ? static_cast<double>(gamma.data()[i]) : 1.0);
        a += dxhat;
        b += dxhat * (static_cast<double>(xp[r * D + i]) - mean) * rstd;
      }
      a /= static_cast<double>(D);
      b /= static_cast<double>(D);
      for (int64_t i = 0; i < D; ++i) {
        const double xhat = (static_cast<double>(xp[r * D + i]) - mean) * rstd;
        const double dxhat = static_cast<double>(gp[r * D + i]) * (gamma.defined() ? static_cast<double>(gamma.data()[i]) : 1.0);
        dp[r * D + i] = static_cast<T>(rstd * (dxhat - a - xhat * b));
      }
    }, grain_for(4 * D));
  }
  if (!need_dgamma && !need_dbeta) return;
  // Column sums over rows: partial sums over fixed blocks of rows, then the blocks in order.
  const int64_t blocks = (rows + detail::kRowsPerPartial - 1) / detail::kRowsPerPartial;
  std::vector<T> pg(static_cast<std::size_t>(blocks * D), T(0)), pb(static_cast<std::size_t>(blocks * D), T(0));
  parallel_for(blocks, [&](int64_t blk) {
    T* g = pg.data() + blk * D;
    T* b = pb.data() + blk * D;
    for (int64_t r = blk * detail::kRowsPerPartial; r < std::min(rows, (blk + 1) * detail::kRowsPerPartial); ++r) {
      const double mean = stats[static_cast<std::size_t>(2 * r)], rstd = stats[static_cast<std::size_t>(2 * r + 1)];
      for (int64_t i = 0; i < D; ++i) {
        g[i] += gp[r * D + i] * static_cast<T>((static_cast<double>(xp[r * D + i]) - mean) * rstd);
        b[i] += gp[r * D + i];
      }
    }
  }, grain_for(detail::kRowsPerPartial * D));
  auto finish = [&](const std::vector<T>& partial) {
    auto out = Tensor<T, Cpu>::zeros({D});
    for (int64_t blk = 0; blk < blocks; ++blk)
      for (int64_t i = 0; i < D; ++i) out.data()[i] += partial[static_cast<std::size_t>(blk * D + i)];
    return out;
  };
  if (need_dgamma) dgamma = finish(pg);
  if (need_dbeta) dbeta = finish(pb);
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
  const bool record = autograd::should_record(x, gamma, beta);
  std::vector<double> stats(record ? static_cast<std::size_t>(2 * rows) : 0);  // [mean, rstd] per row
  const T* xp = x.data();
  T* yp = y.data();
  parallel_for(rows, [&](int64_t r) {
    double mean, rstd;
    detail::moments(xp + r * D, D, eps, mean, rstd);
    if (record) {
      stats[static_cast<std::size_t>(2 * r)] = mean;
      stats[static_cast<std::size_t>(2 * r + 1)] = rstd;
    }
    for (int64_t i = 0; i < D; ++i) {
      const T v = static_cast<T>((static_cast<double>(xp[r * D + i]) - mean) * rstd);
      yp[r * D + i] = v * (gamma.defined() ? gamma.data()[i] : T(1)) + (beta.defined() ? beta.data()[i] : T(0));
    }
  }, grain_for(4 * D));
  if (record) {
    autograd::record("layer_norm", y, [sx = autograd::slot(x), sg = autograd::slot(gamma), sb = autograd::slot(beta),
                                       x = x.detach(), gamma = gamma.detach(), stats = std::move(stats)](const Tensor<T, Cpu>& g) {
      Tensor<T, Cpu> dx, dgamma, dbeta;
      layer_norm_backward(g, x, gamma, stats, bool(sx), bool(sg), bool(sb), dx, dgamma, dbeta);
      if (sx) sx.add(dx);
      if (sg) sg.add(dgamma.reshape(sg.shape()));
      if (sb) sb.add(dbeta.reshape(sb.shape()));
    });
  }
  return y;
}

}  // namespace adabldm::ops
