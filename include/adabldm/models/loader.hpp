#pragma once
// Loading models from where users keep them: a diffusers pipeline folder (model_index.json + one folder per
// component), a single component folder (config.json + weights), or a single-file checkpoint in the original
// layout (.safetensors or PyTorch .ckpt; the architecture from tensor shapes, or from a user config where shapes
// cannot tell). Every loader reports missing, unexpected and mis-shaped keys by name, and refuses weights holding
// NaN or Inf values (LoadOptions::allow_non_finite turns that off).
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "adabldm/io/checkpoint.hpp"
#include "adabldm/io/json.hpp"
#include "adabldm/io/safetensors.hpp"
#include "adabldm/models/autoencoder_kl.hpp"
#include "adabldm/models/clip_text.hpp"
#include "adabldm/models/controlnet.hpp"
#include "adabldm/models/ldm_clip_keys.hpp"
#include "adabldm/models/ldm_unet_keys.hpp"
#include "adabldm/models/ldm_vae_keys.hpp"
#include "adabldm/models/single_file.hpp"
#include "adabldm/models/taesd.hpp"
#include "adabldm/models/vq_model.hpp"

namespace adabldm::models {

namespace fs = std::filesystem;

/// The kind of thing at a model path, decided from its content.
enum class SourceKind { DiffusersPipeline, ComponentFolder, SingleFile };

inline SourceKind detect_source(const std::string& path) {
  if (fs::is_directory(path)) {
    if (fs::exists(fs::path(path) / "model_index.json")) return SourceKind::DiffusersPipeline;
    if (fs::exists(fs::path(path) / "config.json")) return SourceKind::ComponentFolder;
    throw IoError(path + ": a folder without model_index.json or config.json is not a model");
  }
  if (!fs::exists(path)) throw IoError(path + ": no such file or folder");
  return SourceKind::SingleFile;
}

/// User-given configs (`--config`): either one component's diffusers/transformers config.json, or a JSON object
/// keyed by single-file prefix ("model.diffusion_model.": {"diffusers_config": {...}}, ...).
struct ConfigOverrides {
  io::Json json;
  std::string where;

  static ConfigOverrides from_file(const std::string& path) {
    return path.empty() ? ConfigOverrides{} : ConfigOverrides{io::read_json(path), path};
  }
  /// The config of the component stored under `prefix`, or the file itself when it is a plain config of one of
  /// `class_names` (`_class_name` for diffusers, `architectures[0]` for transformers).
  std::optional<io::Config> find(const std::string& prefix, const std::vector<std::string>& class_names) const {
    if (!json.is_object()) return std::nullopt;
    if (json.contains(prefix)) {
      const auto& e = json.at(prefix);
      for (const char* k : {"diffusers_config", "transformers_config", "config"})
        if (e.contains(k)) return io::Config{e.at(k), where + "[" + prefix + "]." + k};
      return io::Config{e, where + "[" + prefix + "]"};
    }
    const io::Config top{json, where};
    std::string cls = top.get<std::string>("_class_name", "");
    if (cls.empty() && top.has("architectures")) {
      const auto arch = top.get<std::vector<std::string>>("architectures", {});
      cls = arch.empty() ? "" : arch[0];
    }
    for (const auto& c : class_names)
      if (cls == c) return io::Config{json, where};
    return std::nullopt;
  }
};

struct LoadOptions {
  ConfigOverrides configs;
  std::string variant;  ///< diffusers weight variant, e.g. "fp16" ("" = the plain file, else the fp16 one)
  /// Load weights that hold NaN or Inf values. Default: every file read is scanned once (io::check_finite) and
  /// one with a non-finite value is refused, naming the file and the tensor (docs/reliability.md).
  bool allow_non_finite = false;
};

/// The weights of a component folder: (sharded) safetensors or a PyTorch .bin, preferring the plain file over
/// the `variant` one unless the variant is asked for. Each file read is refused if it holds NaN or Inf values
/// (io::check_finite) unless `allow_non_finite`.
inline io::StateDict read_component_weights(const std::string& dir, const std::string& variant = "",
                                            bool allow_non_finite = false) {
  auto checked = [allow_non_finite](io::StateDict sd) {
    if (!allow_non_finite) io::check_finite(sd);
    return sd;
  };
  std::vector<std::string> candidates;
  for (const std::string stem : {"diffusion_pytorch_model", "model"}) {
    if (!variant.empty()) candidates.push_back(stem + "." + variant + ".safetensors");
    candidates.push_back(stem + ".safetensors");
    if (variant.empty()) candidates.push_back(stem + ".fp16.safetensors");
  }
  for (const auto& name : candidates) {
    const fs::path p = fs::path(dir) / name;
    if (fs::exists(p)) return checked(io::SafeTensors::open(p.string()).state_dict());
    const fs::path index = fs::path(dir) / (name + ".index.json");  // sharded: {"weight_map": {tensor: file}}
    if (fs::exists(index)) {
      const auto j = io::read_json(index.string());
      check<FormatError>(j.contains("weight_map") && j["weight_map"].is_object(), index.string(), ": no weight_map");
      io::StateDict all(index.string());
      std::set<std::string> shards;
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it)
        shards.insert(io::json_as<std::string>(it.value(), index.string(), "weight_map." + it.key()));
      for (const auto& shard : shards) {
        const auto part = checked(io::SafeTensors::open((fs::path(dir) / shard).string()).state_dict());
        for (const auto& [k, ref] : part.tensors()) all.add(k, ref);
      }
      return all;
    }
  }
  for (const std::string bin : {"diffusion_pytorch_model.bin", "pytorch_model.bin"})
    if (fs::exists(fs::path(dir) / bin)) return checked(io::load_checkpoint((fs::path(dir) / bin).string()));
  throw IoError(dir + ": no weights found (diffusion_pytorch_model[.fp16].safetensors, model[.fp16].safetensors, "
                      "sharded *.safetensors.index.json or *.bin)");
}

