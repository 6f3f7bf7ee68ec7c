#pragma once
// The stage policies of blended sampling and the presets built from them.
//   FreeDiffusion  — no edit (it only names the span).
//   LatentEditing  — outside the (dilated) latent mask, replace the latent by the OK latent noised to the
//                    current level (before the model call) or to the next level (after the step).
//   ImageEditing   — decode the predicted clean latent, paste the OK pixels outside the pixel mask, re-encode,
//                    re-noise (to the current level, as the official code, or to the next one).
// Masks use the library's convention: 1 = defect / generate, 0 = keep the OK image.
#include <cmath>
#include <functional>
#include <memory>
#include <string>

#include "adabldm/sampling/sampler.hpp"

namespace adabldm::sampling {

/// out = m * a + (1 - m) * b, with m broadcast over channels ([1, 1, h, w] against [1, C, h, w]).
inline Tensor<float> blend(const Tensor<float>& m_in, const Tensor<float>& a_in, const Tensor<float>& b_in) {
  check<ShapeError>(a_in.shape() == b_in.shape(), "blend: ", a_in.shape().str(), " vs ", b_in.shape().str());
  check<ShapeError>(m_in.rank() == 4 && m_in.dim(0) == a_in.dim(0) && m_in.dim(1) == 1 && m_in.dim(2) == a_in.dim(2) &&
                        m_in.dim(3) == a_in.dim(3),
                    "blend: mask ", m_in.shape().str(), " does not fit ", a_in.shape().str());
  const auto m = m_in.contiguous(), a = a_in.contiguous(), b = b_in.contiguous();
  auto out = Tensor<float>::empty(a.shape());
  const int64_t plane = a.dim(2) * a.dim(3), C = a.dim(1);
  for (int64_t n = 0; n < a.dim(0); ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < plane; ++i) {
        const int64_t k = (n * C + c) * plane + i;
        const float w = m.data()[n * plane + i];
        out.data()[k] = w * a.data()[k] + (1.0f - w) * b.data()[k];
      }
  return out;
}

/// q(z_level | z0) with fresh noise from rng; level < 0 (after the last step) returns z0 itself.
inline Tensor<float> noise_to_level(const Tensor<float>& z0, float alpha, Rng& rng) {
  return add_noise(z0, rng.normal<float>(z0.shape()), alpha);
}

class FreeDiffusion : public Stage {
 public:
  FreeDiffusion(int first, int last) : Stage("free_diffusion", first, last) {}
};

class LatentEditing : public Stage {
 public:
  enum class When { BeforeModel, AfterStep };
  /// ok_latent: the OK image's latent (UNet scale); mask: [1, 1, h, w], 1 = generate (dilated defect).
  LatentEditing(int first, int last, Tensor<float> ok_latent, Tensor<float> mask, When when = When::BeforeModel)
      : Stage("latent_editing", first, last), ok_(std::move(ok_latent)), mask_(std::move(mask)), when_(when) {}

  void before_model(const StepInfo& s, SamplerState& st, Rng& rng) override {
    if (when_ == When::BeforeModel) st.latent = blend(mask_, st.latent, noise_to_level(ok_, s.alpha, rng));
  }
  void after_step(const StepInfo& s, SamplerState& st, Rng& rng) override {
    if (when_ != When::AfterStep) return;
    const auto bg = s.t_prev < 0 ? ok_ : noise_to_level(ok_, s.alpha_prev, rng);
    st.latent = blend(mask_, st.latent, bg);
  }

 private:
  Tensor<float> ok_, mask_;
  When when_;
};

/// Decoding and encoding between UNet-scale latents and [-1, 1] images (the VAE, or any other codec).
struct LatentCodec {
  std::function<Tensor<float>(const Tensor<float>& latent)> decode;
  /// rng given: a posterior sample (the official code); null: the posterior mean.
  std::function<Tensor<float>(const Tensor<float>& image, Rng* rng)> encode;
};

class ImageEditing : public Stage {
 public:
  /// Re-noise the re-encoded latent to the current level t (official code: the final latent keeps noise of
  /// sqrt(1 - alpha_1) ~ 0.04) or to the next level t_prev (clean after the last step).
  enum class Renoise { Current, Next };
  ImageEditing(int first, int last, LatentCodec codec, Tensor<float> ok_image, Tensor<float> pixel_mask,
               Renoise renoise, bool sample_posterior)
      : Stage("image_editing", first, last), codec_(std::move(codec)), ok_(std::move(ok_image)),
        mask_(std::move(pixel_mask)), renoise_(renoise), sample_posterior_(sample_posterior) {}

