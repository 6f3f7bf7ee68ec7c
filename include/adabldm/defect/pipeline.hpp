#pragma once
// The AdaBLDM pipeline: from an OK image and a few real defect masks, one synthetic defect image with a
// pixel-exact mask. Per sample: pick and place a defect mask inside the foreground, build the trimap, run the
// blended sampler (free diffusion -> latent editing -> image editing) conditioned on the prompt and the trimap,
// then decode with the online decoder adaptation. Deterministic from (seed, sample index).
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "adabldm/defect/decoder_adaptation.hpp"
#include "adabldm/defect/foreground.hpp"
#include "adabldm/defect/foreground_fit.hpp"
#include "adabldm/defect/mask_synthesis.hpp"
#include "adabldm/defect/trimap.hpp"
#include "adabldm/nn/module.hpp"
#include "adabldm/ops/matmul.hpp"
#include "adabldm/sampling/stable_diffusion.hpp"
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
  /// The adaptation's forward and backward in bfloat16 with float master weights and AdamW (mixed precision:
  /// a GPU's tensor cores at twice TF32's rate). Devices only: the CPU has no bfloat16 gradients.
  bool adapt_in_bf16 = false;
  /// With bfloat16 products on the CPU (ops::set_cpu_matmul_precision), the UNet's and trimap encoder's weights are
  /// converted and packed once per sample instead of at every product (ops::FrozenWeights): an SD1.5 UNet step
  /// about 20 % faster, for half their float32 size in memory while sampling (1.7 + 0.7 GB). Off: no extra memory.
  bool pack_weights_once = true;
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

/// Image features for the unsupervised foreground predictor as CPR publishes it: the VAE encoder's activations
/// after conv_in and the first two down blocks, stride 4 (the `official` recipe of foreground_fit.hpp, whose
/// `object` recipe generate uses by default). Host image in, host features out, the encoder on any device.
template <class T, class Dev>
Tensor<float> vae_features(const models::AutoencoderKL<T, Dev>& vae, const Tensor<float>& image) {
  return defect::foreground_features(vae, image, defect::foreground_settings(defect::ForegroundRecipe::Official).features);
}

/// Progress of one sample: the phase ("sampling", "adaptation"), the step done and the steps of that phase.
using StepProgress = std::function<void(const char* phase, int step, int steps)>;

/// The pipeline with the UNet and the trimap encoder in storage type T on device Dev (float on the CPU: the
/// reference; e.g. half on Cuda). The VAE (encoding, image editing, decoder adaptation) runs on Dev in float;
/// the text encoder, the sampler's arithmetic and the geometry run on the host in float (small, and the
/// numerics every device shares).
template <class T = float, class Dev = Cpu>
class Pipeline {
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
  /// Converts (and, for a device, uploads) the networks; the host copies of the UNet and the VAE are then
  /// released unless they are the ones used (float on the CPU).
  Pipeline(models::StableDiffusion sd, models::ControlNetModel<float> controlnet)
      : unet_(nn::convert<T, Dev>(sd.unet)), controlnet_(nn::convert<T, Dev>(controlnet)),
        vae_(nn::convert<float, Dev>(sd.vae)), sd_(std::move(sd)) {
    if constexpr (!std::is_same_v<Dev, Cpu>) {
      sd_.unet = models::UNet2DConditionModel<float>(sd_.unet.config);  // the architecture, no values
      sd_.vae = models::AutoencoderKL<float>(sd_.vae.config);
    }
  }

  /// The host side: text encoder, tokenizer, scheduler and the configs.
  models::StableDiffusion& model() { return sd_; }
  const models::UNet2DConditionModel<T, Dev>& unet() const { return unet_; }
  const models::ControlNetModel<T, Dev>& trimap_encoder() const { return controlnet_; }
  const models::AutoencoderKL<float, Dev>& vae() const { return vae_; }
  PipelineOptions& options() { return options_; }
  const PipelineOptions& options() const { return options_; }

  /// Features of an image for the foreground predictor (see vae_features).
  Tensor<float> features(const Tensor<float>& image) const { return vae_features(vae_, image); }

