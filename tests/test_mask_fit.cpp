// Property test of defect placement (issue 11): thousands of random draws over real masks — among them long
// cracks, full-width bands and whole-image frays that rotated or scaled up do not fit — at working sizes 64, 128,
// 256 and 512, with the whole image (`all`), a predicted foreground (`auto`) and a small one as the object.
// Every draw must be placed: no throw, the mask inside the image and the foreground, and its box and area
// within what the reported angle and scale allow.
//
// Masks: tests/data/{magnetic-tile,magnetic-tile-cracks}/masks and tests/data/long-masks. Set
// ADABLDM_MASK_DIRS=dir1:dir2 to run it over other folders too (recursively), e.g. every mask of ../shared/data
// (docs/method.md records that run); ADABLDM_MASK_DRAWS sets the draws per (mask, size, foreground).
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "adabldm/core/rng.hpp"
#include "adabldm/defect/foreground.hpp"
#include "adabldm/defect/imgproc.hpp"
#include "adabldm/defect/mask_synthesis.hpp"
#include "adabldm/defect/training.hpp"
#include "adabldm/io/image.hpp"

using namespace adabldm;
using namespace adabldm::defect;
using Plane = Tensor<float, Cpu>;
namespace fs = std::filesystem;

namespace {

int64_t count(const Plane& m) { return count_above(m, 0.5f); }

/// Defect pixels with a 4-neighbour outside the defect (or the border): where rasterisation can move the edge.
int64_t outline(const Plane& m) {
  const int h = static_cast<int>(m.dim(2)), w = static_cast<int>(m.dim(3));
  auto on = [&](int y, int x) { return y >= 0 && x >= 0 && y < h && x < w && m.data()[y * w + x] >= 0.5f; };
  int64_t n = 0;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) n += on(y, x) && !(on(y - 1, x) && on(y + 1, x) && on(y, x - 1) && on(y, x + 1));
  return n;
}

struct NamedMask {
  std::string name;
  Plane mask;  // at the file's own size
};

std::vector<NamedMask> read_masks_in(const fs::path& dir, bool recursive) {
  std::vector<fs::path> files;
  auto take = [&](const fs::directory_entry& e) {
    if (e.is_regular_file() && e.path().extension() == ".png") files.push_back(e.path());
  };
  if (recursive)
    for (const auto& e : fs::recursive_directory_iterator(dir)) take(e);
  else
    for (const auto& e : fs::directory_iterator(dir)) take(e);
  std::sort(files.begin(), files.end());
  std::vector<NamedMask> out;
  for (const auto& f : files) {
    auto m = read_mask(f.string());
    if (count(m) > 0) out.push_back({f.string(), m});  // good images' empty masks in an AD split
  }
  return out;
}

std::vector<NamedMask> all_masks() {
  std::vector<NamedMask> masks;
  for (const char* d : {"magnetic-tile/masks", "magnetic-tile-cracks/masks", "long-masks"})
    for (auto& m : read_masks_in(fs::path(ADABLDM_TEST_DATA) / d, false)) masks.push_back(std::move(m));
  if (const char* extra = std::getenv("ADABLDM_MASK_DIRS")) {
    std::stringstream ss(extra);
    for (std::string d; std::getline(ss, d, ':');)
      if (!d.empty())
        for (auto& m : read_masks_in(d, true)) masks.push_back(std::move(m));
  }
  return masks;
}

