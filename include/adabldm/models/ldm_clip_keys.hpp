#pragma once
// Text-encoder names in original (CompVis / Stability) single-file checkpoints <-> transformers' CLIPTextModel
// names ("text_model.embeddings.token_embedding.weight", ...), in both directions.
//
//   SD1.x  cond_stage_model.transformer.*  FrozenCLIPEmbedder: already transformers names (old files lack the
//                                          "text_model." level and may carry the position_ids buffer)
//   SD2.x  cond_stage_model.model.*        FrozenOpenCLIPEmbedder: OpenCLIP's text tower, q/k/v fused in
//                                          attn.in_proj_{weight,bias} ([q; k; v] along dim 0)
//
// The per-format functions take and return the component WITHOUT its prefix (`full.with_prefix(kLdmSd1ClipPrefix)`);
// `clip_text_from_ldm(full)` detects the format in a whole file and strips the prefix itself. Tensors keep their
// stored dtype (an f16 file stays f16) and are shared, except the fused/split attention projections of SD2, which
// are byte views (split) or new buffers (fuse). Keys a format does not know are passed through unchanged, so that
// nn::load_state_dict names them as unexpected instead of them vanishing.
//
// SD2's OpenCLIP tower has 24 layers, uses exact GELU (CLIPTextConfig hidden_act "gelu") and the SD2 pipelines
// condition on the penultimate layer: `clip_from_ldm_sd2(sd, 23)` drops resblocks.23 (diffusers' text_encoder
// layout, then use last_hidden_state), or keep all 24 and use ClipTextModel::clip_skip_output(out, 1).
// Knowledge about the models' files, so it lives next to the model loader in models/; the names stay in
// namespace io, where they were before the move (docs/architecture.md, "Layers").
#include <cstring>
#include <string>
#include <vector>

#include "adabldm/core/device.hpp"
#include "adabldm/io/state_dict.hpp"
#include "adabldm/models/clip_text.hpp"

