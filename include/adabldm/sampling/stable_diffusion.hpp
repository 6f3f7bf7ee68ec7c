#pragma once
// A Stable Diffusion model set: UNet, VAE, text encoder, tokenizer, noise schedule, and an optional ControlNet
// (the trimap encoder), loaded from one source (diffusers pipeline folder or single file). It lives in sampling/
// because it holds the noise schedule (sampling::SchedulerConfig); its names stay in namespace models, where
// they were before the move (docs/architecture.md, "Layers").
#include <filesystem>
#include <optional>
#include <string>

#include "adabldm/models/loader.hpp"
#include "adabldm/sampling/scheduler.hpp"
#include "adabldm/text/clip_tokenizer.hpp"

namespace adabldm::models {

/// The noise schedule of Stable Diffusion 1.x/2.x (what single files imply).
inline sampling::SchedulerConfig sd_scheduler_config() {
  sampling::SchedulerConfig c;
  c.class_name = "DDIMScheduler";
  c.beta_start = 0.00085;
  c.beta_end = 0.012;
  c.beta_schedule = sampling::BetaSchedule::ScaledLinear;
  c.clip_sample = false;
  c.set_alpha_to_one = false;
  c.steps_offset = 1;
  return c;
}

struct StableDiffusion {
  UNet2DConditionModel<float> unet;
  AutoencoderKL<float> vae;
  ClipTextModel<float> text_encoder;
  text::ClipTokenizer tokenizer;
  sampling::SchedulerConfig scheduler;
  text::ClipTokenizer::Pad pad = text::ClipTokenizer::Pad::Eos;  ///< SD1.x pads with the end token, SD2.x with 0
  std::optional<ControlNetModel<float>> controlnet;              ///< a pipeline's controlnet/, if any

  /// Loads every component from a diffusers pipeline folder or a single file. A pipeline folder's tokenizer/
  /// and scheduler/ are used when present; otherwise the shipped CLIP vocabulary and SD's noise schedule.
  static StableDiffusion load(const std::string& path, const LoadOptions& opt = {}) {
    const ModelSource src(path, opt);
    check<FormatError>(src.kind() != SourceKind::ComponentFolder, path,
                       ": a single component folder; give the pipeline folder (with model_index.json) or a single file");
    const bool own_tokenizer = src.has_component("tokenizer");
    StableDiffusion sd{load_unet(src), load_vae(src), load_text_encoder(src),
                       own_tokenizer ? text::ClipTokenizer::from_folder(src.component_dir("tokenizer"))
                                     : text::ClipTokenizer::load_default(),
                       sd_scheduler_config(), text::ClipTokenizer::Pad::Eos, std::nullopt};
    if (src.kind() == SourceKind::DiffusersPipeline) {
      namespace fs = std::filesystem;
      const fs::path sched = fs::path(path) / "scheduler" / "scheduler_config.json";
      if (fs::exists(sched))
        sd.scheduler = sampling::SchedulerConfig::from_json({io::read_json(sched.string()), sched.string()});
      if (src.has_component("controlnet")) sd.controlnet = load_controlnet(src);
    } else {
      if (io::detect_ldm_text_encoder(src.file()) == io::LdmTextEncoder::OpenClipSd2) sd.pad = text::ClipTokenizer::Pad::Zero;
      if (src.file().has_prefix(io::ldm_prefix::controlnet)) sd.controlnet = load_controlnet(src);
    }
    return sd;
  }

  /// The UNet's latent size for an image of `pixels` (the VAE's downsampling factor).
  int64_t vae_scale() const { return vae.config.layout.downscale(); }
};

}  // namespace adabldm::models
