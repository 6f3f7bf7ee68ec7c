#pragma once
// UNet2DConditionModel as in Stable Diffusion 1.x / 2.x (diffusers names), with optional ControlNet residuals.
#include <string>
#include <vector>

#include "adabldm/io/json.hpp"
#include "adabldm/models/unet_blocks.hpp"

namespace adabldm::models {

/// The UNet hyper-parameters (diffusers' config.json fields) this implementation supports.
struct UNetConfig {
  int64_t in_channels = 4, out_channels = 4, sample_size = 64;
  std::vector<std::string> down_block_types{"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                            "DownBlock2D"};
  std::vector<std::string> up_block_types{"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                          "CrossAttnUpBlock2D"};
  std::vector<int64_t> block_out_channels{320, 640, 1280, 1280};
  int64_t layers_per_block = 2;
  int64_t cross_attention_dim = 768;
  std::vector<int64_t> heads{8, 8, 8, 8};  ///< per down block (diffusers' attention_head_dim: a head COUNT)
  std::vector<int64_t> transformer_layers{1, 1, 1, 1};
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  bool flip_sin_to_cos = true;
  double freq_shift = 0;
  bool use_linear_projection = false;
  int downsample_padding = 1;
  double mid_block_scale_factor = 1;

  int64_t levels() const { return static_cast<int64_t>(block_out_channels.size()); }
  int64_t time_embed_dim() const { return block_out_channels[0] * 4; }

  /// Reads a diffusers UNet2DConditionModel (or ControlNetModel) config; options that change the architecture
  /// beyond SD1.x/2.x are rejected by name rather than silently ignored.
  static UNetConfig from_json(const io::Config& c) {
    UNetConfig u;
    u.in_channels = c.get<int64_t>("in_channels", u.in_channels);
    u.out_channels = c.get<int64_t>("out_channels", u.out_channels);
    u.sample_size = c.get<int64_t>("sample_size", u.sample_size);
    u.down_block_types = c.get("down_block_types", u.down_block_types);
    u.up_block_types = c.get("up_block_types", u.up_block_types);
    u.block_out_channels = c.get("block_out_channels", u.block_out_channels);
    const std::size_t n = u.block_out_channels.size();
    check<FormatError>(n > 0 && u.down_block_types.size() == n, c.where, ": down_block_types has ",
                       u.down_block_types.size(), " entries for ", n, " block_out_channels");
    if (c.has("up_block_types"))
      check<FormatError>(u.up_block_types.size() == n, c.where, ": up_block_types has ", u.up_block_types.size(),
                         " entries for ", n, " block_out_channels");
    u.layers_per_block = c.get<int64_t>("layers_per_block", u.layers_per_block);
    u.cross_attention_dim = c.get<int64_t>("cross_attention_dim", u.cross_attention_dim);
    // diffusers: num_attention_heads = num_attention_heads or attention_head_dim (a historic misnomer).
    u.heads = c.has("num_attention_heads") ? c.int_list("num_attention_heads", n, 8) : c.int_list("attention_head_dim", n, 8);
    u.transformer_layers = c.int_list("transformer_layers_per_block", n, 1);
    u.norm_num_groups = c.get<int64_t>("norm_num_groups", u.norm_num_groups);
    u.norm_eps = c.get<double>("norm_eps", u.norm_eps);
    u.flip_sin_to_cos = c.get<bool>("flip_sin_to_cos", u.flip_sin_to_cos);
    u.freq_shift = c.get<double>("freq_shift", u.freq_shift);
    u.use_linear_projection = c.get<bool>("use_linear_projection", u.use_linear_projection);
    u.downsample_padding = c.get<int>("downsample_padding", u.downsample_padding);
    u.mid_block_scale_factor = c.get<double>("mid_block_scale_factor", u.mid_block_scale_factor);
    for (const auto& t : u.down_block_types)
      check<FormatError>(t == "CrossAttnDownBlock2D" || t == "DownBlock2D", c.where, ": down block type \"", t,
                         "\" is not supported");
    for (const auto& t : u.up_block_types)
      check<FormatError>(t == "CrossAttnUpBlock2D" || t == "UpBlock2D", c.where, ": up block type \"", t,
                         "\" is not supported");
    c.expect_default("mid_block_type", "UNetMidBlock2DCrossAttn");
    c.expect_default("act_fn", "silu");
    c.expect_default("only_cross_attention", false);
    c.expect_default("dual_cross_attention", false);
    c.expect_default("class_embed_type", nullptr);
    c.expect_default("addition_embed_type", nullptr);
    c.expect_default("encoder_hid_dim", nullptr);
    c.expect_default("time_embedding_type", "positional");
    c.expect_default("time_embedding_dim", nullptr);
    c.expect_default("time_cond_proj_dim", nullptr);
    c.expect_default("num_class_embeds", nullptr);
    c.expect_default("resnet_time_scale_shift", "default");
    c.expect_default("conv_in_kernel", 3);
    c.expect_default("conv_out_kernel", 3);
    c.expect_default("center_input_sample", false);
    c.expect_default("attention_type", "default");
    c.expect_default("timestep_post_act", nullptr);
    c.expect_default("cross_attention_norm", nullptr);
    c.expect_default("reverse_transformer_layers_per_block", nullptr);
    c.expect_default("global_pool_conditions", false);
    return u;
  }

  AttentionSpec down_attention(std::size_t i) const {
    return {down_block_types[i] == "CrossAttnDownBlock2D", heads[i], cross_attention_dim, transformer_layers[i],
            use_linear_projection};
  }
  AttentionSpec mid_attention() const {
    return {true, heads.back(), cross_attention_dim, transformer_layers.back(), use_linear_projection};
  }
  AttentionSpec up_attention(std::size_t i) const {  // up block i mirrors down block n-1-i
    const std::size_t d = block_out_channels.size() - 1 - i;
    return {up_block_types[i] == "CrossAttnUpBlock2D", heads[d], cross_attention_dim, transformer_layers[d],
            use_linear_projection};
  }
};

/// The part the UNet and the ControlNet share: conv_in, the time embedding, the down blocks and the mid block.
template <class T, class Dev = Cpu>
struct UNetEncoder {
  nn::Conv2d<T, Dev> conv_in;
  nn::TimestepEmbedding<T, Dev> time_embedding;
  std::vector<UNetDownBlock<T, Dev>> down_blocks;
  UNetMidBlock<T, Dev> mid_block;

  UNetEncoder() = default;
  explicit UNetEncoder(const UNetConfig& c)
      : conv_in(c.in_channels, c.block_out_channels[0], 3, 1, 1),
        time_embedding(c.block_out_channels[0], c.time_embed_dim(), c.flip_sin_to_cos, c.freq_shift),
        mid_block(c.block_out_channels.back(), c.time_embed_dim(), c.norm_num_groups, c.norm_eps, c.mid_attention(),
                  c.mid_block_scale_factor) {
    int64_t in = c.block_out_channels[0];
    for (std::size_t i = 0; i < c.block_out_channels.size(); ++i) {
      const int64_t out = c.block_out_channels[i];
      const bool last = i + 1 == c.block_out_channels.size();
      down_blocks.emplace_back(in, out, c.time_embed_dim(), c.layers_per_block, c.norm_num_groups, c.norm_eps,
                               c.down_attention(i), !last, c.downsample_padding);
      in = out;
    }
  }

  /// [B] timesteps from one value per item (or one value for the whole batch).
  static std::vector<float> batch_timesteps(const std::vector<float>& t, int64_t batch) {
    check<ShapeError>(static_cast<int64_t>(t.size()) == batch || t.size() == 1, "UNet: ", t.size(),
                      " timesteps for a batch of ", batch);
    return t.size() == 1 ? std::vector<float>(static_cast<std::size_t>(batch), t[0]) : t;
  }

  template <class F>
  void visit(const std::string& p, F&& f) {
    conv_in.visit(p + "conv_in.", f);
    time_embedding.visit(p + "time_embedding.", f);
    nn::visit_list(down_blocks, p + "down_blocks.", f);
    mid_block.visit(p + "mid_block.", f);
  }
};

/// ControlNet residuals for the UNet: one per skip connection plus one for the mid block (already scaled).
template <class T, class Dev = Cpu>
struct ControlResiduals {
  std::vector<Tensor<T, Dev>> down;
  Tensor<T, Dev> mid;
  bool empty() const { return down.empty() && !mid.defined(); }
};

template <class T, class Dev = Cpu>
struct UNet2DConditionModel {
  UNetConfig config;
  UNetEncoder<T, Dev> encoder;  // conv_in, time_embedding, down_blocks, mid_block (names without a prefix)
  std::vector<UNetUpBlock<T, Dev>> up_blocks;
  nn::GroupNorm<T, Dev> conv_norm_out;
  nn::Conv2d<T, Dev> conv_out;

  UNet2DConditionModel() = default;
  explicit UNet2DConditionModel(const UNetConfig& c)
      : config(c), encoder(c), conv_norm_out(c.norm_num_groups, c.block_out_channels[0], c.norm_eps),
        conv_out(c.block_out_channels[0], c.out_channels, 3, 1, 1) {
    const auto& boc = c.block_out_channels;
    const std::size_t n = boc.size();
    int64_t out = boc[n - 1];
    for (std::size_t i = 0; i < n; ++i) {
      const int64_t prev = out;
      out = boc[n - 1 - i];
      const int64_t in = boc[n - 1 - std::min(i + 1, n - 1)];
      up_blocks.emplace_back(in, out, prev, c.time_embed_dim(), c.layers_per_block + 1, c.norm_num_groups,
                             c.norm_eps, c.up_attention(i), i + 1 != n);
    }
  }

  /// sample [B, in, h, w], timesteps (one per item or one for all), context [B, L, cross_attention_dim] ->
  /// noise prediction [B, out, h, w]. `control` adds ControlNet residuals to the skips and the mid block.
  Tensor<T, Dev> operator()(const Tensor<T, Dev>& sample, const std::vector<float>& timesteps,
                            const Tensor<T, Dev>& context, const ControlResiduals<T, Dev>& control = {}) const {
    expect_rank(sample, 4, "UNet sample");
    check<ShapeError>(sample.dim(1) == config.in_channels, "UNet: sample has ", sample.dim(1), " channels, the model ",
                      config.in_channels);
    check<ShapeError>(context.rank() == 3 && context.dim(0) == sample.dim(0) && context.dim(2) == config.cross_attention_dim,
                      "UNet: encoder_hidden_states must be [", sample.dim(0), ", L, ", config.cross_attention_dim,
                      "], got ", context.shape().str());
    const auto temb = encoder.time_embedding(UNetEncoder<T, Dev>::batch_timesteps(timesteps, sample.dim(0)));
    auto h = encoder.conv_in(sample);
    std::vector<Tensor<T, Dev>> skips{h};
    for (const auto& block : encoder.down_blocks) h = block(h, temb, context, skips);
    if (!control.down.empty()) {
      check<ShapeError>(control.down.size() == skips.size(), "UNet: ", control.down.size(),
                        " ControlNet down residuals for ", skips.size(), " skip connections");
      for (std::size_t i = 0; i < skips.size(); ++i) {
        check<ShapeError>(control.down[i].shape() == skips[i].shape(), "UNet: ControlNet residual ", i, " is ",
                          control.down[i].shape().str(), ", the skip connection ", skips[i].shape().str());
        skips[i] = ops::add(skips[i], control.down[i]);
      }
    }
    h = encoder.mid_block(h, temb, context);
    if (control.mid.defined()) {
      check<ShapeError>(control.mid.shape() == h.shape(), "UNet: ControlNet mid residual is ", control.mid.shape().str(),
                        ", the mid block output ", h.shape().str());
      h = ops::add(h, control.mid);
    }
    for (std::size_t i = 0; i < up_blocks.size(); ++i) {
      // The upsampler matches the size of the skip the next block will pop (odd latent sizes).
      const std::size_t used = up_blocks[i].resnets.size();
      int64_t up_h = 0, up_w = 0;
      if (!up_blocks[i].upsamplers.empty() && skips.size() > used) {
        const auto& next = skips[skips.size() - used - 1];
        up_h = next.dim(2);
        up_w = next.dim(3);
      }
      h = up_blocks[i](h, skips, temb, context, up_h, up_w);
    }
    return conv_out(conv_norm_out(h, ops::Activation::SiLU));
  }

  template <class F>
  void visit(const std::string& p, F&& f) {
    encoder.visit(p, f);
    nn::visit_list(up_blocks, p + "up_blocks.", f);
    conv_norm_out.visit(p + "conv_norm_out.", f);
    conv_out.visit(p + "conv_out.", f);
  }
};

}  // namespace adabldm::models