namespace adabldm::io {

inline constexpr const char* kLdmSd1ClipPrefix = "cond_stage_model.transformer.";
inline constexpr const char* kLdmSd2ClipPrefix = "cond_stage_model.model.";

enum class LdmTextEncoder { None, ClipSd1, OpenClipSd2 };

/// Which text encoder a whole single-file checkpoint carries.
inline LdmTextEncoder detect_ldm_text_encoder(const StateDict& full) {
  if (full.has_prefix(kLdmSd1ClipPrefix)) return LdmTextEncoder::ClipSd1;
  if (full.has_prefix(kLdmSd2ClipPrefix)) return LdmTextEncoder::OpenClipSd2;
  return LdmTextEncoder::None;
}

namespace clip_keys_detail {

inline bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
inline bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

/// One OpenCLIP resblock suffix <-> one CLIPEncoderLayer suffix (the q/k/v fusion is handled separately).
struct LayerRename {
  const char* open_clip;
  const char* hf;
};
inline const std::vector<LayerRename>& layer_renames() {
  static const std::vector<LayerRename> table{
      {"attn.out_proj.weight", "self_attn.out_proj.weight"}, {"attn.out_proj.bias", "self_attn.out_proj.bias"},
      {"ln_1.weight", "layer_norm1.weight"},                 {"ln_1.bias", "layer_norm1.bias"},
      {"ln_2.weight", "layer_norm2.weight"},                 {"ln_2.bias", "layer_norm2.bias"},
      {"mlp.c_fc.weight", "mlp.fc1.weight"},                 {"mlp.c_fc.bias", "mlp.fc1.bias"},
      {"mlp.c_proj.weight", "mlp.fc2.weight"},               {"mlp.c_proj.bias", "mlp.fc2.bias"},
  };
  return table;
}
/// Whole-tensor renames outside the layers.
inline const std::vector<LayerRename>& top_renames() {
  static const std::vector<LayerRename> table{
      {"token_embedding.weight", "text_model.embeddings.token_embedding.weight"},
      {"positional_embedding", "text_model.embeddings.position_embedding.weight"},
      {"ln_final.weight", "text_model.final_layer_norm.weight"},
      {"ln_final.bias", "text_model.final_layer_norm.bias"},
  };
  return table;
}

/// "<prefix><i>.<rest>" -> i and rest; false when `name` does not have that form.
inline bool split_layer(const std::string& name, const std::string& prefix, int64_t& index, std::string& rest) {
  if (!starts_with(name, prefix)) return false;
  const std::size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size()) return false;
  const std::string digits = name.substr(prefix.size(), dot - prefix.size());
  if (digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 9) return false;
  index = std::stoll(digits);
  rest = name.substr(dot + 1);
  return true;
}

/// Part `part` of 3 equal parts of `ref` along dim 0 (a view sharing the bytes).
inline TensorRef third(const TensorRef& ref, int part, const std::string& name) {
  check<FormatError>(ref.shape.rank() >= 1 && ref.shape[0] % 3 == 0, name, ": shape ", ref.shape.str(),
                     " does not split into q, k, v along dim 0");
  TensorRef out = ref;
  out.shape[0] = ref.shape[0] / 3;
  out.data = ref.data + static_cast<std::size_t>(part) * out.nbytes();
  return out;
}

/// q, k, v concatenated along dim 0 into a new buffer (same dtype; shapes must agree).
inline TensorRef fuse(const TensorRef& q, const TensorRef& k, const TensorRef& v, const std::string& name) {
  for (const TensorRef* r : {&k, &v})
    check<FormatError>(r->dtype == q.dtype && r->shape == q.shape && q.shape.rank() >= 1, name,
                       ": q/k/v projections differ in dtype or shape (", q.shape.str(), ", ", r->shape.str(), ")");
  TensorRef out{q.dtype, q.shape, nullptr, nullptr};
  out.shape[0] = 3 * q.shape[0];
  out.owner = Cpu::allocate(out.nbytes());
  auto* dst = static_cast<std::byte*>(out.owner.get());
  std::size_t at = 0;
  for (const TensorRef* r : {&q, &k, &v}) {
    std::memcpy(dst + at, r->data, r->nbytes());
    at += r->nbytes();
  }
  out.data = dst;
  return out;
}

}  // namespace clip_keys_detail

/// SD1.x: the part after "cond_stage_model.transformer." -> CLIPTextModel names. Adds the "text_model." level
/// old files lack and drops the position_ids buffer.
inline StateDict clip_from_ldm_sd1(const StateDict& cond_stage) {
  using namespace clip_keys_detail;
  StateDict out(cond_stage.source());
  for (const auto& [name, ref] : cond_stage.tensors()) {
    const std::string hf = starts_with(name, "text_model.") ? name : "text_model." + name;
    if (hf == "text_model.embeddings.position_ids") continue;
    out.add(hf, ref);
  }
  return out;
}

/// SD1.x inverse: CLIPTextModel names -> the part to store after "cond_stage_model.transformer." (current
/// layout, with "text_model."; no position_ids: the original code loads non-strictly and makes its own).
inline StateDict clip_to_ldm_sd1(const StateDict& clip) {
  StateDict out(clip.source());
  for (const auto& [name, ref] : clip.tensors())
    if (name != "text_model.embeddings.position_ids") out.add(name, ref);
  return out;
}

