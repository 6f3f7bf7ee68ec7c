#pragma once
// The AdaBLDM pipeline: from an OK image and a few real defect masks, one synthetic defect image with a
// pixel-exact mask. Per sample: pick and place a defect mask inside the foreground, build the trimap, run the
// blended sampler (free diffusion -> latent editing -> image editing) conditioned on the prompt and the trimap,
// then decode with the online decoder adaptation. Deterministic from (seed, sample index).
#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "adabldm/defect/decoder_adaptation.hpp"
#include "adabldm/defect/foreground.hpp"
#include "adabldm/defect/mask_synthesis.hpp"
#include "adabldm/defect/trimap.hpp"
#include "adabldm/models/stable_diffusion.hpp"
#include "adabldm/sampling/stages.hpp"

namespace adabldm {

/// One real defect: its image (optional at generation time) and its mask, [1, 1, H, W] in {0, 1}.
struct DefectSource {
  Tensor<float> image;
  Tensor<float> mask;
  std::string name;  ///< for logs and the manifest (e.g. the mask's file name)
};

/// What to generate: an OK image ([1, 3, H, W] in [-1, 1], any size), real defects, names for the prompt.
struct DefectJob {
  Tensor<float> ok;
  std::vector<DefectSource> defects;
  std::string object, defect;
  uint64_t seed = 0;
  Tensor<float> foreground;  ///< [1, 1, H, W] in {0, 1}; empty: the whole image (textures)
};

struct DefectSample {
  Tensor<float> image;  ///< [1, 3, size, size] in [-1, 1]
  Tensor<float> mask;   ///< [1, 1, size, size] in {0, 1}, undilated
  Tensor<float> latent; ///< the final latent z* (UNet scale)
  defect::MaskPlacement placement;
  std::string prompt;
  bool adapted = false;                    ///< decoded by the online-adapted decoder
  std::map<std::string, double> timings;   ///< seconds per phase
};

struct PipelineOptions {
  sampling::Preset preset = sampling::Preset::Official;
  int steps = 50;
  double guidance = 9.0;
  int size = 256;
  std::string prompt_template = "a {object} with a {defect}";
  std::string negative_prompt;
  sampling::ControlContext control_context = sampling::ControlContext::Empty;  ///< the official code's choice
  float control_scale = 1.0f;
  int latent_dilation = 5;
  defect::LatentMaskResize latent_mask_resize = defect::LatentMaskResize::Cover;  ///< Nearest = the official code
  defect::SynthesisOptions synthesis;      ///< rotation/scale on by default (the paper); off = official inference
  bool sample_posterior = true;            ///< encode with a posterior sample (official)
  bool adapt = true;                       ///< online decoder adaptation (off: the plain decoder)
  defect::AdaptationOptions adaptation;    ///< 200 AdamW steps, lr 1e-4, lambda 100
  /// Builds the stage list instead of the preset (your own composition); it gets the step count and the
  /// blend inputs (OK image and latent, masks, VAE codec).
  std::function<sampling::StageList(int steps, const sampling::BlendInputs&)> stage_builder;
};

/// "a {object} with a {defect}" with the names filled in.
inline std::string fill_prompt(std::string tpl, const std::string& object, const std::string& defect) {
  for (const auto& [key, value] : {std::pair<std::string, std::string>{"{object}", object}, {"{defect}", defect}})
    for (std::size_t p; (p = tpl.find(key)) != std::string::npos;) tpl.replace(p, key.size(), value);
  return tpl;
}

/// Image features for the unsupervised foreground predictor: the VAE encoder's activations at stride 4
/// (conv_in and the first two down blocks) — the loaded model's own features, as no ImageNet network is
/// available offline (the official code uses EfficientNet-B0 features.2, also stride 4).
inline Tensor<float> vae_features(const models::AutoencoderKL<float>& vae, const Tensor<float>& image) {
  const auto& enc = vae.encoder;
  auto h = enc.conv_in(image);
  for (std::size_t i = 0; i < std::min<std::size_t>(2, enc.down_blocks.size()); ++i) h = enc.down_blocks[i](h);
  return h;
}

/// Progress of one sample: the phase ("sampling", "adaptation"), the step done and the steps of that phase.
using StepProgress = std::function<void(const char* phase, int step, int steps)>;

template <class T = float, class Dev = Cpu>
class Pipeline {
  static_assert(std::is_same_v<T, float> && std::is_same_v<Dev, Cpu>, "the pipeline runs in float on the CPU for now");

 public:
  /// A base model (single file or diffusers folder) and a trimap encoder (a path; empty: the base model's own
  /// controlnet/ or control_model.* tensors).
  static Pipeline load(const std::string& model, const std::string& trimap_encoder = "",
                       const models::LoadOptions& opt = {}) {
    auto sd = models::StableDiffusion::load(model, opt);
    if (!trimap_encoder.empty()) {
      auto cn = models::load_controlnet(models::ModelSource(trimap_encoder, opt));
      return Pipeline(std::move(sd), std::move(cn));
    }
    check(sd.controlnet.has_value(), model, ": the model has no trimap encoder (no controlnet/ folder or "
                                            "control_model.* tensors); pass one (--trimap-encoder)");
    auto cn = std::move(*sd.controlnet);
    sd.controlnet.reset();
    return Pipeline(std::move(sd), std::move(cn));
  }
  Pipeline(models::StableDiffusion sd, models::ControlNetModel<float> controlnet)
      : sd_(std::move(sd)), controlnet_(std::move(controlnet)) {}

  models::StableDiffusion& model() { return sd_; }
  const models::ControlNetModel<float>& trimap_encoder() const { return controlnet_; }
  PipelineOptions& options() { return options_; }
  const PipelineOptions& options() const { return options_; }


