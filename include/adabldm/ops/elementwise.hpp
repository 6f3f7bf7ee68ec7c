#pragma once
// Element-wise arithmetic with NumPy broadcasting, scaling, clamping, concatenation and nearest upsampling,
// with their backward kernels (a broadcast input's gradient is summed over the dimensions it was broadcast along).
#include <algorithm>
#include <cmath>
#include <vector>

#include "adabldm/core/autograd_record.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"

namespace adabldm::ops {

/// The NumPy broadcast of two shapes (dimensions aligned from the right; each pair equal or one of them 1).
inline Shape broadcast_shape(const Shape& a, const Shape& b) {
  const int r = std::max(a.rank(), b.rank());
  std::vector<int64_t> out(static_cast<std::size_t>(r));
  for (int i = 0; i < r; ++i) {
    const int64_t da = i < r - a.rank() ? 1 : a[i - (r - a.rank())];
    const int64_t db = i < r - b.rank() ? 1 : b[i - (r - b.rank())];
    check<ShapeError>(da == db || da == 1 || db == 1, "cannot broadcast ", a.str(), " with ", b.str());
    out[static_cast<std::size_t>(i)] = da == 1 ? db : da;
  }
  return Shape(out);
}

namespace detail {
/// Strides of `s` read as the broadcast shape `to` (0 along broadcast dimensions).
inline Shape broadcast_strides(const Shape& s, const Shape& to) {
  Shape st = to;
  const Shape cs = contiguous_strides(s);
  const int off = to.rank() - s.rank();
  for (int i = 0; i < to.rank(); ++i) st[i] = (i < off || s[i - off] == 1) ? 0 : cs[i - off];
  return st;
}

/// out = f(a, b) with broadcasting; a and b contiguous.
template <class T, class F>
Tensor<T, Cpu> binary(const Tensor<T, Cpu>& a_in, const Tensor<T, Cpu>& b_in, F f) {
  const auto a = a_in.contiguous();
  const auto b = b_in.contiguous();
  const T* ap = a.data();
  const T* bp = b.data();
  if (a.shape() == b.shape()) {
    auto out = Tensor<T, Cpu>::empty(a.shape());
    T* o = out.data();
    parallel_for(a.numel(), [&](int64_t i) { o[i] = f(ap[i], bp[i]); }, 1 << 14);
    return out;
  }
  const Shape os = broadcast_shape(a.shape(), b.shape());
  auto out = Tensor<T, Cpu>::empty(os);
  const int r = os.rank();
  const Shape sa = broadcast_strides(a.shape(), os), sb = broadcast_strides(b.shape(), os);
  const int64_t inner = r ? os[r - 1] : 1, outer = out.numel() / std::max<int64_t>(1, inner);
  const int64_t ia = r ? sa[r - 1] : 0, ib = r ? sb[r - 1] : 0;
  T* o = out.data();
  parallel_for(outer, [&](int64_t row) {
    int64_t oa = 0, ob = 0, rem = row;
    for (int d = r - 2; d >= 0; --d) {
      const int64_t idx = rem % os[d];
      rem /= os[d];
      oa += idx * sa[d];
      ob += idx * sb[d];
    }
    T* dst = o + row * inner;
    for (int64_t i = 0; i < inner; ++i) dst[i] = f(ap[oa + i * ia], bp[ob + i * ib]);
  }, grain_for(inner));
  return out;
}
}  // namespace detail

/// The reverse of broadcasting: g (of a broadcast shape) summed down to `shape` (dimensions aligned from the
/// right; summed where `shape` has 1 or no dimension). Each output element sums its inputs in a fixed order.
template <class T>
Tensor<T, Cpu> sum_to_shape(const Tensor<T, Cpu>& g_in, const Shape& shape) {
  if (g_in.shape() == shape) return g_in;
  const auto g = g_in.contiguous();
  const Shape& gs = g.shape();
  const int r = gs.rank(), off = r - shape.rank();
  check<ShapeError>(off >= 0, "sum_to_shape: ", gs.str(), " has fewer dimensions than ", shape.str());
  const Shape gst = contiguous_strides(gs);
  std::vector<int64_t> red_size, red_stride, keep_size, keep_stride;  // summed / kept dimensions of g
  for (int d = 0; d < r; ++d) {
    const bool kept = d >= off && shape[d - off] == gs[d];
    check<ShapeError>(kept || d < off || shape[d - off] == 1, "sum_to_shape: ", gs.str(), " does not broadcast from ",
                      shape.str());
    (kept ? keep_size : red_size).push_back(gs[d]);
    (kept ? keep_stride : red_stride).push_back(gst[d]);
  }
  auto out = Tensor<T, Cpu>::empty(shape);
  int64_t red_total = 1;
  for (int64_t v : red_size) red_total *= v;
  const T* gp = g.data();
  T* o = out.data();
  const int nk = static_cast<int>(keep_size.size()), nr = static_cast<int>(red_size.size());
  parallel_for(out.numel(), [&](int64_t e) {
    int64_t base = 0, rem = e;
    for (int k = nk - 1; k >= 0; --k) {
      base += rem % keep_size[static_cast<std::size_t>(k)] * keep_stride[static_cast<std::size_t>(k)];
      rem /= keep_size[static_cast<std::size_t>(k)];
    }
    T s = 0;
    for (int64_t j = 0; j < red_total; ++j) {
      int64_t at = base, q = j;
      for (int k = nr - 1; k >= 0; --k) {
        at += q % red_size[static_cast<std::size_t>(k)] * red_stride[static_cast<std::size_t>(k)];
        q /= red_size[static_cast<std::size_t>(k)];
      }
      s += gp[at];
    }
    o[e] = s;
  }, grain_for(red_total));
  return out;
}

template <class T>
Tensor<T, Cpu> add(const Tensor<T, Cpu>& a_in, const Tensor<T, Cpu>& b_in) {
  const auto a = a_in.contiguous(), b = b_in.contiguous();
  auto out = detail::binary(a, b, [](T x, T y) { return x + y; });
  if (autograd::should_record(a, b))
    autograd::record("add", out, [sa = autograd::slot(a), sb = autograd::slot(b)](const Tensor<T, Cpu>& g) {
      if (sa) sa.add(sum_to_shape(g, sa.shape()));
      if (sb) sb.add(sum_to_shape(g, sb.shape()));
    });
  return out;
}
template <class T>
Tensor<T, Cpu> sub(const Tensor<T, Cpu>& a_in, const Tensor<T, Cpu>& b_in) {
  const auto a = a_in.contiguous(), b = b_in.contiguous();
  auto out = detail::binary(a, b, [](T x, T y) { return x - y; });
  if (autograd::should_record(a, b))
    autograd::record("sub", out, [sa = autograd::slot(a), sb = autograd::slot(b)](const Tensor<T, Cpu>& g) {
      if (sa) sa.add(sum_to_shape(g, sa.shape()));
      if (sb) {
        auto d = sum_to_shape(g, sb.shape()).clone();
        T* p = d.data();
        parallel_for(d.numel(), [&](int64_t i) { p[i] = -p[i]; }, 1 << 14);
        sb.add(d);
      }
    });
  return out;
}
template <class T>
Tensor<T, Cpu> mul(const Tensor<T, Cpu>& a_in, const Tensor<T, Cpu>& b_in) {
  const auto a = a_in.contiguous(), b = b_in.contiguous();
  auto out = detail::binary(a, b, [](T x, T y) { return x * y; });
  if (autograd::should_record(a, b)) {
    // Each side's gradient needs only the other side's value.
    autograd::record("mul", out, [sa = autograd::slot(a), sb = autograd::slot(b),
                                  a_saved = b.requires_grad() ? a.detach() : Tensor<T, Cpu>{},
                                  b_saved = a.requires_grad() ? b.detach() : Tensor<T, Cpu>{}](const Tensor<T, Cpu>& g) {
      const auto times = [](T x, T y) { return x * y; };
      if (sa) sa.add(sum_to_shape(detail::binary(g, b_saved, times), sa.shape()));
      if (sb) sb.add(sum_to_shape(detail::binary(g, a_saved, times), sb.shape()));
    });
  }
  return out;
}

/// a += b in place (b broadcast to a's shape; a contiguous). While a tape records, it runs out of place and
/// rebinds a instead (a tensor saved for a backward must never be overwritten; see docs/autograd.md).
template <class T>
Tensor<T, Cpu>& add_(Tensor<T, Cpu>& a, const Tensor<T, Cpu>& b) {
  check<ShapeError>(a.is_contiguous(), "add_: target must be contiguous");
  check<ShapeError>(broadcast_shape(a.shape(), b.shape()) == a.shape(), "add_: cannot broadcast ", b.shape().str(),
                    " into ", a.shape().str());
  if (autograd::recording()) return a = add(a, b);
  if (a.shape() == b.shape()) {
    const auto bc = b.contiguous();
    T* ap = a.data();
    const T* bp = bc.data();
    parallel_for(a.numel(), [&](int64_t i) { ap[i] += bp[i]; }, 1 << 14);
    return a;
  }
  auto s = add(a, b);
  std::copy(s.data(), s.data() + s.numel(), a.data());
  return a;
}

namespace detail {
inline void no_gradient_through_map(bool requires_grad) {
  check(!(requires_grad && autograd::recording()),
        "ops::map / map_: an arbitrary element function cannot be differentiated, and its input requires a "
        "gradient; use a differentiable op (ops::affine, scale, clamp, activate) or detach() the input");
}
}  // namespace detail

/// out[i] = f(x[i]) as a new contiguous tensor. Not differentiable: an error while recording an input that
/// requires a gradient.
template <class T, class F>
Tensor<T, Cpu> map(const Tensor<T, Cpu>& x_in, F f) {
  detail::no_gradient_through_map(x_in.requires_grad());
  const auto x = x_in.contiguous();
  auto y = Tensor<T, Cpu>::empty(x.shape());
  const T* xp = x.data();
  T* yp = y.data();
  parallel_for(x.numel(), [&](int64_t i) { yp[i] = f(xp[i]); }, 1 << 14);
  return y;
}
/// x[i] = f(x[i]) in place (x contiguous); out of place (rebinding x) while a tape records. Not differentiable.
template <class T, class F>
Tensor<T, Cpu>& map_(Tensor<T, Cpu>& x, F f) {
  detail::no_gradient_through_map(x.requires_grad());
  if (autograd::recording()) return x = map(x, f);
  check<ShapeError>(x.is_contiguous(), "map_: in-place op on a non-contiguous tensor");
  T* p = x.data();
  parallel_for(x.numel(), [&](int64_t i) { p[i] = f(p[i]); }, 1 << 14);
  return x;
}
/// Clamps every element to [lo, hi]. The gradient passes where lo <= x <= hi (as torch.clamp).
template <class T>
Tensor<T, Cpu> clamp(const Tensor<T, Cpu>& x_in, T lo, T hi) {
  const auto x = x_in.contiguous();
  auto y = Tensor<T, Cpu>::empty(x.shape());
  const T* xp = x.data();
  T* yp = y.data();
  parallel_for(x.numel(), [&](int64_t i) { yp[i] = std::min(std::max(xp[i], lo), hi); }, 1 << 14);
  if (autograd::should_record(x))
    autograd::record("clamp", y, [sx = autograd::slot(x), x = x.detach(), lo, hi](const Tensor<T, Cpu>& g) {
      auto dx = Tensor<T, Cpu>::empty(x.shape());
      const T *xp = x.data(), *gp = g.data();
      T* dp = dx.data();
      parallel_for(x.numel(), [&](int64_t i) { dp[i] = xp[i] >= lo && xp[i] <= hi ? gp[i] : T(0); }, 1 << 14);
      sx.add(dx);
    });
  return y;
}

/// alpha * x + beta (a new tensor).
template <class T>
Tensor<T, Cpu> affine(const Tensor<T, Cpu>& x_in, T alpha, T beta = T(0)) {
  const auto x = x_in.contiguous();
  auto y = Tensor<T, Cpu>::empty(x.shape());
  const T* xp = x.data();
  T* yp = y.data();
  parallel_for(x.numel(), [&](int64_t i) { yp[i] = alpha * xp[i] + beta; }, 1 << 14);
  if (autograd::should_record(x))
    autograd::record("affine", y, [sx = autograd::slot(x), alpha](const Tensor<T, Cpu>& g) {
      auto dx = Tensor<T, Cpu>::empty(g.shape());
      const T* gp = g.data();
      T* dp = dx.data();
      parallel_for(g.numel(), [&](int64_t i) { dp[i] = alpha * gp[i]; }, 1 << 14);
      sx.add(dx);
    });
  return y;
}
template <class T>
Tensor<T, Cpu> scale(const Tensor<T, Cpu>& x, T alpha) { return affine(x, alpha); }

namespace detail {
/// The result of concatenating `parts` along `dim` (checked; shared by every device's concat).
struct ConcatShape {
  int dim;    ///< non-negative
  Shape out;
};
template <class Tensors>
ConcatShape concat_shape(const Tensors& parts, int dim) {
  check<ShapeError>(!parts.empty(), "concat: no tensors");
  const Shape& first = parts[0].shape();
  const int r = first.rank();
  const int d = dim < 0 ? dim + r : dim;
  check<ShapeError>(d >= 0 && d < r, "concat: dimension ", dim, " out of range for ", first.str());
  Shape out = first;
  out[d] = 0;
  for (const auto& t : parts) {
    bool ok = t.rank() == r;
    for (int i = 0; ok && i < r; ++i) ok = i == d || t.shape()[i] == first[i];
    check<ShapeError>(ok, "concat: ", t.shape().str(), " does not fit ", first.str(), " along dim ", d);
    out[d] += t.shape()[d];
  }
  return {d, out};
}

/// Records concat's backward (each part gets its slice of the gradient): the same on every device.
template <class T, class Dev>
void record_concat(const std::vector<Tensor<T, Dev>>& parts, Tensor<T, Dev>& out, int d) {
  if (!autograd::should_record(parts)) return;
  std::vector<autograd::GradSlot<T, Dev>> slots;
  for (const auto& t : parts) slots.emplace_back(t);
  autograd::record("concat", out, [slots, d](const Tensor<T, Dev>& g) {
    int64_t start = 0;
    for (const auto& s : slots) {
      const int64_t len = s.shape()[d];
      if (s) s.add(g.narrow(d, start, len).contiguous());
      start += len;
    }
  });
}
}  // namespace detail

/// Concatenation along dimension `dim` (negative counts from the end); all other dimensions must agree.
template <class T>
Tensor<T, Cpu> concat(const std::vector<Tensor<T, Cpu>>& parts, int dim) {
  const auto shape = detail::concat_shape(parts, dim);
  const int r = shape.out.rank(), d = shape.dim;
  const Shape& os = shape.out;
  auto out = Tensor<T, Cpu>::empty(os);
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < d; ++i) outer *= os[i];
  for (int i = d + 1; i < r; ++i) inner *= os[i];
  int64_t offset = 0;
  for (const auto& t_in : parts) {
    const auto t = t_in.contiguous();
    const int64_t run = t.shape()[d] * inner;
    const T* src = t.data();
    T* dst = out.data() + offset;
    parallel_for(outer, [&](int64_t o) { std::copy(src + o * run, src + (o + 1) * run, dst + o * os[d] * inner); }, grain_for(run));
    offset += run;
  }
  detail::record_concat(parts, out, d);
  return out;
}

