#pragma once
// Plain sampling, equal to diffusers' StableDiffusionPipeline / StableDiffusionControlNetPipeline with DDIM:
// prompt and negative prompt encoded, CFG branches batched [uncond, cond], the control image in both branches,
// the ControlNet's text context either the prompt (diffusers) or the empty prompt (official AdaBLDM).
#include <string>

#include "adabldm/sampling/sampler.hpp"
#include "adabldm/sampling/stable_diffusion.hpp"

namespace adabldm::sampling {

struct TextToImageRequest {
  std::string prompt;
  std::string negative_prompt;
  Tensor<float> control;  ///< [1, C, H, W] in [0, 1]; empty: no ControlNet
  ControlContext control_context = ControlContext::Prompt;
  float control_scale = 1.0f;
  int steps = 50;
  double guidance = 7.5;
  double eta = 0.0;
  Tensor<float> latents;  ///< the initial latent z_T [1, C, h, w]; empty: drawn from the rng
  int64_t height = 0, width = 0;  ///< image size when neither latents nor control tell it
};

struct TextToImageResult {
  Tensor<float> latents_final;  ///< the last latent, before decoding
  Tensor<float> image_decoded;  ///< VAE output in ~[-1, 1], before clamping
};

/// Runs the sampler with `stages` (none: plain sampling) with the networks in storage type T on device Dev (the
/// text encoder and the sampler's arithmetic stay on the host, see ConditionedUNet). `controlnet` may be null.
template <class T, class Dev>
TextToImageResult text_to_image(const models::StableDiffusion& sd, const models::UNet2DConditionModel<T, Dev>& unet,
                                const models::ControlNetModel<T, Dev>* controlnet,
                                const models::AutoencoderKL<float, Dev>& vae, const TextToImageRequest& req, Rng& rng,
                                const StageList& stages = {}, const StepCallback& on_step = {}) {
  const bool use_control = controlnet && req.control.defined();
  check(!req.control.defined() || controlnet, "a control image was given but the model has no ControlNet");
  ConditionedUNet<T, Dev> model;
  model.unet = &unet;
  model.guidance = Guidance{req.guidance};
  model.cond = encode_prompt(sd.tokenizer, sd.text_encoder, req.prompt, sd.pad);
  if (model.guidance.enabled()) model.uncond = encode_prompt(sd.tokenizer, sd.text_encoder, req.negative_prompt, sd.pad);
  if (use_control) {
    model.controlnet = controlnet;
    model.control = req.control;
    model.control_scale = req.control_scale;
    if (req.control_context == ControlContext::Prompt) {
      model.cn_cond = model.cond;
      model.cn_uncond = model.uncond;
    } else {
      const auto empty = encode_prompt(sd.tokenizer, sd.text_encoder, "", sd.pad);
      model.cn_cond = model.cn_uncond = empty;
    }
  }
  Tensor<float> z = req.latents;
  if (!z.defined()) {
    const int64_t f = vae.downscale();
    const int64_t H = use_control ? req.control.dim(2) : req.height, W = use_control ? req.control.dim(3) : req.width;
    check(H > 0 && W > 0 && H % f == 0 && W % f == 0, "text_to_image: image size ", H, "x", W,
          " must be positive multiples of ", f);
    z = rng.normal<float>({1, unet.config.in_channels, H / f, W / f});  // x init_noise_sigma (1 for DDIM)
  }
  DDIMScheduler scheduler(sd.scheduler);
  scheduler.set_timesteps(req.steps);
  TextToImageResult r;
  r.latents_final = run_sampler(scheduler, z, model, stages, rng, req.eta, on_step);
  r.image_decoded = download_as<float>(vae.decode_scaled(upload_as<float, Dev>(r.latents_final)));
  return r;
}

/// The same with the StableDiffusion's own networks (float, CPU).
inline TextToImageResult text_to_image(const models::StableDiffusion& sd, const models::ControlNetModel<float>* controlnet,
                                       const TextToImageRequest& req, Rng& rng, const StageList& stages = {},
                                       const StepCallback& on_step = {}) {
  return text_to_image(sd, sd.unet, controlnet, sd.vae, req, rng, stages, on_step);
}

}  // namespace adabldm::sampling
