#pragma once
// The KL VAE under its original (CompVis LDM / single-file checkpoint) names <-> diffusers AutoencoderKL names.
// One rule table serves both directions, so the two cannot drift apart:
//   encoder.down.{i}.block.{j}      <-> encoder.down_blocks.{i}.resnets.{j}   (nin_shortcut <-> conv_shortcut)
//   encoder.down.{i}.downsample.conv <-> encoder.down_blocks.{i}.downsamplers.0.conv
//   decoder.up.{k}                  <-> decoder.up_blocks.{n-1-k}             (the original numbers up levels
//                                                                              from the output side)
//   {side}.mid.block_1 / block_2    <-> {side}.mid_block.resnets.0 / 1
//   {side}.mid.attn_1.{norm, q, k, v, proj_out} <-> {side}.mid_block.attentions.0.{group_norm, to_q, to_k, to_v,
//                                   to_out.0}, the q/k/v/proj_out 1x1-conv weights [C, C, 1, 1] <-> Linear [C, C]
//   {side}.norm_out <-> {side}.conv_norm_out; conv_in, conv_out, quant_conv, post_quant_conv keep their names.
// Tensors are shared, never copied (a reshape only changes the recorded shape).
// Knowledge about the models' files, so it lives next to the model loader in models/; the names stay in
// namespace io, where they were before the move (docs/architecture.md, "Layers").
#include <algorithm>
#include <array>
#include <string>
#include <vector>

#include "adabldm/io/state_dict.hpp"

