#pragma once
// Generated look-alikes of the MPDD metal plates (docs/foreground.md), for tests that may not ship the real
// photographs: a blue painted plate, rotated, with two notched corners and a round hanging hole, on a grey
// gradient wall, hanging on a grey wire, with a bright glare streak across the paint. The exact foreground comes
// with it: the plate minus the hole and the notches (the glare is plate, the wire over the wall is not).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "adabldm/core/rng.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/io/image.hpp"

namespace lookalike {

struct Plate {
  adabldm::Image image;          ///< RGB, size x size
  adabldm::Tensor<float> mask;   ///< [1, 1, size, size] in {0, 1}: the plate's foreground
};

/// One look-alike; every choice (angle, size, position, colours, glare) drawn from `seed`.
inline Plate make_plate(int size, uint64_t seed) {
  adabldm::Rng rng(seed);
  const double S = size, angle = rng.uniform(-0.6, 0.6);  // about +-35 degrees
  const double half_w = S * rng.uniform(0.22, 0.32), half_h = S * rng.uniform(0.18, 0.27);
  const double cx = S * (0.5 + rng.uniform(-0.05, 0.05)), cy = S * (0.52 + rng.uniform(-0.05, 0.05));
  const double hole_r = S * rng.uniform(0.05, 0.075), notch_r = S * rng.uniform(0.03, 0.045);
  const double hole_y = -0.35 * half_h;  // plate coordinates: the hole above the centre
  const double paint[3] = {rng.uniform(10, 40), rng.uniform(40, 80), rng.uniform(140, 200)};
  const double wall = rng.uniform(150, 190), wall_slope = rng.uniform(-40, 40);
  const double glare_u = rng.uniform(-0.5, 0.5) * half_w, glare_slope = rng.uniform(-0.8, 0.8);
  const double glare_width = S * rng.uniform(0.02, 0.04), glare_v = rng.uniform(-0.4, 0.4) * half_h;
  const double cs = std::cos(angle), sn = std::sin(angle);
  const double top_x = cx - sn * (-half_h), wire_w = std::max(1.0, S / 128.0);

  Plate p{adabldm::Image{size, size, 3, std::vector<uint8_t>(static_cast<std::size_t>(size) * size * 3)},
          adabldm::Tensor<float>::zeros({1, 1, size, size})};
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      const double px = x + 0.5 - cx, py = y + 0.5 - cy;
      const double u = cs * px + sn * py, v = -sn * px + cs * py;  // plate coordinates
      const bool in_rect = std::fabs(u) <= half_w && std::fabs(v) <= half_h;
      const bool in_hole = std::hypot(u, v - hole_y) <= hole_r;
      const bool in_notch = std::hypot(u + half_w, v + half_h) <= notch_r || std::hypot(u - half_w, v - half_h) <= notch_r;
      const bool plate = in_rect && !in_hole && !in_notch;
      double rgb[3];
      if (plate) {
        const double grain = rng.uniform(-10, 10);
        // A streak of light across part of the plate, as on the real plates (it never cuts one in two).
        const double glare = 0.8 * std::exp(-std::pow((u - glare_u - glare_slope * v) / glare_width, 2)) *
                             std::exp(-std::pow((v - glare_v) / (0.45 * half_h), 2));
        const double white[3] = {205, 220, 250};
        for (int c = 0; c < 3; ++c) rgb[c] = (1 - glare) * (paint[c] + grain) + glare * white[c];
      } else {
        const double g = wall + wall_slope * (x / S - 0.5) + rng.uniform(-3, 3);
        const bool wire = y + 0.5 < cy && std::fabs(x + 0.5 - top_x) <= wire_w;
        for (double& c : rgb) c = wire ? 105 : g;
        rgb[2] += wire ? 0 : 2;  // the wall is a faintly bluish grey
      }
      for (int c = 0; c < 3; ++c) p.image.at(y, x, c) = static_cast<uint8_t>(std::clamp(std::lround(rgb[c]), 0L, 255L));
      p.mask.data()[static_cast<int64_t>(y) * size + x] = plate ? 1.0f : 0.0f;
    }
  return p;
}

/// Intersection over union of two masks of one size (pixels >= 0.5).
inline double iou(const adabldm::Tensor<float>& a_in, const adabldm::Tensor<float>& b_in) {
  const auto a = a_in.contiguous(), b = b_in.contiguous();
  double inter = 0, uni = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const bool x = a.data()[i] >= 0.5f, y = b.data()[i] >= 0.5f;
    inter += x && y, uni += x || y;
  }
  return uni > 0 ? inter / uni : 1.0;
}

}  // namespace lookalike
