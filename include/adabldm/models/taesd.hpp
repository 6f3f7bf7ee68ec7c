#pragma once
// TAESD, the Tiny AutoEncoder for Stable Diffusion (Ollin Boer Bohan, MIT licence), with the names of taesd.py:
// `encoder.<i>...` / `decoder.<i>...` index the two nn.Sequential stacks. Loads equally from diffusers'
// AutoencoderTiny names (`encoder.layers.<i>`, `decoder.layers.<i - 1>`) and from the split
// taesd_encoder / taesd_decoder files (the same names without `encoder.` / `decoder.`).
//
// Value conventions: taesd.py's encoder takes [0, 1] images and its decoder returns ~[0, 1] (encode01 /
// decode01); diffusers works on [-1, 1] (encode / decode). The latents are already in the UNet's scale
// (AutoencoderTiny's scaling_factor is 1).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "adabldm/io/json.hpp"
#include "adabldm/io/state_dict.hpp"
#include "adabldm/nn/layers.hpp"

namespace adabldm::models {

namespace taesd_detail {
/// Splits "<prefix><index>.<rest>" into index and ".<rest>"; false when `name` has another form.
inline bool split_layer_name(const std::string& name, const std::string& prefix, int& index, std::string& rest) {
  if (name.compare(0, prefix.size(), prefix) != 0) return false;
  const std::size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size() || dot - prefix.size() > 5) return false;
  for (std::size_t i = prefix.size(); i < dot; ++i)
    if (name[i] < '0' || name[i] > '9') return false;
  index = std::stoi(name.substr(prefix.size(), dot - prefix.size()));
  rest = name.substr(dot);
  return true;
}
}  // namespace taesd_detail

/// AutoencoderTiny's config (diffusers); the defaults are TAESD for SD1.x/2.x (TAESDXL is the same layout).
struct TaesdConfig {
  int64_t in_channels = 3, out_channels = 3, latent_channels = 4;
  std::vector<int64_t> encoder_block_out_channels{64, 64, 64, 64}, num_encoder_blocks{1, 3, 3, 3};
  std::vector<int64_t> decoder_block_out_channels{64, 64, 64, 64}, num_decoder_blocks{3, 3, 3, 1};
  double latent_magnitude = 3, latent_shift = 0.5;  ///< scale_latents: clamp(x / (2 * magnitude) + shift, 0, 1)
  double scaling_factor = 1.0;

  int64_t downscale() const { return int64_t{1} << (encoder_block_out_channels.size() - 1); }

  /// Reads a diffusers AutoencoderTiny config.json. Only layouts that diffusers can run (the same width at every
  /// level), ReLU and x2 upsampling are accepted; force_upcast and the legacy block_out_channels are ignored.
  static TaesdConfig from_json(const io::Config& c) {
    TaesdConfig t;
    t.in_channels = c.get<int64_t>("in_channels", t.in_channels);
    t.out_channels = c.get<int64_t>("out_channels", t.out_channels);
    t.latent_channels = c.get<int64_t>("latent_channels", t.latent_channels);
    t.encoder_block_out_channels = c.get("encoder_block_out_channels", t.encoder_block_out_channels);
    t.num_encoder_blocks = c.get("num_encoder_blocks", t.num_encoder_blocks);
    t.decoder_block_out_channels = c.get("decoder_block_out_channels", t.decoder_block_out_channels);
    t.num_decoder_blocks = c.get("num_decoder_blocks", t.num_decoder_blocks);
    t.latent_magnitude = c.get<double>("latent_magnitude", t.latent_magnitude);
    t.latent_shift = c.get<double>("latent_shift", t.latent_shift);
    t.scaling_factor = c.get<double>("scaling_factor", t.scaling_factor);
    auto levels = [&](const char* what, const std::vector<int64_t>& ch, const std::vector<int64_t>& blocks) {
      check<FormatError>(!ch.empty() && ch.size() == blocks.size() && ch.size() < 16, c.where, ": ", what,
                         " needs as many block_out_channels as num_blocks (1..15), got ", ch.size(), " and ",
                         blocks.size());
      for (std::size_t i = 0; i < ch.size(); ++i)
        check<FormatError>(ch[i] == ch[0] && blocks[i] >= 0, c.where, ": ", what,
                           " levels must all have the same width and a non-negative block count");
    };
    levels("encoder", t.encoder_block_out_channels, t.num_encoder_blocks);
    levels("decoder", t.decoder_block_out_channels, t.num_decoder_blocks);
    check<FormatError>(t.in_channels > 0 && t.out_channels > 0 && t.latent_channels > 0 && t.latent_magnitude > 0,
                       c.where, ": channel counts and latent_magnitude must be positive");
    c.expect_default("act_fn", "relu");
    c.expect_default("upsampling_scaling_factor", 2);
    c.expect_default("upsample_fn", "nearest");
    c.expect_default("shift_factor", 0.0);
    return t;
  }
};