/// Nearest-neighbour 2x upsampling of x[N, C, H, W] -> [N, C, 2H, 2W] (F.interpolate(scale_factor=2)).
template <class T>
Tensor<T, Cpu> upsample_nearest2x(const Tensor<T, Cpu>& x_in) {
  check<ShapeError>(x_in.rank() == 4, "upsample_nearest2x: input must be [N, C, H, W], got ", x_in.shape().str());
  const auto x = x_in.contiguous();
  const int64_t NC = x.dim(0) * x.dim(1), H = x.dim(2), W = x.dim(3);
  auto y = Tensor<T, Cpu>::empty({x.dim(0), x.dim(1), 2 * H, 2 * W});
  const T* xp = x.data();
  T* yp = y.data();
  parallel_for(NC * H, [&](int64_t row) {
    const T* s = xp + row * W;
    T* d0 = yp + row * 4 * W;  // output rows 2*iy and 2*iy+1 of the same plane are adjacent
    for (int64_t i = 0; i < W; ++i) d0[2 * i] = d0[2 * i + 1] = s[i];
    std::copy(d0, d0 + 2 * W, d0 + 2 * W);
  }, grain_for(4 * W));
  if (autograd::should_record(x))
    autograd::record("upsample_nearest2x", y, [sx = autograd::slot(x)](const Tensor<T, Cpu>& g) {
      // Each input element receives the sum of its 2x2 block.
      const int64_t W = sx.shape()[3], rows = sx.shape().numel() / std::max<int64_t>(1, W);
      auto dx = Tensor<T, Cpu>::empty(sx.shape());
      const T* gp = g.data();
      T* dp = dx.data();
      parallel_for(rows, [&](int64_t row) {
        const T* g0 = gp + row * 4 * W;
        const T* g1 = g0 + 2 * W;
        for (int64_t i = 0; i < W; ++i) dp[row * W + i] = (g0[2 * i] + g0[2 * i + 1]) + (g1[2 * i] + g1[2 * i + 1]);
      }, grain_for(4 * W));
      sx.add(dx);
    });
  return y;
}

