#pragma once
// The small image-processing kit of the defect pipeline (OpenCV is not a dependency): resizing with cv2's
// INTER_LINEAR / INTER_NEAREST conventions, rotation (optionally with scaling, in one resampling) onto an
// enlarged canvas, binary morphology with a square kernel, bounding boxes, binarisation and Otsu's threshold.
//
// Data types
//   - Float planes are host tensors Tensor<float, Cpu> of shape [1, C, H, W]; masks have C = 1 and hold {0, 1}.
//   - 8-bit data (Otsu, the foreground predictor's x255 maps, RGB input files) is adabldm::Image (HWC, uint8).
//   - Sizes are always passed as (height, width), also where cv2 would take dsize = (width, height).
//
// Resize semantics (cv2.resize, no antialiasing)
//   - bilinear: source coordinate (d + 0.5) * in / out - 0.5 (half-pixel centres), clamped to the edge pixels.
//     Downscaling therefore samples, it does not average (exactly like cv2 INTER_LINEAR; cv2's special case
//     for exact 2x reduction, INTER_AREA, gives the same values).
//   - nearest: source index floor(d * in / out), clamped to in - 1 (cv2 INTER_NEAREST, not INTER_NEAREST_EXACT).
//   - 8-bit bilinear (resize_image) uses cv2's 11-bit fixed-point weights and rounding (its scalar path); float
//     planes are interpolated in float.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "adabldm/core/error.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/io/image.hpp"

