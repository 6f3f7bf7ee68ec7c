#pragma once
// The foreground of every OK image of one category in one call: features (foreground_features.hpp), the CPR-style
// predictor (foreground.hpp), binarisation, and for the `object` recipe a clean-up that knows one object per image.
//
// Recipes (measured on 30 real metal plates against reference masks, docs/foreground.md):
//   official  CPR as published, on the VAE encoder: conv_in + two down blocks (stride 4), Otsu, 5 x 5 closing.
//   object    (default) conv_in and the first down block on a stride-2 grid (the finer, earlier layers see the
//             paint/wall edge; the deeper ones blur it), then the largest region only (one object per image) and
//             the holes filled that do not look like the background: smaller than glare_area of the image, or
//             with a mean map value of at least hole_map_level (glare and speckle on the object, which the
//             predictor half-believes; a hole through the part shows the background, map ~0.1 on the plates).
// Both refuse a category whose predicted objects touch the image border (a texture, where F is the whole
// image): ForegroundIsTexture, whose message says so; the caller then uses all_foreground().
#include <algorithm>
#include <string>
#include <vector>

#include "adabldm/core/error.hpp"
#include "adabldm/core/rng.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/defect/foreground.hpp"
#include "adabldm/defect/foreground_features.hpp"
#include "adabldm/defect/mask_regions.hpp"

