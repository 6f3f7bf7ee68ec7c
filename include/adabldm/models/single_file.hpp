#pragma once
// Single-file Stable Diffusion checkpoints in the original layout: which components a file holds (by key
// prefix) and the architecture of each, inferred from tensor shapes for the standard SD1.x / SD2.x families.
// What shapes cannot tell (head counts, GroupNorm groups of non-standard models) must come from a user config.
// Knowledge about the models' files, so it lives next to the model loader in models/; the names stay in
// namespace io, where they were before the move (docs/architecture.md, "Layers").
#include <string>
#include <vector>

#include "adabldm/io/state_dict.hpp"
#include "adabldm/models/autoencoder_kl.hpp"
#include "adabldm/models/controlnet.hpp"

namespace adabldm::io {

/// Key prefixes of the components of an original-layout checkpoint.
namespace ldm_prefix {
inline constexpr const char* unet = "model.diffusion_model.";
inline constexpr const char* vae = "first_stage_model.";
// The text encoder's prefixes (SD1.x CLIP, SD2.x OpenCLIP) are in models/ldm_clip_keys.hpp.
inline constexpr const char* controlnet = "control_model.";
}  // namespace ldm_prefix

namespace detail {
inline const TensorRef& need(const StateDict& sd, const std::string& name, const char* what) {
  if (!sd.contains(name))
    throw FormatError(sd.source() + ": cannot infer the " + what + " architecture: no tensor \"" + name + "\"");
  return sd.at(name);
}
inline int64_t count_indices(const StateDict& sd, const std::string& prefix) {  // prefix + "<i>." entries
  int64_t n = 0;
  while (sd.has_prefix(prefix + std::to_string(n) + ".")) ++n;
  return n;
}
}  // namespace detail

/// The UNet-encoder part of an original-layout UNet or ControlNet (prefix removed): levels, channels, layers,
/// attention placement, transformer depth, cross-attention width, projection kind. Head counts follow the
/// standard families (cross-attention width 768: SD1.x, 8 heads per level; 1024: SD2.x, 64-wide heads); any
/// other width needs `heads` from the user (non-empty) or throws naming what is missing.
inline models::UNetConfig infer_unet_config(const StateDict& sd, const std::vector<int64_t>& heads = {},
                                           bool encoder_only = false) {
  using detail::need;
  models::UNetConfig c;
  const auto& conv_in = need(sd, "input_blocks.0.0.weight", "UNet").shape;
  c.in_channels = conv_in[1];
  int64_t downsamplers = 0, max_block = 0;
  for (const auto& [name, ref] : sd.tensors()) {
    if (name.rfind("input_blocks.", 0) != 0) continue;
    max_block = std::max<int64_t>(max_block, std::stoll(name.substr(13, name.find('.', 13) - 13)));
    if (name.find(".0.op.weight") != std::string::npos) ++downsamplers;
  }
  const int64_t levels = downsamplers + 1;
  check<FormatError>((max_block + 1 - levels) % levels == 0, sd.source(), ": input_blocks do not form a UNet");
  c.layers_per_block = (max_block + 1 - levels) / levels;
  c.block_out_channels.clear();
  c.down_block_types.clear();
  c.up_block_types.clear();
  c.transformer_layers.clear();
  int64_t cross_dim = 0;
  bool linear_proj = false;
  for (int64_t i = 0; i < levels; ++i) {
    const std::string first = "input_blocks." + std::to_string(1 + i * (c.layers_per_block + 1)) + ".";
    c.block_out_channels.push_back(need(sd, first + "0.out_layers.3.weight", "UNet").shape[0]);
    const bool attn = sd.contains(first + "1.proj_in.weight");
    c.down_block_types.push_back(attn ? "CrossAttnDownBlock2D" : "DownBlock2D");
    c.transformer_layers.push_back(attn ? detail::count_indices(sd, first + "1.transformer_blocks.") : 1);
    if (attn) {
      cross_dim = need(sd, first + "1.transformer_blocks.0.attn2.to_k.weight", "UNet").shape[1];
      linear_proj = sd.at(first + "1.proj_in.weight").shape.rank() == 2;
    }
  }
  if (!sd.contains("middle_block.1.proj_in.weight"))
    throw FormatError(sd.source() + ": the UNet mid block has no attention (not an SD1.x/2.x UNet)");
  if (cross_dim == 0) {
    cross_dim = need(sd, "middle_block.1.transformer_blocks.0.attn2.to_k.weight", "UNet").shape[1];
    linear_proj = sd.at("middle_block.1.proj_in.weight").shape.rank() == 2;
  }
  c.transformer_layers.back() = detail::count_indices(sd, "middle_block.1.transformer_blocks.");  // the mid block's depth
  for (auto it = c.down_block_types.rbegin(); it != c.down_block_types.rend(); ++it)
    c.up_block_types.push_back(*it == "CrossAttnDownBlock2D" ? "CrossAttnUpBlock2D" : "UpBlock2D");
  c.cross_attention_dim = cross_dim;
  c.use_linear_projection = linear_proj;
  c.out_channels = encoder_only ? c.in_channels : need(sd, "out.2.weight", "UNet").shape[0];
  if (!heads.empty()) {
    check<FormatError>(heads.size() == static_cast<std::size_t>(levels), sd.source(), ": ", heads.size(),
                       " head counts given for ", levels, " levels");
    c.heads = heads;
  } else if (cross_dim == 768) {
    c.heads.assign(static_cast<std::size_t>(levels), 8);
  } else if (cross_dim == 1024) {
    c.heads.clear();
    for (int64_t ch : c.block_out_channels) c.heads.push_back(ch / 64);
  } else {
    throw FormatError(sd.source() + ": cross-attention width " + std::to_string(cross_dim) +
                      " is not SD1.x (768) or SD2.x (1024): the number of heads cannot be inferred from shapes; "
                      "pass the component's diffusers config (--config)");
  }
  return c;
}

/// ControlNet (cldm `control_model.*`, prefix removed): the encoder as a UNet plus the hint block.
inline models::ControlNetConfig infer_controlnet_config(const StateDict& sd, const std::vector<int64_t>& heads = {}) {
  models::ControlNetConfig c;
  c.unet = infer_unet_config(sd, heads, /*encoder_only=*/true);
  std::vector<int64_t> idx;
  for (int64_t i = 0; sd.contains("input_hint_block." + std::to_string(i) + ".weight"); i += 2) idx.push_back(i);
  check<FormatError>(idx.size() >= 2 && idx.size() % 2 == 0, sd.source(), ": input_hint_block has ", idx.size(),
                     " convolutions; expected conv_in, pairs of convs and conv_out");
  c.conditioning_channels = sd.at("input_hint_block.0.weight").shape[1];
  c.conditioning_embedding_out_channels = {sd.at("input_hint_block.0.weight").shape[0]};
  for (std::size_t k = 2; k + 1 < idx.size(); k += 2)  // the stride-2 conv of each pair sets the next width
    c.conditioning_embedding_out_channels.push_back(sd.at("input_hint_block." + std::to_string(idx[k]) + ".weight").shape[0]);
  return c;
}

/// The KL autoencoder, from its diffusers-named tensors (after io::vae_from_ldm): channels, levels, layers and
/// latent width from shapes. GroupNorm groups are 32 in every SD family; a model whose widths are not multiples
/// of 32 is non-standard and needs its config from the user.
inline models::AutoencoderKLConfig infer_vae_config(const StateDict& sd) {
  using detail::need;
  models::AutoencoderKLConfig c;
  auto& l = c.layout;
  const auto& conv_in = need(sd, "encoder.conv_in.weight", "VAE").shape;
  l.in_channels = conv_in[1];
  l.out_channels = need(sd, "decoder.conv_out.weight", "VAE").shape[0];
  l.latent_channels = need(sd, "decoder.conv_in.weight", "VAE").shape[1];
  const int64_t levels = detail::count_indices(sd, "encoder.down_blocks.");
  check<FormatError>(levels > 0, sd.source(), ": the VAE encoder has no down blocks");
  l.block_out_channels.clear();
  for (int64_t i = 0; i < levels; ++i)
    l.block_out_channels.push_back(need(sd, "encoder.down_blocks." + std::to_string(i) + ".resnets.0.conv2.weight", "VAE").shape[0]);
  l.layers_per_block = detail::count_indices(sd, "encoder.down_blocks.0.resnets.");
  l.mid_block_add_attention = sd.has_prefix("encoder.mid_block.attentions.0.");
  c.use_quant_conv = sd.contains("quant_conv.weight");
  c.use_post_quant_conv = sd.contains("post_quant_conv.weight");
  for (int64_t ch : l.block_out_channels)
    check<FormatError>(ch % 32 == 0, sd.source(), ": VAE width ", ch, " is not a multiple of 32: not a standard SD "
                       "autoencoder, so its GroupNorm groups cannot be inferred; pass its diffusers config (--config)");
  l.norm_num_groups = 32;
  return c;
}

}  // namespace adabldm::io
