#pragma once
// 2-D convolution (PyTorch nn.Conv2d semantics, groups = 1) as im2col + GEMM, with a direct GEMM for 1x1
// stride-1 convolutions. im2col is done in bands of output rows so its buffer stays small at any image size.
// Backward: dW = dY @ col^T over the same bands, dX = col2im(W^T @ dY), db = the sums of dY.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "adabldm/core/autograd_record.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"
#include "adabldm/ops/conv_direct.hpp"
#include "adabldm/ops/matmul.hpp"

namespace adabldm::ops {

/// Stride and zero padding of a convolution. Padding may differ per side (the VAE encoder pads right/bottom).
struct Conv2dParams {
  int stride = 1;
  int pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  static Conv2dParams same(int pad, int stride = 1) { return {stride, pad, pad, pad, pad}; }
};

namespace detail {
inline int64_t conv_out_size(int64_t in, int k, int pad_lo, int pad_hi, int stride) {
  return (in + pad_lo + pad_hi - k) / stride + 1;
}

/// Writes the im2col matrix of output rows [oy0, oy1) of one image: col[(c*kh + ky)*kw + kx][(oy-oy0)*Wo + ox],
/// rows ld apart (0: packed, (oy1 - oy0) * Wo; larger when several images sit side by side).
template <class T>
void im2col_band(const T* x, int64_t C, int64_t H, int64_t W, int kh, int kw, const Conv2dParams& p, int64_t Wo,
                 int64_t oy0, int64_t oy1, T* col, int64_t ld = 0) {
  const int64_t cols = (oy1 - oy0) * Wo;
  if (ld == 0) ld = cols;
  parallel_for(C * kh * kw, [&](int64_t row) {
    const int64_t c = row / (kh * kw);
    const int ky = static_cast<int>(row / kw % kh), kx = static_cast<int>(row % kw);
    T* dst = col + row * ld;
    const T* src = x + c * H * W;
    for (int64_t oy = oy0; oy < oy1; ++oy) {
      const int64_t iy = oy * p.stride - p.pad_top + ky;
      T* d = dst + (oy - oy0) * Wo;
      if (iy < 0 || iy >= H) {
        std::fill(d, d + Wo, T(0));
        continue;
      }
      const T* s = src + iy * W;
      if (p.stride == 1) {
        // ix = ox - pad_left + kx: valid for ox in [lo, hi)
        const int64_t lo = std::clamp<int64_t>(p.pad_left - kx, 0, Wo), hi = std::clamp<int64_t>(W + p.pad_left - kx, lo, Wo);
        std::fill(d, d + lo, T(0));
        std::copy(s + lo - p.pad_left + kx, s + hi - p.pad_left + kx, d + lo);
        std::fill(d + hi, d + Wo, T(0));
      } else {
        for (int64_t ox = 0; ox < Wo; ++ox) {
          const int64_t ix = ox * p.stride - p.pad_left + kx;
          d[ox] = (ix >= 0 && ix < W) ? s[ix] : T(0);
        }
      }
    }
  }, grain_for(cols));
}

/// The adjoint of im2col_band: adds col[(c*kh + ky)*kw + kx][(oy-oy0)*Wo + ox] into dx[c, iy, ix]. Split over
/// channels, so every dx element is written by one thread in a fixed order.
template <class T>
void col2im_band(const T* col, int64_t C, int64_t H, int64_t W, int kh, int kw, const Conv2dParams& p, int64_t Wo,
                 int64_t oy0, int64_t oy1, T* dx) {
  const int64_t cols = (oy1 - oy0) * Wo;
  parallel_for(C, [&](int64_t c) {
    T* dst = dx + c * H * W;
    for (int ky = 0; ky < kh; ++ky)
      for (int kx = 0; kx < kw; ++kx) {
        const T* src = col + ((c * kh + ky) * kw + kx) * cols;
        for (int64_t oy = oy0; oy < oy1; ++oy) {
          const int64_t iy = oy * p.stride - p.pad_top + ky;
          if (iy < 0 || iy >= H) continue;
          const T* s = src + (oy - oy0) * Wo;
          T* d = dst + iy * W;
          if (p.stride == 1) {  // ix = ox - pad_left + kx: a contiguous range, no test per element
            const int64_t lo = std::clamp<int64_t>(p.pad_left - kx, 0, Wo), hi = std::clamp<int64_t>(W + p.pad_left - kx, lo, Wo);
            T* dd = d - p.pad_left + kx;
            for (int64_t ox = lo; ox < hi; ++ox) dd[ox] += s[ox];
            continue;
          }
          for (int64_t ox = 0; ox < Wo; ++ox) {
            const int64_t ix = ox * p.stride - p.pad_left + kx;
            if (ix >= 0 && ix < W) d[ix] += s[ox];
          }
        }
      }
  }, grain_for(kh * kw * cols));
}

/// Whether the direct 3x3 kernel (conv_direct.hpp) computes this convolution: 3x3, stride 1, padding 1, f32,
/// AVX-512, at most kDirectConvMaxInputs input channels (beyond that one block's packed weights outgrow the L1
/// cache and im2col + GEMM is as fast), and not switched off (use_direct_conv3x3, for tests and benchmarks).
inline bool& use_direct_conv3x3() {
  static bool on = true;
  return on;
}
inline constexpr int64_t kDirectConvMaxInputs = 160;
template <class T>
bool is_direct3x3(int64_t inputs, int kh, int kw, const Conv2dParams& p) {
  // With bfloat16 products asked for (gemm_bf16.hpp), every convolution takes them: im2col + GEMM.
  return std::is_same_v<T, float> && kHasDirectConv3x3 && use_direct_conv3x3() && !use_bf16_gemm() &&
         inputs <= kDirectConvMaxInputs &&
         kh == 3 && kw == 3 &&
         p.stride == 1 && p.pad_top == 1 && p.pad_bottom == 1 && p.pad_left == 1 && p.pad_right == 1;
}

inline bool is_pointwise(int kh, int kw, const Conv2dParams& p) {
  return kh == 1 && kw == 1 && p.stride == 1 && p.pad_top == 0 && p.pad_bottom == 0 && p.pad_left == 0 &&
         p.pad_right == 0;
}
/// Output rows per im2col band: about 2048 output positions per band (8 GEMM blocks of 256 columns, so the
/// threads stay balanced), fewer when the column buffer would pass 32 MB.
inline constexpr int64_t kBandPositions = 2048, kBandBytes = int64_t{32} << 20;
template <class T>
int64_t band_rows(int64_t Kdim, int64_t Wo, int64_t Ho) {
  const int64_t by_width = (kBandPositions + Wo - 1) / std::max<int64_t>(1, Wo);
  const int64_t by_memory = kBandBytes / static_cast<int64_t>(sizeof(T)) / std::max<int64_t>(1, Kdim * Wo);
  return std::clamp<int64_t>(std::min(by_width, by_memory), 1, Ho);
}

/// Images per GEMM in conv2d's forward: small images (a whole image in one band) go side by side in one product,
/// up to the same band budget, so the weights are read once per group instead of once per image (at 256 px an
/// SD UNet step streams its convolution weights from memory once instead of twice for CFG's batch of 2).
template <class T>
int64_t images_per_gemm(int64_t Kdim, int64_t HWo, int64_t N) {
  const int64_t by_width = kBandPositions / std::max<int64_t>(1, HWo);
  const int64_t by_memory = kBandBytes / static_cast<int64_t>(sizeof(T)) / std::max<int64_t>(1, Kdim * HWo);
  return std::max<int64_t>(1, std::min({by_width, by_memory, N}));
}
}  // namespace detail

/// The gradients of conv2d given dy [N, O, Ho, Wo]: dx (when x_shape is wanted: need_dx), dw and db (when
/// wanted). x is needed only for dw, w only for dx. Outputs that are not wanted stay undefined.
template <class T>
void conv2d_backward(const Tensor<T, Cpu>& dy, const Tensor<T, Cpu>& x, const Tensor<T, Cpu>& w, const Shape& x_shape,
                     const Shape& w_shape, const Conv2dParams& p, bool need_dx, bool need_dw, bool need_db,
                     Tensor<T, Cpu>& dx, Tensor<T, Cpu>& dw, Tensor<T, Cpu>& db) {
  const int64_t N = x_shape[0], C = x_shape[1], H = x_shape[2], W = x_shape[3], O = w_shape[0];
  const int kh = static_cast<int>(w_shape[2]), kw = static_cast<int>(w_shape[3]);
  const int64_t Ho = dy.dim(2), Wo = dy.dim(3), HWo = Ho * Wo, Kdim = C * kh * kw;
  if (need_db) {
    db = Tensor<T, Cpu>::zeros({O});
    T* b = db.data();
    parallel_for(O, [&](int64_t o) {
      T s = 0;
      for (int64_t n = 0; n < N; ++n) {
        const T* g = dy.data() + (n * O + o) * HWo;
        for (int64_t i = 0; i < HWo; ++i) s += g[i];
      }
      b[o] = s;
    }, grain_for(N * HWo));
  }
  if (!need_dx && !need_dw) return;
  if (need_dx && detail::is_direct3x3<T>(O, kh, kw, p)) {  // dX = dY convolved with W flipped and transposed
    if constexpr (std::is_same_v<T, float>) {
      dx = Tensor<T, Cpu>::empty(x_shape);
      detail::conv3x3_direct(dy.data(), N, O, Ho, Wo, w.data(), C, nullptr, dx.data(), true);
    }
    need_dx = false;
    if (!need_dw) return;
  }
  if (need_dx) dx = Tensor<T, Cpu>::zeros(x_shape);
  if (need_dw) dw = Tensor<T, Cpu>::zeros(w_shape);
  const bool pointwise = detail::is_pointwise(kh, kw, p);
  const int64_t band = detail::band_rows<T>(Kdim, Wo, Ho);
  // Work buffers from the host buffer cache (Tensor::empty): no zeroing, no fresh pages per call.
  auto col = Tensor<T, Cpu>::empty({pointwise || !need_dw ? 0 : Kdim * band * Wo});
  auto dcol = Tensor<T, Cpu>::empty({pointwise || !need_dx ? 0 : Kdim * band * Wo});
  for (int64_t n = 0; n < N; ++n) {
    const T* gn = dy.data() + n * O * HWo;
    if (pointwise) {
      if (need_dw) gemm<T>(false, true, O, C, HWo, T(1), gn, HWo, x.data() + n * C * H * W, HWo, T(1), dw.data(), C);
      if (need_dx) gemm<T>(true, false, C, HWo, O, T(1), w.data(), C, gn, HWo, T(0), dx.data() + n * C * H * W, HWo);
      continue;
    }
    for (int64_t oy0 = 0; oy0 < Ho; oy0 += band) {
      const int64_t oy1 = std::min(Ho, oy0 + band), cols = (oy1 - oy0) * Wo;
      if (need_dw) {
        detail::im2col_band(x.data() + n * C * H * W, C, H, W, kh, kw, p, Wo, oy0, oy1, col.data());
        gemm<T>(false, true, O, Kdim, cols, T(1), gn + oy0 * Wo, HWo, col.data(), cols, T(1), dw.data(), Kdim);
      }
      if (need_dx) {
        gemm<T>(true, false, Kdim, cols, O, T(1), w.data(), Kdim, gn + oy0 * Wo, HWo, T(0), dcol.data(), cols);
        detail::col2im_band(dcol.data(), C, H, W, kh, kw, p, Wo, oy0, oy1, dx.data() + n * C * H * W);
      }
    }
  }
}

/// x[N, C, H, W] * weight[O, C, kh, kw] (+ bias[O]) -> [N, O, Ho, Wo]. bias may be undefined.
template <class T>
Tensor<T, Cpu> conv2d(const Tensor<T, Cpu>& x_in, const Tensor<T, Cpu>& weight_in, const Tensor<T, Cpu>& bias,
                      const Conv2dParams& p) {
  check<ShapeError>(x_in.rank() == 4, "conv2d: input must be [N, C, H, W], got ", x_in.shape().str());
  check<ShapeError>(weight_in.rank() == 4, "conv2d: weight must be [O, C, kh, kw], got ", weight_in.shape().str());
  check<ShapeError>(x_in.dim(1) == weight_in.dim(1), "conv2d: input ", x_in.shape().str(), " has ", x_in.dim(1),
                    " channels, weight ", weight_in.shape().str(), " expects ", weight_in.dim(1));
  check<ShapeError>(p.stride >= 1 && p.pad_top >= 0 && p.pad_bottom >= 0 && p.pad_left >= 0 && p.pad_right >= 0,
                    "conv2d: stride must be >= 1 and padding >= 0");
  const auto x = x_in.contiguous();
  const auto w = weight_in.contiguous();
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3), O = w.dim(0);
  const int kh = static_cast<int>(w.dim(2)), kw = static_cast<int>(w.dim(3));
  const int64_t Ho = detail::conv_out_size(H, kh, p.pad_top, p.pad_bottom, p.stride);
  const int64_t Wo = detail::conv_out_size(W, kw, p.pad_left, p.pad_right, p.stride);
  check<ShapeError>(Ho > 0 && Wo > 0, "conv2d: kernel ", kh, "x", kw, " larger than padded input ",
                    x.shape().str());
  auto out = Tensor<T, Cpu>::empty({N, O, Ho, Wo});
  const int64_t HWo = Ho * Wo, Kdim = C * kh * kw;
  if (bias.defined())
    check<ShapeError>(bias.numel() == O, "conv2d: bias ", bias.shape().str(), " does not match ", O, " outputs");

