#pragma once
// Connected regions of a binary mask ([1, 1, H, W], a pixel is set when >= 0.5): labelling, the largest region,
// and filling the holes (regions of unset pixels that do not touch the image border) a rule accepts.
// 4-connectivity throughout, so that a hole and the outside never meet across a diagonal.
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "adabldm/core/tensor.hpp"
#include "adabldm/defect/imgproc.hpp"

namespace adabldm::defect {

/// One 4-connected region: its pixel indices (y * W + x) and whether it touches the image border.
struct MaskRegion {
  std::vector<int64_t> pixels;
  bool touches_border = false;
};

/// The 4-connected regions of the pixels whose state (set or unset) is `set`.
inline std::vector<MaskRegion> mask_regions(const Tensor<float, Cpu>& mask_in, bool set) {
  const auto m = detail::mask_arg(mask_in, "mask_regions");
  const int h = static_cast<int>(m.dim(2)), w = static_cast<int>(m.dim(3));
  auto on = [&](int64_t i) { return (m.data()[i] >= 0.5f) == set; };
  std::vector<uint8_t> seen(static_cast<std::size_t>(m.numel()), 0);
  std::vector<MaskRegion> out;
  std::vector<int64_t> stack;
  for (int64_t start = 0; start < m.numel(); ++start) {
    if (seen[static_cast<std::size_t>(start)] || !on(start)) continue;
    MaskRegion r;
    seen[static_cast<std::size_t>(start)] = 1;
    stack.assign(1, start);
    while (!stack.empty()) {
      const int64_t i = stack.back();
      stack.pop_back();
      r.pixels.push_back(i);
      const int y = static_cast<int>(i / w), x = static_cast<int>(i % w);
      r.touches_border = r.touches_border || y == 0 || x == 0 || y == h - 1 || x == w - 1;
      const std::pair<int, int> next[4] = {{y - 1, x}, {y + 1, x}, {y, x - 1}, {y, x + 1}};
      for (const auto& [ny, nx] : next) {
        if (ny < 0 || nx < 0 || ny >= h || nx >= w) continue;
        const int64_t j = static_cast<int64_t>(ny) * w + nx;
        if (seen[static_cast<std::size_t>(j)] || !on(j)) continue;
        seen[static_cast<std::size_t>(j)] = 1;
        stack.push_back(j);
      }
    }
    out.push_back(std::move(r));
  }
  return out;
}

/// The mask reduced to its largest set region (all zero when nothing is set).
inline Tensor<float, Cpu> largest_region(const Tensor<float, Cpu>& mask) {
  const auto regions = mask_regions(mask, true);
  auto out = Tensor<float, Cpu>::full(mask.shape(), 0.0f);
  const MaskRegion* best = nullptr;
  for (const auto& r : regions)
    if (!best || r.pixels.size() > best->pixels.size()) best = &r;
  if (best)
    for (int64_t i : best->pixels) out.data()[i] = 1.0f;
  return out;
}

/// The mask with every hole (an unset region not touching the border) set where fill(hole) is true.
inline Tensor<float, Cpu> fill_holes(const Tensor<float, Cpu>& mask, const std::function<bool(const MaskRegion&)>& fill) {
  auto out = detail::mask_arg(mask, "fill_holes").clone();
  for (const auto& r : mask_regions(out, false))
    if (!r.touches_border && fill(r))
      for (int64_t i : r.pixels) out.data()[i] = 1.0f;
  return out;
}

}  // namespace adabldm::defect