/// A model source opened once: a folder, or a single file's tensors (so several components can be taken from a
/// multi-GB checkpoint without reading it twice). Unless `opt.allow_non_finite`, a single file is scanned for NaN
/// and Inf values here (all its tensors, also those no loader takes), a folder's weights as each component is read.
class ModelSource {
 public:
  explicit ModelSource(std::string path, LoadOptions opt = {}) : path_(std::move(path)), opt_(std::move(opt)) {
    kind_ = detect_source(path_);
    if (kind_ == SourceKind::SingleFile) {
      file_ = io::load_checkpoint(path_);
      if (!opt_.allow_non_finite) io::check_finite(file_);
    }
  }
  SourceKind kind() const { return kind_; }
  const std::string& path() const { return path_; }
  const LoadOptions& options() const { return opt_; }
  /// The single file's tensors (SingleFile only).
  const io::StateDict& file() const { return file_; }
  /// Folder of a component: `sub/` inside a pipeline folder, or the folder itself.
  std::string component_dir(const char* sub) const {
    if (kind_ == SourceKind::DiffusersPipeline) {
      const fs::path d = fs::path(path_) / sub;
      check<IoError>(fs::is_directory(d), path_, ": this pipeline has no ", sub, "/ folder");
      return d.string();
    }
    return path_;
  }
  io::Config folder_config(const char* sub) const {
    const std::string p = (fs::path(component_dir(sub)) / "config.json").string();
    return {io::read_json(p), p};
  }
  io::StateDict folder_weights(const char* sub) const {
    return read_component_weights(component_dir(sub), opt_.variant, opt_.allow_non_finite);
  }
  bool has_component(const char* sub) const {
    return kind_ == SourceKind::DiffusersPipeline && fs::is_directory(fs::path(path_) / sub);
  }

 private:
  std::string path_;
  LoadOptions opt_;
  SourceKind kind_;
  io::StateDict file_;
};

template <class T = float>
UNet2DConditionModel<T, Cpu> load_unet(const ModelSource& src) {
  if (src.kind() != SourceKind::SingleFile) {
    UNet2DConditionModel<T, Cpu> unet(UNetConfig::from_json(src.folder_config("unet")));
    nn::load_state_dict(unet, src.folder_weights("unet"));
    return unet;
  }
  check<FormatError>(src.file().has_prefix(io::ldm_prefix::unet), src.path(), ": no UNet in this file (no \"",
                     io::ldm_prefix::unet, "*\" tensors)");
  const auto ldm = src.file().with_prefix(io::ldm_prefix::unet);
  const auto user = src.options().configs.find(io::ldm_prefix::unet, {"UNet2DConditionModel"});
  UNet2DConditionModel<T, Cpu> unet(user ? UNetConfig::from_json(*user) : io::infer_unet_config(ldm));
  nn::load_state_dict(unet, io::unet_from_ldm(ldm, unet));
  return unet;
}