  if (detail::is_direct3x3<T>(C, kh, kw, p)) {
    if constexpr (std::is_same_v<T, float>)
      detail::conv3x3_direct(x.data(), N, C, H, W, w.data(), O, bias.defined() ? bias.data() : nullptr, out.data());
  } else {
    const bool pointwise = detail::is_pointwise(kh, kw, p);
    const int64_t band = detail::band_rows<T>(Kdim, Wo, Ho);
    const int64_t group = band == Ho ? detail::images_per_gemm<T>(Kdim, HWo, N) : 1;
    if (group > 1) {
      // Images [n0, n0 + g) side by side: col [Kdim, g * HWo] (for 1x1, the inputs themselves), one GEMM into
      // tmp [O, g * HWo], then each image's block of columns to its place in out.
      auto col = Tensor<T, Cpu>::empty({Kdim * group * HWo});
      auto tmp = Tensor<T, Cpu>::empty({O * group * HWo});
      for (int64_t n0 = 0; n0 < N; n0 += group) {
        const int64_t g = std::min(group, N - n0), cols = g * HWo;
        for (int64_t i = 0; i < g; ++i) {
          const T* xi = x.data() + (n0 + i) * C * H * W;
          if (pointwise)
            parallel_for(C, [&](int64_t c) { std::copy(xi + c * HWo, xi + (c + 1) * HWo, col.data() + c * cols + i * HWo); },
                         grain_for(HWo));
          else
            detail::im2col_band(xi, C, H, W, kh, kw, p, Wo, 0, Ho, col.data() + i * HWo, cols);
        }
        if (bias.defined())
          for (int64_t o = 0; o < O; ++o) std::fill(tmp.data() + o * cols, tmp.data() + (o + 1) * cols, bias.data()[o]);
        gemm<T>(false, false, O, cols, Kdim, T(1), w.data(), Kdim, col.data(), cols, bias.defined() ? T(1) : T(0),
                tmp.data(), cols);
        parallel_for(O, [&](int64_t o) {
          for (int64_t i = 0; i < g; ++i)
            std::copy(tmp.data() + o * cols + i * HWo, tmp.data() + o * cols + (i + 1) * HWo,
                      out.data() + ((n0 + i) * O + o) * HWo);
        }, grain_for(g * HWo));
      }
    }
    auto col = Tensor<T, Cpu>::empty({pointwise || group > 1 ? 0 : Kdim * band * Wo});
    for (int64_t n = 0; n < N && group == 1; ++n) {
      const T* xn = x.data() + n * C * H * W;
      T* on = out.data() + n * O * HWo;
      if (bias.defined())
        for (int64_t o = 0; o < O; ++o) std::fill(on + o * HWo, on + (o + 1) * HWo, bias.data()[o]);
      const T beta = bias.defined() ? T(1) : T(0);
      if (pointwise) {
        gemm<T>(false, false, O, HWo, C, T(1), w.data(), C, xn, HWo, beta, on, HWo);
        continue;
      }
      for (int64_t oy0 = 0; oy0 < Ho; oy0 += band) {
        const int64_t oy1 = std::min(Ho, oy0 + band), cols = (oy1 - oy0) * Wo;
        detail::im2col_band(xn, C, H, W, kh, kw, p, Wo, oy0, oy1, col.data());
        gemm<T>(false, false, O, cols, Kdim, T(1), w.data(), Kdim, col.data(), cols, beta, on + oy0 * Wo, HWo);
      }
    }
  }
  if (autograd::should_record(x, w, bias)) {
    // dW needs the input, dX the weight: save only what the wanted gradients need.
    autograd::record("conv2d", out, [sx = autograd::slot(x), sw = autograd::slot(w), sb = autograd::slot(bias), p,
                                     x_saved = w.requires_grad() ? x.detach() : Tensor<T, Cpu>{},
                                     w_saved = x.requires_grad() ? w.detach() : Tensor<T, Cpu>{}](const Tensor<T, Cpu>& g) {
      Tensor<T, Cpu> dx, dw, db;
      conv2d_backward(g, x_saved, w_saved, sx.shape(), sw ? sw.shape() : w_saved.shape(), p, bool(sx), bool(sw),
                      bool(sb), dx, dw, db);
      if (sx) sx.add(dx);
      if (sw) sw.add(dw);
      if (sb) sb.add(db.reshape(sb.shape()));
    });
  }
  return out;
}

}  // namespace adabldm::ops
