#pragma once
// ControlNetModel (diffusers names): AdaBLDM's trimap encoder. A trainable copy of the UNet encoder whose input
// gets the conditioning image's embedding (the "hint block") added after conv_in, and whose skip and mid outputs
// pass through zero-initialised 1x1 convolutions to become residuals for the frozen UNet.
#include <string>
#include <vector>

#include "adabldm/models/unet.hpp"

namespace adabldm::models {

struct ControlNetConfig {
  UNetConfig unet;
  int64_t conditioning_channels = 3;
  std::vector<int64_t> conditioning_embedding_out_channels{16, 32, 96, 256};

  static ControlNetConfig from_json(const io::Config& c) {
    ControlNetConfig cn;
    cn.unet = UNetConfig::from_json(c);
    cn.conditioning_channels = c.get<int64_t>("conditioning_channels", cn.conditioning_channels);
    cn.conditioning_embedding_out_channels =
        c.get("conditioning_embedding_out_channels", cn.conditioning_embedding_out_channels);
    check<FormatError>(!cn.conditioning_embedding_out_channels.empty(), c.where,
                       ": conditioning_embedding_out_channels is empty");
    c.expect_default("controlnet_conditioning_channel_order", "rgb");
    return cn;
  }
};

/// conv_in -> SiLU -> [conv -> SiLU, stride-2 conv -> SiLU] per level -> conv_out (zero-initialised, no SiLU).
template <class T, class Dev = Cpu>
struct ControlNetConditioningEmbedding {
  nn::Conv2d<T, Dev> conv_in, conv_out;
  std::vector<nn::Conv2d<T, Dev>> blocks;

  ControlNetConditioningEmbedding() = default;
  ControlNetConditioningEmbedding(int64_t cond_channels, const std::vector<int64_t>& ch, int64_t embedding_channels)
      : conv_in(cond_channels, ch[0], 3, 1, 1), conv_out(ch.back(), embedding_channels, 3, 1, 1) {
    for (std::size_t i = 0; i + 1 < ch.size(); ++i) {
      blocks.emplace_back(ch[i], ch[i], 3, 1, 1);
      blocks.emplace_back(ch[i], ch[i + 1], 3, 2, 1);
    }
  }
  Tensor<T, Dev> operator()(const Tensor<T, Dev>& cond) const {
    auto h = conv_in(cond);
    ops::activate_(h, ops::Activation::SiLU);
    for (const auto& b : blocks) {
      h = b(h);
      ops::activate_(h, ops::Activation::SiLU);
    }
    return conv_out(h);
  }
  /// How much the embedding downsamples (2 per stride-2 conv).
  int64_t downscale() const { return int64_t{1} << (blocks.size() / 2); }
  template <class F>
  void visit(const std::string& p, F&& f) {
    conv_in.visit(p + "conv_in.", f);
    nn::visit_list(blocks, p + "blocks.", f);
    conv_out.visit(p + "conv_out.", f);
  }
};

template <class T, class Dev = Cpu>
struct ControlNetModel {
  ControlNetConfig config;
  UNetEncoder<T, Dev> encoder;  // conv_in, time_embedding, down_blocks, mid_block
  ControlNetConditioningEmbedding<T, Dev> controlnet_cond_embedding;
  std::vector<nn::Conv2d<T, Dev>> controlnet_down_blocks;
  nn::Conv2d<T, Dev> controlnet_mid_block;

  ControlNetModel() = default;
  explicit ControlNetModel(const ControlNetConfig& c)
      : config(c), encoder(c.unet),
        controlnet_cond_embedding(c.conditioning_channels, c.conditioning_embedding_out_channels,
                                  c.unet.block_out_channels[0]),
        controlnet_mid_block(c.unet.block_out_channels.back(), c.unet.block_out_channels.back(), 1) {
    // One zero conv per skip connection: conv_in, every resnet(+attention) output, every downsampler.
    const auto& boc = c.unet.block_out_channels;
    controlnet_down_blocks.emplace_back(boc[0], boc[0], 1);
    for (std::size_t i = 0; i < boc.size(); ++i) {
      for (int64_t j = 0; j < c.unet.layers_per_block; ++j) controlnet_down_blocks.emplace_back(boc[i], boc[i], 1);
      if (i + 1 < boc.size()) controlnet_down_blocks.emplace_back(boc[i], boc[i], 1);
    }
  }

