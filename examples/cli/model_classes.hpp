#pragma once
// The model classes the tool knows by name (diffusers `_class_name`, transformers `architectures` / `model_type`):
// telling a config's class, building its model empty (shapes only, no memory for values) to count parameters,
// a one-line summary of the config, and whether a set of weights fits the architecture.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <adabldm/models/loader.hpp>
#include <adabldm/nn/module.hpp>

namespace cli {

namespace ab = adabldm;

/// The class a config.json names, or "" when it does not say. A transformers CLIPConfig (model_type "clip")
/// counts as its text tower, the part this library builds.
inline std::string config_class(const ab::io::Json& j) {
  if (!j.is_object()) return "";
  if (j.contains("_class_name") && j["_class_name"].is_string()) return j["_class_name"].get<std::string>();
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string())
    return j["architectures"][0].get<std::string>();
  if (j.contains("model_type") && j["model_type"].is_string()) {
    const std::string type = j["model_type"].get<std::string>();
    if (type == "clip_text_model" || type == "clip") return "CLIPTextModel";
  }
  return "";
}

/// "[320, 640, 1280]".
template <class V>
std::string list_str(const V& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + ab::detail::concat(v[i]);
  return s + "]";
}

/// Matches weights (diffusers / transformers names) against a model's parameters without loading anything.
template <class M>
ab::nn::LoadReport weights_fit(M& model, const ab::io::StateDict& sd) {
  ab::nn::LoadReport r;
  std::set<std::string> used;
  model.visit("", [&](const std::string& name, auto& p) {
    if (!sd.contains(name)) {
      r.missing.push_back(name);
      return;
    }
    used.insert(name);
    const auto& ref = sd.at(name);
    if (ref.shape != p.shape)
      r.mismatched.push_back(name + ": file " + ref.shape.str() + " vs model " + p.shape.str());
    else
      ++r.loaded;
  });
  for (const auto& [name, ref] : sd.tensors())
    if (!used.count(name)) r.unexpected.push_back(name);
  return r;
}

/// Throws one line naming every missing, unexpected or mis-shaped tensor.
template <class M>
void require_fit(M& model, const ab::io::StateDict& sd) {
  const auto report = weights_fit(model, sd);
  if (!report.ok()) throw ab::Error(report.message(sd.source()));
}

// ---- one-line config summaries -----------------------------------------------------------------------------------
/// `with_out`: false for the ControlNet, whose encoder-only config has no output convolution.
inline std::string summary(const ab::models::UNetConfig& c, bool with_out = true) {
  return ab::detail::concat("in ", c.in_channels, with_out ? ", out " : "",
                            with_out ? std::to_string(c.out_channels) : std::string(), ", block_out_channels ",
                            list_str(c.block_out_channels), ", layers_per_block ", c.layers_per_block,
                            ", down blocks ", list_str(c.down_block_types), ", cross_attention_dim ",
                            c.cross_attention_dim, ", heads ", list_str(c.heads), ", transformer layers ",
                            list_str(c.transformer_layers), ", linear projection ",
                            c.use_linear_projection ? "yes" : "no", ", norm groups ", c.norm_num_groups);
}
inline std::string summary(const ab::models::ControlNetConfig& c) {
  return summary(c.unet, false) + ab::detail::concat(", conditioning channels ", c.conditioning_channels,
                                              ", hint block ", list_str(c.conditioning_embedding_out_channels));
}
inline std::string summary(const ab::models::VaeLayout& l) {
  return ab::detail::concat("in ", l.in_channels, ", out ", l.out_channels, ", latent channels ", l.latent_channels,
                            ", block_out_channels ", list_str(l.block_out_channels), ", layers_per_block ",
                            l.layers_per_block, ", norm groups ", l.norm_num_groups, ", downscale ", l.downscale(),
                            ", mid-block attention ", l.mid_block_add_attention ? "yes" : "no");
}
inline std::string summary(const ab::models::AutoencoderKLConfig& c) {
  return summary(c.layout) + ab::detail::concat(", scaling_factor ", c.scaling_factor,
                                                c.shift_factor != 0 ? ", shift_factor " : "",
                                                c.shift_factor != 0 ? ab::detail::concat(c.shift_factor) : "");
}
inline std::string summary(const ab::models::VQModelConfig& c) {
  return summary(c.layout) + ab::detail::concat(", codebook ", c.num_vq_embeddings, " x ", c.vq_embed_dim);
}
inline std::string summary(const ab::models::TaesdConfig& c) {
  return ab::detail::concat("in ", c.in_channels, ", out ", c.out_channels, ", latent channels ", c.latent_channels,
                            ", encoder blocks ", list_str(c.num_encoder_blocks), " x ",
                            c.encoder_block_out_channels[0], " ch, decoder blocks ", list_str(c.num_decoder_blocks),
                            " x ", c.decoder_block_out_channels[0], " ch, downscale ", c.downscale());
}
inline std::string summary(const ab::models::ClipTextConfig& c) {
  return ab::detail::concat("hidden ", c.hidden_size, ", layers ", c.num_hidden_layers, ", heads ",
                            c.num_attention_heads, ", mlp ", c.intermediate_size, ", ", c.hidden_act, ", vocabulary ",
                            c.vocab_size, ", positions ", c.max_position_embeddings);
}