  /// The OK image at the pipeline size (no aspect preservation, as the official code).
  Tensor<float> prepare_image(const Tensor<float>& img) const {
    check<ShapeError>(img.rank() == 4 && img.dim(0) == 1 && (img.dim(1) == 3 || img.dim(1) == 1),
                      "pipeline: the OK image must be [1, 3, H, W] (or gray [1, 1, H, W]), got ", img.shape().str());
    auto rgb = img.dim(1) == 3 ? img : ops::concat<float>({img, img, img}, 1);
    if (rgb.dim(2) == options_.size && rgb.dim(3) == options_.size) return rgb;
    return defect::resize_bilinear(rgb, options_.size, options_.size);
  }

  DefectSample generate(const DefectJob& job, const StepProgress& progress = {}) const {
    using clock = std::chrono::steady_clock;
    auto seconds = [](clock::time_point a) { return std::chrono::duration<double>(clock::now() - a).count(); };
    const auto t0 = clock::now();
    const int S = options_.size;
    const int64_t f = sd_.vae_scale();
    check(S > 0 && S % f == 0, "pipeline: --size ", S, " must be a positive multiple of ", f);
    check(!job.defects.empty(), "pipeline: no real defect masks given");
    Rng rng(job.seed);
    DefectSample out;
    const auto ok = prepare_image(job.ok);
    const auto fg = job.foreground.defined() ? defect::resize_mask(job.foreground, S, S) : defect::all_foreground(S, S);

    // Defect geometry.
    std::vector<defect::SourceMask> masks;
    for (std::size_t i = 0; i < job.defects.size(); ++i) {
      const auto& d = job.defects[i];
      check<ShapeError>(d.mask.rank() == 4 && d.mask.dim(0) == 1 && d.mask.dim(1) == 1, "pipeline: defect mask ",
                        d.name.empty() ? std::to_string(i) : d.name, " must be [1, 1, H, W], got ", d.mask.shape().str());
      masks.push_back({d.name.empty() ? "defect " + std::to_string(i) : d.name, defect::resize_mask(d.mask, S, S)});
    }
    auto synth = defect::synthesize_mask(masks, fg, rng, options_.synthesis);
    out.mask = synth.mask;
    out.placement = synth.placement;
    const auto trimap = defect::make_trimap(out.mask, fg);
    const auto control = defect::trimap_to_control(trimap, static_cast<int>(controlnet_.config.conditioning_channels));
    const auto latent_mask = defect::latent_mask(out.mask, static_cast<int>(S / f), static_cast<int>(S / f),
                                                 options_.latent_dilation, options_.latent_mask_resize);
    out.timings["geometry"] = seconds(t0);

    // Blended sampling.
    const auto t1 = clock::now();
    out.prompt = fill_prompt(options_.prompt_template, job.object, job.defect);
    sampling::ConditionedUNet model;
    model.unet = &sd_.unet;
    model.controlnet = &controlnet_;
    model.guidance = sampling::Guidance{options_.guidance};
    model.cond = sampling::encode_prompt(sd_.tokenizer, sd_.text_encoder, out.prompt, sd_.pad);
    model.uncond = sampling::encode_prompt(sd_.tokenizer, sd_.text_encoder, options_.negative_prompt, sd_.pad);
    if (options_.control_context == sampling::ControlContext::Prompt) {
      model.cn_cond = model.cond;
      model.cn_uncond = model.uncond;
    } else {
      model.cn_cond = model.cn_uncond = sampling::encode_prompt(sd_.tokenizer, sd_.text_encoder, "", sd_.pad);
    }
    model.control = control;
    model.control_scale = options_.control_scale;

    sampling::BlendInputs in;
    in.ok_image = ok;
    in.ok_latent = sd_.vae.encode_scaled(ok, options_.sample_posterior ? &rng : nullptr);
    in.latent_mask = latent_mask;
    in.pixel_mask = out.mask;
    in.sample_posterior = options_.sample_posterior;
    in.codec.decode = [this](const Tensor<float>& z) { return sd_.vae.decode_scaled(z); };
    in.codec.encode = [this](const Tensor<float>& x, Rng* r) { return sd_.vae.encode_scaled(x, r); };
    sampling::DDIMScheduler scheduler(sd_.scheduler);
    scheduler.set_timesteps(options_.steps);
    const auto stages = options_.stage_builder ? options_.stage_builder(options_.steps, in)
                                               : sampling::make_stages(options_.preset, options_.steps, in);
    const auto z_T = rng.normal<float>({1, sd_.unet.config.in_channels, S / f, S / f});
    out.latent = sampling::run_sampler(scheduler, z_T, model, stages, rng, 0.0,
                                       [&](const sampling::StepInfo& s, const sampling::SamplerState&, const auto&) {
                                         if (progress) progress("sampling", s.index + 1, s.num_steps);
                                       });
    out.timings["sampling"] = seconds(t1);

    // Decoding.
    const auto t2 = clock::now();
    if (options_.adapt && options_.adaptation.steps > 0) {
      const auto r = defect::adapt_decoder(sd_.vae, out.latent, ok, out.mask, options_.adaptation,
                                           [&](int i, int n, double) { if (progress) progress("adaptation", i, n); });
      out.image = r.image;
      out.adapted = true;
    } else {
      out.image = sd_.vae.decode_scaled(out.latent);
    }
    out.timings["decode"] = seconds(t2);
    out.timings["total"] = seconds(t0);
    return out;
  }

 private:
  models::StableDiffusion sd_;
  models::ControlNetModel<float> controlnet_;
  PipelineOptions options_;
};

}  // namespace adabldm
