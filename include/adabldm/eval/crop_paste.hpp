#pragma once
// The classic baseline generator: cut a real defect out by its mask and paste it onto a defect-free image, with the
// library's mask synthesis (random rotation and scale, placed inside the foreground) and soft edges: inside the
// pasted mask the defect is blended with the good image by the box-blurred mask, so no hard seam marks where it was
// pasted; outside the mask (the label) nothing changes.
#include <string>
#include <vector>

#include "adabldm/core/rng.hpp"
#include "adabldm/defect/mask_synthesis.hpp"
#include "adabldm/eval/train_detector.hpp"

namespace adabldm::eval {

namespace detail {
/// Mean over a (2r + 1)^2 window (clamped at the borders) of a [1, 1, H, W] map.
inline Tensor<float, Cpu> box_blur(const Tensor<float, Cpu>& m, int r) {
  const int64_t H = m.dim(2), W = m.dim(3);
  auto out = Tensor<float, Cpu>::empty(m.shape());
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x) {
      double s = 0;
      int n = 0;
      for (int64_t yy = std::max<int64_t>(0, y - r); yy <= std::min(H - 1, y + r); ++yy)
        for (int64_t xx = std::max<int64_t>(0, x - r); xx <= std::min(W - 1, x + r); ++xx, ++n) s += m.data()[yy * W + xx];
      out.data()[y * W + x] = static_cast<float>(s / n);
    }
  return out;
}
}  // namespace detail

struct CropPasteOptions {
  defect::SynthesisOptions synthesis;  // rotation, scale, placement
  int edge_radius = 1;                 // soft-edge box blur radius in pixels (0: hard paste)
};

/// One crop & paste sample: defect `source` (image [C, S, S], mask [1, S, S]) pasted onto `good` ([C, S, S]) inside
/// `foreground` ([1, 1, S, S], 1 = object). Returns the composite and its label.
inline SegSample crop_paste(const SegSample& good, const SegSample& source, const Tensor<float, Cpu>& foreground,
                            Rng& rng, const CropPasteOptions& o = {}, const std::string& source_name = "defect") {
  const int64_t C = good.image.dim(0), S = good.image.dim(1);
  const auto as4 = [](const Tensor<float, Cpu>& t) { return t.reshape({1, t.dim(0), t.dim(1), t.dim(2)}); };
  const auto pair = defect::synthesize_training_pair(as4(good.image), as4(source.image), as4(source.mask), foreground, rng,
                                                     o.synthesis, source_name);
  const Tensor<float, Cpu> alpha = o.edge_radius > 0 ? detail::box_blur(pair.mask, o.edge_radius) : pair.mask;
  SegSample out{good.image.clone(), pair.mask.reshape({1, S, S}).clone()};
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < S * S; ++i) {
      const float a = pair.mask.data()[i] >= 0.5f ? alpha.data()[i] : 0.0f;
      float& v = out.image.data()[c * S * S + i];
      v = (1.0f - a) * v + a * pair.image.data()[c * S * S + i];
    }
  return out;
}

}  // namespace adabldm::eval