/// An `auto`-style foreground: the unsupervised predictor fitted on stride-4 features of real tiles (intensity,
/// local contrast), binarised at the working size — irregular, with holes, as on real textured parts.
Plane predicted_foreground(int size) {
  std::vector<Plane> feats;
  for (const char* f : {"magnetic-tile/ok/free_000.png", "magnetic-tile/ok/free_001.png"}) {
    const auto img = resize_bilinear(read_image(std::string(ADABLDM_TEST_DATA) + "/" + f, 1), size, size);
    const int s = size / 4;
    auto feat = Plane::zeros({1, 2, s, s});
    for (int y = 0; y < s; ++y)
      for (int x = 0; x < s; ++x) {
        double sum = 0, sq = 0;
        for (int dy = 0; dy < 4; ++dy)
          for (int dx = 0; dx < 4; ++dx) {
            const double v = img.data()[(4 * y + dy) * size + 4 * x + dx];
            sum += v, sq += v * v;
          }
        feat.data()[y * s + x] = static_cast<float>(sum / 16);
        feat.data()[s * s + y * s + x] = static_cast<float>(std::sqrt(std::max(0.0, sq / 16 - sum * sum / 256)));
      }
    feats.push_back(feat);
  }
  Rng rng(7);
  const auto predictor = ForegroundPredictor::fit(feats, rng);
  return ForegroundPredictor::binarise(predictor.predict(feats[0]), size, size);
}

/// A small object: a disc of radius 0.3 size, off centre (28 % of the image).
Plane small_foreground(int size) {
  auto m = Plane::zeros({1, 1, size, size});
  const double cy = 0.45 * size, cx = 0.55 * size, r = 0.3 * size;
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) m.data()[y * size + x] = (y - cy) * (y - cy) + (x - cx) * (x - cx) <= r * r;
  return m;
}

}  // namespace

TEST_CASE("every draw of every real mask is placed inside the image and the foreground, within its reported scale") {
  const auto masks = all_masks();
  REQUIRE(masks.size() >= 10);
  const char* draws_env = std::getenv("ADABLDM_MASK_DRAWS");
  const int draws = draws_env ? std::atoi(draws_env) : 16;
  const SynthesisOptions opt;
  int64_t total = 0, redrawn = 0, shrunk = 0;
  double smallest_scale = 1e9, worst_area = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (const int size : {64, 128, 256, 512}) {
    const std::vector<std::pair<const char*, Plane>> foregrounds = {
        {"all", all_foreground(size, size)}, {"auto", predicted_foreground(size)}, {"small", small_foreground(size)}};
    for (const auto& [fg_name, fg] : foregrounds) {
      REQUIRE(count(fg) > 0);
      for (std::size_t k = 0; k < masks.size(); ++k) {
        // At the working size exactly like the pipeline does (no aspect preservation; a speck keeps its peak).
        const auto src = resize_defect_mask(masks[k].mask, size, size);
        REQUIRE(count(src) > 0);
        const Box sb = bounding_box(src);
        const double a0 = static_cast<double>(count(src)), o0 = static_cast<double>(outline(src));
        const std::vector<SourceMask> one{{masks[k].name, src}};
        for (int i = 0; i < draws; ++i) {
          Rng rng(derive_seed(static_cast<uint64_t>(size) * 1000 + k, static_cast<uint64_t>(i)));
          CAPTURE(masks[k].name);
          CAPTURE(size);
          const std::string foreground = fg_name;
          CAPTURE(foreground);
          CAPTURE(i);
          SynthesizedMask r;
          try {
            r = synthesize_mask(one, fg, rng, opt);
          } catch (const Error& e) {
            FAIL(e.what());
          }
          const auto& p = r.placement;
          REQUIRE(r.mask.shape() == fg.shape());
          int64_t off = 0;  // defect pixels off the foreground
          for (int64_t j = 0; j < fg.numel(); ++j) off += r.mask.data()[j] >= 0.5f && fg.data()[j] < 0.5f;
          REQUIRE(off == 0);
          const Box b = bounding_box(r.mask);
          REQUIRE(!b.empty());
          CHECK(b.y0 == p.y0);
          CHECK(b.x0 == p.x0);
          CHECK(b.height() == p.h);
          CHECK(b.width() == p.w);
          // The reported scale: in the drawn range, or below it only when shrunk, never below min_fit_scale.
          CHECK(p.scale <= opt.max_scale);
          CHECK(p.scale >= (p.shrunk ? opt.min_fit_scale : opt.min_scale));
          CHECK(p.draws >= 1);
          CHECK(p.draws <= opt.max_affine_draws);
          // The box fits in the source box rotated by the reported angle at the reported scale.
          const double c = std::fabs(std::cos(p.angle_deg * M_PI / 180)), s = std::fabs(std::sin(p.angle_deg * M_PI / 180));
          CHECK(p.h <= std::ceil(p.scale * (sb.height() * c + sb.width() * s)) + 1);
          CHECK(p.w <= std::ceil(p.scale * (sb.height() * s + sb.width() * c)) + 1);
          // The area: s^2 times the source's, up to rasterisation of the outline (at most 3/4 of an outline pixel
          // each, scaled) and 4 pixels (the peak rule keeps the up to 4 tied pixels a 1-pixel speck spreads to).
          const double a = static_cast<double>(count(r.mask));
          const double err = std::fabs(a - p.scale * p.scale * a0) / (p.scale * o0 + 4);
          worst_area = std::max(worst_area, err);
          CHECK(err <= 0.75);
          ++total;
          redrawn += p.draws > 1;
          shrunk += p.shrunk;
          smallest_scale = std::min(smallest_scale, p.scale);
        }
      }
    }
  }
  CHECK(shrunk > 0);   // the hard cases occur: whole-image masks turned by 45 degrees cannot fit unshrunk
  CHECK(redrawn > 0);
  MESSAGE(total, " placements of ", masks.size(), " masks at 64..512 px with all/auto/small foregrounds in ",
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), " s: ", redrawn,
          " needed a fresh draw, ", shrunk, " were shrunk (smallest scale ", smallest_scale,
          "); worst |area - s^2 area0| = ", worst_area, " x (s * outline + 4)");
}