namespace adabldm::defect {

namespace detail {

/// Checks a [1, C, H, W] host plane and returns it contiguous.
inline Tensor<float, Cpu> plane_arg(const Tensor<float, Cpu>& t, const char* what) {
  if (!(t.rank() == 4 && t.dim(0) == 1 && t.numel() > 0))  // (the shape is printed only on failure)
    throw ShapeError(adabldm::detail::concat(what, ": expected a non-empty [1, C, H, W] tensor, got ", t.shape().str()));
  return t.contiguous();
}

/// Checks a [1, 1, H, W] host mask and returns it contiguous.
inline Tensor<float, Cpu> mask_arg(const Tensor<float, Cpu>& t, const char* what) {
  if (!(t.rank() == 4 && t.dim(0) == 1 && t.dim(1) == 1 && t.numel() > 0))
    throw ShapeError(adabldm::detail::concat(what, ": expected a non-empty [1, 1, H, W] mask, got ", t.shape().str()));
  return t.contiguous();
}

/// One output coordinate of a 1-D linear resize: value = (1 - w1) * src[i0] + w1 * src[i1].
struct LinearTap {
  int i0 = 0, i1 = 0;
  float w1 = 0.0f;
};

/// cv2 INTER_LINEAR taps: half-pixel centres, coordinates clamped to [0, in - 1].
inline std::vector<LinearTap> linear_taps(int in, int out) {
  std::vector<LinearTap> taps(static_cast<std::size_t>(out));
  const double scale = static_cast<double>(in) / out;
  for (int d = 0; d < out; ++d) {
    float s = static_cast<float>((d + 0.5) * scale - 0.5);  // cv2 computes this in float
    int i0 = static_cast<int>(std::floor(s));
    float f = s - static_cast<float>(i0);
    if (i0 < 0) i0 = 0, f = 0.0f;
    if (i0 >= in - 1) i0 = in - 1, f = 0.0f;
    taps[static_cast<std::size_t>(d)] = {i0, std::min(i0 + 1, in - 1), f};
  }
  return taps;
}

/// cv2 INTER_NEAREST source indices: floor(d * in / out) computed as cv2 does (double 1 / (out / in)).
inline std::vector<int> nearest_index(int in, int out) {
  std::vector<int> idx(static_cast<std::size_t>(out));
  const double inv = 1.0 / (static_cast<double>(out) / in);
  for (int d = 0; d < out; ++d) idx[static_cast<std::size_t>(d)] = std::min(static_cast<int>(std::floor(d * inv)), in - 1);
  return idx;
}

inline int checked_size(double v, const char* what) {
  check(v >= 1.0 && v < 1e8, what, ": size ", v, " is out of range");
  return static_cast<int>(v);
}

}  // namespace detail

// ---- resizing -------------------------------------------------------------------------------------------------

/// Bilinear resize of every channel of a [1, C, H, W] plane to out_h x out_w (cv2 INTER_LINEAR semantics).
inline Tensor<float, Cpu> resize_bilinear(const Tensor<float, Cpu>& src_in, int out_h, int out_w) {
  const auto src = detail::plane_arg(src_in, "resize_bilinear");
  check(out_h > 0 && out_w > 0, "resize_bilinear: output size must be positive, got ", out_h, "x", out_w);
  const int c = static_cast<int>(src.dim(1)), h = static_cast<int>(src.dim(2)), w = static_cast<int>(src.dim(3));
  const auto ty = detail::linear_taps(h, out_h), tx = detail::linear_taps(w, out_w);
  auto dst = Tensor<float, Cpu>::empty({1, c, out_h, out_w});
  std::vector<float> row0(static_cast<std::size_t>(out_w)), row1(static_cast<std::size_t>(out_w));
  for (int ch = 0; ch < c; ++ch) {
    const float* s = src.data() + static_cast<int64_t>(ch) * h * w;
    float* d = dst.data() + static_cast<int64_t>(ch) * out_h * out_w;
    for (int y = 0; y < out_h; ++y) {
      const auto& vy = ty[static_cast<std::size_t>(y)];
      const float* r0 = s + static_cast<int64_t>(vy.i0) * w;
      const float* r1 = s + static_cast<int64_t>(vy.i1) * w;
      for (int x = 0; x < out_w; ++x) {  // horizontal pass first, as cv2 does
        const auto& vx = tx[static_cast<std::size_t>(x)];
        row0[static_cast<std::size_t>(x)] = r0[vx.i0] * (1.0f - vx.w1) + r0[vx.i1] * vx.w1;
        row1[static_cast<std::size_t>(x)] = r1[vx.i0] * (1.0f - vx.w1) + r1[vx.i1] * vx.w1;
      }
      for (int x = 0; x < out_w; ++x)
        d[static_cast<int64_t>(y) * out_w + x] =
            row0[static_cast<std::size_t>(x)] * (1.0f - vy.w1) + row1[static_cast<std::size_t>(x)] * vy.w1;
    }
  }
  return dst;
}

/// Nearest-neighbour resize of a [1, C, H, W] plane (cv2 INTER_NEAREST: source index floor(d * in / out)).
inline Tensor<float, Cpu> resize_nearest(const Tensor<float, Cpu>& src_in, int out_h, int out_w) {
  const auto src = detail::plane_arg(src_in, "resize_nearest");
  check(out_h > 0 && out_w > 0, "resize_nearest: output size must be positive, got ", out_h, "x", out_w);
  const int c = static_cast<int>(src.dim(1)), h = static_cast<int>(src.dim(2)), w = static_cast<int>(src.dim(3));
  const auto iy = detail::nearest_index(h, out_h), ix = detail::nearest_index(w, out_w);
  auto dst = Tensor<float, Cpu>::empty({1, c, out_h, out_w});
  for (int ch = 0; ch < c; ++ch) {
    const float* s = src.data() + static_cast<int64_t>(ch) * h * w;
    float* d = dst.data() + static_cast<int64_t>(ch) * out_h * out_w;
    for (int y = 0; y < out_h; ++y)
      for (int x = 0; x < out_w; ++x)
        d[static_cast<int64_t>(y) * out_w + x] = s[static_cast<int64_t>(iy[static_cast<std::size_t>(y)]) * w + ix[static_cast<std::size_t>(x)]];
  }
  return dst;
}

/// Isotropic rescale by factor s: bilinear resize to (round(H * s), round(W * s)), at least 1 x 1.
inline Tensor<float, Cpu> rescale(const Tensor<float, Cpu>& src, double s) {
  check(s > 0.0 && std::isfinite(s), "rescale: scale must be positive, got ", s);
  check<ShapeError>(src.rank() == 4, "rescale: expected [1, C, H, W], got ", src.shape().str());
  const int h = detail::checked_size(std::max(1.0, std::round(static_cast<double>(src.dim(2)) * s)), "rescale");
  const int w = detail::checked_size(std::max(1.0, std::round(static_cast<double>(src.dim(3)) * s)), "rescale");
  return resize_bilinear(src, h, w);
}

/// A binary mask resized bilinearly and re-binarised: 1 where the interpolated value is > threshold. 0.5 keeps the
/// area (up to rasterisation); the official inference path keeps every value > 0, which grows the defect.
inline Tensor<float, Cpu> resize_mask(const Tensor<float, Cpu>& mask, int out_h, int out_w, float threshold = 0.5f) {
  auto m = resize_bilinear(detail::mask_arg(mask, "resize_mask"), out_h, out_w);
  for (int64_t i = 0; i < m.numel(); ++i) m.data()[i] = m.data()[i] > threshold ? 1.0f : 0.0f;
  return m;
}

/// Bilinear resize of an 8-bit image (any channel count) to out_h x out_w with cv2's fixed-point arithmetic:
/// weights rounded to 1/2048, the two passes combined in integers and rounded to nearest. OpenCV's SIMD path
/// rounds the vertical pass slightly differently and can differ by 1 in rare pixels.
inline Image resize_image(const Image& src, int out_h, int out_w) {
  check<ShapeError>(src.width > 0 && src.height > 0 && src.channels > 0 &&
                        src.pixels.size() == static_cast<std::size_t>(src.width) * src.height * src.channels,
                    "resize_image: malformed ", src.width, "x", src.height, "x", src.channels, " image");
  check(out_h > 0 && out_w > 0, "resize_image: output size must be positive, got ", out_h, "x", out_w);
  constexpr int kScale = 2048;  // INTER_RESIZE_COEF_SCALE
  auto fixed = [](float v) { return static_cast<int>(std::lround(v * kScale)); };
  const auto ty = detail::linear_taps(src.height, out_h), tx = detail::linear_taps(src.width, out_w);
  const int cn = src.channels;
  Image dst{out_w, out_h, cn, std::vector<uint8_t>(static_cast<std::size_t>(out_w) * out_h * cn)};
  std::vector<int> row0(static_cast<std::size_t>(out_w) * cn), row1(row0.size());
  auto hpass = [&](int sy, std::vector<int>& row) {
    for (int x = 0; x < out_w; ++x) {
      const auto& t = tx[static_cast<std::size_t>(x)];
      const int a1 = fixed(t.w1), a0 = fixed(1.0f - t.w1);
      for (int k = 0; k < cn; ++k)
        row[static_cast<std::size_t>(x * cn + k)] = src.at(sy, t.i0, k) * a0 + src.at(sy, t.i1, k) * a1;
    }
  };
  for (int y = 0; y < out_h; ++y) {
    const auto& t = ty[static_cast<std::size_t>(y)];
    hpass(t.i0, row0);
    hpass(t.i1, row1);
    const int64_t b1 = fixed(t.w1), b0 = fixed(1.0f - t.w1);
    for (int x = 0; x < out_w * cn; ++x) {
      const int64_t v = (b0 * row0[static_cast<std::size_t>(x)] + b1 * row1[static_cast<std::size_t>(x)] + (1 << 21)) >> 22;
      dst.pixels[static_cast<std::size_t>(y) * out_w * cn + static_cast<std::size_t>(x)] =
          static_cast<uint8_t>(std::clamp<int64_t>(v, 0, 255));
    }
  }
  return dst;
}

/// An input photo resized to exactly size x size, like the official code (cv2.resize to (256, 256)): the
/// aspect ratio is NOT preserved, so masks of that photo must be resized the same way to stay aligned.
inline Image resize_input_image(const Image& src, int size) { return resize_image(src, size, size); }

// ---- rotation -------------------------------------------------------------------------------------------------

namespace detail {

/// cos and sin of an angle in degrees, exact for multiples of 90.
inline std::pair<double, double> cos_sin_deg(double angle_deg) {
  check(std::isfinite(angle_deg), "rotation angle must be finite, got ", angle_deg);
  double a = std::fmod(angle_deg, 360.0);
  if (a < 0) a += 360.0;
  if (std::fmod(a, 90.0) == 0.0) {  // exact quarter turns: no rounding noise
    const int q = static_cast<int>(a / 90.0);
    return {(q == 0) ? 1.0 : (q == 2) ? -1.0 : 0.0, (q == 1) ? 1.0 : (q == 3) ? -1.0 : 0.0};
  }
  return {std::cos(a * M_PI / 180.0), std::sin(a * M_PI / 180.0)};
}

/// Size of the box holding an h x w image rotated by (cs, sn) and scaled by s: ceil(s (h|cos| + w|sin|)) rows by
/// ceil(s (h|sin| + w|cos|)) columns, at least 1.
inline std::pair<int, int> rotated_size(int h, int w, double cs, double sn, double s = 1.0) {
  constexpr double kSlack = 1e-9;  // so that 10.0000000001 does not become 11
  const double rows = std::ceil(s * (h * std::fabs(cs) + w * std::fabs(sn)) - kSlack);
  const double cols = std::ceil(s * (h * std::fabs(sn) + w * std::fabs(cs)) - kSlack);
  return {checked_size(std::max(1.0, rows), "rotation"), checked_size(std::max(1.0, cols), "rotation")};
}

/// The one resampling behind rotation and scaling: output pixel (v, u) is read, bilinearly, at the source point
///   R^-1 * (ky * (v - cy_out), kx * (u - cx_out)) + source centre,
/// with all centres geometric ((n - 1) / 2) and R the cv2 rotation [[cos, sin], [-sin, cos]] (counter-clockwise
/// as displayed). ky, kx < 1 enlarge. Taps outside the source read `border`.
inline Tensor<float, Cpu> warp_centred(const Tensor<float, Cpu>& src, double cs, double sn, int out_h, int out_w,
                                       double ky, double kx, float border) {
  const int c = static_cast<int>(src.dim(1)), h = static_cast<int>(src.dim(2)), w = static_cast<int>(src.dim(3));
  const double cx = (w - 1) * 0.5, cy = (h - 1) * 0.5, ocx = (out_w - 1) * 0.5, ocy = (out_h - 1) * 0.5;
  auto dst = Tensor<float, Cpu>::empty({1, c, out_h, out_w});
  for (int v = 0; v < out_h; ++v)
    for (int u = 0; u < out_w; ++u) {
      const double du = kx * (u - ocx), dv = ky * (v - ocy);
      const double sx = cs * du - sn * dv + cx, sy = sn * du + cs * dv + cy;
      const double fx0 = std::floor(sx), fy0 = std::floor(sy);
      const int x0 = static_cast<int>(fx0), y0 = static_cast<int>(fy0);
      const float fx = static_cast<float>(sx - fx0), fy = static_cast<float>(sy - fy0);
      for (int ch = 0; ch < c; ++ch) {
        const float* s = src.data() + static_cast<int64_t>(ch) * h * w;
        auto px = [&](int y, int x) { return (y >= 0 && y < h && x >= 0 && x < w) ? s[static_cast<int64_t>(y) * w + x] : border; };
        float val;
        if (fx == 0.0f && fy == 0.0f) {
          val = px(y0, x0);  // exact hit (e.g. quarter turns): a copy, no zero-weight neighbours
        } else {
          const float top = px(y0, x0) * (1.0f - fx) + px(y0, x0 + 1) * fx;
          const float bottom = px(y0 + 1, x0) * (1.0f - fx) + px(y0 + 1, x0 + 1) * fx;
          val = top * (1.0f - fy) + bottom * fy;
        }
        dst.data()[(static_cast<int64_t>(ch) * out_h + v) * out_w + u] = val;
      }
    }
  return dst;
}

}  // namespace detail

/// Rotation by angle_deg and isotropic scaling by `scale` in ONE bilinear resampling (two successive
/// interpolations would blur thin defects such as cracks), onto the canvas ceil(scale * rotated box).
inline Tensor<float, Cpu> rotate_scale_bound(const Tensor<float, Cpu>& src_in, double angle_deg, double scale,
                                             float border = 0.0f) {
  const auto src = detail::plane_arg(src_in, "rotate_scale_bound");
  check(scale > 0.0 && std::isfinite(scale), "rotate_scale_bound: scale must be positive, got ", scale);
  const auto [cs, sn] = detail::cos_sin_deg(angle_deg);
  const auto [oh, ow] = detail::rotated_size(static_cast<int>(src.dim(2)), static_cast<int>(src.dim(3)), cs, sn, scale);
  return detail::warp_centred(src, cs, sn, oh, ow, 1.0 / scale, 1.0 / scale, border);
}

/// Rotates every channel by angle_deg about the image centre, counter-clockwise as displayed (cv2's sign:
/// getRotationMatrix2D(centre, angle, 1)), onto a canvas enlarged to the rotated bounding box,
/// ceil(h|cos| + w|sin|) rows by ceil(h|sin| + w|cos|) columns, so nothing is cut off. Bilinear sampling; pixels
/// that come from outside the source get `border` (0 = black for masks, -1 = black for images in [-1, 1]).
/// Differences from the official warpAnomaly: it rotates about (w/2, h/2) and truncates the canvas size with
/// int(); here both canvases use their geometric centre ((n-1)/2), so multiples of 90 degrees are exact pixel
/// permutations (+90 is np.rot90).
inline Tensor<float, Cpu> rotate_bound(const Tensor<float, Cpu>& src_in, double angle_deg, float border = 0.0f) {
  return rotate_scale_bound(src_in, angle_deg, 1.0, border);
}

/// Rotation onto the enlarged canvas, then that canvas stretched to exactly out_h x out_w, in one resampling
/// (the official training code's rotate-then-cv2.resize with an arbitrary dsize).
inline Tensor<float, Cpu> rotate_resize_bound(const Tensor<float, Cpu>& src_in, double angle_deg, int out_h, int out_w,
                                              float border = 0.0f) {
  const auto src = detail::plane_arg(src_in, "rotate_resize_bound");
  check(out_h > 0 && out_w > 0, "rotate_resize_bound: output size must be positive, got ", out_h, "x", out_w);
  const auto [cs, sn] = detail::cos_sin_deg(angle_deg);
  const auto [nh, nw] = detail::rotated_size(static_cast<int>(src.dim(2)), static_cast<int>(src.dim(3)), cs, sn);
  // cv2.resize's half-pixel mapping, (d + 0.5) * n / out - 0.5, is the centred map with factor n / out.
  return detail::warp_centred(src, cs, sn, out_h, out_w, static_cast<double>(nh) / out_h,
                              static_cast<double>(nw) / out_w, border);
}

// ---- masks: binarisation, boxes, morphology -------------------------------------------------------------------

/// 1 where the value is > threshold, else 0 (cv2 THRESH_BINARY with maxval 1), every channel.
inline Tensor<float, Cpu> binarise(const Tensor<float, Cpu>& t_in, float threshold = 0.5f) {
  const auto t = t_in.contiguous();
  auto out = Tensor<float, Cpu>::empty(t.shape());
  for (int64_t i = 0; i < t.numel(); ++i) out.data()[i] = t.data()[i] > threshold ? 1.0f : 0.0f;
  return out;
}

/// Number of elements > threshold.
inline int64_t count_above(const Tensor<float, Cpu>& t_in, float threshold = 0.0f) {
  const auto t = t_in.contiguous();
  return std::count_if(t.data(), t.data() + t.numel(), [&](float v) { return v > threshold; });
}

/// A pixel rectangle: rows [y0, y1), columns [x0, x1) (end-exclusive, the last defect row/column included,
/// unlike the official crop img[y0:y1] with y1 = the last defect row, which drops that row and column).
struct Box {
  int y0 = 0, x0 = 0, y1 = 0, x1 = 0;
  int height() const noexcept { return y1 - y0; }
  int width() const noexcept { return x1 - x0; }
  bool empty() const noexcept { return y1 <= y0 || x1 <= x0; }
};

/// The smallest box holding every pixel where some channel is > threshold; empty (all zero) if there is none.
inline Box bounding_box(const Tensor<float, Cpu>& t_in, float threshold = 0.0f) {
  const auto t = detail::plane_arg(t_in, "bounding_box");
  const int c = static_cast<int>(t.dim(1)), h = static_cast<int>(t.dim(2)), w = static_cast<int>(t.dim(3));
  Box b{h, w, -1, -1};
  for (int ch = 0; ch < c; ++ch)
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        if (t.data()[(static_cast<int64_t>(ch) * h + y) * w + x] > threshold) {
          b.y0 = std::min(b.y0, y), b.x0 = std::min(b.x0, x);
          b.y1 = std::max(b.y1, y + 1), b.x1 = std::max(b.x1, x + 1);
        }
  if (b.y1 < 0) return Box{};
  return b;
}

/// A contiguous copy of the box region of every channel.
inline Tensor<float, Cpu> crop(const Tensor<float, Cpu>& t, const Box& b) {
  check<ShapeError>(t.rank() == 4, "crop: expected [1, C, H, W], got ", t.shape().str());
  check(!b.empty() && b.y0 >= 0 && b.x0 >= 0 && b.y1 <= t.dim(2) && b.x1 <= t.dim(3), "crop: box [", b.y0, ":", b.y1,
        ", ", b.x0, ":", b.x1, "] is empty or outside ", t.shape().str());
  return t.narrow(2, b.y0, b.height()).narrow(3, b.x0, b.width()).clone();
}

namespace detail {
/// Separable k x k max (dilate) or min (erode) filter over every channel. The window of output x is
/// [x - k/2, x - k/2 + k - 1] (cv2's default anchor); pixels outside the image are ignored, which is what
/// cv2's default border value for dilate (-inf) and erode (+inf) amounts to.
template <bool kMax>
Tensor<float, Cpu> square_filter(const Tensor<float, Cpu>& src_in, int k, const char* what) {
  const auto src = plane_arg(src_in, what);
  check(k >= 1, what, ": kernel size must be >= 1, got ", k);
  if (k == 1) return src.clone();
  const int c = static_cast<int>(src.dim(1)), h = static_cast<int>(src.dim(2)), w = static_cast<int>(src.dim(3));
  const int anchor = k / 2;
  auto pick = [](float a, float b) { return kMax ? std::max(a, b) : std::min(a, b); };
  auto tmp = Tensor<float, Cpu>::empty(src.shape()), dst = Tensor<float, Cpu>::empty(src.shape());
  for (int ch = 0; ch < c; ++ch) {
    const int64_t off = static_cast<int64_t>(ch) * h * w;
    const float* s = src.data() + off;
    float* t = tmp.data() + off;
    float* d = dst.data() + off;
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const int lo = std::max(0, x - anchor), hi = std::min(w - 1, x - anchor + k - 1);
        float v = s[static_cast<int64_t>(y) * w + lo];
        for (int i = lo + 1; i <= hi; ++i) v = pick(v, s[static_cast<int64_t>(y) * w + i]);
        t[static_cast<int64_t>(y) * w + x] = v;
      }
    for (int y = 0; y < h; ++y) {
      const int lo = std::max(0, y - anchor), hi = std::min(h - 1, y - anchor + k - 1);
      for (int x = 0; x < w; ++x) {
        float v = t[static_cast<int64_t>(lo) * w + x];
        for (int i = lo + 1; i <= hi; ++i) v = pick(v, t[static_cast<int64_t>(i) * w + x]);
        d[static_cast<int64_t>(y) * w + x] = v;
      }
    }
  }
  return dst;
}
}  // namespace detail

