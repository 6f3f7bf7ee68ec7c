#pragma once
// The feature maps the foreground predictor (foreground.hpp) is fitted on: activations of the loaded model's
// own VAE encoder (no ImageNet network is available offline; the official code uses EfficientNet-B0 features.2,
// stride 4), optionally with the image's colour and the position, all on one grid of stride 4.
//
// Layers: 0 is conv_in (stride 1), i >= 1 the output of down block i - 1 (stride 2^i for SD's VAE; the last block
// does not downsample). Finer layers are area-averaged to the grid, coarser ones bilinearly enlarged to it.
// Which to use was measured on real parts (docs/foreground.md).
#include <algorithm>
#include <string>
#include <vector>

#include "adabldm/core/error.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/core/transfer.hpp"
#include "adabldm/defect/imgproc.hpp"
#include "adabldm/models/autoencoder_kl.hpp"
#include "adabldm/ops/elementwise.hpp"

namespace adabldm::defect {

struct ForegroundFeatureChoice {
  std::vector<int> vae_layers{2};  ///< encoder layers (see above); {2} = conv_in + two down blocks (the first recipe)
  float colour_weight = 0.0f;      ///< > 0: append the image's RGB in [-1, 1] times this
  float position_weight = 0.0f;    ///< > 0: append (y, x) in [-1, 1] times this
  int stride = 4;                  ///< the grid: image pixels per feature pixel
};

namespace detail {
/// Area average of [1, C, H, W] by an integer factor (H, W multiples of it).
inline Tensor<float, Cpu> average_pool(const Tensor<float, Cpu>& t_in, int k) {
  if (k == 1) return t_in;
  const auto t = plane_arg(t_in, "average_pool");
  const int64_t C = t.dim(1), H = t.dim(2), W = t.dim(3), h = H / k, w = W / k;
  auto out = Tensor<float, Cpu>::zeros({1, C, h, w});
  for (int64_t c = 0; c < C; ++c)
    for (int64_t y = 0; y < h * k; ++y)
      for (int64_t x = 0; x < w * k; ++x) out.data()[(c * h + y / k) * w + x / k] += t.data()[(c * H + y) * W + x];
  for (int64_t i = 0; i < out.numel(); ++i) out.data()[i] /= static_cast<float>(k * k);
  return out;
}
/// [1, C, H, W] brought to an h x w grid: area average when finer by an integer factor, else bilinear.
inline Tensor<float, Cpu> to_grid(const Tensor<float, Cpu>& t, int64_t h, int64_t w) {
  if (t.dim(2) == h && t.dim(3) == w) return t;
  if (t.dim(2) % h == 0 && t.dim(2) / h == t.dim(3) / w && t.dim(3) % w == 0)
    return average_pool(t, static_cast<int>(t.dim(2) / h));
  return resize_bilinear(t, static_cast<int>(h), static_cast<int>(w));
}
}  // namespace detail

/// Features of one image ([1, 3, H, W] in [-1, 1], H and W multiples of the stride and of the VAE's downscale) on
/// the H / stride x W / stride grid, [1, C, h, w]. The encoder runs on Dev in T; the result is on the host.
template <class T, class Dev>
Tensor<float, Cpu> foreground_features(const models::AutoencoderKL<T, Dev>& vae, const Tensor<float, Cpu>& image,
                                       const ForegroundFeatureChoice& choice = {}) {
  const auto& enc = vae.encoder;
  check<ShapeError>(image.rank() == 4 && image.dim(0) == 1 && image.dim(1) == enc.in_channels(),
                    "foreground_features: image must be [1, ", enc.in_channels(), ", H, W], got ", image.shape().str());
  check(choice.stride >= 1 && image.dim(2) % choice.stride == 0 && image.dim(3) % choice.stride == 0,
        "foreground_features: image size ", image.dim(2), "x", image.dim(3), " is not a multiple of the stride ",
        choice.stride);
  const int deepest = choice.vae_layers.empty() ? 0 : *std::max_element(choice.vae_layers.begin(), choice.vae_layers.end());
  check(deepest <= static_cast<int>(enc.down_blocks.size()) &&
            std::all_of(choice.vae_layers.begin(), choice.vae_layers.end(), [](int l) { return l >= 0; }),
        "foreground_features: VAE layers are 0 .. ", enc.down_blocks.size(), " for this autoencoder");
  const int64_t h = image.dim(2) / choice.stride, w = image.dim(3) / choice.stride;
  std::vector<Tensor<float, Cpu>> parts;
  if (!choice.vae_layers.empty()) {
    auto act = enc.conv_in(upload_as<T, Dev>(image));
    for (int layer = 0; layer <= deepest; ++layer) {
      if (layer > 0) act = enc.down_blocks[static_cast<std::size_t>(layer - 1)](act);
      if (std::count(choice.vae_layers.begin(), choice.vae_layers.end(), layer))
        parts.push_back(detail::to_grid(download_as<float>(act), h, w));
    }
  }
  if (choice.colour_weight > 0.0f) {
    auto rgb = detail::average_pool(image.contiguous(), choice.stride).clone();
    for (int64_t i = 0; i < rgb.numel(); ++i) rgb.data()[i] *= choice.colour_weight;
    parts.push_back(rgb);
  }
  if (choice.position_weight > 0.0f) {
    auto pos = Tensor<float, Cpu>::empty({1, 2, h, w});
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x) {
        pos.data()[y * w + x] = choice.position_weight * static_cast<float>(2.0 * (y + 0.5) / h - 1.0);
        pos.data()[(h + y) * w + x] = choice.position_weight * static_cast<float>(2.0 * (x + 0.5) / w - 1.0);
      }
    parts.push_back(pos);
  }
  check(!parts.empty(), "foreground_features: no features chosen (no VAE layer, colour or position)");
  return parts.size() == 1 ? parts[0].contiguous() : ops::concat<float>(parts, 1);
}

}  // namespace adabldm::defect
