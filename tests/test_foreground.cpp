// The foreground of objects (issue 22, docs/foreground.md): defect::fit_foregrounds on generated plate
// look-alikes (tests/plate_lookalike.hpp) with the embedded model's VAE, the refusal of textures, the clean-up
// rules, and the placement property: every synthesized defect lies inside the foreground it was placed in.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "adabldm/defect/foreground_fit.hpp"
#include "adabldm/defect/mask_synthesis.hpp"
#include "adabldm/models/loader.hpp"
#include "golden.hpp"
#include "plate_lookalike.hpp"

using namespace adabldm;

namespace {
const models::AutoencoderKL<float>& embedded_vae() {
  static const auto vae = models::load_vae<float>(models::ModelSource(golden::path("../../models/tile-64"), {}));
  return vae;
}
constexpr int kSize = 128;
constexpr int kPlates = 10;
std::vector<lookalike::Plate> plates() {
  std::vector<lookalike::Plate> out;
  for (int i = 0; i < kPlates; ++i) out.push_back(lookalike::make_plate(kSize, 100 + i));
  return out;
}
std::vector<Tensor<float>> images_of(const std::vector<lookalike::Plate>& ps) {
  std::vector<Tensor<float>> out;
  for (const auto& p : ps) out.push_back(image_to_tensor(p.image));
  return out;
}
defect::ForegroundFit fit_plates(defect::ForegroundRecipe recipe, uint64_t seed = 7) {
  Rng rng(seed);
  return defect::fit_foregrounds(embedded_vae(), images_of(plates()), rng, defect::foreground_settings(recipe));
}
/// The object recipe's fit on the look-alikes, computed once for the cases that use it.
const defect::ForegroundFit& object_fit() {
  static const auto fit = fit_plates(defect::ForegroundRecipe::Object);
  return fit;
}
}  // namespace

TEST_CASE("mask regions: largest region, holes filled by rule, 4-connectivity") {
  auto m = Tensor<float>::zeros({1, 1, 9, 9});
  auto set = [&](int y, int x) { m.data()[y * 9 + x] = 1.0f; };
  for (int y = 1; y < 6; ++y)
    for (int x = 1; x < 6; ++x)
      if (!(y == 3 && x == 3)) set(y, x);  // a 5 x 5 ring around one hole pixel
  set(7, 7);                               // a separate speck
  set(6, 6);                               // touches the ring only diagonally: its own region
  const auto regions = defect::mask_regions(m, true);
  CHECK(regions.size() == 3);
  const auto big = defect::largest_region(m);
  CHECK(defect::count_above(big, 0.5f) == 24);
  const auto filled = defect::fill_holes(big, [](const defect::MaskRegion& h) { return h.pixels.size() == 1; });
  CHECK(defect::count_above(filled, 0.5f) == 25);
  CHECK(defect::count_above(defect::fill_holes(big, [](const defect::MaskRegion&) { return false; }), 0.5f) == 24);
}

TEST_CASE("look-alike plates: the object recipe finds the plate, hole and notches excluded, glare included") {
  const auto ps = plates();
  const auto& fit = object_fit();
  double sum = 0, worst = 1;
  for (int i = 0; i < kPlates; ++i) {
    const double v = lookalike::iou(fit.masks[static_cast<std::size_t>(i)], ps[static_cast<std::size_t>(i)].mask);
    sum += v, worst = std::min(worst, v);
    CHECK(fit.masks[static_cast<std::size_t>(i)].shape() == Shape{1, 1, kSize, kSize});
    CHECK(fit.maps[static_cast<std::size_t>(i)].shape() == Shape{1, 1, kSize / 2, kSize / 2});
  }
  MESSAGE("object recipe on ", kPlates, " look-alikes at ", kSize, " px: mean IoU ", sum / kPlates, ", min ", worst);
  CHECK(sum / kPlates >= 0.94);
  CHECK(worst >= 0.92);
  CHECK(fit.border_fraction <= 0.01);
  // The hole is background: its centre pixel is outside every mask.
  for (int i = 0; i < kPlates; ++i) {
    const auto& mask = fit.masks[static_cast<std::size_t>(i)];
    int64_t outside_in_plate = 0;
    for (int64_t k = 0; k < mask.numel(); ++k)
      outside_in_plate += ps[static_cast<std::size_t>(i)].mask.data()[k] < 0.5f && mask.data()[k] >= 0.5f;
    CHECK(outside_in_plate < mask.numel() / 50);
  }
}