/// SD2.x: the part after "cond_stage_model.model." (OpenCLIP's text tower) -> CLIPTextModel names.
/// `keep_layers` >= 0 drops resblocks with index >= keep_layers (23: diffusers' SD2 text_encoder). The CLIP
/// head (`text_projection`, `logit_scale`) and a visual tower (`visual.*`) are not part of CLIPTextModel and are
/// skipped; every skipped name is appended to `skipped` when given.
inline StateDict clip_from_ldm_sd2(const StateDict& open_clip, int64_t keep_layers = -1,
                                   std::vector<std::string>* skipped = nullptr) {
  using namespace clip_keys_detail;
  StateDict out(open_clip.source());
  const std::string layer_prefix = "transformer.resblocks.";
  for (const auto& entry : open_clip.tensors()) {
    const auto& [name, ref] = entry;
    auto skip = [&, &name = entry.first] {  // (lambdas capture structured bindings only from C++20)
      if (skipped) skipped->push_back(name);
    };
    if (name == "text_projection" || name == "logit_scale" || starts_with(name, "visual.")) {
      skip();
      continue;
    }
    bool renamed = false;
    for (const auto& r : top_renames())
      if (name == r.open_clip) {
        out.add(r.hf, ref);
        renamed = true;
      }
    if (renamed) continue;
    int64_t i = 0;
    std::string rest;
    if (!split_layer(name, layer_prefix, i, rest)) {
      out.add(name, ref);  // unknown: let the loader report it
      continue;
    }
    if (keep_layers >= 0 && i >= keep_layers) {
      skip();
      continue;
    }
    const std::string hf_layer = "text_model.encoder.layers." + std::to_string(i) + ".";
    if (rest == "attn.in_proj_weight" || rest == "attn.in_proj_bias") {
      const std::string kind = rest == "attn.in_proj_weight" ? "weight" : "bias";
      const char* parts[3] = {"q_proj.", "k_proj.", "v_proj."};
      for (int p = 0; p < 3; ++p) out.add(hf_layer + "self_attn." + parts[p] + kind, third(ref, p, name));
      continue;
    }
    for (const auto& r : layer_renames())
      if (rest == r.open_clip) {
        out.add(hf_layer + r.hf, ref);
        renamed = true;
      }
    if (!renamed) out.add(name, ref);
  }
  return out;
}

/// SD2.x inverse: CLIPTextModel names -> the part to store after "cond_stage_model.model.". Only the text
/// tower's own tensors are written (no text_projection / logit_scale: CLIPTextModel has none); a name with no
/// OpenCLIP counterpart is an error naming it.
inline StateDict clip_to_ldm_sd2(const StateDict& clip) {
  using namespace clip_keys_detail;
  StateDict out(clip.source());
  const std::string layer_prefix = "text_model.encoder.layers.";
  for (const auto& entry : clip.tensors()) {
    const auto& [name, ref] = entry;
    if (name == "text_model.embeddings.position_ids") continue;
    bool renamed = false;
    for (const auto& r : top_renames())
      if (name == r.hf) {
        out.add(r.open_clip, ref);
        renamed = true;
      }
    if (renamed) continue;
    int64_t i = 0;
    std::string rest;
    check<FormatError>(split_layer(name, layer_prefix, i, rest), clip.source(), ": \"", name,
                       "\" has no OpenCLIP counterpart");
    const std::string oc_layer = "transformer.resblocks." + std::to_string(i) + ".";
    const std::string hf_layer = layer_prefix + std::to_string(i) + ".";
    if (rest == "self_attn.q_proj.weight" || rest == "self_attn.q_proj.bias") {
      const std::string kind = ends_with(rest, "weight") ? "weight" : "bias";
      auto part = [&, &name = entry.first](const char* which) {  // (structured bindings: C++20 to capture)
        const std::string key = hf_layer + "self_attn." + which + "_proj." + kind;
        check<FormatError>(clip.contains(key), clip.source(), ": \"", key, "\" is missing (needed with \"", name,
                           "\" for attn.in_proj_", kind, ")");
        return clip.at(key);
      };
      out.add(oc_layer + "attn.in_proj_" + kind, fuse(part("q"), part("k"), part("v"), name));
      continue;
    }
    if (starts_with(rest, "self_attn.k_proj.") || starts_with(rest, "self_attn.v_proj.")) {
      const std::string q = hf_layer + "self_attn.q_proj." + (ends_with(rest, "weight") ? "weight" : "bias");
      check<FormatError>(clip.contains(q), clip.source(), ": \"", q, "\" is missing (needed with \"", name,
                         "\" for the fused in_proj)");
      continue;  // fused with its q_proj above
    }
    for (const auto& r : layer_renames())
      if (rest == r.hf) {
        out.add(oc_layer + r.open_clip, ref);
        renamed = true;
      }
    check<FormatError>(renamed, clip.source(), ": \"", name, "\" has no OpenCLIP counterpart");
  }
  return out;
}

