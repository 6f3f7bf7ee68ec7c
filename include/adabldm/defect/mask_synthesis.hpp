#pragma once
// Defect-mask synthesis (method §3): a real defect mask, cropped to its box, randomly rotated and scaled, then
// placed where it lies entirely inside the object foreground F. Also the training-data variant (§3.1), which
// warps the NG pixels with the mask and hard-pastes them onto an OK image.
//
// Conventions
//   - Masks are [1, 1, H, W] floats, 1 = defect (see trimap.hpp); a source value counts as defect when >= 0.5.
//   - Real masks are used at their pixel size: pass them at the target resolution, resized exactly like their
//     images (resize_mask to size x size), as the official code does before cropping.
//   - Every random choice comes from the Rng, in a fixed order (mask index, angle, scale, then positions), so
//     a sample is reproducible from Rng(derive_seed(seed, sample_index)).
//   - Never fails on a defect that can fit at all, never hangs (docs/method.md, "When a defect does not fit"):
//     bounded rejection sampling per draw, then an exact scan of the positions; up to max_affine_draws fresh
//     (angle, scale) draws; then the largest scale that fits, down to min_fit_scale; then another real mask.
//     Only when nothing fits: DefectDoesNotFit naming the masks and the reason.
//
// Differences from the official code (method §3, §9 #2), all deliberate:
//   - rotation and scale are one bilinear resampling (official: two, which blurs thin cracks), about the
//     geometric centre, on a canvas that is never cut off (see rotate_bound);
//   - rotation angle is continuous in [0, 360) (training code: integer randint(0, 360); inference: none);
//   - the scale is isotropic by default; official_anisotropic_scale reproduces the training code's
//     cv2.resize(rotated, dsize=(int(h*s), int(w*s))), i.e. int(w*s) rows by int(h*s) columns with (h, w) the
//     pre-rotation crop size;
//   - the top-left corner is uniform over every position where the patch fits, [0, H-h] x [0, W-w] (the
//     official range [0, H-h) drops the last one and rejects a patch as large as the image);
//   - re-binarisation keeps values > binarise_threshold (0.5; official: >= 200/255 after training warps, > 0 at
//     inference), and a defect never vanishes: if nothing passes, its peak pixels are kept;
//   - the paste is decided by the warped mask (official: by the warped NG pixel values being > 0).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "adabldm/core/error.hpp"
#include "adabldm/core/rng.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/defect/imgproc.hpp"

