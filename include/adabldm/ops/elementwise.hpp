#pragma once
// Element-wise arithmetic with NumPy broadcasting, scaling, concatenation and nearest 2x upsampling.
#include <algorithm>
#include <cmath>
#include <vector>

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
  }, 64);
  return out;
}
}  // namespace detail

template <class T>
Tensor<T, Cpu> add(const Tensor<T, Cpu>& a, const Tensor<T, Cpu>& b) {
  return detail::binary(a, b, [](T x, T y) { return x + y; });
}
template <class T>
Tensor<T, Cpu> sub(const Tensor<T, Cpu>& a, const Tensor<T, Cpu>& b) {
  return detail::binary(a, b, [](T x, T y) { return x - y; });
}
template <class T>
Tensor<T, Cpu> mul(const Tensor<T, Cpu>& a, const Tensor<T, Cpu>& b) {
  return detail::binary(a, b, [](T x, T y) { return x * y; });
}

/// a += b in place (b broadcast to a's shape; a contiguous).
template <class T>
Tensor<T, Cpu>& add_(Tensor<T, Cpu>& a, const Tensor<T, Cpu>& b) {
  check<ShapeError>(a.is_contiguous(), "add_: target must be contiguous");
  check<ShapeError>(broadcast_shape(a.shape(), b.shape()) == a.shape(), "add_: cannot broadcast ", b.shape().str(),
                    " into ", a.shape().str());
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

/// out[i] = f(x[i]) as a new contiguous tensor.
template <class T, class F>
Tensor<T, Cpu> map(const Tensor<T, Cpu>& x_in, F f) {
  const auto x = x_in.contiguous();
  auto y = Tensor<T, Cpu>::empty(x.shape());
  const T* xp = x.data();
  T* yp = y.data();
  parallel_for(x.numel(), [&](int64_t i) { yp[i] = f(xp[i]); }, 1 << 14);
  return y;
}
/// x[i] = f(x[i]) in place (x contiguous).
template <class T, class F>
Tensor<T, Cpu>& map_(Tensor<T, Cpu>& x, F f) {
  check<ShapeError>(x.is_contiguous(), "map_: in-place op on a non-contiguous tensor");
  T* p = x.data();
  parallel_for(x.numel(), [&](int64_t i) { p[i] = f(p[i]); }, 1 << 14);
  return x;
}
/// Clamps every element to [lo, hi].
template <class T>
Tensor<T, Cpu> clamp(const Tensor<T, Cpu>& x, T lo, T hi) {
  return map(x, [=](T v) { return std::min(std::max(v, lo), hi); });
}

/// alpha * x + beta (a new tensor).
template <class T>
Tensor<T, Cpu> affine(const Tensor<T, Cpu>& x_in, T alpha, T beta = T(0)) {
  const auto x = x_in.contiguous();
  auto y = Tensor<T, Cpu>::empty(x.shape());
  const T* xp = x.data();
  T* yp = y.data();
  parallel_for(x.numel(), [&](int64_t i) { yp[i] = alpha * xp[i] + beta; }, 1 << 14);
  return y;
}
template <class T>
Tensor<T, Cpu> scale(const Tensor<T, Cpu>& x, T alpha) { return affine(x, alpha); }

/// Concatenation along dimension `dim` (negative counts from the end); all other dimensions must agree.
template <class T>
Tensor<T, Cpu> concat(const std::vector<Tensor<T, Cpu>>& parts, int dim) {
  check<ShapeError>(!parts.empty(), "concat: no tensors");
  const int r = parts[0].rank();
  const int d = dim < 0 ? dim + r : dim;
  check<ShapeError>(d >= 0 && d < r, "concat: dimension ", dim, " out of range for ", parts[0].shape().str());
  Shape os = parts[0].shape();
  os[d] = 0;
  for (const auto& t : parts) {
    bool ok = t.rank() == r;
    for (int i = 0; ok && i < r; ++i) ok = i == d || t.shape()[i] == parts[0].shape()[i];
    check<ShapeError>(ok, "concat: ", t.shape().str(), " does not fit ", parts[0].shape().str(), " along dim ", d);
    os[d] += t.shape()[d];
  }
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
    parallel_for(outer, [&](int64_t o) { std::copy(src + o * run, src + (o + 1) * run, dst + o * os[d] * inner); }, 16);
    offset += run;
  }
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
  }, 64);
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
  }, 64);
  return y;
}

}  // namespace adabldm::ops
