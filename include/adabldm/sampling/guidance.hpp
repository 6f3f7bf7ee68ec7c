#pragma once
// The noise predictor a sampler calls, and classifier-free guidance as a policy over it: the UNet (with an
// optional ControlNet / trimap encoder) conditioned on text, its two CFG branches batched as [uncond, cond]
// exactly as diffusers' StableDiffusion(ControlNet)Pipeline does.
#include <functional>
#include <memory>
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
/// float latents in and out (the sampler's side), the networks in storage type T on device Dev. The conditioning
/// is prepared on the device once (see inputs()); the latent goes up and the prediction down at each call (16 KB
/// at 256 x 256), and the guidance combination runs on the host in float, so every device shares the CPU's sampler.
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
    const std::vector<float> ts{static_cast<float>(t)};  // (float for every T: see ops::timestep_embedding)
    const Inputs& in = inputs();
    const auto zd = upload_as<T, Dev>(z);
    if (!guidance.enabled()) return download_as<float>(predict(zd, ts, in.ctx, in.cn_ctx, in.hint));
    // One batch [uncond, cond], as diffusers concatenates them.
    const auto out =
        download_as<float>(predict(ops::concat(std::vector<Tensor<T, Dev>>{zd, zd}, 0), ts, in.ctx, in.cn_ctx, in.hint));
    const int64_t n = z.numel();
    auto eps = Tensor<float>::empty(z.shape());
    const float s = static_cast<float>(guidance.scale);
    const float* u = out.data();
    const float* c = out.data() + n;
    for (int64_t i = 0; i < n; ++i) eps.data()[i] = u[i] + s * (c[i] - u[i]);
    return eps;
  }

 private:
  /// The networks' conditioning inputs built from the fields ([uncond, cond] batches with guidance, in T on Dev):
  /// made on the first call and again only when a field holds another tensor (the fields are kept, so a new
  /// tensor cannot reuse an old one's address), not at each of the sampler's steps. Not thread-safe.
  struct Inputs {
    Tensor<float> cond, uncond, cn_cond, cn_uncond, control;  // what they were built from
    bool cfg = false;
    Tensor<T, Dev> ctx, cn_ctx, hint;
  };
  const Inputs& inputs() const {
    const auto same = [](const Tensor<float>& a, const Tensor<float>& b) {
      return a.data() == b.data() && a.shape() == b.shape();
    };
    if (inputs_ && inputs_->cfg == guidance.enabled() && same(inputs_->cond, cond) && same(inputs_->uncond, uncond) &&
        same(inputs_->cn_cond, cn_cond) && same(inputs_->cn_uncond, cn_uncond) && same(inputs_->control, control))
      return *inputs_;
    const auto up = [](const Tensor<float>& x) { return x.defined() ? upload_as<T, Dev>(x) : Tensor<T, Dev>{}; };
    const auto both = [&](const Tensor<float>& a, const Tensor<float>& b) {
      return up(ops::concat(std::vector<Tensor<float>>{a, b}, 0));
    };
    Inputs in{cond, uncond, cn_cond, cn_uncond, control, guidance.enabled(), {}, {}, {}};
    if (!in.cfg) {
      in.ctx = up(cond);
      in.cn_ctx = up(cn_cond);
      in.hint = up(control);
    } else {
      in.ctx = both(uncond, cond);
      if (controlnet) {
        in.cn_ctx = both(cn_uncond, cn_cond);
        in.hint = both(control, control);
      }
    }
    inputs_ = std::make_shared<const Inputs>(std::move(in));
    return *inputs_;
  }
  mutable std::shared_ptr<const Inputs> inputs_;

  Tensor<T, Dev> predict(const Tensor<T, Dev>& x, const std::vector<float>& ts, const Tensor<T, Dev>& ctx,
                         const Tensor<T, Dev>& cn_ctx, const Tensor<T, Dev>& hint) const {
    if (!controlnet) return (*unet)(x, ts, ctx);
    const auto residuals = (*controlnet)(x, ts, cn_ctx, hint, static_cast<T>(control_scale));
    return (*unet)(x, ts, ctx, residuals);
  }
};

}  // namespace adabldm::sampling