/// Dilation with a k x k square of ones (cv2.dilate(m, np.ones((k, k)))). Binary in, binary out.
inline Tensor<float, Cpu> dilate(const Tensor<float, Cpu>& m, int k) { return detail::square_filter<true>(m, k, "dilate"); }
/// Erosion with a k x k square (cv2.erode); the image border does not erode.
inline Tensor<float, Cpu> erode(const Tensor<float, Cpu>& m, int k) { return detail::square_filter<false>(m, k, "erode"); }
/// Closing (dilate, then erode) with a k x k square: cv2.morphologyEx(m, MORPH_CLOSE, np.ones((k, k))).
inline Tensor<float, Cpu> morph_close(const Tensor<float, Cpu>& m, int k) { return erode(dilate(m, k), k); }

// ---- Otsu -----------------------------------------------------------------------------------------------------

/// Otsu's threshold of a 256-bin histogram, computed exactly as cv2 (getThreshVal_Otsu_8u): the first t that
/// maximises the between-class variance of {<= t} vs {> t}. Pixels are then foreground where value > t.
/// A histogram with a single occupied bin gives 0.
inline int otsu_threshold(const std::array<uint64_t, 256>& hist) {
  uint64_t n = 0;
  for (uint64_t v : hist) n += v;
  check(n > 0, "otsu_threshold: empty histogram");
  const double scale = 1.0 / static_cast<double>(n);
  double mu = 0.0;
  for (int i = 0; i < 256; ++i) mu += i * static_cast<double>(hist[static_cast<std::size_t>(i)]);
  mu *= scale;
  double mu1 = 0.0, q1 = 0.0, max_sigma = 0.0;
  int best = 0;
  constexpr double kEps = 1.1920928955078125e-07;  // FLT_EPSILON, as cv2
  for (int i = 0; i < 256; ++i) {
    const double p = static_cast<double>(hist[static_cast<std::size_t>(i)]) * scale;
    mu1 *= q1;
    q1 += p;
    const double q2 = 1.0 - q1;
    if (std::min(q1, q2) < kEps || std::max(q1, q2) > 1.0 - kEps) continue;
    mu1 = (mu1 + i * p) / q1;
    const double mu2 = (mu - q1 * mu1) / q2;
    const double sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2);
    if (sigma > max_sigma) max_sigma = sigma, best = i;
  }
  return best;
}

