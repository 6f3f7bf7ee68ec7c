#pragma once
// AutoencoderKL (diffusers names): Stable Diffusion's VAE. Also home of the VAE encoder and decoder that
// VQModel reuses (diffusers' Encoder / Decoder with DownEncoderBlock2D / UpDecoderBlock2D and UNetMidBlock2D).
//
// Conventions: images in [-1, 1]; `decode` takes an UNSCALED latent (what the posterior holds), the *_scaled
// functions the latent the UNet works on ((z - shift_factor) * scaling_factor).
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "adabldm/core/transfer.hpp"
#include "adabldm/core/rng.hpp"
#include "adabldm/io/json.hpp"
#include "adabldm/nn/attention.hpp"
#include "adabldm/nn/resnet.hpp"

namespace adabldm::models {

/// diffusers' Encoder / Decoder hard-code this epsilon for every GroupNorm (resnets, attention, conv_norm_out).
inline constexpr double kVaeNormEps = 1e-6;


/// The encoder/decoder layout that AutoencoderKL and VQModel configs share.
struct VaeLayout {
  int64_t in_channels = 3, out_channels = 3, latent_channels = 4;
  std::vector<int64_t> block_out_channels{64};
  int64_t layers_per_block = 1;
  int64_t norm_num_groups = 32;
  bool mid_block_add_attention = true;

  /// Spatial factor between image and latent (one stride-2 convolution per block but the last).
  int64_t downscale() const { return int64_t{1} << (block_out_channels.size() - 1); }

  /// Reads the layout keys of a diffusers AutoencoderKL / VQModel config.json; anything but DownEncoderBlock2D /
  /// UpDecoderBlock2D with SiLU is rejected by name.
  static VaeLayout from_json(const io::Config& c, int64_t default_latent_channels) {
    VaeLayout l;
    l.latent_channels = default_latent_channels;
    l.in_channels = c.get<int64_t>("in_channels", l.in_channels);
    l.out_channels = c.get<int64_t>("out_channels", l.out_channels);
    l.latent_channels = c.get<int64_t>("latent_channels", l.latent_channels);
    l.block_out_channels = c.get("block_out_channels", l.block_out_channels);
    l.layers_per_block = c.get<int64_t>("layers_per_block", l.layers_per_block);
    l.norm_num_groups = c.get<int64_t>("norm_num_groups", l.norm_num_groups);
    l.mid_block_add_attention = c.get<bool>("mid_block_add_attention", l.mid_block_add_attention);
    const std::size_t n = l.block_out_channels.size();
    check<FormatError>(n > 0 && n < 16, c.where, ": block_out_channels must have 1..15 entries, has ", n);
    const std::pair<const char*, std::string> block_types[] = {{"down_block_types", "DownEncoderBlock2D"},
                                                               {"up_block_types", "UpDecoderBlock2D"}};
    for (const auto& [key, expected] : block_types) {
      const auto types = c.get(key, std::vector<std::string>(n, expected));
      check<FormatError>(types.size() == n, c.where, ": ", key, " has ", types.size(), " entries for ", n,
                         " block_out_channels");
      for (const auto& t : types)
        check<FormatError>(t == expected, c.where, ": ", key, " entry \"", t, "\" is not supported (only ", expected,
                           ")");
    }
    check<FormatError>(l.in_channels > 0 && l.out_channels > 0 && l.latent_channels > 0 && l.layers_per_block > 0,
                       c.where, ": channel counts and layers_per_block must be positive");
    for (int64_t ch : l.block_out_channels)
      check<FormatError>(ch > 0 && l.norm_num_groups > 0 && ch % l.norm_num_groups == 0, c.where, ": ", ch,
                         " channels do not split into norm_num_groups = ", l.norm_num_groups, " groups");
    c.expect_default("act_fn", "silu");
    return l;
  }
};

/// The mid block's self-attention: GroupNorm -> one head over all C channels (q/k/v/out Linear with bias, scale
/// C^-0.5) on the H*W tokens -> + residual.
template <class T, class Dev = Cpu>
struct VaeAttentionBlock {
  nn::GroupNorm<T, Dev> group_norm;
  nn::Attention<T, Dev> attention;  // to_q, to_k, to_v, to_out.0