/// Block: relu(conv.4(relu(conv.2(relu(conv.0(x))))) + skip(x)); skip is a bias-free 1x1 conv when the widths
/// differ, else the identity.
template <class T, class Dev = Cpu>
struct TaesdBlock {
  nn::Conv2d<T, Dev> conv0, conv2, conv4, skip;
  bool has_skip = false;

  TaesdBlock() = default;
  TaesdBlock(int64_t in, int64_t out)
      : conv0(in, out, 3, 1, 1), conv2(out, out, 3, 1, 1), conv4(out, out, 3, 1, 1), has_skip(in != out) {
    if (has_skip) skip = nn::Conv2d<T, Dev>(in, out, 1, 1, 0, /*with_bias=*/false);
  }
  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x) const {
    auto h = conv0(x);
    ops::activate_(h, ops::Activation::ReLU);
    h = conv2(h);
    ops::activate_(h, ops::Activation::ReLU);
    h = conv4(h);
    ops::add_(h, has_skip ? skip(x) : x);
    ops::activate_(h, ops::Activation::ReLU);
    return h;
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    conv0.visit(p + "conv.0.", f);
    conv2.visit(p + "conv.2.", f);
    conv4.visit(p + "conv.4.", f);
    if (has_skip) skip.visit(p + "skip.", f);
  }
};

/// One entry of taesd.py's nn.Sequential; only Conv and Block hold parameters, but every entry takes an index.
template <class T, class Dev = Cpu>
struct TaesdLayer {
  enum class Kind { Conv, Block, ReLU, Upsample, Clamp };
  Kind kind = Kind::ReLU;
  nn::Conv2d<T, Dev> conv;
  TaesdBlock<T, Dev> block;

  static TaesdLayer make(Kind k) {
    TaesdLayer l;
    l.kind = k;
    return l;
  }
  /// 3x3 conv with padding 1 (taesd.py's conv()).
  static TaesdLayer make_conv(int64_t in, int64_t out, int stride = 1, bool bias = true) {
    TaesdLayer l = make(Kind::Conv);
    l.conv = nn::Conv2d<T, Dev>(in, out, 3, stride, 1, bias);
    return l;
  }
  static TaesdLayer make_block(int64_t in, int64_t out) {
    TaesdLayer l = make(Kind::Block);
    l.block = TaesdBlock<T, Dev>(in, out);
    return l;
  }

  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x) const {
    switch (kind) {
      case Kind::Conv: return conv(x);
      case Kind::Block: return block(x);
      case Kind::Upsample: return ops::upsample_nearest2x(x);
      case Kind::ReLU: {
        auto y = x.clone();
        ops::activate_(y, ops::Activation::ReLU);
        return y;
      }
      case Kind::Clamp:  // tanh(x / 3) * 3: a soft clamp of the latent to (-3, 3)
        return ops::scale(ops::activate(ops::scale(x, static_cast<T>(1.0f / 3.0f)), ops::Activation::Tanh),
                          static_cast<T>(3.0f));
    }
    return x;
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    if (kind == Kind::Conv) conv.visit(p, f);
    if (kind == Kind::Block) block.visit(p, f);
  }
};