/// Otsu's threshold of a 1-channel 8-bit image.
inline int otsu_threshold(const Image& gray) {
  check<ShapeError>(gray.channels == 1, "otsu_threshold: expected a 1-channel image, got ", gray.channels, " channels");
  std::array<uint64_t, 256> hist{};
  for (uint8_t v : gray.pixels) ++hist[v];
  return otsu_threshold(hist);
}

// ---- conversions between 8-bit images and float planes --------------------------------------------------------

/// [1, 1, H, W] mask -> 1-channel image, 255 where the value is > threshold, else 0.
inline Image mask_to_image(const Tensor<float, Cpu>& m_in, float threshold = 0.5f) {
  const auto m = detail::mask_arg(m_in, "mask_to_image");
  Image img{static_cast<int>(m.dim(3)), static_cast<int>(m.dim(2)), 1, std::vector<uint8_t>(static_cast<std::size_t>(m.numel()))};
  for (int64_t i = 0; i < m.numel(); ++i) img.pixels[static_cast<std::size_t>(i)] = m.data()[i] > threshold ? 255 : 0;
  return img;
}

/// 1-channel image -> [1, 1, H, W] mask: 1 where the value is > threshold (cv2 THRESH_BINARY), else 0.
inline Tensor<float, Cpu> image_to_mask(const Image& gray, int threshold = 127) {
  check<ShapeError>(gray.channels == 1, "image_to_mask: expected a 1-channel image, got ", gray.channels, " channels");
  auto m = Tensor<float, Cpu>::empty({1, 1, gray.height, gray.width});
  for (std::size_t i = 0; i < gray.pixels.size(); ++i) m.data()[i] = gray.pixels[i] > threshold ? 1.0f : 0.0f;
  return m;
}

}  // namespace adabldm::defect