  VaeAttentionBlock() = default;
  VaeAttentionBlock(int64_t channels, int64_t groups)
      : group_norm(groups, channels, kVaeNormEps), attention(channels, channels, 1, channels, /*qkv_bias=*/true) {}

  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x) const {
    const int64_t B = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
    auto tokens = group_norm(x).reshape({B, C, H * W}).permute({0, 2, 1}).contiguous();  // [B, H*W, C]
    auto h = attention(tokens).permute({0, 2, 1}).contiguous().reshape({B, C, H, W});
    return ops::add(h, x);
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    group_norm.visit(p + "group_norm.", f);
    attention.visit(p, f);
  }
};

/// UNetMidBlock2D without time embedding: resnets.0 -> [attentions.0] -> resnets.1.
template <class T, class Dev = Cpu>
struct VaeMidBlock {
  std::vector<nn::ResnetBlock2D<T, Dev>> resnets;
  std::vector<VaeAttentionBlock<T, Dev>> attentions;

  VaeMidBlock() = default;
  VaeMidBlock(int64_t channels, int64_t groups, bool with_attention) {
    resnets.emplace_back(channels, channels, 0, groups, kVaeNormEps);
    if (with_attention) attentions.emplace_back(channels, groups);
    resnets.emplace_back(channels, channels, 0, groups, kVaeNormEps);
  }
  Tensor<T, Dev> operator()(Tensor<T, Dev> h) const {
    h = resnets[0](h);
    for (const auto& a : attentions) h = a(h);
    return resnets[1](h);
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    nn::visit_list(attentions, p + "attentions.", f);
    nn::visit_list(resnets, p + "resnets.", f);
  }
};

/// DownEncoderBlock2D: resnets, then (except in the last block) a stride-2 conv padded right/bottom only.
template <class T, class Dev = Cpu>
struct VaeDownBlock {
  std::vector<nn::ResnetBlock2D<T, Dev>> resnets;
  std::vector<nn::Downsample2D<T, Dev>> downsamplers;

  VaeDownBlock() = default;
  VaeDownBlock(int64_t in, int64_t out, int64_t layers, int64_t groups, bool downsample) {
    for (int64_t j = 0; j < layers; ++j) resnets.emplace_back(j == 0 ? in : out, out, 0, groups, kVaeNormEps);
    if (downsample) downsamplers.emplace_back(out, /*padding=*/0);
  }
  Tensor<T, Dev> operator()(Tensor<T, Dev> h) const {
    for (const auto& r : resnets) h = r(h);
    for (const auto& d : downsamplers) h = d(h);
    return h;
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    nn::visit_list(resnets, p + "resnets.", f);
    nn::visit_list(downsamplers, p + "downsamplers.", f);
  }
};

/// UpDecoderBlock2D: resnets, then (except in the last block) nearest x2 + conv3x3.
template <class T, class Dev = Cpu>
struct VaeUpBlock {
  std::vector<nn::ResnetBlock2D<T, Dev>> resnets;
  std::vector<nn::Upsample2D<T, Dev>> upsamplers;

  VaeUpBlock() = default;
  VaeUpBlock(int64_t in, int64_t out, int64_t layers, int64_t groups, bool upsample) {
    for (int64_t j = 0; j < layers; ++j) resnets.emplace_back(j == 0 ? in : out, out, 0, groups, kVaeNormEps);
    if (upsample) upsamplers.emplace_back(out);
  }
  Tensor<T, Dev> operator()(Tensor<T, Dev> h) const {
    for (const auto& r : resnets) h = r(h);
    for (const auto& u : upsamplers) h = u(h);
    return h;
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    nn::visit_list(resnets, p + "resnets.", f);
    nn::visit_list(upsamplers, p + "upsamplers.", f);
  }
};

/// diffusers' Encoder: conv_in -> down blocks -> mid block -> GroupNorm + SiLU -> conv_out. `out_channels` is
/// 2 * latent_channels for the KL VAE (mean and logvar, double_z) and latent_channels for VQModel.
template <class T, class Dev = Cpu>
struct VaeEncoder {
  nn::Conv2d<T, Dev> conv_in;
  std::vector<VaeDownBlock<T, Dev>> down_blocks;
  VaeMidBlock<T, Dev> mid_block;
  nn::GroupNorm<T, Dev> conv_norm_out;
  nn::Conv2d<T, Dev> conv_out;