namespace adabldm::defect {

/// Where and how a synthetic defect was made (enough to reproduce it or to log it).
struct MaskPlacement {
  std::string mask_source;  // name of the real mask that was used
  int index = -1;           // its position in the list given
  double angle_deg = 0.0;   // counter-clockwise rotation in degrees (0 in translate-only mode)
  double scale = 1.0;       // scale factor (1 in translate-only mode)
  int y0 = 0, x0 = 0;       // top-left corner of the placed patch in the output
  int h = 0, w = 0;         // patch size: the warped defect's bounding box
  int draws = 1;            // (angle, scale) draws made; > 1 when earlier draws did not fit
  bool shrunk = false;      // no draw fitted: scale is the largest below min_scale that does
  std::string edge;         // keep_edges: the borders the placed defect is flush with ("top", "left+bottom"); "" = free
  std::vector<std::string> skipped;  // masks set aside first because they cannot fit this foreground at all
};

/// A real defect that cannot lie inside the foreground even at SynthesisOptions::min_fit_scale.
class DefectDoesNotFit : public Error {
 public:
  using Error::Error;
};

/// A warp that lost every defect pixel (only at very small scales of a thin defect).
class DefectVanished : public Error {
 public:
  using Error::Error;
};

struct SynthesisOptions {
  bool rotate_and_scale = true;             // false: the official inference behaviour, translation only
  double min_scale = 0.85, max_scale = 1.15;
  int max_attempts = 1000;                  // random positions per draw before every position is checked
  int max_affine_draws = 8;                 // fresh (angle, scale) draws before the defect is shrunk
  double min_fit_scale = 0.25;              // the smallest scale a defect is shrunk to before it is set aside
  float binarise_threshold = 0.5f;          // warped (interpolated) mask values > this are defect
  bool official_anisotropic_scale = false;  // the training code's transposed-dsize resize (see above)
  /// Edge defects stay at the edge: a real mask that touches its image's border (a chipped edge, a break) is
  /// turned by a multiple of 90 degrees instead of any angle and placed flush with the border its touching side
  /// then faces; only where no such position lies in the foreground is it placed freely. Not in the paper (its
  /// placement moves every defect inward): docs/method.md, "Edge defects".
  bool keep_edges = false;
};

/// A real defect mask with a name for messages and logs (e.g. its file name).
struct SourceMask {
  std::string name;
  Tensor<float, Cpu> mask;  // [1, 1, H, W]
};

struct SynthesizedMask {
  Tensor<float, Cpu> mask;  // [1, 1, H, W] in {0, 1}, the size of the foreground
  MaskPlacement placement;
};

/// A defect cropped to its box and warped: the binary mask and, when an image was given, its pixels.
struct WarpedDefect {
  Tensor<float, Cpu> mask;    // [1, 1, h, w], cropped to the warped defect's bounding box
  Tensor<float, Cpu> pixels;  // [1, C, h, w], the same region of the warped image; undefined without an image
};

namespace detail {

inline void check_options(const SynthesisOptions& o, const char* what) {
  check(o.max_attempts >= 1, what, ": max_attempts must be >= 1, got ", o.max_attempts);
  check(std::isfinite(o.min_scale) && std::isfinite(o.max_scale) && o.min_scale > 0.0 && o.min_scale <= o.max_scale,
        what, ": need 0 < min_scale <= max_scale, got [", o.min_scale, ", ", o.max_scale, "]");
  check(o.max_affine_draws >= 1, what, ": max_affine_draws must be >= 1, got ", o.max_affine_draws);
  check(std::isfinite(o.min_fit_scale) && o.min_fit_scale > 0.0 && o.min_fit_scale <= o.max_scale, what,
        ": need 0 < min_fit_scale <= max_scale, got ", o.min_fit_scale);
  check(o.binarise_threshold >= 0.0f && o.binarise_threshold < 1.0f, what, ": binarise_threshold must be in [0, 1), got ",
        o.binarise_threshold);
}

/// "mask 'name' (index i)" for messages.
inline std::string describe_source(const std::string& name, int index) {
  return "mask '" + name + "' (index " + std::to_string(index) + ")";
}

/// Binarised warped mask; if the threshold removed everything, the pixels at the (positive) peak are kept.
inline Tensor<float, Cpu> binarise_keep_peak(const Tensor<float, Cpu>& m, float threshold) {
  auto out = binarise(m, threshold);
  if (count_above(out) > 0) return out;
  const float peak = *std::max_element(m.data(), m.data() + m.numel());
  if (peak > 0.0f)
    for (int64_t i = 0; i < m.numel(); ++i) out.data()[i] = m.data()[i] >= peak ? 1.0f : 0.0f;
  return out;
}

}  // namespace detail

/// A real defect mask brought to out_h x out_w like its image (bilinear, > 0.5 is defect); a speck smaller than a
/// pixel at that size keeps its peak pixel instead of vanishing.
inline Tensor<float, Cpu> resize_defect_mask(const Tensor<float, Cpu>& mask, int out_h, int out_w) {
  return detail::binarise_keep_peak(resize_bilinear(mask, out_h, out_w), 0.5f);
}

/// Crops `mask` (and `image`, if given, [1, C, H, W] of the same size) to the defect's box, rotates by angle_deg
/// and scales by `scale` (skipped in translate-only mode at scale 1), re-binarises the mask and crops again
/// to its box. `image_border` fills what the rotation brings in from outside (-1 = black for [-1, 1] images).
inline WarpedDefect warp_defect(const Tensor<float, Cpu>& mask_in, const Tensor<float, Cpu>* image, double angle_deg,
                                double scale, const SynthesisOptions& options = {}, float image_border = -1.0f,
                                const std::string& who = "mask") {
  const auto mask = binarise(detail::mask_arg(mask_in, "warp_defect"), 0.5f - 1e-6f);
  if (image)
    check<ShapeError>(image->rank() == 4 && image->dim(0) == 1 && image->dim(2) == mask.dim(2) && image->dim(3) == mask.dim(3),
                      "warp_defect: image ", image->shape().str(), " does not match mask ", mask.shape().str());
  const Box box = bounding_box(mask);
  check(!box.empty(), "warp_defect: ", who, " has no defect pixels");
  WarpedDefect out{crop(mask, box), image ? crop(*image, box) : Tensor<float, Cpu>()};
  if (!options.rotate_and_scale && scale == 1.0) return out;  // translate-only: the source shape, exactly

  check(scale > 0.0 && std::isfinite(scale), "warp_defect: scale must be positive, got ", scale);
  // Rotation and scale in one resampling, so thin defects are interpolated once.
  Tensor<float, Cpu> m, px;
  if (options.official_anisotropic_scale) {
    // cv2.resize(rotated, dsize=(int(h*s), int(w*s))): dsize is (width, height), so int(w*s) rows.
    const int rows = std::max(1, static_cast<int>(box.width() * scale));
    const int cols = std::max(1, static_cast<int>(box.height() * scale));
    m = rotate_resize_bound(out.mask, angle_deg, rows, cols, 0.0f);
    if (image) px = rotate_resize_bound(out.pixels, angle_deg, rows, cols, image_border);
  } else {
    m = rotate_scale_bound(out.mask, angle_deg, scale, 0.0f);
    if (image) px = rotate_scale_bound(out.pixels, angle_deg, scale, image_border);
  }
  m = detail::binarise_keep_peak(m, options.binarise_threshold);
  const Box warped = bounding_box(m);
  check<DefectVanished>(!warped.empty(), "warp_defect: ", who, " vanished after rotation by ", angle_deg, " degrees and scale ", scale);
  out.mask = crop(m, warped);
  if (image) out.pixels = crop(px, warped);
  return out;
}

namespace detail {

/// The defect pixels of a binary patch (>= 0.5) relative to its corner, in an order that spreads them over the
/// patch (a stride coprime to the count), so that a position off the foreground usually fails on the first few.
struct PatchPixels {
  std::vector<int> ys, xs;
  int h = 0, w = 0;
};
inline PatchPixels patch_pixels(const Tensor<float, Cpu>& patch) {
  PatchPixels p;
  p.h = static_cast<int>(patch.dim(2)), p.w = static_cast<int>(patch.dim(3));
  std::vector<int> ys, xs;
  for (int y = 0; y < p.h; ++y)
    for (int x = 0; x < p.w; ++x)
      if (patch.data()[static_cast<int64_t>(y) * p.w + x] >= 0.5f) ys.push_back(y), xs.push_back(x);
  const std::size_t n = ys.size();
  std::size_t stride = 7919;  // a prime: coprime to n unless n is a multiple of it
  while (n > 0 && std::gcd(stride, n) != 1) stride += 2;
  for (std::size_t i = 0, j = 0; i < n; ++i, j = (j + stride) % n) p.ys.push_back(ys[j]), p.xs.push_back(xs[j]);
  return p;
}
inline bool lies_inside(const PatchPixels& p, const Tensor<float, Cpu>& fg, int y0, int x0) {
  const int W = static_cast<int>(fg.dim(3));
  for (std::size_t i = 0; i < p.ys.size(); ++i)
    if (fg.data()[static_cast<int64_t>(y0 + p.ys[i]) * W + x0 + p.xs[i]] < 0.5f) return false;
  return true;
}

/// The foreground's pixel count and box, computed once per sample.
struct ForegroundInfo {
  int64_t count = 0;
  Box box;
};
inline ForegroundInfo foreground_info(const Tensor<float, Cpu>& fg) {
  ForegroundInfo f;
  for (int64_t i = 0; i < fg.numel(); ++i) f.count += fg.data()[i] >= 0.5f;
  f.box = bounding_box(fg, 0.5f - 1e-6f);
  return f;
}

/// Why a patch cannot lie inside the foreground anywhere, from its size alone ("" when it might).
inline std::string cannot_fit_reason(const PatchPixels& p, const Tensor<float, Cpu>& fg, const ForegroundInfo& f) {
  const int H = static_cast<int>(fg.dim(2)), W = static_cast<int>(fg.dim(3));
  if (p.h > H || p.w > W)
    return adabldm::detail::concat("the warped defect is ", p.h, "x", p.w, " pixels, larger than the ", H, "x", W, " image");
  if (static_cast<int64_t>(p.ys.size()) > f.count)
    return adabldm::detail::concat("the warped defect has ", p.ys.size(), " pixels but the foreground only ", f.count, " of ", H, "x", W);
  if (p.h > f.box.height() || p.w > f.box.width())
    return adabldm::detail::concat("the warped defect's box is ", p.h, "x", p.w, " pixels but the foreground's is only ",
                  f.box.height(), "x", f.box.width());
  return "";
}

/// A uniform random top-left corner where every defect pixel lies on the foreground: rejection sampling with at
/// most max_attempts draws, then, if none hit, every position is checked and one of those that fit is drawn
/// (so "does not fit" is exact, and a narrow foreground costs one scan, not a hang). nullopt: nowhere.
/// Without an rng it only answers whether the patch fits anywhere (the first fitting corner; nothing drawn).
inline std::optional<std::pair<int, int>> find_position(const PatchPixels& p, const Tensor<float, Cpu>& fg,
                                                        const ForegroundInfo& f, Rng* rng, int max_attempts) {
  if (!cannot_fit_reason(p, fg, f).empty()) return std::nullopt;
  const int H = static_cast<int>(fg.dim(2)), W = static_cast<int>(fg.dim(3));
  for (int attempt = 0; rng && attempt < max_attempts; ++attempt) {
    const int y0 = static_cast<int>(rng->uniform_int(0, H - p.h)), x0 = static_cast<int>(rng->uniform_int(0, W - p.w));
    if (lies_inside(p, fg, y0, x0)) return std::pair<int, int>{y0, x0};
  }
  std::vector<std::pair<int, int>> fits;  // only corners whose box lies in the foreground's box can fit
  for (int y0 = f.box.y0; y0 + p.h <= f.box.y1; ++y0)
    for (int x0 = f.box.x0; x0 + p.w <= f.box.x1; ++x0)
      if (lies_inside(p, fg, y0, x0)) {
        if (!rng) return std::pair<int, int>{y0, x0};
        fits.emplace_back(y0, x0);
      }
  if (fits.empty()) return std::nullopt;
  return fits[static_cast<std::size_t>(rng->uniform_int(0, static_cast<int64_t>(fits.size()) - 1))];
}

/// Writes the binary patch into a zero mask of the foreground's size at (y0, x0).
inline Tensor<float, Cpu> paste_mask(const Tensor<float, Cpu>& patch, int H, int W, int y0, int x0) {
  auto out = Tensor<float, Cpu>::zeros({1, 1, H, W});
  const int h = static_cast<int>(patch.dim(2)), w = static_cast<int>(patch.dim(3));
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      out.data()[static_cast<int64_t>(y0 + y) * W + x0 + x] = patch.data()[static_cast<int64_t>(y) * w + x];
  return out;
}

/// Draws the angle and scale of one warp (nothing is drawn in translate-only mode); an edge defect turns by a
/// multiple of 90 degrees, so that its straight border side stays straight and axis-aligned.
inline std::pair<double, double> draw_affine(Rng& rng, const SynthesisOptions& o, bool edge = false) {
  if (!o.rotate_and_scale) return {0.0, 1.0};
  const double angle = edge ? 90.0 * static_cast<double>(rng.uniform_int(0, 3)) : rng.uniform(0.0, 360.0);
  const double scale = rng.uniform(o.min_scale, o.max_scale);
  return {angle, scale};
}

// ---- edge defects (SynthesisOptions::keep_edges) ----
enum EdgeSide : unsigned { kTop = 1, kRight = 2, kBottom = 4, kLeft = 8 };

/// The image borders a binary mask [1, 1, H, W] touches (EdgeSide bits).
inline unsigned touched_sides(const Tensor<float, Cpu>& mask) {
  const int H = static_cast<int>(mask.dim(2)), W = static_cast<int>(mask.dim(3));
  const float* m = mask.data();
  unsigned sides = 0;
  for (int x = 0; x < W; ++x) {
    if (m[x] >= 0.5f) sides |= kTop;
    if (m[static_cast<int64_t>(H - 1) * W + x] >= 0.5f) sides |= kBottom;
  }
  for (int y = 0; y < H; ++y) {
    if (m[static_cast<int64_t>(y) * W] >= 0.5f) sides |= kLeft;
    if (m[static_cast<int64_t>(y) * W + W - 1] >= 0.5f) sides |= kRight;
  }
  return sides;
}

/// The sides after a counter-clockwise turn by angle_deg (a multiple of 90; np.rot90: top -> left -> bottom ->
/// right -> top). A defect touching two opposite sides spans the image; it is kept flush with the top or left one.
inline unsigned turn_sides(unsigned sides, double angle_deg) {
  const int quarters = static_cast<int>(std::lround(std::fmod(std::fmod(angle_deg, 360.0) + 360.0, 360.0) / 90.0)) % 4;
  for (int q = 0; q < quarters; ++q) sides = ((sides >> 1) | (sides << 3)) & 15u;
  if ((sides & kTop) && (sides & kBottom)) sides &= ~static_cast<unsigned>(kBottom);
  if ((sides & kLeft) && (sides & kRight)) sides &= ~static_cast<unsigned>(kRight);
  return sides;
}

inline std::string describe_sides(unsigned sides) {
  std::string out;
  for (auto [bit, name] : {std::pair<unsigned, const char*>{kTop, "top"}, {kRight, "right"}, {kBottom, "bottom"}, {kLeft, "left"}})
    if (sides & bit) out += (out.empty() ? "" : "+") + std::string(name);
  return out;
}

/// A uniform random corner that puts the patch flush with `sides` (non-zero) and every defect pixel on the
/// foreground: the other coordinate runs along the border. Without an rng: whether one exists.
inline std::optional<std::pair<int, int>> find_edge_position(const PatchPixels& p, const Tensor<float, Cpu>& fg,
                                                             unsigned sides, Rng* rng) {
  const int H = static_cast<int>(fg.dim(2)), W = static_cast<int>(fg.dim(3));
  if (p.h > H || p.w > W) return std::nullopt;
  auto range = [](unsigned low, unsigned high, int room, unsigned s) {
    if (s & low) return std::pair<int, int>{0, 0};
    if (s & high) return std::pair<int, int>{room, room};
    return std::pair<int, int>{0, room};
  };
  const auto [ya, yb] = range(kTop, kBottom, H - p.h, sides);
  const auto [xa, xb] = range(kLeft, kRight, W - p.w, sides);
  std::vector<std::pair<int, int>> fits;
  for (int y0 = ya; y0 <= yb; ++y0)
    for (int x0 = xa; x0 <= xb; ++x0)
      if (lies_inside(p, fg, y0, x0)) {
        if (!rng) return std::pair<int, int>{y0, x0};
        fits.emplace_back(y0, x0);
      }
  if (fits.empty()) return std::nullopt;
  return fits[static_cast<std::size_t>(rng->uniform_int(0, static_cast<int64_t>(fits.size()) - 1))];
}

/// A warped defect placed in the foreground: the patch (and its pixels) and where it went.
struct Placed {
  WarpedDefect warped;
  MaskPlacement placement;  // angle, scale, corner, size, draws, shrunk (not the source fields)
};

/// The warp of one source at (angle, scale), or nullopt when the defect vanishes at that scale.
inline std::optional<WarpedDefect> try_warp(const Tensor<float, Cpu>& mask, const Tensor<float, Cpu>* image,
                                            double angle, double scale, const SynthesisOptions& o, float border,
                                            const std::string& who) {
  try {
    return warp_defect(mask, image, angle, scale, o, border, who);
  } catch (const DefectVanished&) {
    return std::nullopt;
  }
}

/// Places one real defect inside the foreground (the rule in docs/method.md, "When a defect does not fit"):
///  1. up to max_affine_draws fresh (angle, scale) draws, each with a bounded position search;
///  2. otherwise the largest scale that fits, below min_scale: for each drawn angle, scales min_scale * 0.9^k
///     down to min_fit_scale, then 4 bisection steps between the first fitting scale and the one above it;
///  3. otherwise DefectDoesNotFit, naming the defect and why.
/// Every draw comes from rng in a fixed order, so the result depends only on the sample's seed.
/// `edge_sides` (touched_sides of the source, or 0): the placement keeps the defect flush with those borders.
/// `shrink` false: only the draws are tried (step 2 is skipped).
inline Placed place_defect_at(const Tensor<float, Cpu>& mask, const Tensor<float, Cpu>* image, const Tensor<float, Cpu>& fg,
                              const ForegroundInfo& finfo, Rng& rng, const SynthesisOptions& o, float border,
                              const std::string& who, unsigned edge_sides, bool shrink = true) {
  auto attempt = [&](double angle, double scale, Rng* position_rng) -> std::optional<Placed> {
    auto warped = try_warp(mask, image, angle, scale, o, border, who);
    if (!warped) return std::nullopt;
    const auto pixels = patch_pixels(warped->mask);
    Placed out{std::move(*warped), {}};
    out.placement.angle_deg = angle, out.placement.scale = scale;
    out.placement.h = pixels.h, out.placement.w = pixels.w;
    // Without position_rng a probe of the scale search: does it fit anywhere? (no draw, no position kept)
    const unsigned sides = edge_sides ? turn_sides(edge_sides, angle) : 0u;
    const auto pos = sides ? find_edge_position(pixels, fg, sides, position_rng)
                           : find_position(pixels, fg, finfo, position_rng, o.max_attempts);
    if (!pos) return std::nullopt;
    if (position_rng) std::tie(out.placement.y0, out.placement.x0) = *pos;
    out.placement.edge = describe_sides(sides);
    return out;
  };

  // The largest scale at which the warped box can still fit the foreground's box at `angle`, from the rotated
  // extents of the defect pixels (a warp costs the whole canvas; this costs the pixels): a scale above it is
  // skipped without warping. Two pixels of slack for the resampling at either end.
  // A linear function's extremes over a row are at its first and last defect pixel: two points per row suffice.
  std::vector<std::pair<double, double>> points;
  const auto source = mask_arg(mask, "place_defect");
  const int sh = static_cast<int>(source.dim(2)), sw = static_cast<int>(source.dim(3));
  for (int y = 0; y < sh; ++y) {
    const float* row = source.data() + static_cast<int64_t>(y) * sw;
    int first = -1, last = -1;
    for (int x = 0; x < sw; ++x)
      if (row[x] >= 0.5f) last = x, first = first < 0 ? x : first;
    if (first >= 0) points.emplace_back(first, y), points.emplace_back(last, y);
  }
  auto box_scale_limit = [&](double angle) {
    if (o.official_anisotropic_scale || points.empty()) return std::numeric_limits<double>::infinity();
    const auto [cs, sn] = cos_sin_deg(angle);
    double u0 = 1e300, u1 = -1e300, v0 = 1e300, v1 = -1e300;
    for (const auto& [x, y] : points) {
      const double u = cs * x + sn * y, v = -sn * x + cs * y;
      u0 = std::min(u0, u), u1 = std::max(u1, u), v0 = std::min(v0, v), v1 = std::max(v1, v);
    }
    auto limit = [](double room, double extent) { return extent > 0 ? (room + 2.0) / extent : 1e300; };
    return std::min(limit(finfo.box.width(), u1 - u0), limit(finfo.box.height(), v1 - v0));
  };

  std::vector<double> angles, limits;
  const int draws = o.rotate_and_scale ? o.max_affine_draws : 1;  // translate-only: every draw is the same
  for (int d = 0; d < draws; ++d) {
    const auto [angle, scale] = draw_affine(rng, o, edge_sides != 0);
    angles.push_back(angle);
    limits.push_back(box_scale_limit(angle));
    if (scale > limits.back()) continue;  // its box cannot fit: no position is drawn, as before
    if (auto placed = attempt(angle, scale, &rng)) {
      placed->placement.draws = d + 1;
      return std::move(*placed);
    }
  }
  if (!shrink) throw DefectDoesNotFit(who + ": no draw fits");
  // The largest scale that fits, on a 10 % grid refined by bisection; the position is drawn last.
  const double top = o.rotate_and_scale ? o.min_scale : 1.0;
  for (double s = top;; s = std::max(s * 0.9, o.min_fit_scale)) {
    for (std::size_t a = 0; a < angles.size(); ++a) {
      const double angle = angles[a];
      if (s > limits[a] || !attempt(angle, s, nullptr)) continue;
      double fits = s, fails = s < top ? std::min(top, s / 0.9) : s;
      for (int i = 0; i < 4 && fails > fits; ++i) {
        const double mid = 0.5 * (fits + fails);
        (attempt(angle, mid, nullptr) ? fits : fails) = mid;
      }
      auto placed = attempt(angle, fits, &rng);
      check(placed.has_value(), who, ": internal error: a probed placement did not fit");
      placed->placement.draws = draws;
      placed->placement.shrunk = true;
      return std::move(*placed);
    }
    if (s <= o.min_fit_scale) break;
  }
  const auto smallest = try_warp(mask, image, angles.front(), o.min_fit_scale, o, border, who);
  const std::string why = smallest ? cannot_fit_reason(patch_pixels(smallest->mask), fg, finfo) : "";
  throw DefectDoesNotFit(adabldm::detail::concat(who, ": cannot fit inside the foreground (", finfo.count, " of ", fg.dim(2), "x",
                                fg.dim(3), " pixels) even at scale ", o.min_fit_scale, " (--min-fit-scale)",
                                why.empty() ? std::string() : "; at that scale " + why));
}

/// place_defect_at, keeping an edge defect at the edge when o.keep_edges asks for it; where none of its draws can
/// lie flush with a border inside the foreground, it is placed freely (shrunk if need be; placement.edge is "").
inline Placed place_defect(const Tensor<float, Cpu>& mask, const Tensor<float, Cpu>* image, const Tensor<float, Cpu>& fg,
                           const ForegroundInfo& finfo, Rng& rng, const SynthesisOptions& o, float border,
                           const std::string& who) {
  const unsigned sides = o.keep_edges ? touched_sides(mask_arg(mask, "place_defect")) : 0u;
  if (sides) {
    try {
      return place_defect_at(mask, image, fg, finfo, rng, o, border, who, sides, false);
    } catch (const DefectDoesNotFit&) {
    }
  }
  return place_defect_at(mask, image, fg, finfo, rng, o, border, who, 0u);
}

}  // namespace detail

/// One synthetic defect mask M* the size of `foreground` ([1, 1, H, W]): a random real mask, cropped to its
/// box, rotated by U[0, 360) degrees and scaled by U[min_scale, max_scale] (or only translated), re-binarised and
/// placed at a uniform random position where it lies entirely inside the foreground. A mask that cannot fit
/// after the draws is shrunk to the largest scale that fits; one that cannot fit even at min_fit_scale is set
/// aside (placement.skipped) and another mask is drawn from the rest. DefectDoesNotFit only when none fits.
inline SynthesizedMask synthesize_mask(const std::vector<SourceMask>& real_masks, const Tensor<float, Cpu>& foreground,
                                       Rng& rng, const SynthesisOptions& options = {}) {
  detail::check_options(options, "synthesize_mask");
  check(!real_masks.empty(), "synthesize_mask: no real defect masks given");
  const auto fg = detail::mask_arg(foreground, "synthesize_mask (foreground)");
  const auto finfo = detail::foreground_info(fg);
  std::vector<int> candidates(real_masks.size());
  for (std::size_t i = 0; i < candidates.size(); ++i) candidates[i] = static_cast<int>(i);
  std::vector<std::string> skipped, reasons;
  while (!candidates.empty()) {
    const auto pick = static_cast<std::size_t>(rng.uniform_int(0, static_cast<int64_t>(candidates.size()) - 1));
    const int index = candidates[pick];
    const SourceMask& src = real_masks[static_cast<std::size_t>(index)];
    const std::string who = "synthesize_mask: " + detail::describe_source(src.name, index);
    check<ShapeError>(src.mask.rank() == 4 && src.mask.dim(0) == 1 && src.mask.dim(1) == 1 && src.mask.numel() > 0, who,
                      ": expected a [1, 1, H, W] mask, got ", src.mask.shape().str());
    try {
      auto placed = detail::place_defect(src.mask, nullptr, fg, finfo, rng, options, 0.0f, who);
      MaskPlacement p = placed.placement;
      p.index = index;
      p.mask_source = src.name;
      p.skipped = skipped;
      return {detail::paste_mask(placed.warped.mask, static_cast<int>(fg.dim(2)), static_cast<int>(fg.dim(3)), p.y0, p.x0), p};
    } catch (const DefectDoesNotFit& e) {
      skipped.push_back(src.name);
      reasons.push_back(e.what());
      candidates.erase(candidates.begin() + static_cast<std::ptrdiff_t>(pick));
    }
  }
  std::string all = reasons.front();
  for (std::size_t i = 1; i < reasons.size(); ++i) all += "; " + reasons[i];
  throw DefectDoesNotFit(real_masks.size() == 1 ? all : "no real defect mask fits this foreground: " + all);
}

/// The same with unnamed masks (named "real_masks[i]" in messages).
inline SynthesizedMask synthesize_mask(const std::vector<Tensor<float, Cpu>>& real_masks,
                                       const Tensor<float, Cpu>& foreground, Rng& rng,
                                       const SynthesisOptions& options = {}) {
  std::vector<SourceMask> named;
  named.reserve(real_masks.size());
  for (std::size_t i = 0; i < real_masks.size(); ++i)
    named.push_back({"real_masks[" + std::to_string(i) + "]", real_masks[i]});
  return synthesize_mask(named, foreground, rng, options);
}

// ---- training pairs (§3.1) ------------------------------------------------------------------------------------

struct TrainingPair {
  Tensor<float, Cpu> image;  // [1, C, H, W]: the OK image with the warped NG defect hard-pasted
  Tensor<float, Cpu> mask;   // [1, 1, H, W] in {0, 1}: where the defect was pasted
  MaskPlacement placement;   // index is 0, mask_source is source_name
};

/// A training composite: the NG image and its mask are cropped to the defect's box, rotated and scaled
/// together (image border black = -1), the mask re-binarised, and the patch placed inside F; pixels under the
/// warped mask take the warped NG values, every other pixel is the OK image unchanged (hard paste, no blend).
/// ok_image [1, C, H, W] and ng_image [1, C, Hn, Wn] are in [-1, 1] at the same pixel scale; ng_mask is
/// [1, 1, Hn, Wn]; foreground is [1, 1, H, W].
inline TrainingPair synthesize_training_pair(const Tensor<float, Cpu>& ok_image, const Tensor<float, Cpu>& ng_image,
                                             const Tensor<float, Cpu>& ng_mask, const Tensor<float, Cpu>& foreground,
                                             Rng& rng, const SynthesisOptions& options = {},
                                             const std::string& source_name = "NG mask") {
  detail::check_options(options, "synthesize_training_pair");
  const auto ok = detail::plane_arg(ok_image, "synthesize_training_pair (OK image)");
  const auto fg = detail::mask_arg(foreground, "synthesize_training_pair (foreground)");
  check<ShapeError>(fg.dim(2) == ok.dim(2) && fg.dim(3) == ok.dim(3), "synthesize_training_pair: foreground ",
                    fg.shape().str(), " does not match the OK image ", ok.shape().str());
  check<ShapeError>(ng_image.rank() == 4 && ng_image.dim(1) == ok.dim(1), "synthesize_training_pair: NG image ",
                    ng_image.shape().str(), " must have the OK image's ", ok.dim(1), " channels");
  const auto ng = detail::plane_arg(ng_image, "synthesize_training_pair (NG image)");
  const std::string who = "synthesize_training_pair: " + detail::describe_source(source_name, 0);
  auto placed = detail::place_defect(ng_mask, &ng, fg, detail::foreground_info(fg), rng, options, -1.0f, who);
  MaskPlacement p = placed.placement;
  p.index = 0;
  p.mask_source = source_name;
  const WarpedDefect& warped = placed.warped;

  const int C = static_cast<int>(ok.dim(1)), H = static_cast<int>(ok.dim(2)), W = static_cast<int>(ok.dim(3));
  TrainingPair out{ok.clone(), detail::paste_mask(warped.mask, H, W, p.y0, p.x0), p};
  for (int c = 0; c < C; ++c)
    for (int y = 0; y < p.h; ++y)
      for (int x = 0; x < p.w; ++x)
        if (warped.mask.data()[static_cast<int64_t>(y) * p.w + x] >= 0.5f)
          out.image.data()[(static_cast<int64_t>(c) * H + p.y0 + y) * W + p.x0 + x] =
              warped.pixels.data()[(static_cast<int64_t>(c) * p.h + y) * p.w + x];
  return out;
}

}  // namespace adabldm::defect