/// An nn.Sequential of TaesdLayers, visited as "<index>.".
template <class T, class Dev = Cpu>
struct TaesdSequential {
  std::vector<TaesdLayer<T, Dev>> layers;

  Tensor<T, Dev> operator()(Tensor<T, Dev> x) const {
    for (const auto& l : layers) x = l(x);
    return x;
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    nn::visit_list(layers, p, f);
  }
};

/// The diffusers AutoencoderTiny name of a taesd.py name: encoder.<i> -> encoder.layers.<i>,
/// decoder.<i> -> decoder.layers.<i - 1> (diffusers applies taesd.py's leading Clamp in forward()).
inline std::string autoencoder_tiny_name_from_taesd(const std::string& name) {
  int i = 0;
  std::string rest;
  if (taesd_detail::split_layer_name(name, "encoder.", i, rest)) return "encoder.layers." + std::to_string(i) + rest;
  if (taesd_detail::split_layer_name(name, "decoder.", i, rest) && i >= 1)
    return "decoder.layers." + std::to_string(i - 1) + rest;
  throw FormatError("TAESD: \"" + name + "\" is not a taesd.py parameter name (encoder.<i>... / decoder.<i>...)");
}

/// The taesd.py name of a diffusers AutoencoderTiny name (the inverse of autoencoder_tiny_name_from_taesd).
inline std::string taesd_name_from_autoencoder_tiny(const std::string& name) {
  int i = 0;
  std::string rest;
  if (taesd_detail::split_layer_name(name, "encoder.layers.", i, rest)) return "encoder." + std::to_string(i) + rest;
  if (taesd_detail::split_layer_name(name, "decoder.layers.", i, rest)) return "decoder." + std::to_string(i + 1) + rest;
  throw FormatError("TAESD: \"" + name +
                    "\" is not an AutoencoderTiny parameter name (encoder.layers.<i>... / decoder.layers.<i>...)");
}

/// A whole AutoencoderTiny state dict under taesd.py names (the tensors are shared, not copied).
inline io::StateDict taesd_from_autoencoder_tiny(const io::StateDict& sd) {
  io::StateDict out(sd.source());
  for (const auto& [name, ref] : sd.tensors()) out.add(taesd_name_from_autoencoder_tiny(name), ref);
  return out;
}

template <class T, class Dev = Cpu>
struct TAESD {
  TaesdConfig config;
  TaesdSequential<T, Dev> encoder, decoder;

  TAESD() : TAESD(TaesdConfig{}) {}
  /// The Sequential stacks of taesd.py / diffusers' EncoderTiny and DecoderTiny (with the decoder's Clamp).
  explicit TAESD(const TaesdConfig& c) : config(c) {
    using L = TaesdLayer<T, Dev>;
    const auto& ec = c.encoder_block_out_channels;
    for (std::size_t i = 0; i < ec.size(); ++i) {
      // the first level keeps the resolution; each later one starts with a bias-free stride-2 conv
      encoder.layers.push_back(i == 0 ? L::make_conv(c.in_channels, ec[0]) : L::make_conv(ec[i], ec[i], 2, false));
      for (int64_t b = 0; b < c.num_encoder_blocks[i]; ++b) encoder.layers.push_back(L::make_block(ec[i], ec[i]));
    }
    encoder.layers.push_back(L::make_conv(ec.back(), c.latent_channels));

    const auto& dc = c.decoder_block_out_channels;
    decoder.layers.push_back(L::make(L::Kind::Clamp));
    decoder.layers.push_back(L::make_conv(c.latent_channels, dc[0]));
    decoder.layers.push_back(L::make(L::Kind::ReLU));
    for (std::size_t i = 0; i < dc.size(); ++i) {
      const bool last = i + 1 == dc.size();
      for (int64_t b = 0; b < c.num_decoder_blocks[i]; ++b) decoder.layers.push_back(L::make_block(dc[i], dc[i]));
      if (!last) decoder.layers.push_back(L::make(L::Kind::Upsample));
      decoder.layers.push_back(last ? L::make_conv(dc[i], c.out_channels) : L::make_conv(dc[i], dc[i], 1, false));
    }
  }

