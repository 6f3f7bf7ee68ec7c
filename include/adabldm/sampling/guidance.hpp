#pragma once
// The noise predictor a sampler calls, and classifier-free guidance as a policy over it: the UNet (with an
// optional ControlNet / trimap encoder) conditioned on text, its two CFG branches batched as [uncond, cond]
// exactly as diffusers' StableDiffusion(ControlNet)Pipeline does.
#include <functional>
#include <string>

#include "adabldm/core/transfer.hpp"
#include "adabldm/models/clip_text.hpp"
#include "adabldm/models/controlnet.hpp"
#include "adabldm/text/clip_tokenizer.hpp"

namespace adabldm::sampling {

/// The model prediction (epsilon or v, per the scheduler config) for latent z at timestep t.
using Denoiser = std::function<Tensor<float>(const Tensor<float>& z, int64_t t)>;

/// Classifier-free guidance: eps = eps_uncond + scale * (eps_cond - eps_uncond). As in diffusers, a scale <= 1
/// runs the conditional branch alone.
struct Guidance {
  double scale = 7.5;
  bool enabled() const { return scale > 1.0; }
};

/// Which text the ControlNet (trimap encoder) cross-attends to: the prompt, as diffusers does, or always the
/// empty prompt, as the official AdaBLDM code does (the trimap encoder is then prompt-independent).
enum class ControlContext { Prompt, Empty };

/// The CLIP embedding of `text`: tokenized to 77 ids padded as SD1.x does (end token), last_hidden_state.
inline Tensor<float> encode_prompt(const text::ClipTokenizer& tokenizer, const models::ClipTextModel<float>& clip,
                                   const std::string& text,
                                   text::ClipTokenizer::Pad pad = text::ClipTokenizer::Pad::Eos) {
  const auto ids = tokenizer.tokenize(text, pad, static_cast<int>(clip.config.max_position_embeddings));
  const auto t = Tensor<int64_t>::from_vector(ids, {1, static_cast<int64_t>(ids.size())});
  return clip(t).last_hidden_state;
}

/// The UNet (+ optional ControlNet) with fixed text contexts, control image and guidance, as a Denoiser: host
/// float latents in and out (the sampler's side), the networks in storage type T on device Dev. The inputs are
/// copied to the device on each call (a few hundred kilobytes against a UNet evaluation; none on the CPU in
/// float) and the guidance combination runs on the host in float, so every device shares the CPU's sampler.
template <class T = float, class Dev = Cpu>
struct ConditionedUNet {
  const models::UNet2DConditionModel<T, Dev>* unet = nullptr;
  const models::ControlNetModel<T, Dev>* controlnet = nullptr;  ///< optional
  Tensor<float> cond, uncond;        ///< UNet contexts [1, L, D]: the prompt and the negative prompt
  Tensor<float> cn_cond, cn_uncond;  ///< ControlNet contexts (see ControlContext)
  Tensor<float> control;             ///< [1, C, H, W] in [0, 1] (with a ControlNet)
  float control_scale = 1.0f;
  Guidance guidance;

  /// Counts model evaluations (one per call, whatever the CFG batching).
  mutable int64_t calls = 0;

  Tensor<float> operator()(const Tensor<float>& z, int64_t t) const {
    check(unet != nullptr, "ConditionedUNet: no UNet");
    ++calls;
    const std::vector<T> ts{static_cast<T>(static_cast<float>(t))};
    const auto up = [](const Tensor<float>& x) { return x.defined() ? upload_as<T, Dev>(x) : Tensor<T, Dev>{}; };
    const auto zd = up(z);
    if (!guidance.enabled()) return download_as<float>(predict(zd, ts, up(cond), up(cn_cond), up(control)));
    // One batch [uncond, cond], as diffusers concatenates them.
    const auto both = [&](const Tensor<float>& a, const Tensor<float>& b) {
      return up(ops::concat(std::vector<Tensor<float>>{a, b}, 0));
    };
    const auto out = download_as<float>(predict(ops::concat(std::vector<Tensor<T, Dev>>{zd, zd}, 0), ts,
                                                both(uncond, cond), controlnet ? both(cn_uncond, cn_cond) : Tensor<T, Dev>{},
                                                controlnet ? both(control, control) : Tensor<T, Dev>{}));
    const int64_t n = z.numel();
    auto eps = Tensor<float>::empty(z.shape());
    const float s = static_cast<float>(guidance.scale);
    const float* u = out.data();
    const float* c = out.data() + n;
    for (int64_t i = 0; i < n; ++i) eps.data()[i] = u[i] + s * (c[i] - u[i]);
    return eps;
  }

 private:
  Tensor<T, Dev> predict(const Tensor<T, Dev>& x, const std::vector<T>& ts, const Tensor<T, Dev>& ctx,
                         const Tensor<T, Dev>& cn_ctx, const Tensor<T, Dev>& hint) const {
    if (!controlnet) return (*unet)(x, ts, ctx);
    const auto residuals = (*controlnet)(x, ts, cn_ctx, hint, static_cast<T>(control_scale));
    return (*unet)(x, ts, ctx, residuals);
  }
};

}  // namespace adabldm::sampling
