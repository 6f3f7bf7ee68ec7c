#pragma once
// The config structs written back as diffusers / transformers config.json objects: exactly the fields the structs
// hold (so that from_json reads back the same struct), under the names and in the forms diffusers writes
// (a list of equal values as one number, as SD's configs have it). Fields the structs do not keep (dropout,
// upcast_attention, force_upcast, ...) are left to the library defaults of whoever reads the file.
// Knowledge about the models' files, so it lives next to the model loader in models/; the names stay in
// namespace io, where they were before the move (docs/architecture.md, "Layers").
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <adabldm/io/json.hpp>
#include <adabldm/models/autoencoder_kl.hpp>
#include <adabldm/models/clip_text.hpp>
#include <adabldm/models/controlnet.hpp>

namespace adabldm::io {

/// The diffusers release whose config format these objects follow.
inline constexpr const char* kDiffusersVersion = "0.27.2";

namespace config_json_detail {
using Json = adabldm::io::Json;

/// One number when all entries are equal (diffusers' `attention_head_dim: 8`), else the list.
inline Json scalar_or_list(const std::vector<int64_t>& v) {
  for (int64_t x : v)
    if (x != v.front()) return Json(v);
  return v.empty() ? Json(v) : Json(v.front());
}
/// An integer when the value is integral (`freq_shift: 0`), else the double.
inline Json number(double v) {
  if (std::floor(v) == v && std::abs(v) < 1e15) return Json(static_cast<int64_t>(v));
  return Json(v);
}

/// The fields UNet2DConditionModel and ControlNetModel share.
inline Json unet_encoder_fields(const adabldm::models::UNetConfig& c) {
  return Json{{"_diffusers_version", kDiffusersVersion},
              {"act_fn", "silu"},
              {"attention_head_dim", scalar_or_list(c.heads)},
              {"block_out_channels", c.block_out_channels},
              {"cross_attention_dim", c.cross_attention_dim},
              {"down_block_types", c.down_block_types},
              {"downsample_padding", c.downsample_padding},
              {"flip_sin_to_cos", c.flip_sin_to_cos},
              {"freq_shift", number(c.freq_shift)},
              {"in_channels", c.in_channels},
              {"layers_per_block", c.layers_per_block},
              {"mid_block_scale_factor", number(c.mid_block_scale_factor)},
              {"mid_block_type", "UNetMidBlock2DCrossAttn"},
              {"norm_eps", c.norm_eps},
              {"norm_num_groups", c.norm_num_groups},
              {"transformer_layers_per_block", scalar_or_list(c.transformer_layers)},
              {"use_linear_projection", c.use_linear_projection}};
}
}  // namespace config_json_detail

inline adabldm::io::Json unet_config_json(const adabldm::models::UNetConfig& c) {
  auto j = config_json_detail::unet_encoder_fields(c);
  j["_class_name"] = "UNet2DConditionModel";
  j["center_input_sample"] = false;
  j["out_channels"] = c.out_channels;
  j["sample_size"] = c.sample_size;
  j["up_block_types"] = c.up_block_types;
  return j;
}

inline adabldm::io::Json controlnet_config_json(const adabldm::models::ControlNetConfig& c) {
  auto j = config_json_detail::unet_encoder_fields(c.unet);
  j["_class_name"] = "ControlNetModel";
  j["conditioning_channels"] = c.conditioning_channels;
  j["conditioning_embedding_out_channels"] = c.conditioning_embedding_out_channels;
  j["controlnet_conditioning_channel_order"] = "rgb";
  j["global_pool_conditions"] = false;
  return j;
}

/// Options newer than diffusers 0.27 (shift_factor, use_[post_]quant_conv, mid_block_add_attention) are written
/// only when they differ from the default, so that SD configs stay readable by older diffusers.
inline adabldm::io::Json vae_config_json(const adabldm::models::AutoencoderKLConfig& c) {
  using config_json_detail::number;
  const auto& l = c.layout;
  const std::size_t n = l.block_out_channels.size();
  adabldm::io::Json j{{"_class_name", "AutoencoderKL"},
                      {"_diffusers_version", kDiffusersVersion},
                      {"act_fn", "silu"},
                      {"block_out_channels", l.block_out_channels},
                      {"down_block_types", std::vector<std::string>(n, "DownEncoderBlock2D")},
                      {"in_channels", l.in_channels},
                      {"latent_channels", l.latent_channels},
                      {"layers_per_block", l.layers_per_block},
                      {"norm_num_groups", l.norm_num_groups},
                      {"out_channels", l.out_channels},
                      {"sample_size", c.sample_size},
                      {"scaling_factor", c.scaling_factor},
                      {"up_block_types", std::vector<std::string>(n, "UpDecoderBlock2D")}};
  if (c.shift_factor != 0) j["shift_factor"] = c.shift_factor;
  if (!c.use_quant_conv) j["use_quant_conv"] = false;
  if (!c.use_post_quant_conv) j["use_post_quant_conv"] = false;
  if (!l.mid_block_add_attention) j["mid_block_add_attention"] = false;
  return j;
}

/// transformers' CLIPTextConfig; `torch_dtype` as transformers records it ("float32", "float16", ...).
inline adabldm::io::Json clip_text_config_json(const adabldm::models::ClipTextConfig& c, const std::string& torch_dtype) {
  return adabldm::io::Json{{"architectures", adabldm::io::Json::array({"CLIPTextModel"})},
                           {"bos_token_id", c.bos_token_id},
                           {"eos_token_id", c.eos_token_id},
                           {"hidden_act", c.hidden_act},
                           {"hidden_size", c.hidden_size},
                           {"intermediate_size", c.intermediate_size},
                           {"layer_norm_eps", c.layer_norm_eps},
                           {"max_position_embeddings", c.max_position_embeddings},
                           {"model_type", "clip_text_model"},
                           {"num_attention_heads", c.num_attention_heads},
                           {"num_hidden_layers", c.num_hidden_layers},
                           {"pad_token_id", c.pad_token_id},
                           {"projection_dim", c.projection_dim},
                           {"torch_dtype", torch_dtype},
                           {"vocab_size", c.vocab_size}};
}

/// Stable Diffusion's noise schedule (scaled_linear 0.00085 .. 0.012 over 1000 steps) for DDIMScheduler, the
/// sampler this library implements; written when the source has no scheduler of its own.
inline adabldm::io::Json sd_scheduler_config_json() {
  return adabldm::io::Json{{"_class_name", "DDIMScheduler"},
                           {"_diffusers_version", kDiffusersVersion},
                           {"beta_end", 0.012},
                           {"beta_schedule", "scaled_linear"},
                           {"beta_start", 0.00085},
                           {"clip_sample", false},
                           {"num_train_timesteps", 1000},
                           {"prediction_type", "epsilon"},
                           {"set_alpha_to_one", false},
                           {"steps_offset", 1},
                           {"timestep_spacing", "leading"},
                           {"trained_betas", nullptr}};
}

}  // namespace adabldm::io
