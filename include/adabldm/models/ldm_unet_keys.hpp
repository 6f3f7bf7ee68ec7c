#pragma once
// Original-layout (CompVis LDM / Stability / lllyasviel cldm) names of the UNet and ControlNet parameters.
// The translation is one function, diffusers name -> original name, driven by the architecture; loading a
// single file visits the model, builds the reverse table from it and renames the file's tensors. Names the
// table does not know stay as they are, so the loader reports them as unexpected under their real name.
// Knowledge about the models' files, so it lives next to the model loader in models/; the names stay in
// namespace io, where they were before the move (docs/architecture.md, "Layers").
#include <map>
#include <string>
#include <vector>

#include "adabldm/core/error.hpp"
#include "adabldm/io/state_dict.hpp"
#include "adabldm/models/controlnet.hpp"

namespace adabldm::io {

namespace detail {
/// Splits "a.b.c" at dots.
inline std::vector<std::string> split_name(const std::string& s) {
  std::vector<std::string> parts;
  std::size_t b = 0;
  for (std::size_t e; (e = s.find('.', b)) != std::string::npos; b = e + 1) parts.push_back(s.substr(b, e - b));
  parts.push_back(s.substr(b));
  return parts;
}
inline std::string join_from(const std::vector<std::string>& p, std::size_t from) {
  std::string s;
  for (std::size_t i = from; i < p.size(); ++i) s += (i > from ? "." : "") + p[i];
  return s;
}
/// ResnetBlock2D member -> ResBlock member.
inline std::string ldm_resnet_member(const std::string& m) {
  static const std::map<std::string, std::string> table{{"norm1", "in_layers.0"},      {"conv1", "in_layers.2"},
                                                        {"time_emb_proj", "emb_layers.1"}, {"norm2", "out_layers.0"},
                                                        {"conv2", "out_layers.3"},     {"conv_shortcut", "skip_connection"}};
  auto it = table.find(m);
  check(it != table.end(), "ldm names: unknown resnet member \"", m, "\"");
  return it->second;
}
}  // namespace detail

/// The original name of a diffusers UNet2DConditionModel / ControlNetModel parameter (without the
/// "model.diffusion_model." / "control_model." prefix). `hint_blocks` = the ControlNet hint block's conv count
/// between conv_in and conv_out.
inline std::string ldm_unet_name(const std::string& name, const models::UNetConfig& c, std::size_t hint_blocks = 0) {
  using detail::join_from;
  const auto p = detail::split_name(name);
  const int64_t L = c.layers_per_block;
  auto num = [&](std::size_t i) { return std::stoll(p.at(i)); };
  auto resnet = [&](const std::string& block) {  // p[k] = resnet member, rest = weight/bias
    const std::size_t k = p[0] == "mid_block" ? 3 : 4;
    return block + detail::ldm_resnet_member(p.at(k)) + "." + join_from(p, k + 1);
  };
  const std::string& head = p[0];
  if (head == "conv_in") return "input_blocks.0.0." + join_from(p, 1);
  if (head == "time_embedding") return std::string("time_embed.") + (p.at(1) == "linear_1" ? "0." : "2.") + join_from(p, 2);
  if (head == "conv_norm_out") return "out.0." + join_from(p, 1);
  if (head == "conv_out") return "out.2." + join_from(p, 1);
  if (head == "down_blocks") {
    const int64_t i = num(1), base = 1 + i * (L + 1);
    if (p.at(2) == "resnets") return resnet("input_blocks." + std::to_string(base + num(3)) + ".0.");
    if (p.at(2) == "attentions") return "input_blocks." + std::to_string(base + num(3)) + ".1." + join_from(p, 4);
    if (p.at(2) == "downsamplers") return "input_blocks." + std::to_string(base + L) + ".0.op." + join_from(p, 5);
  }
  if (head == "mid_block") {
    if (p.at(1) == "resnets") return resnet(num(2) == 0 ? "middle_block.0." : "middle_block.2.");
    if (p.at(1) == "attentions") return "middle_block.1." + join_from(p, 3);
  }
  if (head == "up_blocks") {
    const int64_t i = num(1), base = i * (L + 1);
    const bool attn = c.up_block_types.at(static_cast<std::size_t>(i)) == "CrossAttnUpBlock2D";
    if (p.at(2) == "resnets") return resnet("output_blocks." + std::to_string(base + num(3)) + ".0.");
    if (p.at(2) == "attentions") return "output_blocks." + std::to_string(base + num(3)) + ".1." + join_from(p, 4);
    if (p.at(2) == "upsamplers")
      return "output_blocks." + std::to_string(base + L) + (attn ? ".2.conv." : ".1.conv.") + join_from(p, 5);
  }
  if (head == "controlnet_cond_embedding") {
    if (p.at(1) == "conv_in") return "input_hint_block.0." + join_from(p, 2);
    if (p.at(1) == "blocks") return "input_hint_block." + std::to_string(2 * (num(2) + 1)) + "." + join_from(p, 3);
    if (p.at(1) == "conv_out") return "input_hint_block." + std::to_string(2 * (hint_blocks + 1)) + "." + join_from(p, 2);
  }
  if (head == "controlnet_down_blocks") return "zero_convs." + p.at(1) + ".0." + join_from(p, 2);
  if (head == "controlnet_mid_block") return "middle_block_out.0." + join_from(p, 1);
  throw Error("ldm names: no original name for \"" + name + "\"");
}

/// Renames the tensors of an original-layout component (prefix already removed) to the names `model` visits.
/// `to_ldm` maps a model name to its original name. Unknown names are kept unchanged.
template <class M, class ToLdm>
StateDict rename_from_ldm(const StateDict& ldm, M& model, ToLdm&& to_ldm) {
  std::map<std::string, std::string> from_ldm;
  model.visit("", [&](const std::string& name, auto&) { from_ldm[to_ldm(name)] = name; });
  StateDict out(ldm.source());
  for (const auto& [k, ref] : ldm.tensors()) {
    auto it = from_ldm.find(k);
    out.add(it == from_ldm.end() ? k : it->second, ref);
  }
  out.metadata() = ldm.metadata();
  return out;
}

/// The inverse: a model's parameters under their original names (for `adabldm convert --to single`).
template <class M, class ToLdm>
StateDict rename_to_ldm(M& model, ToLdm&& to_ldm, const std::string& prefix = "") {
  StateDict out("model");
  model.visit("", [&](const std::string& name, auto& p) { out.add(prefix + to_ldm(name), p.value); });
  return out;
}

template <class T, class Dev>
StateDict unet_from_ldm(const StateDict& ldm, models::UNet2DConditionModel<T, Dev>& unet) {
  return rename_from_ldm(ldm, unet, [&](const std::string& n) { return ldm_unet_name(n, unet.config); });
}
template <class T, class Dev>
StateDict controlnet_from_ldm(const StateDict& ldm, models::ControlNetModel<T, Dev>& cn) {
  const std::size_t hb = cn.controlnet_cond_embedding.blocks.size();
  return rename_from_ldm(ldm, cn, [&](const std::string& n) { return ldm_unet_name(n, cn.config.unet, hb); });
}

}  // namespace adabldm::io