  VaeEncoder() = default;
  VaeEncoder(const VaeLayout& l, int64_t out_channels)
      : conv_in(l.in_channels, l.block_out_channels[0], 3, 1, 1),
        mid_block(l.block_out_channels.back(), l.norm_num_groups, l.mid_block_add_attention),
        conv_norm_out(l.norm_num_groups, l.block_out_channels.back(), kVaeNormEps),
        conv_out(l.block_out_channels.back(), out_channels, 3, 1, 1) {
    const auto& boc = l.block_out_channels;
    for (std::size_t i = 0; i < boc.size(); ++i)
      down_blocks.emplace_back(i == 0 ? boc[0] : boc[i - 1], boc[i], l.layers_per_block, l.norm_num_groups,
                               i + 1 < boc.size());
  }

  int64_t in_channels() const { return conv_in.in_channels(); }
  int64_t downscale() const {
    int64_t f = 1;
    for (const auto& b : down_blocks) f <<= b.downsamplers.size();
    return f;
  }

  /// image [B, in_channels, H, W] with H and W multiples of downscale() -> [B, out, H / f, W / f].
  Tensor<T, Dev> operator()(const Tensor<T, Dev>& image) const {
    const int64_t f = downscale();
    check<ShapeError>(image.rank() == 4 && image.dim(1) == in_channels(), "VAE encoder: image must be [B, ",
                      in_channels(), ", H, W], got ", image.shape().str());
    check<ShapeError>(image.dim(2) % f == 0 && image.dim(3) % f == 0 && image.dim(2) > 0 && image.dim(3) > 0,
                      "VAE encoder: image size ", image.dim(2), "x", image.dim(3),
                      " is not a multiple of the downsampling factor ", f);
    auto h = conv_in(image);
    for (const auto& b : down_blocks) h = b(h);
    h = mid_block(h);
    return conv_out(conv_norm_out(h, ops::Activation::SiLU));
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    conv_in.visit(p + "conv_in.", f);
    nn::visit_list(down_blocks, p + "down_blocks.", f);
    mid_block.visit(p + "mid_block.", f);
    conv_norm_out.visit(p + "conv_norm_out.", f);
    conv_out.visit(p + "conv_out.", f);
  }
};

/// diffusers' Decoder (norm_type "group"): conv_in -> mid block -> up blocks (channels reversed, one more resnet
/// per block than the encoder) -> GroupNorm + SiLU -> conv_out. Its own module so that it can be fine-tuned alone.
template <class T, class Dev = Cpu>
struct VaeDecoder {
  nn::Conv2d<T, Dev> conv_in;
  VaeMidBlock<T, Dev> mid_block;
  std::vector<VaeUpBlock<T, Dev>> up_blocks;
  nn::GroupNorm<T, Dev> conv_norm_out;
  nn::Conv2d<T, Dev> conv_out;

  VaeDecoder() = default;
  explicit VaeDecoder(const VaeLayout& l)
      : conv_in(l.latent_channels, l.block_out_channels.back(), 3, 1, 1),
        mid_block(l.block_out_channels.back(), l.norm_num_groups, l.mid_block_add_attention),
        conv_norm_out(l.norm_num_groups, l.block_out_channels[0], kVaeNormEps),
        conv_out(l.block_out_channels[0], l.out_channels, 3, 1, 1) {
    const auto& boc = l.block_out_channels;
    const std::size_t n = boc.size();
    for (std::size_t i = 0; i < n; ++i)
      up_blocks.emplace_back(boc[n - (i == 0 ? 1 : i)], boc[n - 1 - i], l.layers_per_block + 1, l.norm_num_groups,
                             i + 1 < n);
  }

  int64_t latent_channels() const { return conv_in.in_channels(); }

