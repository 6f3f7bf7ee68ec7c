#pragma once
// The UNet's down, mid and up blocks (diffusers CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn,
// CrossAttnUpBlock2D / UpBlock2D). A block without attentions is the plain variant. Every resnet and transformer
// call goes through autograd::maybe_checkpoint: a direct call unless autograd::CheckpointBlocks is on in training.
#include <string>
#include <vector>

#include "adabldm/autograd/checkpoint.hpp"
#include "adabldm/nn/attention.hpp"
#include "adabldm/nn/resnet.hpp"

namespace adabldm::models {

/// The shape of the attention layers of one block.
struct AttentionSpec {
  bool enabled = false;
  int64_t heads = 8;
  int64_t cross_dim = 768;
  int64_t layers = 1;  ///< transformer_layers_per_block
  bool linear_projection = false;
};

template <class T, class Dev = Cpu>
struct UNetDownBlock {
  std::vector<nn::ResnetBlock2D<T, Dev>> resnets;
  std::vector<nn::Transformer2DModel<T, Dev>> attentions;
  std::vector<nn::Downsample2D<T, Dev>> downsamplers;

  UNetDownBlock() = default;
  UNetDownBlock(int64_t in, int64_t out, int64_t temb, int64_t layers, int64_t groups, double eps,
                const AttentionSpec& attn, bool downsample, int downsample_padding) {
    for (int64_t j = 0; j < layers; ++j) {
      resnets.emplace_back(j == 0 ? in : out, out, temb, groups, eps);
      if (attn.enabled)
        attentions.emplace_back(out, attn.heads, attn.cross_dim, groups, attn.layers, attn.linear_projection);
    }
    if (downsample) downsamplers.emplace_back(out, downsample_padding);
  }

  /// Runs the block and appends each output that the up path will need as a skip connection.
  Tensor<T, Dev> operator()(Tensor<T, Dev> h, const Tensor<T, Dev>& temb, const Tensor<T, Dev>& context,
                            std::vector<Tensor<T, Dev>>& skips) const {
    for (std::size_t j = 0; j < resnets.size(); ++j) {
      h = autograd::maybe_checkpoint(resnets[j], h, temb);
      if (!attentions.empty()) h = autograd::maybe_checkpoint(attentions[j], h, context);
      skips.push_back(h);
    }
    for (const auto& d : downsamplers) {
      h = d(h);
      skips.push_back(h);
    }
    return h;
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    nn::visit_list(resnets, p + "resnets.", f);
    nn::visit_list(attentions, p + "attentions.", f);
    nn::visit_list(downsamplers, p + "downsamplers.", f);
  }
};

/// resnets.0 -> (attentions.i -> resnets.i+1) for each attention layer.
template <class T, class Dev = Cpu>
struct UNetMidBlock {
  std::vector<nn::ResnetBlock2D<T, Dev>> resnets;
  std::vector<nn::Transformer2DModel<T, Dev>> attentions;

  UNetMidBlock() = default;
  UNetMidBlock(int64_t channels, int64_t temb, int64_t groups, double eps, const AttentionSpec& attn,
               double output_scale_factor) {
    resnets.emplace_back(channels, channels, temb, groups, eps);
    attentions.emplace_back(channels, attn.heads, attn.cross_dim, groups, attn.layers, attn.linear_projection);
    resnets.emplace_back(channels, channels, temb, groups, eps);
    for (auto& r : resnets) r.output_scale_factor = output_scale_factor;
  }
  Tensor<T, Dev> operator()(Tensor<T, Dev> h, const Tensor<T, Dev>& temb, const Tensor<T, Dev>& context) const {
    h = autograd::maybe_checkpoint(resnets[0], h, temb);
    for (std::size_t i = 0; i < attentions.size(); ++i)
      h = autograd::maybe_checkpoint(resnets[i + 1], autograd::maybe_checkpoint(attentions[i], h, context), temb);
    return h;
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    nn::visit_list(attentions, p + "attentions.", f);
    nn::visit_list(resnets, p + "resnets.", f);
  }
};

template <class T, class Dev = Cpu>
struct UNetUpBlock {
  std::vector<nn::ResnetBlock2D<T, Dev>> resnets;
  std::vector<nn::Transformer2DModel<T, Dev>> attentions;
  std::vector<nn::Upsample2D<T, Dev>> upsamplers;

  UNetUpBlock() = default;
  /// in: the channels of the matching down block's input (the last skip); prev: channels of the incoming h.
  UNetUpBlock(int64_t in, int64_t out, int64_t prev, int64_t temb, int64_t layers, int64_t groups, double eps,
              const AttentionSpec& attn, bool upsample) {
    for (int64_t j = 0; j < layers; ++j) {
      const int64_t skip = j == layers - 1 ? in : out, res_in = j == 0 ? prev : out;
      resnets.emplace_back(res_in + skip, out, temb, groups, eps);
      if (attn.enabled)
        attentions.emplace_back(out, attn.heads, attn.cross_dim, groups, attn.layers, attn.linear_projection);
    }
    if (upsample) upsamplers.emplace_back(out);
  }

  /// Pops one skip per resnet from the back of `skips` and concatenates it after h on the channels.
  /// up_h/up_w: the upsampled size (the next skip's size; 0 = twice).
  Tensor<T, Dev> operator()(Tensor<T, Dev> h, std::vector<Tensor<T, Dev>>& skips, const Tensor<T, Dev>& temb,
                            const Tensor<T, Dev>& context, int64_t up_h = 0, int64_t up_w = 0) const {
    for (std::size_t j = 0; j < resnets.size(); ++j) {
      check<ShapeError>(!skips.empty(), "UNet up block: no skip connection left");
      h = ops::concat<T>({h, skips.back()}, 1);
      skips.pop_back();
      h = autograd::maybe_checkpoint(resnets[j], h, temb);
      if (!attentions.empty()) h = autograd::maybe_checkpoint(attentions[j], h, context);
    }
    for (const auto& u : upsamplers) h = u(h, up_h, up_w);
    return h;
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    nn::visit_list(resnets, p + "resnets.", f);
    nn::visit_list(attentions, p + "attentions.", f);
    nn::visit_list(upsamplers, p + "upsamplers.", f);
  }
};

}  // namespace adabldm::models