/// The trimap encoder: a ControlNet component folder, the `controlnet/` of a diffusers ControlNet pipeline, a
/// file holding `control_model.*` tensors (cldm / official AdaBLDM checkpoints), or our training checkpoint
/// (diffusers names under "controlnet.", the config in the metadata entry "controlnet_config").
template <class T = float>
ControlNetModel<T, Cpu> load_controlnet(const ModelSource& src) {
  if (src.kind() != SourceKind::SingleFile) {
    if (src.kind() == SourceKind::DiffusersPipeline && !src.has_component("controlnet"))
      throw IoError(src.path() + ": this pipeline has no controlnet/ folder, i.e. no trimap encoder; pass one "
                                 "with --trimap-encoder");
    ControlNetModel<T, Cpu> cn(ControlNetConfig::from_json(src.folder_config("controlnet")));
    nn::load_state_dict(cn, src.folder_weights("controlnet"));
    return cn;
  }
  const auto& file = src.file();
  const auto user = src.options().configs.find(io::ldm_prefix::controlnet, {"ControlNetModel"});
  if (file.has_prefix(io::ldm_prefix::controlnet)) {
    const auto ldm = file.with_prefix(io::ldm_prefix::controlnet);
    ControlNetModel<T, Cpu> cn(user ? ControlNetConfig::from_json(*user) : io::infer_controlnet_config(ldm));
    nn::load_state_dict(cn, io::controlnet_from_ldm(ldm, cn));
    return cn;
  }
  check<FormatError>(file.has_prefix("controlnet."), src.path(), ": no trimap encoder in this file (neither \"",
                     io::ldm_prefix::controlnet, "*\" nor \"controlnet.*\" tensors)");
  std::optional<io::Config> cfg = user;
  if (!cfg) {
    auto it = file.metadata().find("controlnet_config");
    check<FormatError>(it != file.metadata().end(), src.path(), ": no \"controlnet_config\" metadata; pass --config");
    const std::string where = src.path() + " (metadata controlnet_config)";
    cfg = io::Config{io::parse_json(it->second, where), where};
  }
  ControlNetModel<T, Cpu> cn(ControlNetConfig::from_json(*cfg));
  nn::load_state_dict(cn, file.with_prefix("controlnet."));
  return cn;
}

template <class T = float>
AutoencoderKL<T, Cpu> load_vae(const ModelSource& src) {
  if (src.kind() != SourceKind::SingleFile) {
    AutoencoderKL<T, Cpu> vae(AutoencoderKLConfig::from_json(src.folder_config("vae")));
    nn::load_state_dict(vae, src.folder_weights("vae"));
    return vae;
  }
  check<FormatError>(src.file().has_prefix(io::ldm_prefix::vae), src.path(), ": no autoencoder in this file (no \"",
                     io::ldm_prefix::vae, "*\" tensors)");
  const auto sd = io::vae_from_ldm(src.file().with_prefix(io::ldm_prefix::vae));
  const auto user = src.options().configs.find(io::ldm_prefix::vae, {"AutoencoderKL"});
  AutoencoderKL<T, Cpu> vae(user ? AutoencoderKLConfig::from_json(*user) : io::infer_vae_config(sd));
  nn::load_state_dict(vae, sd);
  return vae;
}

/// The text encoder; SD2.x single files keep 23 of OpenCLIP's 24 layers, as diffusers' conversion does.
template <class T = float>
ClipTextModel<T, Cpu> load_text_encoder(const ModelSource& src) {
  if (src.kind() != SourceKind::SingleFile) {
    ClipTextModel<T, Cpu> clip(ClipTextConfig::from_json(src.folder_config("text_encoder")));
    load_clip_text(clip, src.folder_weights("text_encoder"));
    return clip;
  }
  const auto kind = io::detect_ldm_text_encoder(src.file());
  const auto sd = io::clip_text_from_ldm(src.file(), kind == io::LdmTextEncoder::OpenClipSd2 ? 23 : -1);
  const char* prefix = kind == io::LdmTextEncoder::OpenClipSd2 ? io::kLdmSd2ClipPrefix : io::kLdmSd1ClipPrefix;
  const auto user = src.options().configs.find(prefix, {"CLIPTextModel", "CLIPTextModelWithProjection"});
  ClipTextModel<T, Cpu> clip(user ? ClipTextConfig::from_json(*user) : io::infer_clip_text_config(sd, kind));
  load_clip_text(clip, sd);
  return clip;
}

template <class T = float>
VQModel<T, Cpu> load_vq(const ModelSource& src) {
  check<FormatError>(src.kind() != SourceKind::SingleFile, src.path(),
                     ": VQ models load from a diffusers folder (config.json + weights)");
  VQModel<T, Cpu> vq(VQModelConfig::from_json(src.folder_config("vqvae")));
  nn::load_state_dict(vq, src.folder_weights("vqvae"));
  return vq;
}

/// TAESD: a diffusers AutoencoderTiny folder, or a single file with taesd.py / AutoencoderTiny names.
template <class T = float>
TAESD<T, Cpu> load_taesd(const ModelSource& src) {
  if (src.kind() != SourceKind::SingleFile) {
    TAESD<T, Cpu> t(TaesdConfig::from_json(src.folder_config("vae")));
    t.load(src.folder_weights("vae"));
    return t;
  }
  const auto user = src.options().configs.find("", {"AutoencoderTiny"});
  TAESD<T, Cpu> t(user ? TaesdConfig::from_json(*user) : TaesdConfig{});
  t.load(src.file());
  return t;
}

}  // namespace adabldm::models