  /// z [B, latent_channels, h, w] (after post_quant_conv) -> image [B, out, h * f, w * f].
  Tensor<T, Dev> operator()(const Tensor<T, Dev>& z) const {
    check<ShapeError>(z.rank() == 4 && z.dim(1) == latent_channels(), "VAE decoder: latent must be [B, ",
                      latent_channels(), ", h, w], got ", z.shape().str());
    auto h = mid_block(conv_in(z));
    for (const auto& b : up_blocks) h = b(h);
    return conv_out(conv_norm_out(h, ops::Activation::SiLU));
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    conv_in.visit(p + "conv_in.", f);
    mid_block.visit(p + "mid_block.", f);
    nn::visit_list(up_blocks, p + "up_blocks.", f);
    conv_norm_out.visit(p + "conv_norm_out.", f);
    conv_out.visit(p + "conv_out.", f);
  }
};

/// The AutoencoderKL hyper-parameters (diffusers' config.json fields) this implementation supports.
struct AutoencoderKLConfig {
  VaeLayout layout;
  int64_t sample_size = 32;
  double scaling_factor = 0.18215;
  double shift_factor = 0.0;  ///< SD3/Flux VAEs; 0 (absent) for SD1.x/2.x
  bool use_quant_conv = true, use_post_quant_conv = true;

  /// Reads a diffusers AutoencoderKL config. force_upcast (a precision hint) is ignored; per-channel
  /// latents_mean / latents_std are rejected because encode_scaled / decode_scaled would silently ignore them.
  static AutoencoderKLConfig from_json(const io::Config& c) {
    AutoencoderKLConfig k;
    k.layout = VaeLayout::from_json(c, 4);
    k.sample_size = c.get<int64_t>("sample_size", k.sample_size);
    k.scaling_factor = c.get<double>("scaling_factor", k.scaling_factor);
    k.shift_factor = c.get<double>("shift_factor", k.shift_factor);
    k.use_quant_conv = c.get<bool>("use_quant_conv", k.use_quant_conv);
    k.use_post_quant_conv = c.get<bool>("use_post_quant_conv", k.use_post_quant_conv);
    check<FormatError>(k.scaling_factor != 0.0 && std::isfinite(k.scaling_factor), c.where,
                       ": scaling_factor must be a non-zero number");
    c.expect_default("latents_mean", nullptr);
    c.expect_default("latents_std", nullptr);
    return k;
  }
};

/// DiagonalGaussianDistribution: the posterior q(z | x) given by the encoder's moments (mean ++ logvar).
template <class T, class Dev = Cpu>
struct DiagonalGaussian {
  Tensor<T, Dev> mean, logvar, std;  // logvar clamped to [-30, 20]; std = exp(logvar / 2)

  /// moments [B, 2C, h, w] -> mean = first C channels, logvar = last C.
  static DiagonalGaussian from_moments(const Tensor<T, Dev>& moments) {
    check<ShapeError>(moments.rank() == 4 && moments.dim(1) % 2 == 0, "DiagonalGaussian: moments must be [B, 2C, h, w], got ",
                      moments.shape().str());
    const int64_t C = moments.dim(1) / 2;
    DiagonalGaussian g;
    g.mean = moments.narrow(1, 0, C).contiguous();
    g.logvar = ops::map(moments.narrow(1, C, C), [](T v) { return std::clamp(v, T(-30), T(20)); });
    g.std = ops::map(g.logvar, [](T v) { return static_cast<T>(std::exp(T(0.5) * v)); });
    return g;
  }
  /// mean + std * eps with eps ~ N(0, 1) from `rng` (our Philox stream, not torch's).
  Tensor<T, Dev> sample(Rng& rng) const {
    const auto eps = rng.normal<T>(mean.shape());
    auto z = Tensor<T, Dev>::empty(mean.shape());
    const T *m = mean.data(), *s = std.data(), *e = eps.data();
    T* out = z.data();
    parallel_for(z.numel(), [&](int64_t i) { out[i] = m[i] + s[i] * e[i]; }, 1 << 14);
    return z;
  }
  const Tensor<T, Dev>& mode() const { return mean; }
};