  int64_t downscale() const { return config.downscale(); }

  /// taesd.py encoder: image [B, in_channels, H, W] in [0, 1], H and W multiples of downscale() -> latent.
  Tensor<T, Dev> encode01(const Tensor<T, Dev>& image01) const {
    const int64_t f = downscale();
    check<ShapeError>(image01.rank() == 4 && image01.dim(1) == config.in_channels, "TAESD encoder: image must be [B, ",
                      config.in_channels, ", H, W], got ", image01.shape().str());
    check<ShapeError>(image01.dim(2) % f == 0 && image01.dim(3) % f == 0 && image01.dim(2) > 0 && image01.dim(3) > 0,
                      "TAESD encoder: image size ", image01.dim(2), "x", image01.dim(3),
                      " is not a multiple of the downsampling factor ", f);
    return encoder(image01);
  }
  /// taesd.py decoder: latent [B, latent_channels, h, w] -> image ~[0, 1] (not clamped).
  Tensor<T, Dev> decode01(const Tensor<T, Dev>& latent) const {
    check<ShapeError>(latent.rank() == 4 && latent.dim(1) == config.latent_channels, "TAESD decoder: latent must be [B, ",
                      config.latent_channels, ", h, w], got ", latent.shape().str());
    return decoder(latent);
  }
  /// diffusers AutoencoderTiny.encode(image).latents for an image in [-1, 1].
  Tensor<T, Dev> encode(const Tensor<T, Dev>& image) const { return encode01(ops::affine(image, T(0.5f), T(0.5f))); }
  /// diffusers AutoencoderTiny.decode(latent).sample: an image in ~[-1, 1].
  Tensor<T, Dev> decode(const Tensor<T, Dev>& latent) const { return ops::affine(decode01(latent), T(2.0f), T(-1.0f)); }

  /// Raw latent -> [0, 1] (for storing latents as 8-bit images): clamp(x / (2 * magnitude) + shift, 0, 1).
  Tensor<T, Dev> scale_latents(const Tensor<T, Dev>& latent) const {
    const double range = 2 * config.latent_magnitude;
    return ops::clamp(ops::affine(latent, static_cast<T>(1.0 / range), static_cast<T>(config.latent_shift)),
                      static_cast<T>(0.0f), static_cast<T>(1.0f));
  }
  /// [0, 1] -> raw latent: (x - shift) * 2 * magnitude.
  Tensor<T, Dev> unscale_latents(const Tensor<T, Dev>& scaled) const {
    const double range = 2 * config.latent_magnitude;
    return ops::affine(scaled, static_cast<T>(range), static_cast<T>(-config.latent_shift * range));
  }

  /// Loads a whole-model state dict under taesd.py names or diffusers AutoencoderTiny names (told apart by the
  /// `layers.` level); strict: any missing, unexpected or mis-shaped name throws.
  void load(const io::StateDict& sd) {
    const bool diffusers = sd.has_prefix("encoder.layers.") || sd.has_prefix("decoder.layers.");
    nn::load_state_dict(*this, diffusers ? taesd_from_autoencoder_tiny(sd) : sd);
  }
  /// Loads the split taesd_encoder / taesd_decoder files (taesd.py names without the encoder./decoder. prefix).
  void load_split(const io::StateDict& encoder_sd, const io::StateDict& decoder_sd) {
    nn::load_state_dict(encoder, encoder_sd);
    nn::load_state_dict(decoder, decoder_sd);
  }

  template <class F>
  void visit(const std::string& p, F&& f) {
    encoder.visit(p + "encoder.", f);
    decoder.visit(p + "decoder.", f);
  }
};

}  // namespace adabldm::models