TEST_CASE("placement depends only on the seed, also through redraws and shrinking") {
  const auto masks = all_masks();
  std::vector<SourceMask> sources;
  for (const auto& m : masks) sources.push_back({m.name, resize_mask(m.mask, 128, 128)});
  const auto fg = small_foreground(128);
  for (int i = 0; i < 40; ++i) {
    Rng a(derive_seed(99, static_cast<uint64_t>(i))), b(derive_seed(99, static_cast<uint64_t>(i)));
    const auto ra = synthesize_mask(sources, fg, a), rb = synthesize_mask(sources, fg, b);
    CHECK(ra.mask.to_vector() == rb.mask.to_vector());
    CHECK(ra.placement.scale == rb.placement.scale);
    CHECK(ra.placement.angle_deg == rb.placement.angle_deg);
    CHECK(a.uniform() == b.uniform());  // the stream continues identically for the sampler
  }
}

TEST_CASE("training pairs: long NG defects are placed too, pixels and mask together") {
  const std::string dir = std::string(ADABLDM_TEST_DATA) + "/magnetic-tile-cracks/";
  for (const char* name : {"crack_001", "crack_004", "crack_007"}) {
    const auto ng = resize_bilinear(read_image(dir + "ng/" + name + ".png"), 256, 256);
    const auto mask = resize_mask(read_mask(dir + "masks/" + name + ".png"), 256, 256);
    const auto ok = Plane::full({1, 3, 256, 256}, 0.25f);
    for (const auto& fg : {all_foreground(256, 256), small_foreground(256)}) {
      for (int i = 0; i < 30; ++i) {
        Rng rng(derive_seed(5, static_cast<uint64_t>(i)));
        const auto pair = synthesize_training_pair(ok, ng, mask, fg, rng, {}, name);
        REQUIRE(count(pair.mask) > 0);
        int64_t changed_outside = 0, off = 0;
        for (int64_t j = 0; j < pair.mask.numel(); ++j) {
          const bool in = pair.mask.data()[j] >= 0.5f;
          off += in && fg.data()[j] < 0.5f;
          for (int c = 0; c < 3; ++c) changed_outside += !in && pair.image.data()[c * pair.mask.numel() + j] != 0.25f;
        }
        CHECK(off == 0);
        CHECK(changed_outside == 0);  // the OK image is untouched outside the pasted defect
      }
    }
  }
}

