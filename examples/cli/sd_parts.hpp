#pragma once
// The Stable Diffusion components that `convert` and `inspect` work on -- UNet, ControlNet, KL autoencoder,
// CLIP text encoder -- read from a diffusers pipeline folder or an original-layout single file as a config plus
// the weights under diffusers / transformers names, still in their stored dtypes (convert keeps them unless
// asked). The configs come from the folder, from --config, from the file's own metadata, or from tensor shapes,
// in that order, exactly as the library's loaders decide.
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <adabldm/models/loader.hpp>

#include "model_classes.hpp"

namespace cli {

namespace fs = std::filesystem;

/// The metadata entry where `convert --to single` stores its component configs, in the --config format (keyed by
/// prefix), so that the file converts back and runs without a --config.
inline constexpr const char* kConfigsMetadata = "adabldm_configs";

/// A model source whose user configs come from `config_path` (--config), else, for a safetensors single file,
/// from its adabldm_configs metadata. Weights holding NaN or Inf values are refused unless `allow_non_finite`
/// (--allow-non-finite; inspect, which reports them).
inline ab::models::ModelSource open_model(const std::string& path, const std::string& config_path,
                                          bool allow_non_finite = false) {
  ab::models::LoadOptions opt;
  opt.allow_non_finite = allow_non_finite;
  opt.configs = ab::models::ConfigOverrides::from_file(config_path);
  if (config_path.empty() && fs::is_regular_file(path) &&
      ab::io::detect_checkpoint_format(path) == ab::io::CheckpointFormat::Safetensors) {
    const auto meta = ab::io::SafeTensors::open(path).metadata();
    if (auto it = meta.find(kConfigsMetadata); it != meta.end()) {
      const std::string where = path + " (metadata " + kConfigsMetadata + ")";
      try {
        opt.configs = {ab::io::Json::parse(it->second), where};
      } catch (const ab::io::Json::exception& e) {
        throw ab::FormatError(where + ": invalid JSON: " + e.what());
      }
    }
  }
  return ab::models::ModelSource(path, opt);
}

/// One component: its architecture and its weights (diffusers / transformers names, stored dtypes).
template <class C>
struct Part {
  C config;
  ab::io::StateDict weights;
  std::string config_origin;  ///< "unet/config.json", "--config ...", "inferred from tensor shapes"
};

inline std::string origin(const std::optional<ab::io::Config>& user) {
  return user ? user->where : std::string("inferred from tensor shapes");
}

inline Part<ab::models::UNetConfig> read_unet(const ab::models::ModelSource& src) {
  using namespace ab::models;
  if (src.kind() != SourceKind::SingleFile) {
    const auto cfg = src.folder_config("unet");
    return {UNetConfig::from_json(cfg), src.folder_weights("unet"), cfg.where};
  }
  const auto ldm = src.file().with_prefix(ab::io::ldm_prefix::unet);
  const auto user = src.options().configs.find(ab::io::ldm_prefix::unet, {"UNet2DConditionModel"});
  Part<UNetConfig> p{user ? UNetConfig::from_json(*user) : ab::io::infer_unet_config(ldm), {}, origin(user)};
  UNet2DConditionModel<float> names_only(p.config);
  p.weights = ab::io::unet_from_ldm(ldm, names_only);
  return p;
}

/// From a single file: cldm's `control_model.*`, or our training checkpoint's `controlnet.*` (diffusers names,
/// the config in the metadata entry "controlnet_config").
inline Part<ab::models::ControlNetConfig> read_controlnet(const ab::models::ModelSource& src) {
  using namespace ab::models;
  if (src.kind() != SourceKind::SingleFile) {
    const auto cfg = src.folder_config("controlnet");
    return {ControlNetConfig::from_json(cfg), src.folder_weights("controlnet"), cfg.where};
  }
  const auto& file = src.file();
  auto user = src.options().configs.find(ab::io::ldm_prefix::controlnet, {"ControlNetModel"});
  if (file.has_prefix(ab::io::ldm_prefix::controlnet)) {
    const auto ldm = file.with_prefix(ab::io::ldm_prefix::controlnet);
    Part<ControlNetConfig> p{user ? ControlNetConfig::from_json(*user) : ab::io::infer_controlnet_config(ldm), {},
                             origin(user)};
    ControlNetModel<float> names_only(p.config);
    p.weights = ab::io::controlnet_from_ldm(ldm, names_only);
    return p;
  }
  if (!user) {
    auto it = file.metadata().find("controlnet_config");
    ab::check<ab::FormatError>(it != file.metadata().end(), src.path(),
                               ": no \"controlnet_config\" metadata for the controlnet.* tensors; pass --config");
    user = ab::io::Config{ab::io::Json::parse(it->second), src.path() + " (metadata controlnet_config)"};
  }
  return {ControlNetConfig::from_json(*user), file.with_prefix("controlnet."), user->where};
}

inline Part<ab::models::AutoencoderKLConfig> read_vae(const ab::models::ModelSource& src) {
  using namespace ab::models;
  if (src.kind() != SourceKind::SingleFile) {
    const auto cfg = src.folder_config("vae");
    return {AutoencoderKLConfig::from_json(cfg), src.folder_weights("vae"), cfg.where};
  }
  auto sd = ab::io::vae_from_ldm(src.file().with_prefix(ab::io::ldm_prefix::vae));
  const auto user = src.options().configs.find(ab::io::ldm_prefix::vae, {"AutoencoderKL"});
  return {user ? AutoencoderKLConfig::from_json(*user) : ab::io::infer_vae_config(sd), std::move(sd), origin(user)};
}

/// SD2.x single files keep 23 of OpenCLIP's 24 layers (as the loader and diffusers do); what is dropped is
/// appended to `skipped`.
inline Part<ab::models::ClipTextConfig> read_text_encoder(const ab::models::ModelSource& src,
                                                          std::vector<std::string>* skipped = nullptr) {
  using namespace ab::models;
  if (src.kind() != SourceKind::SingleFile) {
    const auto cfg = src.folder_config("text_encoder");
    return {ClipTextConfig::from_json(cfg), without_clip_text_buffers(src.folder_weights("text_encoder")), cfg.where};
  }
  const auto kind = ab::io::detect_ldm_text_encoder(src.file());
  const bool sd2 = kind == ab::io::LdmTextEncoder::OpenClipSd2;
  auto sd = ab::io::clip_text_from_ldm(src.file(), sd2 ? 23 : -1, skipped);
  const auto user = src.options().configs.find(sd2 ? ab::io::kLdmSd2ClipPrefix : ab::io::kLdmSd1ClipPrefix,
                                               {"CLIPTextModel", "CLIPTextModelWithProjection"});
  return {user ? ClipTextConfig::from_json(*user) : ab::io::infer_clip_text_config(sd, kind), std::move(sd),
          origin(user)};
}

/// The components of one Stable Diffusion checkpoint that convert between the two layouts.
struct SdParts {
  std::optional<Part<ab::models::UNetConfig>> unet;
  std::optional<Part<ab::models::ControlNetConfig>> controlnet;
  std::optional<Part<ab::models::AutoencoderKLConfig>> vae;
  std::optional<Part<ab::models::ClipTextConfig>> text_encoder;
  ab::io::LdmTextEncoder text_layout = ab::io::LdmTextEncoder::None;  ///< a single file's text-encoder layout
  std::string tokenizer_dir, scheduler_config;                        ///< a pipeline folder's, when present
  std::vector<std::string> skipped;                                   ///< what is not converted, for the user
};

/// The single-file prefix groups that are not model components (EMA copies, schedules, ...): "model_ema. (N)".
inline std::vector<std::string> other_prefixes(const ab::io::StateDict& file) {
  static const char* const known[] = {ab::io::ldm_prefix::unet, ab::io::ldm_prefix::vae, ab::io::ldm_prefix::controlnet,
                                      ab::io::kLdmSd1ClipPrefix, ab::io::kLdmSd2ClipPrefix, "controlnet."};
  std::map<std::string, int> groups;
  for (const auto& [name, ref] : file.tensors()) {
    bool is_known = false;
    for (const char* k : known) is_known = is_known || name.rfind(k, 0) == 0;
    if (!is_known) ++groups[name.substr(0, name.find('.'))];
  }
  std::vector<std::string> out;
  for (const auto& [g, n] : groups) out.push_back(g + " (" + std::to_string(n) + " tensors)");
  return out;
}

/// Reads every convertible component of a pipeline folder or a single file.
inline SdParts read_sd_parts(const ab::models::ModelSource& src) {
  using ab::models::SourceKind;
  ab::check<ab::Error>(src.kind() != SourceKind::ComponentFolder, src.path(),
                       ": a component folder is already in diffusers layout; convert takes a pipeline folder "
                       "(model_index.json) or a single file");
  SdParts parts;
  if (src.kind() == SourceKind::SingleFile) {
    const auto& file = src.file();
    if (file.has_prefix(ab::io::ldm_prefix::unet)) parts.unet = read_unet(src);
    if (file.has_prefix(ab::io::ldm_prefix::controlnet) || file.has_prefix("controlnet."))
      parts.controlnet = read_controlnet(src);
    if (file.has_prefix(ab::io::ldm_prefix::vae)) parts.vae = read_vae(src);
    parts.text_layout = ab::io::detect_ldm_text_encoder(file);
    if (parts.text_layout != ab::io::LdmTextEncoder::None) parts.text_encoder = read_text_encoder(src, &parts.skipped);
    for (const auto& g : other_prefixes(file)) parts.skipped.push_back(g);
    ab::check<ab::FormatError>(parts.unet || parts.controlnet || parts.vae || parts.text_encoder, src.path(),
                               ": no Stable Diffusion component in this file (no model.diffusion_model., "
                               "first_stage_model., cond_stage_model. or control_model. tensors)");
    return parts;
  }
  const std::string index_path = (fs::path(src.path()) / "model_index.json").string();
  const auto index = ab::io::read_json(index_path);
  auto expect_class = [&](const std::string& name, const std::string& cls, const std::string& expected) {
    ab::check<ab::FormatError>(cls == expected, index_path, ": ", name, " is a ", cls, "; only ", expected,
                               " converts");
  };
  for (auto it = index.begin(); it != index.end(); ++it) {
    const std::string& name = it.key();
    if (name.empty() || name[0] == '_' || !it.value().is_array() || it.value().size() != 2 || !it.value()[1].is_string())
      continue;  // settings such as requires_safety_checker, and absent components ([null, null])
    const std::string cls = it.value()[1].get<std::string>();
    const fs::path dir = fs::path(src.path()) / name;
    if (name == "unet") {
      expect_class(name, cls, "UNet2DConditionModel");
      parts.unet = read_unet(src);
    } else if (name == "controlnet") {
      expect_class(name, cls, "ControlNetModel");
      parts.controlnet = read_controlnet(src);
    } else if (name == "vae") {
      expect_class(name, cls, "AutoencoderKL");
      parts.vae = read_vae(src);
    } else if (name == "text_encoder") {
      ab::check<ab::FormatError>(cls == "CLIPTextModel", index_path, ": text_encoder is a ", cls,
                                 "; only CLIPTextModel converts");
      parts.text_encoder = read_text_encoder(src);
    } else if (name == "tokenizer" && fs::is_directory(dir)) {
      parts.tokenizer_dir = dir.string();
    } else if (name == "scheduler" && fs::exists(dir / "scheduler_config.json")) {
      parts.scheduler_config = (dir / "scheduler_config.json").string();
    } else {
      parts.skipped.push_back(name + " (" + cls + ")");
    }
  }
  return parts;
}

}  // namespace cli