/// Nearest-neighbour resize of x[N, C, H, W] to [N, C, out_h, out_w] (F.interpolate(size=..., mode="nearest"):
/// source index floor(i * in / out), clamped).
template <class T>
Tensor<T, Cpu> upsample_nearest(const Tensor<T, Cpu>& x_in, int64_t out_h, int64_t out_w) {
  check<ShapeError>(x_in.rank() == 4 && out_h > 0 && out_w > 0, "upsample_nearest: input must be [N, C, H, W] and "
                    "the size positive, got ", x_in.shape().str(), " -> ", out_h, "x", out_w);
  const auto x = x_in.contiguous();
  const int64_t NC = x.dim(0) * x.dim(1), H = x.dim(2), W = x.dim(3);
  auto y = Tensor<T, Cpu>::empty({x.dim(0), x.dim(1), out_h, out_w});
  const float sh = static_cast<float>(H) / static_cast<float>(out_h), sw = static_cast<float>(W) / static_cast<float>(out_w);
  std::vector<int64_t> sx(static_cast<std::size_t>(out_w));
  for (int64_t j = 0; j < out_w; ++j) sx[j] = std::min<int64_t>(static_cast<int64_t>(std::floor(j * sw)), W - 1);
  const T* xp = x.data();
  T* yp = y.data();
  parallel_for(NC * out_h, [&](int64_t row) {
    const int64_t plane = row / out_h, i = row % out_h;
    const int64_t si = std::min<int64_t>(static_cast<int64_t>(std::floor(i * sh)), H - 1);
    const T* s = xp + (plane * H + si) * W;
    T* d = yp + row * out_w;
    for (int64_t j = 0; j < out_w; ++j) d[j] = s[sx[j]];
  }, grain_for(out_w));
  if (autograd::should_record(x))
    autograd::record("upsample_nearest", y, [slot = autograd::slot(x), sh, sx](const Tensor<T, Cpu>& g) {
      // Scatter-add with the forward's index maps, one plane per task (no two tasks write the same element).
      const int64_t H = slot.shape()[2], W = slot.shape()[3], NC = slot.shape()[0] * slot.shape()[1];
      const int64_t out_h = g.dim(2), out_w = g.dim(3);
      auto dx = Tensor<T, Cpu>::zeros(slot.shape());
      const T* gp = g.data();
      T* dp = dx.data();
      parallel_for(NC, [&](int64_t plane) {
        for (int64_t i = 0; i < out_h; ++i) {
          const int64_t si = std::min<int64_t>(static_cast<int64_t>(std::floor(i * sh)), H - 1);
          const T* s = gp + (plane * out_h + i) * out_w;
          T* d = dp + (plane * H + si) * W;
          for (int64_t j = 0; j < out_w; ++j) d[sx[static_cast<std::size_t>(j)]] += s[j];
        }
      }, grain_for(out_h * out_w));
      slot.add(dx);
    });
  return y;
}

}  // namespace adabldm::ops