  /// The CLIP embedding of a prompt (computed once per distinct text).
  Tensor<float> prompt_embedding(const std::string& text) const {
    std::lock_guard<std::mutex> lock(prompts_->mutex);
    auto it = prompts_->embeddings.find(text);
    if (it == prompts_->embeddings.end())
      it = prompts_->embeddings.emplace(text, sampling::encode_prompt(sd_.tokenizer, sd_.text_encoder, text, sd_.pad)).first;
    return it->second;
  }

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
    const int64_t f = vae_.downscale();
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
      masks.push_back({d.name.empty() ? "defect " + std::to_string(i) : d.name,
                       defect::resize_defect_mask(d.mask, S, S)});
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
    sampling::ConditionedUNet<T, Dev> model;
    model.unet = &unet_;
    model.controlnet = &controlnet_;
    model.guidance = sampling::Guidance{options_.guidance};
    model.cond = prompt_embedding(out.prompt);
    model.uncond = prompt_embedding(options_.negative_prompt);
    if (options_.control_context == sampling::ControlContext::Prompt) {
      model.cn_cond = model.cond;
      model.cn_uncond = model.uncond;
    } else {
      model.cn_cond = model.cn_uncond = prompt_embedding("");
    }
    model.control = control;
    model.control_scale = options_.control_scale;

    sampling::BlendInputs in;
    in.ok_image = ok;
    in.codec = codec();
    in.ok_latent = in.codec.encode(ok, options_.sample_posterior ? &rng : nullptr);
    in.latent_mask = latent_mask;
    in.pixel_mask = out.mask;
    in.sample_posterior = options_.sample_posterior;
    sampling::DDIMScheduler scheduler(sd_.scheduler);
    scheduler.set_timesteps(options_.steps);
    const auto stages = options_.stage_builder ? options_.stage_builder(options_.steps, in)
                                               : sampling::make_stages(options_.preset, options_.steps, in);
    const auto z_T = rng.normal<float>({1, unet_.config.in_channels, S / f, S / f});
    {
      // With bfloat16 products on the CPU, the two networks' weights are packed once for the whole loop (not the
      // VAE's: its products are dominated by the large activations, and freezing it measured no faster).
      const bool freeze = options_.pack_weights_once && ops::detail::use_bf16_gemm();
      const auto frozen_unet = freeze ? nn::freeze_weights(unet_) : ops::FrozenWeights();
      const auto frozen_trimap_encoder = freeze ? nn::freeze_weights(controlnet_) : ops::FrozenWeights();
      out.latent = sampling::run_sampler(scheduler, z_T, model, stages, rng, 0.0,
                                         [&](const sampling::StepInfo& s, const sampling::SamplerState&, const auto&) {
                                           if (progress) progress("sampling", s.index + 1, s.num_steps);
                                         });
    }
    out.timings["sampling"] = seconds(t1);

    // Decoding.
    const auto t2 = clock::now();
    if (options_.adapt && options_.adaptation.steps > 0) {
      auto adaptation = options_.adaptation;
      if constexpr (!std::is_same_v<Dev, Cpu>) adaptation.record_losses = false;  // no wait for the GPU per step
      const auto report = [&](int i, int n, double) { if (progress) progress("adaptation", i, n); };
      defect::AdaptationResult r;
      if constexpr (std::is_same_v<Dev, Cpu>) {
        check(!options_.adapt_in_bf16, "pipeline: bfloat16 adaptation needs a GPU (the CPU computes gradients in float)");
        r = defect::adapt_decoder(vae_, out.latent, ok, out.mask, adaptation, report);
      } else if (options_.adapt_in_bf16) {
        r = defect::adapt_decoder<bfloat16>(vae_, out.latent, ok, out.mask, adaptation, report);
      } else {
        r = defect::adapt_decoder(vae_, out.latent, ok, out.mask, adaptation, report);
      }
      out.image = r.image;
      out.adapted = true;
    } else {
      out.image = codec().decode(out.latent);
    }
    out.timings["decode"] = seconds(t2);
    out.timings["total"] = seconds(t0);
    return out;
  }

  /// The VAE between host UNet-scale latents and host images, running on the device: decode(latent) and
  /// encode(image, rng) (a posterior sample with rng, else the mean).
  sampling::LatentCodec codec() const {
    sampling::LatentCodec c;
    c.decode = [this](const Tensor<float>& z) {
      return download_as<float>(vae_.decode(upload_as<float, Dev>(models::unscaled_latent(vae_.config, z))));
    };
    c.encode = [this](const Tensor<float>& x, Rng* r) {
      return models::scaled_latent(vae_.config, download_as<float>(vae_.moments(upload_as<float, Dev>(x))), r);
    };
    return c;
  }

 private:
  models::UNet2DConditionModel<T, Dev> unet_;
  models::ControlNetModel<T, Dev> controlnet_;
  models::AutoencoderKL<float, Dev> vae_;
  models::StableDiffusion sd_;
  PipelineOptions options_;
  struct PromptCache {
    std::mutex mutex;
    std::map<std::string, Tensor<float>> embeddings;
  };
  std::shared_ptr<PromptCache> prompts_ = std::make_shared<PromptCache>();
};

}  // namespace adabldm