TEST_CASE("look-alike plates: the official recipe still runs; the same seed gives the same masks") {
  const auto a = fit_plates(defect::ForegroundRecipe::Official, 5), b = fit_plates(defect::ForegroundRecipe::Official, 5);
  const auto ps = plates();
  double sum = 0;
  for (int i = 0; i < kPlates; ++i) {
    const auto k = static_cast<std::size_t>(i);
    sum += lookalike::iou(a.masks[k], ps[k].mask);
    CHECK(lookalike::iou(a.masks[k], b.masks[k]) == 1.0);
    CHECK(a.maps[k].shape() == Shape{1, 1, kSize / 4, kSize / 4});
  }
  MESSAGE("official recipe on the look-alikes: mean IoU ", sum / kPlates);
  CHECK(sum / kPlates >= 0.87);
}

TEST_CASE("textures are refused, not cut into pieces: magnetic tiles and a generated grain") {
  std::vector<Tensor<float>> tiles;
  for (const char* f : {"magnetic-tile/ok/free_000.png", "magnetic-tile/ok/free_001.png"})
    tiles.push_back(defect::resize_bilinear(read_image(golden::path(f)), kSize, kSize));
  Rng grain_rng(3);
  for (int i = 0; i < 2; ++i) {  // vertical grinding marks with noise, like the tiles
    auto t = Tensor<float>::empty({1, 3, kSize, kSize});
    for (int y = 0; y < kSize; ++y)
      for (int x = 0; x < kSize; ++x) {
        const float v = static_cast<float>(0.3 * std::sin(x * 0.7 + i) + grain_rng.uniform(-0.3, 0.3) - 0.2);
        for (int c = 0; c < 3; ++c) t.data()[(c * kSize + y) * kSize + x] = v;
      }
    tiles.push_back(t);
  }
  for (const auto recipe : {defect::ForegroundRecipe::Object, defect::ForegroundRecipe::Official}) {
    Rng rng(1);
    CHECK_THROWS_WITH_AS(defect::fit_foregrounds(embedded_vae(), tiles, rng, defect::foreground_settings(recipe)),
                         doctest::Contains("look like a texture"), defect::ForegroundIsTexture);
  }
  // The measure behind it.
  CHECK(defect::border_foreground_fraction({defect::all_foreground(16, 16)}) == 1.0);
  CHECK(defect::border_foreground_fraction({Tensor<float>::zeros({1, 1, 16, 16})}) == 0.0);
}

TEST_CASE("placement: every synthesized defect lies inside the predicted foreground (400 draws, real masks)") {
  const auto& fit = object_fit();
  std::vector<defect::SourceMask> masks;
  for (const char* f : {"magnetic-tile/masks/blowhole_001.png", "magnetic-tile/masks/crack_000.png",
                        "magnetic-tile/masks/break_002.png", "long-masks/break_007.png", "long-masks/fray_006.png",
                        "long-masks/uneven_006.png"})
    masks.push_back({f, defect::resize_defect_mask(read_mask(golden::path(f)), kSize, kSize)});
  int shrunk = 0, skipped = 0, failed = 0;
  int64_t pixels = 0, outside = 0;
  for (uint64_t seed = 0; seed < 400; ++seed) {
    Rng rng(seed);
    const auto& fg = fit.masks[seed % fit.masks.size()];
    try {
      const auto s = defect::synthesize_mask(masks, fg, rng);
      for (int64_t k = 0; k < s.mask.numel(); ++k)
        if (s.mask.data()[k] >= 0.5f) ++pixels, outside += fg.data()[k] < 0.5f;
      shrunk += s.placement.shrunk;
      skipped += !s.placement.skipped.empty();
    } catch (const defect::DefectDoesNotFit&) {
      ++failed;  // the documented outcome when no mask fits at any allowed scale
    }
  }
  MESSAGE("400 placements: ", pixels, " defect pixels, ", outside, " outside F; shrunk ", shrunk, ", another mask ",
          skipped, ", none fits ", failed);
  CHECK(pixels > 0);
  CHECK(outside == 0);
  CHECK(failed == 0);
}