  /// The names that start at zero in a fresh trimap encoder (ControlNet's zero convolutions).
  static std::vector<std::string> zero_initialised() {
    return {"controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out."};
  }

  /// ControlNetModel.from_unet / tool_add_control: the encoder weights copied from the UNet, the hint block
  /// initialised as PyTorch does (seeded by `rng`) and every zero conv set to zero.
  static ControlNetModel from_unet(const UNet2DConditionModel<T, Dev>& unet, int64_t conditioning_channels,
                                   const std::vector<int64_t>& embedding_channels, Rng& rng) {
    ControlNetConfig c;
    c.unet = unet.config;
    c.conditioning_channels = conditioning_channels;
    c.conditioning_embedding_out_channels = embedding_channels;
    ControlNetModel cn(c);
    // visit() is non-const, but copying only reads the UNet's parameters.
    nn::copy_shared_parameters(cn.encoder, const_cast<UNetEncoder<T, Dev>&>(unet.encoder));
    nn::init_missing(cn, rng, zero_initialised());
    return cn;
  }

  /// sample [B, in, h, w], timesteps, context [B, L, D], cond [B, C, h*s, w*s] in [0, 1] -> residuals x scale.
  ControlResiduals<T, Dev> operator()(const Tensor<T, Dev>& sample, const std::vector<float>& timesteps,
                                      const Tensor<T, Dev>& context, const Tensor<T, Dev>& cond, T scale = T(1.0f)) const {
    const auto& uc = config.unet;
    expect_rank(sample, 4, "ControlNet sample");
    check<ShapeError>(sample.dim(1) == uc.in_channels, "ControlNet: sample has ", sample.dim(1), " channels, the model ",
                      uc.in_channels);
    check<ShapeError>(context.rank() == 3 && context.dim(0) == sample.dim(0) && context.dim(2) == uc.cross_attention_dim,
                      "ControlNet: encoder_hidden_states must be [", sample.dim(0), ", L, ", uc.cross_attention_dim,
                      "], got ", context.shape().str());
    const int64_t s = controlnet_cond_embedding.downscale();
    check<ShapeError>(cond.rank() == 4 && cond.dim(0) == sample.dim(0) && cond.dim(1) == config.conditioning_channels &&
                          cond.dim(2) == sample.dim(2) * s && cond.dim(3) == sample.dim(3) * s,
                      "ControlNet: controlnet_cond must be [", sample.dim(0), ", ", config.conditioning_channels, ", ",
                      sample.dim(2) * s, ", ", sample.dim(3) * s, "], got ", cond.shape().str());
    const auto temb = encoder.time_embedding(UNetEncoder<T, Dev>::batch_timesteps(timesteps, sample.dim(0)));
    auto h = ops::add(encoder.conv_in(sample), controlnet_cond_embedding(cond));
    std::vector<Tensor<T, Dev>> skips{h};
    for (const auto& block : encoder.down_blocks) h = block(h, temb, context, skips);
    h = encoder.mid_block(h, temb, context);
    ControlResiduals<T, Dev> out;
    for (std::size_t i = 0; i < skips.size(); ++i)
      out.down.push_back(ops::scale(controlnet_down_blocks[i](skips[i]), scale));
    out.mid = ops::scale(controlnet_mid_block(h), scale);
    return out;
  }

  template <class F>
  void visit(const std::string& p, F&& f) {
    encoder.visit(p, f);
    controlnet_cond_embedding.visit(p + "controlnet_cond_embedding.", f);
    nn::visit_list(controlnet_down_blocks, p + "controlnet_down_blocks.", f);
    controlnet_mid_block.visit(p + "controlnet_mid_block.", f);
  }
};

}  // namespace adabldm::models