/// The latent the UNet sees from the posterior's moments (host): (mean, or a posterior sample when rng is given,
/// - shift) * scaling.
template <class T>
Tensor<T, Cpu> scaled_latent(const AutoencoderKLConfig& config, const Tensor<T, Cpu>& moments, Rng* rng = nullptr) {
  const auto posterior = DiagonalGaussian<T, Cpu>::from_moments(moments);
  const auto z = rng ? posterior.sample(*rng) : posterior.mean;
  const T shift = static_cast<T>(config.shift_factor), scaling = static_cast<T>(config.scaling_factor);
  return ops::map(z, [=](T v) { return (v - shift) * scaling; });
}
/// latent / scaling + shift (host): a UNet-space latent back to the decoder's input.
template <class T>
Tensor<T, Cpu> unscaled_latent(const AutoencoderKLConfig& config, const Tensor<T, Cpu>& latent) {
  const T shift = static_cast<T>(config.shift_factor), scaling = static_cast<T>(config.scaling_factor);
  return ops::map(latent, [=](T v) { return v / scaling + shift; });
}

template <class T, class Dev = Cpu>
struct AutoencoderKL {
  AutoencoderKLConfig config;
  VaeEncoder<T, Dev> encoder;
  VaeDecoder<T, Dev> decoder;
  nn::Conv2d<T, Dev> quant_conv, post_quant_conv;  // 1x1; absent when use_(post_)quant_conv is false

  AutoencoderKL() = default;
  explicit AutoencoderKL(const AutoencoderKLConfig& c)
      : config(c), encoder(c.layout, 2 * c.layout.latent_channels), decoder(c.layout) {
    const int64_t L = c.layout.latent_channels;
    if (c.use_quant_conv) quant_conv = nn::Conv2d<T, Dev>(2 * L, 2 * L, 1);
    if (c.use_post_quant_conv) post_quant_conv = nn::Conv2d<T, Dev>(L, L, 1);
  }

  int64_t latent_channels() const { return config.layout.latent_channels; }
  int64_t downscale() const { return config.layout.downscale(); }

  /// vae.encoder(image): [B, 2 * latent_channels, H / f, W / f], before quant_conv.
  Tensor<T, Dev> encoder_out(const Tensor<T, Dev>& image) const { return encoder(image); }
  /// quant_conv(encoder(image)) = the posterior's parameters (mean ++ logvar on the channels).
  Tensor<T, Dev> moments(const Tensor<T, Dev>& image) const {
    auto h = encoder(image);
    return config.use_quant_conv ? quant_conv(h) : h;
  }
  /// vae.encode(image).latent_dist for an image in [-1, 1].
  DiagonalGaussian<T, Dev> encode(const Tensor<T, Dev>& image) const {
    return DiagonalGaussian<T, Dev>::from_moments(moments(image));
  }
  /// vae.decode(z).sample: post_quant_conv + decoder on an UNSCALED latent -> image in ~[-1, 1].
  Tensor<T, Dev> decode(const Tensor<T, Dev>& z) const {
    check<ShapeError>(z.rank() == 4 && z.dim(1) == latent_channels(), "AutoencoderKL.decode: latent must be [B, ",
                      latent_channels(), ", h, w], got ", z.shape().str());
    return decoder(config.use_post_quant_conv ? post_quant_conv(z) : z);
  }

  /// The latent the UNet sees: (posterior mean, or a posterior sample when rng is given, - shift) * scaling.
  /// On a device, the moments come to the host for the posterior (a few kilobytes) and the latent goes back.
  Tensor<T, Dev> encode_scaled(const Tensor<T, Dev>& image, Rng* rng = nullptr) const {
    return upload_as<T, Dev>(scaled_latent(config, download_as<T>(moments(image)), rng));
  }
  /// decode(latent / scaling + shift): a UNet-space latent back to an image.
  Tensor<T, Dev> decode_scaled(const Tensor<T, Dev>& latent) const {
    return decode(upload_as<T, Dev>(unscaled_latent(config, download_as<T>(latent))));
  }

  template <class F>
  void visit(const std::string& p, F&& f) {
    encoder.visit(p + "encoder.", f);
    decoder.visit(p + "decoder.", f);
    if (config.use_quant_conv) quant_conv.visit(p + "quant_conv.", f);
    if (config.use_post_quant_conv) post_quant_conv.visit(p + "post_quant_conv.", f);
  }
};

}  // namespace adabldm::models