namespace adabldm::io {

namespace vae_keys_detail {

struct VaeKeyRule {
  const char* ldm;
  const char* diffusers;
  bool conv1x1_as_linear;  ///< a weight stored as a 1x1 conv in the original file and as a Linear in diffusers
};

// Placeholders: {side} encoder|decoder, {i} {j} an index, {up} an up-level index (reversed across the two
// namings), {res} a resnet layer, {wb} weight|bias.
inline const std::array<VaeKeyRule, 20>& vae_key_rules() {
  static const std::array<VaeKeyRule, 20> rules{{
      {"quant_conv.{wb}", "quant_conv.{wb}", false},
      {"post_quant_conv.{wb}", "post_quant_conv.{wb}", false},
      {"{side}.conv_in.{wb}", "{side}.conv_in.{wb}", false},
      {"{side}.conv_out.{wb}", "{side}.conv_out.{wb}", false},
      {"{side}.norm_out.{wb}", "{side}.conv_norm_out.{wb}", false},
      {"encoder.down.{i}.block.{j}.{res}.{wb}", "encoder.down_blocks.{i}.resnets.{j}.{res}.{wb}", false},
      {"encoder.down.{i}.block.{j}.nin_shortcut.{wb}", "encoder.down_blocks.{i}.resnets.{j}.conv_shortcut.{wb}", false},
      {"encoder.down.{i}.downsample.conv.{wb}", "encoder.down_blocks.{i}.downsamplers.0.conv.{wb}", false},
      {"decoder.up.{up}.block.{j}.{res}.{wb}", "decoder.up_blocks.{up}.resnets.{j}.{res}.{wb}", false},
      {"decoder.up.{up}.block.{j}.nin_shortcut.{wb}", "decoder.up_blocks.{up}.resnets.{j}.conv_shortcut.{wb}", false},
      {"decoder.up.{up}.upsample.conv.{wb}", "decoder.up_blocks.{up}.upsamplers.0.conv.{wb}", false},
      {"{side}.mid.block_1.{res}.{wb}", "{side}.mid_block.resnets.0.{res}.{wb}", false},
      {"{side}.mid.block_2.{res}.{wb}", "{side}.mid_block.resnets.1.{res}.{wb}", false},
      {"{side}.mid.attn_1.norm.{wb}", "{side}.mid_block.attentions.0.group_norm.{wb}", false},
      {"{side}.mid.attn_1.q.weight", "{side}.mid_block.attentions.0.to_q.weight", true},
      {"{side}.mid.attn_1.k.weight", "{side}.mid_block.attentions.0.to_k.weight", true},
      {"{side}.mid.attn_1.v.weight", "{side}.mid_block.attentions.0.to_v.weight", true},
      {"{side}.mid.attn_1.proj_out.weight", "{side}.mid_block.attentions.0.to_out.0.weight", true},
      {"{side}.mid.attn_1.{qkv}.bias", "{side}.mid_block.attentions.0.{qkv}.bias", false},
      {"{side}.mid.attn_1.proj_out.bias", "{side}.mid_block.attentions.0.to_out.0.bias", false},
  }};
  return rules;
}

inline std::vector<std::string> split_dots(const std::string& s) {
  std::vector<std::string> parts;
  std::size_t begin = 0;
  for (;;) {
    const std::size_t dot = s.find('.', begin);
    parts.push_back(s.substr(begin, dot == std::string::npos ? std::string::npos : dot - begin));
    if (dot == std::string::npos) return parts;
    begin = dot + 1;
  }
}

inline bool is_index(const std::string& s) {
  if (s.empty() || s.size() > 6) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

/// The values the placeholders of a rule took when matching a name (empty: not set).
struct VaeKeyBinding {
  std::string side, i, j, up, res, wb, qkv;
  std::string* slot(const std::string& placeholder) {
    if (placeholder == "{side}") return &side;
    if (placeholder == "{i}") return &i;
    if (placeholder == "{j}") return &j;
    if (placeholder == "{up}") return &up;
    if (placeholder == "{res}") return &res;
    if (placeholder == "{wb}") return &wb;
    if (placeholder == "{qkv}") return &qkv;
    return nullptr;
  }
};

/// Whether `token` may fill `placeholder` in a name of the original (`ldm_side`) or the diffusers naming.
inline bool placeholder_accepts(const std::string& placeholder, const std::string& token, bool ldm_side) {
  if (placeholder == "{side}") return token == "encoder" || token == "decoder";
  if (placeholder == "{i}" || placeholder == "{j}" || placeholder == "{up}") return is_index(token);
  if (placeholder == "{res}") return token == "norm1" || token == "conv1" || token == "norm2" || token == "conv2";
  if (placeholder == "{wb}") return token == "weight" || token == "bias";
  if (placeholder == "{qkv}")
    return ldm_side ? (token == "q" || token == "k" || token == "v") : (token == "to_q" || token == "to_k" || token == "to_v");
  return false;
}

inline bool match_rule(const char* pattern, const std::vector<std::string>& name, bool ldm_side, VaeKeyBinding& b) {
  const auto parts = split_dots(pattern);
  if (parts.size() != name.size()) return false;
  for (std::size_t t = 0; t < parts.size(); ++t) {
    if (parts[t].front() != '{') {
      if (parts[t] != name[t]) return false;
      continue;
    }
    if (!placeholder_accepts(parts[t], name[t], ldm_side)) return false;
    *b.slot(parts[t]) = name[t];
  }
  return true;
}

/// Renames every tensor of `sd` from one naming to the other (ldm -> diffusers when `from_ldm`). `up_levels`:
/// the number of decoder up levels (for the reversed numbering). Unrecognised names are collected in `unknown`.
inline StateDict translate_vae_keys(const StateDict& sd, bool from_ldm, std::vector<std::string>& unknown) {
  const std::string up_prefix = from_ldm ? "decoder.up." : "decoder.up_blocks.";
  int64_t up_levels = 0;
  for (const auto& [name, ref] : sd.tensors()) {
    if (name.compare(0, up_prefix.size(), up_prefix) != 0) continue;
    const std::string level = name.substr(up_prefix.size(), name.find('.', up_prefix.size()) - up_prefix.size());
    if (is_index(level)) up_levels = std::max<int64_t>(up_levels, std::stoll(level) + 1);
  }
  StateDict out(sd.source());
  for (const auto& [name, ref] : sd.tensors()) {
    const auto tokens = split_dots(name);
    bool done = false;
    for (const auto& rule : vae_key_rules()) {
      VaeKeyBinding b;
      if (!match_rule(from_ldm ? rule.ldm : rule.diffusers, tokens, from_ldm, b)) continue;
      if (!b.qkv.empty()) b.qkv = from_ldm ? "to_" + b.qkv : b.qkv.substr(3);
      if (!b.up.empty()) b.up = std::to_string(up_levels - 1 - std::stoll(b.up));
      std::string renamed;
      for (const auto& part : split_dots(from_ldm ? rule.diffusers : rule.ldm)) {
        std::string* value = part.front() == '{' ? b.slot(part) : nullptr;
        renamed += (renamed.empty() ? "" : ".") + (value ? *value : part);
      }
      TensorRef r = ref;
      if (rule.conv1x1_as_linear) {
        const Shape& s = r.shape;
        if (from_ldm && s.rank() == 4 && s[2] == 1 && s[3] == 1) r.shape = Shape{s[0], s[1]};
        else if (!from_ldm && s.rank() == 2) r.shape = Shape{s[0], s[1], 1, 1};
        else if (!(from_ldm && s.rank() == 2))  // an original file may already hold the Linear form
          throw FormatError(sd.source() + ": VAE attention weight \"" + name + "\" has shape " + s.str() +
                            (from_ldm ? ", expected [C, C, 1, 1]" : ", expected [C, C]"));
      }
      out.add(renamed, r);
      done = true;
      break;
    }
    if (!done) unknown.push_back(name);
  }
  return out;
}

inline void throw_unknown_vae_keys(const StateDict& sd, const std::vector<std::string>& unknown, const char* naming) {
  if (unknown.empty()) return;
  std::string m = sd.source() + ": " + std::to_string(unknown.size()) + " tensor name" +
                  (unknown.size() == 1 ? " is" : "s are") + " not " + naming + " VAE names: ";
  for (std::size_t i = 0; i < unknown.size(); ++i) m += (i ? ", " : "") + unknown[i];
  throw FormatError(m);
}

}  // namespace vae_keys_detail

/// The VAE tensors of an original (LDM) checkpoint, `first_stage_model.` prefix already removed, under diffusers
/// AutoencoderKL names. Every name that is not an original VAE parameter is an error naming it (callers drop
/// known non-VAE entries such as model_ema.* before).
inline StateDict vae_from_ldm(const StateDict& first_stage) {
  std::vector<std::string> unknown;
  StateDict out = vae_keys_detail::translate_vae_keys(first_stage, /*from_ldm=*/true, unknown);
  vae_keys_detail::throw_unknown_vae_keys(first_stage, unknown, "original (LDM)");
  return out;
}

/// The inverse: diffusers AutoencoderKL names -> original (LDM) names, without the `first_stage_model.` prefix.
inline StateDict vae_to_ldm(const StateDict& diffusers_vae) {
  std::vector<std::string> unknown;
  StateDict out = vae_keys_detail::translate_vae_keys(diffusers_vae, /*from_ldm=*/false, unknown);
  vae_keys_detail::throw_unknown_vae_keys(diffusers_vae, unknown, "diffusers AutoencoderKL");
  return out;
}

}  // namespace adabldm::io