  void after_step(const StepInfo& s, SamplerState& st, Rng& rng) override {
    const auto x_hat = codec_.decode(st.pred_x0);
    const auto x_blend = blend(mask_, x_hat, ok_);
    const auto z_b = codec_.encode(x_blend, sample_posterior_ ? &rng : nullptr);
    if (renoise_ == Renoise::Current) st.latent = noise_to_level(z_b, s.alpha, rng);
    else st.latent = s.t_prev < 0 ? z_b : noise_to_level(z_b, s.alpha_prev, rng);
  }

 private:
  LatentCodec codec_;
  Tensor<float> ok_, mask_;
  Renoise renoise_;
  bool sample_posterior_;
};

/// The named compositions.
enum class Preset {
  Official,   ///< the official AdaBLDM code: free, latent editing (before the model), image editing re-noised to t
  Corrected,  ///< the same, image editing re-noised to the next level (the final latent is clean)
  Bld,        ///< plain Blended Latent Diffusion: a latent blend after every step, no image editing
  None,       ///< plain sampling (text/trimap-to-image), no editing
};

inline Preset parse_preset(const std::string& s) {
  if (s == "official") return Preset::Official;
  if (s == "corrected") return Preset::Corrected;
  if (s == "bld") return Preset::Bld;
  if (s == "none") return Preset::None;
  throw Error("unknown preset \"" + s + "\" (official, corrected, bld, none)");
}
inline const char* preset_name(Preset p) {
  switch (p) {
    case Preset::Official: return "official";
    case Preset::Corrected: return "corrected";
    case Preset::Bld: return "bld";
    case Preset::None: return "none";
  }
  return "?";
}

/// The step spans of the official schedule scaled to n steps: the image-editing cutoff at 0.9 n (45 of 50),
/// latent editing on the 0.4 n steps up to and including it (26..45), free diffusion before (0..25), image
/// editing from the cutoff to the end (45..49). For n = 50 these are exactly the official code's indices.
struct StageSpans {
  int free_first, free_last, latent_first, latent_last, image_first, image_last;
  static StageSpans official(int n) {
    check(n >= 2, "the blended presets need at least 2 steps, got ", n);
    const int cutoff = std::min(n - 1, static_cast<int>(std::lround(0.9 * n)));
    const int window = std::max(1, static_cast<int>(std::lround(0.4 * n)));
    const int latent_first = std::max(0, cutoff - window + 1);
    return {0, latent_first - 1, latent_first, cutoff, cutoff, n - 1};
  }
};

/// What a blended preset needs: the OK image and its latent, the masks and the codec.
struct BlendInputs {
  Tensor<float> ok_image;     ///< [1, 3, H, W] in [-1, 1]
  Tensor<float> ok_latent;    ///< [1, 4, h, w], UNet scale
  Tensor<float> latent_mask;  ///< [1, 1, h, w], 1 = generate (dilated defect)
  Tensor<float> pixel_mask;   ///< [1, 1, H, W], 1 = defect (undilated)
  LatentCodec codec;
  bool sample_posterior = true;  ///< official: encode with a posterior sample
};

inline StageList make_stages(Preset preset, int num_steps, const BlendInputs& in) {
  StageList stages;
  if (preset == Preset::None) return stages;
  if (preset == Preset::Bld) {
    stages.push_back(std::make_shared<LatentEditing>(0, num_steps - 1, in.ok_latent, in.latent_mask,
                                                     LatentEditing::When::AfterStep));
    return stages;
  }
  const auto s = StageSpans::official(num_steps);
  if (s.free_last >= s.free_first) stages.push_back(std::make_shared<FreeDiffusion>(s.free_first, s.free_last));
  stages.push_back(std::make_shared<LatentEditing>(s.latent_first, s.latent_last, in.ok_latent, in.latent_mask));
  stages.push_back(std::make_shared<ImageEditing>(
      s.image_first, s.image_last, in.codec, in.ok_image, in.pixel_mask,
      preset == Preset::Official ? ImageEditing::Renoise::Current : ImageEditing::Renoise::Next, in.sample_posterior));
  return stages;
}

}  // namespace adabldm::sampling