/// The text encoder of a whole single-file checkpoint (SD1.x or SD2.x, detected) in CLIPTextModel names;
/// `keep_layers` as in clip_from_ldm_sd2 (ignored for SD1.x). An error when the file has no text encoder.
inline StateDict clip_text_from_ldm(const StateDict& full, int64_t keep_layers = -1,
                                    std::vector<std::string>* skipped = nullptr) {
  switch (detect_ldm_text_encoder(full)) {
    case LdmTextEncoder::ClipSd1: return clip_from_ldm_sd1(full.with_prefix(kLdmSd1ClipPrefix));
    case LdmTextEncoder::OpenClipSd2:
      return clip_from_ldm_sd2(full.with_prefix(kLdmSd2ClipPrefix), keep_layers, skipped);
    case LdmTextEncoder::None: break;
  }
  throw FormatError(full.source() + ": no text encoder (neither \"" + kLdmSd1ClipPrefix + "*\" nor \"" +
                    kLdmSd2ClipPrefix + "*\" tensors)");
}

/// The CLIPTextConfig of converted text-encoder weights (CLIPTextModel names), from tensor shapes: vocabulary,
/// width, positions, MLP width and layer count. Shapes cannot tell the head count: `heads` > 0 gives it, 0 takes
/// the standard families' 64-wide heads (ViT-L/14: 12, ViT-H/14: 16). The activation follows the source:
/// quick_gelu for SD1.x (OpenAI CLIP), exact gelu for SD2.x (OpenCLIP). Token ids as in the standard configs.
inline models::ClipTextConfig infer_clip_text_config(const StateDict& clip, LdmTextEncoder source,
                                                     int64_t heads = 0) {
  auto need = [&](const std::string& name) -> const Shape& {
    check<FormatError>(clip.contains(name), clip.source(), ": cannot infer the CLIP text architecture: no tensor \"",
                       name, "\"");
    return clip.at(name).shape;
  };
  check<FormatError>(source != LdmTextEncoder::None, clip.source(), ": infer_clip_text_config needs the source format");
  models::ClipTextConfig c;
  const Shape& tokens = need("text_model.embeddings.token_embedding.weight");
  check<FormatError>(tokens.rank() == 2, clip.source(), ": token embedding is ", tokens.str(), ", not [vocab, width]");
  c.vocab_size = tokens[0];
  c.hidden_size = tokens[1];
  c.max_position_embeddings = need("text_model.embeddings.position_embedding.weight")[0];
  c.num_hidden_layers = 0;
  while (clip.has_prefix("text_model.encoder.layers." + std::to_string(c.num_hidden_layers) + ".")) ++c.num_hidden_layers;
  c.intermediate_size = c.num_hidden_layers > 0 ? need("text_model.encoder.layers.0.mlp.fc1.weight")[0] : 4 * c.hidden_size;
  check<FormatError>(heads > 0 || c.hidden_size % 64 == 0, clip.source(), ": width ", c.hidden_size,
                     " is not a standard CLIP width (64-wide heads): give the head count");
  c.num_attention_heads = heads > 0 ? heads : c.hidden_size / 64;
  c.hidden_act = source == LdmTextEncoder::OpenClipSd2 ? "gelu" : "quick_gelu";
  c.projection_dim = source == LdmTextEncoder::OpenClipSd2 ? 512 : c.hidden_size;  // unused by CLIPTextModel
  c.bos_token_id = 0, c.eos_token_id = 2, c.pad_token_id = 1;  // as the standard configs (legacy pooling)
  c.validate(clip.source());
  return c;
}

}  // namespace adabldm::io