/// One architecture, built empty from a config.
struct Architecture {
  std::string class_name;
  std::string summary;
  int64_t parameters = 0;
  int64_t tensors = 0;
  /// How a component folder's weights (diffusers / transformers names) fit the architecture.
  std::function<ab::nn::LoadReport(const ab::io::StateDict&)> fit;
};

namespace detail {
template <class M>
Architecture make_architecture(std::string cls, std::string text, std::shared_ptr<M> model) {
  Architecture a;
  a.class_name = std::move(cls);
  a.summary = std::move(text);
  a.parameters = ab::nn::parameter_count(*model);
  a.tensors = static_cast<int64_t>(ab::nn::parameter_names(*model).size());
  a.fit = [model](const ab::io::StateDict& sd) { return weights_fit(*model, sd); };
  return a;
}

/// taesd.py names for AutoencoderTiny names (names of neither form stay, to be reported as unexpected).
inline ab::io::StateDict taesd_names(const ab::io::StateDict& sd) {
  if (!sd.has_prefix("encoder.layers.") && !sd.has_prefix("decoder.layers.")) return sd;
  ab::io::StateDict out(sd.source());
  for (const auto& [name, ref] : sd.tensors()) {
    std::string renamed = name;
    try {
      renamed = ab::models::taesd_name_from_autoencoder_tiny(name);
    } catch (const ab::FormatError&) {
    }
    out.add(renamed, ref);
  }
  return out;
}
}  // namespace detail

/// The classes `describe` builds, for messages.
inline const std::vector<std::string>& known_classes() {
  static const std::vector<std::string> names{"UNet2DConditionModel", "ControlNetModel", "AutoencoderKL",
                                              "VQModel", "AutoencoderTiny", "CLIPTextModel",
                                              "CLIPTextModelWithProjection"};
  return names;
}

/// The architecture of `config` as class `cls`; nullopt for a class this library does not build. An invalid or
/// unsupported config throws a FormatError naming the key.
inline std::optional<Architecture> describe(const ab::io::Config& config, const std::string& cls) {
  using namespace ab::models;
  using detail::make_architecture;
  if (cls == "UNet2DConditionModel") {
    const auto c = UNetConfig::from_json(config);
    return make_architecture(cls, summary(c), std::make_shared<UNet2DConditionModel<float>>(c));
  }
  if (cls == "ControlNetModel") {
    const auto c = ControlNetConfig::from_json(config);
    return make_architecture(cls, summary(c), std::make_shared<ControlNetModel<float>>(c));
  }
  if (cls == "AutoencoderKL") {
    const auto c = AutoencoderKLConfig::from_json(config);
    return make_architecture(cls, summary(c), std::make_shared<AutoencoderKL<float>>(c));
  }
  if (cls == "VQModel") {
    const auto c = VQModelConfig::from_json(config);
    return make_architecture(cls, summary(c), std::make_shared<VQModel<float>>(c));
  }
  if (cls == "AutoencoderTiny") {
    const auto c = TaesdConfig::from_json(config);
    auto model = std::make_shared<TAESD<float>>(c);
    auto a = make_architecture(cls, summary(c), model);
    a.fit = [model](const ab::io::StateDict& sd) { return weights_fit(*model, detail::taesd_names(sd)); };
    return a;
  }
  if (cls == "CLIPTextModel" || cls == "CLIPTextModelWithProjection") {
    const auto c = ClipTextConfig::from_json(config);
    auto model = std::make_shared<ClipTextModel<float>>(c);
    auto a = make_architecture(cls, summary(c), model);
    if (cls == "CLIPTextModel") {
      a.fit = [model](const ab::io::StateDict& sd) { return weights_fit(*model, without_clip_text_buffers(sd)); };
      return a;
    }
    // CLIPTextModelWithProjection = CLIPTextModel + text_projection (Linear hidden -> projection_dim, no bias),
    // which this library does not run; it is counted and checked here, and ignored by `forward`.
    a.parameters += c.projection_dim * c.hidden_size;
    a.tensors += 1;
    a.summary += ab::detail::concat(", text projection ", c.projection_dim);
    const ab::Shape projection{c.projection_dim, c.hidden_size};
    a.fit = [model, projection](const ab::io::StateDict& sd) {
      auto rest = without_clip_text_buffers(sd);
      rest.erase("text_projection.weight");
      auto r = weights_fit(*model, rest);
      if (!sd.contains("text_projection.weight"))
        r.missing.push_back("text_projection.weight");
      else if (sd.at("text_projection.weight").shape != projection)
        r.mismatched.push_back("text_projection.weight: file " + sd.at("text_projection.weight").shape.str() +
                               " vs model " + projection.str());
      return r;
    };
    return a;
  }
  return std::nullopt;
}

}  // namespace cli