TEST_CASE("the draws of issue 11's two commands, seeds 0..50: every generate sample and training example is placed") {
  // The geometry exactly as `generate --size 256` (masks resized to 256 x 256, whole-image foreground, sample i
  // drawn from Rng(derive_seed(seed, i))) and `train --size 256` (defects resized with their aspect to 256 on
  // the long side, example k of Rng(derive_seed(seed, k))) do it, on the four long real cracks of tests/data.
  std::vector<SourceMask> masks;
  TrainingSource data;
  data.ok_images.push_back(Plane::full({1, 3, 256, 256}, 0.0f));
  data.prompt = "a tile with a crack";
  for (const auto& [dir, name] : std::vector<std::pair<std::string, std::string>>{{"magnetic-tile", "crack_000"},
                                                                                 {"magnetic-tile-cracks", "crack_001"},
                                                                                 {"magnetic-tile-cracks", "crack_004"},
                                                                                 {"magnetic-tile-cracks", "crack_007"}}) {
    const std::string base = std::string(ADABLDM_TEST_DATA) + "/" + dir + "/";
    const auto mask = read_mask(base + "masks/" + name + ".png");
    masks.push_back({name, resize_defect_mask(mask, 256, 256)});
    const auto image = read_image(base + "ng/" + name + ".png");
    const double s = 256.0 / std::max(image.dim(2), image.dim(3));
    const int h = static_cast<int>(std::lround(image.dim(2) * s)), w = static_cast<int>(std::lround(image.dim(3) * s));
    data.defects.push_back({resize_bilinear(image, h, w), resize_defect_mask(mask, h, w), name});
  }
  const auto fg = all_foreground(256, 256);
  int redrawn = 0, shrunk = 0;
  for (uint64_t seed = 0; seed <= 50; ++seed) {
    for (uint64_t i = 0; i < 4; ++i) {
      Rng rng(derive_seed(seed, i));  // the pipeline's Rng(job.seed), job.seed = derive_seed(--seed, i)
      const auto r = synthesize_mask(masks, fg, rng);
      CHECK(count(r.mask) > 0);
      redrawn += r.placement.draws > 1;
      shrunk += r.placement.shrunk;
    }
    for (int64_t k = 0; k < 20; ++k) {
      const auto ex = make_training_example(data, seed, k, 3, TrainOptions{});
      CHECK(count(ex.mask) > 0);
    }
  }
  MESSAGE("seeds 0..50: 204 generate placements (", redrawn, " redrawn, ", shrunk, " shrunk) and 1020 training examples");
}