namespace adabldm::defect {

enum class ForegroundRecipe { Official, Object };

inline ForegroundRecipe parse_foreground_recipe(const std::string& name) {
  if (name == "object") return ForegroundRecipe::Object;
  if (name == "official") return ForegroundRecipe::Official;
  throw Error("foreground recipe \"" + name + "\": expected object or official");
}
inline const char* foreground_recipe_name(ForegroundRecipe r) { return r == ForegroundRecipe::Object ? "object" : "official"; }

struct ForegroundSettings {
  ForegroundRecipe recipe = ForegroundRecipe::Object;
  ForegroundFeatureChoice features;  ///< set from the recipe by foreground_settings()
  ForegroundOptions predictor;       ///< the official CPR constants
  int closing = 5;                   ///< the official 5 x 5 closing, at the output size
  bool largest_region = false;       ///< keep only the largest region (one object per image)
  double glare_area = 0.0;           ///< fill holes smaller than this fraction of the image ...
  double hole_map_level = 2.0;       ///< ... or whose mean map value is at least this (> 1: never)
  /// Refuse when, on average, more than this fraction of the outer band (1/16 of each side) is foreground.
  /// Measured: <= 0.004 on the 30 plates, >= 0.07 (mean 0.27) on 40 magnetic tiles (docs/foreground.md).
  double max_border_fraction = 0.05;
};

/// The settings of a recipe.
inline ForegroundSettings foreground_settings(ForegroundRecipe recipe) {
  ForegroundSettings s;
  s.recipe = recipe;
  if (recipe == ForegroundRecipe::Object) {
    s.features.vae_layers = {0, 1};
    s.features.stride = 2;
    s.largest_region = true;
    s.glare_area = 0.004;
    s.hole_map_level = 0.2;  // plates: hanging holes 0.07 .. 0.14, glare holes 0.25 .. 0.41
  } else {
    s.features.vae_layers = {2};
    s.features.stride = 4;
  }
  return s;
}

/// The OK images look like a texture (the predicted object reaches the image border): use all_foreground().
class ForegroundIsTexture : public Error {
 public:
  using Error::Error;
};

/// The mean fraction of the outer band (the outer 1/16 of each side, at least one pixel) that is foreground.
inline double border_foreground_fraction(const std::vector<Tensor<float, Cpu>>& masks) {
  double sum = 0.0;
  for (const auto& m_in : masks) {
    const auto m = detail::mask_arg(m_in, "border_foreground_fraction");
    const int h = static_cast<int>(m.dim(2)), w = static_cast<int>(m.dim(3));
    const int by = std::max(1, h / 16), bx = std::max(1, w / 16);
    double on = 0.0, n = 0.0;
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        if (y < by || x < bx || y >= h - by || x >= w - bx) on += m.data()[static_cast<int64_t>(y) * w + x] >= 0.5f, ++n;
    sum += on / n;
  }
  return masks.empty() ? 0.0 : sum / static_cast<double>(masks.size());
}

/// The object recipe's clean-up of a binary mask [1, 1, S, S] given the predictor's map [1, 1, h, w] (the
/// official recipe leaves the mask as it is).
inline Tensor<float, Cpu> clean_object_mask(const Tensor<float, Cpu>& mask, const Tensor<float, Cpu>& map,
                                            const ForegroundSettings& s) {
  auto m = s.largest_region ? largest_region(mask) : mask;
  if (s.glare_area <= 0.0 && s.hole_map_level > 1.0) return m;
  const auto level = resize_bilinear(map, static_cast<int>(m.dim(2)), static_cast<int>(m.dim(3)));
  const double small = s.glare_area * static_cast<double>(m.numel());
  return fill_holes(m, [&](const MaskRegion& hole) {
    double sum = 0.0;
    for (int64_t i : hole.pixels) sum += level.data()[i];
    const double n = static_cast<double>(hole.pixels.size());
    return n < small || sum >= s.hole_map_level * n;
  });
}

struct ForegroundFit {
  ForegroundPredictor predictor;
  std::vector<Tensor<float, Cpu>> maps;   ///< per image, [1, 1, h, w] in [0, 1] on the feature grid (1 = object)
  std::vector<Tensor<float, Cpu>> masks;  ///< per image, [1, 1, S, S] in {0, 1} at the images' size
  double border_fraction = 0.0;           ///< border_foreground_fraction(masks)
};

/// Fits the predictor on the OK images of one category (each [1, 3, S, S] in [-1, 1], one size S, a multiple of
/// the stride and of the VAE's downscale) and predicts their foregrounds. Throws ForegroundIsTexture when the
/// objects reach the border (see max_border_fraction), adabldm::Error when the predictor cannot be fitted.
template <class T, class Dev>
ForegroundFit fit_foregrounds(const models::AutoencoderKL<T, Dev>& vae, const std::vector<Tensor<float, Cpu>>& images,
                              Rng& rng, const ForegroundSettings& s = foreground_settings(ForegroundRecipe::Object)) {
  check(!images.empty(), "fit_foregrounds: no OK images");
  const int64_t S = images[0].dim(2);
  std::vector<Tensor<float, Cpu>> features;
  for (const auto& img : images) {
    check<ShapeError>(img.rank() == 4 && img.dim(2) == S && img.dim(3) == S, "fit_foregrounds: every image must be [1, 3, ",
                      S, ", ", S, "] like the first, got ", img.shape().str());
    features.push_back(foreground_features(vae, img, s.features));
  }
  ForegroundFit fit;
  fit.predictor = ForegroundPredictor::fit(features, rng, s.predictor);
  for (const auto& f : features) {
    fit.maps.push_back(fit.predictor.predict(f));
    const auto mask = ForegroundPredictor::binarise(fit.maps.back(), static_cast<int>(S), static_cast<int>(S), s.closing);
    fit.masks.push_back(clean_object_mask(mask, fit.maps.back(), s));
  }
  fit.border_fraction = border_foreground_fraction(fit.masks);
  if (fit.border_fraction > s.max_border_fraction)
    throw ForegroundIsTexture(adabldm::detail::concat(
        "the predicted foreground covers ", static_cast<int>(100.0 * fit.border_fraction + 0.5),
        " % of the image border on average (an object in front of a background covers at most ",
        static_cast<int>(100.0 * s.max_border_fraction + 0.5), " %): these images look like a texture, whose "
        "foreground is the whole image"));
  return fit;
}

}  // namespace adabldm::defect
