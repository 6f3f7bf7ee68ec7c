#pragma once
// The defect trimap Γ (method §2.1) and the masks derived from it for blending (§3.3).
//
// MASK POLARITY, used by the whole adabldm::defect namespace: 1 = defect = GENERATE, 0 = keep the OK image.
// The official code uses the opposite for its latent and pixel masks (m = 1 - mask/255, 1 = keep OK); use
// keep_mask() where a formula is written in that convention. A mask value counts as "on" when it is >= 0.5.
#include <cmath>

#include "adabldm/core/error.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/defect/imgproc.hpp"

namespace adabldm::defect {

/// Trimap levels (the paper's Γ; the official 8-bit map stores 0 / 127 / 255).
inline constexpr float kTrimapBackground = 0.0f;
inline constexpr float kTrimapForeground = 0.5f;
inline constexpr float kTrimapDefect = 1.0f;

/// Official threshold that recovers the defect from an 8-bit trimap ("values < 200 become 0").
inline constexpr float kTrimapDefectThreshold = 200.0f / 255.0f;

/// Γ = 1 on the defect, 0.5 on the foreground elsewhere, 0 on the background (the defect wins over F).
/// Both inputs are [1, 1, H, W] of the same size.
inline Tensor<float, Cpu> make_trimap(const Tensor<float, Cpu>& defect_mask, const Tensor<float, Cpu>& foreground) {
  const auto m = detail::mask_arg(defect_mask, "make_trimap (defect mask)");
  const auto f = detail::mask_arg(foreground, "make_trimap (foreground)");
  check<ShapeError>(m.shape() == f.shape(), "make_trimap: defect mask ", m.shape().str(), " and foreground ",
                    f.shape().str(), " differ in size");
  auto t = Tensor<float, Cpu>::empty(m.shape());
  for (int64_t i = 0; i < m.numel(); ++i)
    t.data()[i] = m.data()[i] >= 0.5f ? kTrimapDefect : f.data()[i] >= 0.5f ? kTrimapForeground : kTrimapBackground;
  return t;
}

/// The ControlNet hint: the trimap repeated in `channels` channels, [1, C, H, W] in [0, 1].
/// With official_8bit_levels (default) values are quantised as the official 8-bit trimap image divided by 255,
/// floor(v * 255) / 255, so the foreground 0.5 becomes 127/255 ≈ 0.498, the level the released ControlNet
/// weights were trained on; 0 and 1 are unchanged. Pass false to feed the paper's exact levels.
inline Tensor<float, Cpu> trimap_to_control(const Tensor<float, Cpu>& trimap, int channels = 3,
                                            bool official_8bit_levels = true) {
  const auto t = detail::mask_arg(trimap, "trimap_to_control");
  check(channels >= 1, "trimap_to_control: channels must be >= 1, got ", channels);
  const int64_t plane = t.numel();
  auto out = Tensor<float, Cpu>::empty({1, channels, t.dim(2), t.dim(3)});
  for (int64_t i = 0; i < plane; ++i) {
    float v = std::min(1.0f, std::max(0.0f, t.data()[i]));
    if (official_8bit_levels) v = std::floor(v * 255.0f + 1e-3f) / 255.0f;  // 1e-3: k/255 in float stays k
    for (int c = 0; c < channels; ++c) out.data()[c * plane + i] = v;
  }
  return out;
}

/// The defect part of a trimap: 1 where Γ >= 200/255 (the official threshold), else 0.
inline Tensor<float, Cpu> defect_from_trimap(const Tensor<float, Cpu>& trimap) {
  return binarise(detail::mask_arg(trimap, "defect_from_trimap"), kTrimapDefectThreshold - 1e-6f);
}

/// Pixel mask for the pixel-space blend and the decoder adaptation: the binarised defect mask, NOT dilated.
/// 1 = defect (generate), [1, 1, H, W].
inline Tensor<float, Cpu> pixel_mask(const Tensor<float, Cpu>& defect_mask) {
  return binarise(detail::mask_arg(defect_mask, "pixel_mask"), 0.5f - 1e-6f);
}

/// Latent mask for the latent-space blend: the defect mask nearest-resized to latent_h x latent_w (cv2
/// INTER_NEAREST), binarised, then dilated with a dilation x dilation square (official: 5, i.e. 2 latent
/// pixels, about 16 image pixels at f = 8). 1 = GENERATE inside the dilated defect, [1, 1, h, w].
/// How the pixel-resolution defect becomes latent-resolution: Nearest is the official code (cv2 INTER_NEAREST,
/// which can miss a thin defect entirely: a 1-2 px crack falls between the sampled pixels); Cover marks every
/// latent cell that contains any defect pixel, so no defect is ever lost (the default).
enum class LatentMaskResize { Cover, Nearest };

/// Max over the input cells each output cell covers ([1, 1, H, W] -> [1, 1, h, w]).
inline Tensor<float, Cpu> resize_cover(const Tensor<float, Cpu>& m_in, int out_h, int out_w) {
  const auto m = detail::mask_arg(m_in, "resize_cover");
  const int64_t H = m.dim(2), W = m.dim(3);
  check(out_h > 0 && out_w > 0, "resize_cover: size must be positive");
  auto out = Tensor<float, Cpu>::zeros({1, 1, out_h, out_w});
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x) {
      const float v = m.data()[y * W + x];
      if (v <= 0.0f) continue;
      // every output cell whose span [i*H/h, (i+1)*H/h) contains input row y
      const int64_t i0 = y * out_h / H, i1 = ((y + 1) * out_h - 1) / H;
      const int64_t j0 = x * out_w / W, j1 = ((x + 1) * out_w - 1) / W;
      for (int64_t i = i0; i <= i1; ++i)
        for (int64_t j = j0; j <= j1; ++j) out.data()[i * out_w + j] = std::max(out.data()[i * out_w + j], v);
    }
  return out;
}

inline Tensor<float, Cpu> latent_mask(const Tensor<float, Cpu>& defect_mask, int latent_h, int latent_w, int dilation = 5,
                                      LatentMaskResize resize = LatentMaskResize::Cover) {
  const auto m = detail::mask_arg(defect_mask, "latent_mask");
  check(dilation >= 1, "latent_mask: dilation must be >= 1 (1 = none), got ", dilation);
  const auto small = resize == LatentMaskResize::Cover ? resize_cover(m, latent_h, latent_w) : resize_nearest(m, latent_h, latent_w);
  return dilate(binarise(small, 0.5f - 1e-6f), dilation);
}

/// The complement 1 - m: converts between this library's polarity (1 = generate) and the official one
/// (1 = keep the OK image).
inline Tensor<float, Cpu> keep_mask(const Tensor<float, Cpu>& m_in) {
  const auto m = m_in.contiguous();
  auto out = Tensor<float, Cpu>::empty(m.shape());
  for (int64_t i = 0; i < m.numel(); ++i) out.data()[i] = 1.0f - m.data()[i];
  return out;
}

}  // namespace adabldm::defect