TEST_CASE("keep_edges: a defect touching its image's border is placed flush with a border; others as before") {
  // The side bookkeeping agrees with the warp: a quarter turn of the whole canvas moves the touched sides.
  auto left = Plane::zeros({1, 1, 32, 32});
  for (int y = 10; y < 20; ++y)
    for (int x = 0; x < 6; ++x) left.data()[y * 32 + x] = 1.0f;
  REQUIRE(defect::detail::touched_sides(left) == defect::detail::kLeft);
  for (double a : {0.0, 90.0, 180.0, 270.0})
    CHECK(defect::detail::touched_sides(rotate_bound(left, a)) == defect::detail::turn_sides(defect::detail::kLeft, a));
  CHECK(defect::detail::turn_sides(defect::detail::kTop, 90.0) == defect::detail::kLeft);
  CHECK(defect::detail::turn_sides(defect::detail::kTop | defect::detail::kBottom, 0.0) == defect::detail::kTop);  // spans the image: kept at the top

  SynthesisOptions edge;
  edge.keep_edges = true;
  const auto fg = all_foreground(48, 48);
  auto flush_with_named_sides = [](const SynthesizedMask& s) {
    const unsigned touched = defect::detail::touched_sides(s.mask);
    bool ok = !s.placement.edge.empty();
    for (auto [bit, name] : {std::pair<unsigned, const char*>{defect::detail::kTop, "top"}, {defect::detail::kRight, "right"},
                             {defect::detail::kBottom, "bottom"}, {defect::detail::kLeft, "left"}})
      if (s.placement.edge.find(name) != std::string::npos) ok = ok && (touched & bit);
    return ok;
  };
  int free_at_border = 0;
  for (int i = 0; i < 100; ++i) {
    Rng a(derive_seed(3, static_cast<uint64_t>(i))), b(derive_seed(3, static_cast<uint64_t>(i)));
    const auto e = synthesize_mask(std::vector<Plane>{left}, fg, a, edge);
    CHECK(flush_with_named_sides(e));
    CHECK(std::fmod(e.placement.angle_deg, 90.0) == 0.0);
    free_at_border += defect::detail::touched_sides(synthesize_mask(std::vector<Plane>{left}, fg, b).mask) != 0;
  }
  CHECK(free_at_border < 50);  // without the option most placements move the defect inward

  // A foreground that keeps off the image's border: no position is flush with it, so the defect is placed freely.
  auto inner = Plane::zeros({1, 1, 48, 48});
  for (int y = 4; y < 44; ++y)
    for (int x = 4; x < 44; ++x) inner.data()[y * 48 + x] = 1.0f;
  for (int i = 0; i < 10; ++i) {
    Rng rng(derive_seed(4, static_cast<uint64_t>(i)));
    const auto s = synthesize_mask(std::vector<Plane>{left}, inner, rng, edge);
    CHECK(s.placement.edge.empty());
    int64_t off = 0;
    for (int64_t j = 0; j < s.mask.numel(); ++j) off += s.mask.data()[j] >= 0.5f && inner.data()[j] < 0.5f;
    CHECK(off == 0);
    CHECK(count(s.mask) > 0);
  }

  // A defect inside its image: the option changes nothing, draw for draw.
  auto middle = Plane::zeros({1, 1, 32, 32});
  for (int y = 12; y < 18; ++y)
    for (int x = 10; x < 22; ++x) middle.data()[y * 32 + x] = 1.0f;
  for (int i = 0; i < 10; ++i) {
    Rng a(derive_seed(6, static_cast<uint64_t>(i))), b(derive_seed(6, static_cast<uint64_t>(i)));
    const auto e = synthesize_mask(std::vector<Plane>{middle}, fg, a, edge), f = synthesize_mask(std::vector<Plane>{middle}, fg, b);
    CHECK(e.mask.to_vector() == f.mask.to_vector());
    CHECK(e.placement.edge.empty());
  }

  // Real masks of tests/data that touch their image's border, and training pairs made with them, at 64 and 256 px.
  int edge_masks = 0;
  for (const char* sub : {"magnetic-tile/masks", "magnetic-tile-cracks/masks", "long-masks"}) {
    for (const auto& entry : fs::directory_iterator(std::string(ADABLDM_TEST_DATA) + "/" + sub)) {
      if (entry.path().extension() != ".png") continue;
      const std::string name = entry.path().filename().string();
      for (int size : {64, 256}) {
        const auto mask = resize_mask(read_mask(entry.path().string()), size, size);
        if (defect::detail::touched_sides(mask) == 0) continue;
        ++edge_masks;
        Rng pixels(1);
        const auto ng = pixels.uniform({1, 3, size, size}, -1.0, 1.0);
        const auto ok = Plane::full({1, 3, size, size}, 0.25f);
        for (int i = 0; i < 10; ++i) {
          Rng rng(derive_seed(7, static_cast<uint64_t>(i)));
          const auto s = synthesize_mask(std::vector<Plane>{mask}, all_foreground(size, size), rng, edge);
          CAPTURE(name);
          CHECK(flush_with_named_sides(s));
          const auto pair = synthesize_training_pair(ok, ng, mask, all_foreground(size, size), rng, edge, name);
          CHECK(!pair.placement.edge.empty());
          CHECK(defect::detail::touched_sides(pair.mask) != 0);
        }
      }
    }
  }
  CHECK(edge_masks >= 4);
}
