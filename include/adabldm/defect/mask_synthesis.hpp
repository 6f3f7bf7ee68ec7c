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
//   - Never hangs: placement is rejection sampling bounded by max_attempts, and the cases that provably
//     cannot fit are reported at once. Failures throw adabldm::Error naming the mask and the reason.
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
};

struct SynthesisOptions {
  bool rotate_and_scale = true;             // false: the official inference behaviour, translation only
  double min_scale = 0.85, max_scale = 1.15;
  int max_attempts = 1000;                  // random positions tried before giving up
  float binarise_threshold = 0.5f;          // warped (interpolated) mask values > this are defect
  bool official_anisotropic_scale = false;  // the training code's transposed-dsize resize (see above)
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

/// Crops `mask` (and `image`, if given, [1, C, H, W] of the same size) to the defect's box, rotates by angle_deg
/// and scales by `scale` (both skipped when !options.rotate_and_scale), re-binarises the mask and crops again
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
  if (!options.rotate_and_scale) return out;  // translate-only: the source shape, exactly

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
  check(!warped.empty(), "warp_defect: ", who, " vanished after rotation by ", angle_deg, " degrees and scale ", scale);
  out.mask = crop(m, warped);
  if (image) out.pixels = crop(px, warped);
  return out;
}

namespace detail {

/// Top-left (y0, x0) where every defect pixel of `patch` lies on the foreground: uniform among the positions
/// where the patch fits, by rejection sampling with at most max_attempts draws. Throws when it cannot fit.
inline std::pair<int, int> place_inside_foreground(const Tensor<float, Cpu>& patch, const Tensor<float, Cpu>& fg,
                                                   Rng& rng, int max_attempts, const std::string& who) {
  const int H = static_cast<int>(fg.dim(2)), W = static_cast<int>(fg.dim(3));
  const int h = static_cast<int>(patch.dim(2)), w = static_cast<int>(patch.dim(3));
  check(h <= H && w <= W, who, ": the warped defect is ", h, "x", w, " pixels, larger than the ", H, "x", W,
        " image; it cannot fit");
  std::vector<int> dys, dxs;  // the defect pixels, relative to the patch corner
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      if (patch.data()[static_cast<int64_t>(y) * w + x] >= 0.5f) dys.push_back(y), dxs.push_back(x);
  int64_t fg_count = 0;
  for (int64_t i = 0; i < fg.numel(); ++i) fg_count += fg.data()[i] >= 0.5f;
  check(static_cast<int64_t>(dys.size()) <= fg_count, who, ": the warped defect has ", dys.size(),
        " pixels but the foreground only ", fg_count, " of ", H, "x", W, "; it cannot fit");
  const Box fbox = bounding_box(fg, 0.5f - 1e-6f);
  check(h <= fbox.height() && w <= fbox.width(), who, ": the warped defect's box is ", h, "x", w,
        " pixels but the foreground's is only ", fbox.height(), "x", fbox.width(), "; it cannot fit");
  for (int attempt = 0; attempt < max_attempts; ++attempt) {
    const int y0 = static_cast<int>(rng.uniform_int(0, H - h)), x0 = static_cast<int>(rng.uniform_int(0, W - w));
    bool inside = true;
    for (std::size_t i = 0; i < dys.size() && inside; ++i)
      inside = fg.data()[static_cast<int64_t>(y0 + dys[i]) * W + x0 + dxs[i]] >= 0.5f;
    if (inside) return {y0, x0};
  }
  throw Error(adabldm::detail::concat(who, ": no position inside the foreground found in ", max_attempts,
                             " random tries (defect ", h, "x", w, " with ", dys.size(), " pixels; foreground ",
                             fg_count, " of ", H, "x", W, " pixels); use a smaller defect or a larger foreground"));
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

/// Draws the angle and scale of one warp (nothing is drawn in translate-only mode).
inline std::pair<double, double> draw_affine(Rng& rng, const SynthesisOptions& o) {
  if (!o.rotate_and_scale) return {0.0, 1.0};
  const double angle = rng.uniform(0.0, 360.0);
  const double scale = rng.uniform(o.min_scale, o.max_scale);
  return {angle, scale};
}

}  // namespace detail

/// One synthetic defect mask M* the size of `foreground` ([1, 1, H, W]): a random real mask, cropped to its
/// box, rotated by U[0, 360) degrees and scaled by U[min_scale, max_scale] (or only translated), re-binarised and
/// placed at a uniform random position where it lies entirely inside the foreground.
inline SynthesizedMask synthesize_mask(const std::vector<SourceMask>& real_masks, const Tensor<float, Cpu>& foreground,
                                       Rng& rng, const SynthesisOptions& options = {}) {
  detail::check_options(options, "synthesize_mask");
  check(!real_masks.empty(), "synthesize_mask: no real defect masks given");
  const auto fg = detail::mask_arg(foreground, "synthesize_mask (foreground)");
  MaskPlacement p;
  p.index = static_cast<int>(rng.uniform_int(0, static_cast<int64_t>(real_masks.size()) - 1));
  const SourceMask& src = real_masks[static_cast<std::size_t>(p.index)];
  p.mask_source = src.name;
  const std::string who = "synthesize_mask: " + detail::describe_source(src.name, p.index);
  check<ShapeError>(src.mask.rank() == 4 && src.mask.dim(0) == 1 && src.mask.dim(1) == 1 && src.mask.numel() > 0, who,
                    ": expected a [1, 1, H, W] mask, got ", src.mask.shape().str());
  std::tie(p.angle_deg, p.scale) = detail::draw_affine(rng, options);
  const WarpedDefect warped = warp_defect(src.mask, nullptr, p.angle_deg, p.scale, options, 0.0f, who);
  p.h = static_cast<int>(warped.mask.dim(2));
  p.w = static_cast<int>(warped.mask.dim(3));
  std::tie(p.y0, p.x0) = detail::place_inside_foreground(warped.mask, fg, rng, options.max_attempts, who);
  return {detail::paste_mask(warped.mask, static_cast<int>(fg.dim(2)), static_cast<int>(fg.dim(3)), p.y0, p.x0), p};
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
  MaskPlacement p;
  p.index = 0;
  p.mask_source = source_name;
  std::tie(p.angle_deg, p.scale) = detail::draw_affine(rng, options);
  const WarpedDefect warped = warp_defect(ng_mask, &ng, p.angle_deg, p.scale, options, -1.0f, who);
  p.h = static_cast<int>(warped.mask.dim(2));
  p.w = static_cast<int>(warped.mask.dim(3));
  std::tie(p.y0, p.x0) = detail::place_inside_foreground(warped.mask, fg, rng, options.max_attempts, who);

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
