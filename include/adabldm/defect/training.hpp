#pragma once
// Training the trimap encoder (AdaBLDM §5): the ControlNet branch learns, on crop-and-paste composites of the
// few real defects (§3.1, synthesised on the fly instead of 20 000 files), to steer the frozen Stable Diffusion
// UNet: AdamW (lr 1e-5, weight decay 0.01) on the LDM epsilon loss, the UNet reading the prompt and the trimap
// encoder the empty prompt (the official code). Everything random comes from (seed, step), so a resumed run
// continues exactly where an uninterrupted one would be.
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "adabldm/autograd/autograd.hpp"
#include "adabldm/defect/foreground.hpp"
#include "adabldm/defect/ldm_loss.hpp"
#include "adabldm/defect/mask_synthesis.hpp"
#include "adabldm/defect/pipeline.hpp"
#include "adabldm/defect/trimap.hpp"
#include "adabldm/models/config_json.hpp"

namespace adabldm::defect {

/// What training draws from: OK images and real defects (image + mask), all at the training size.
struct TrainingSource {
  std::vector<Tensor<float>> ok_images;    ///< [1, 3, S, S] in [-1, 1]
  std::vector<Tensor<float>> foregrounds;  ///< per OK image, [1, 1, S, S]; empty: all foreground
  std::vector<DefectSource> defects;       ///< image [1, 3, S, S] and mask [1, 1, S, S]
  std::string prompt;                      ///< "a {object} with a {defect}"
};

struct TrainingExample {
  Tensor<float> image;    ///< the composite, [1, 3, S, S] in [-1, 1]
  Tensor<float> control;  ///< the trimap as the network sees it, [1, C, S, S] in [0, 1]
  Tensor<float> mask;     ///< where the defect was pasted
  std::string prompt;
};

struct TrainOptions {
  double lr = 1e-5;
  double weight_decay = 0.01;
  int batch = 1;
  int accum = 1;                 ///< micro-batches per optimiser step
  double prompt_dropout = 0.0;   ///< the paper's 10 % empty prompts (the official code has none)
  uint64_t seed = 0;
  SynthesisOptions synthesis;    ///< rotation + isotropic scale by default; official_anisotropic_scale available
  sampling::ControlContext control_context = sampling::ControlContext::Empty;
  int noise_pool = 0;            ///< > 0: cycle through this many fixed (t, noise) draws (overfitting checks)
};

/// Example `index` of the endless synthetic training set: a random OK image, a random real defect rotated,
/// scaled and hard-pasted inside the foreground, its trimap, and the prompt (or "" with prompt_dropout).
inline TrainingExample make_training_example(const TrainingSource& src, uint64_t seed, int64_t index, int control_channels,
                                             const TrainOptions& opt) {
  check(!src.ok_images.empty() && !src.defects.empty(), "training: need OK images and real defects");
  Rng rng(derive_seed(seed, static_cast<uint64_t>(index)));
  const auto oi = static_cast<std::size_t>(rng.uniform_int(0, static_cast<int64_t>(src.ok_images.size()) - 1));
  const auto& ok = src.ok_images[oi];
  const auto fg = oi < src.foregrounds.size() && src.foregrounds[oi].defined() ? src.foregrounds[oi]
                                                                               : all_foreground(static_cast<int>(ok.dim(2)), static_cast<int>(ok.dim(3)));
  // The first defect drawn; one that cannot fit this foreground even shrunk is set aside and another drawn from
  // the rest (the rule of synthesize_mask, docs/method.md).
  std::vector<std::size_t> candidates(src.defects.size());
  for (std::size_t i = 0; i < candidates.size(); ++i) candidates[i] = i;
  std::optional<TrainingPair> pair;
  std::string reasons;
  while (!pair) {
    check<DefectDoesNotFit>(!candidates.empty(), "training example ", index, ": no real defect fits OK image ", oi,
                            "'s foreground: ", reasons);
    const auto pick = static_cast<std::size_t>(rng.uniform_int(0, static_cast<int64_t>(candidates.size()) - 1));
    const auto& d = src.defects[candidates[pick]];
    try {
      pair = synthesize_training_pair(ok, d.image, d.mask, fg, rng, opt.synthesis, d.name);
    } catch (const DefectDoesNotFit& e) {
      reasons += (reasons.empty() ? "" : "; ") + std::string(e.what());
      candidates.erase(candidates.begin() + static_cast<std::ptrdiff_t>(pick));
    }
  }
  TrainingExample ex;
  ex.image = pair->image;
  ex.mask = pair->mask;
  ex.control = trimap_to_control(make_trimap(pair->mask, fg), control_channels);
  ex.prompt = rng.uniform() < opt.prompt_dropout ? std::string() : src.prompt;
  return ex;
}

/// Trains a trimap encoder in float on device Dev (the CPU, or e.g. Cuda with a ControlNetModel<float, Cuda>);
/// the frozen UNet and VAE are converted to that device, the text encoder and the data stay on the host.
template <class Dev = Cpu>
class TrimapEncoderTrainer {
 public:
  /// sd: the frozen base model; controlnet: the trimap encoder to train (all its parameters), on Dev.
  TrimapEncoderTrainer(const models::StableDiffusion& sd, models::ControlNetModel<float, Dev>& controlnet,
                       TrainingSource data, TrainOptions opt)
      : sd_(sd), unet_(nn::convert<float, Dev>(sd.unet)),
        vae_(nn::convert<float, Dev>(sd.vae)), cn_(controlnet),
        data_(std::move(data)), opt_(opt), scheduler_(sd.scheduler),
        optimiser_(controlnet, {opt.lr, 0.9, 0.999, 1e-8, opt.weight_decay}) {
    check(opt.batch >= 1 && opt.accum >= 1, "training: batch and accum must be >= 1");
    autograd::track(cn_);
    empty_ = context("");
  }

  int64_t step() const { return step_; }
  TrainOptions& options() { return opt_; }

  /// One optimiser step over accum micro-batches of `batch` examples; returns the mean loss.
  double train_step() {
    double total = 0;
    const int64_t C = cn_.config.conditioning_channels;
    for (int micro = 0; micro < opt_.accum; ++micro) {
      const int64_t first = (step_ * opt_.accum + micro) * opt_.batch;
      std::vector<Tensor<float>> images, controls, contexts;
      for (int b = 0; b < opt_.batch; ++b) {
        const auto ex = make_training_example(data_, opt_.seed, first + b, static_cast<int>(C), opt_);
        images.push_back(ex.image);
        controls.push_back(ex.control);
        contexts.push_back(context(ex.prompt));
      }
      const auto image = ops::concat(images, 0);
      const auto control = upload_as<float, Dev>(ops::concat(controls, 0));
      const auto ctx = upload_as<float, Dev>(ops::concat(contexts, 0));
      std::vector<Tensor<float>> empties(static_cast<std::size_t>(opt_.batch), empty_);
      const auto cn_ctx =
          opt_.control_context == sampling::ControlContext::Empty ? upload_as<float, Dev>(ops::concat(empties, 0)) : ctx;
      const uint64_t draw = opt_.noise_pool > 0 ? static_cast<uint64_t>((step_ * opt_.accum + micro) % opt_.noise_pool)
                                                : static_cast<uint64_t>(step_ * opt_.accum + micro);
      Rng rng(derive_seed(opt_.seed ^ 0x7472616E, draw));  // the posterior sample, t and the noise
      const auto x0 = models::scaled_latent(vae_.config, download_as<float>(vae_.moments(upload_as<float, Dev>(image))), &rng);
      autograd::TrainingScope scope;
      auto predict = [&](const Tensor<float>& zt_host, const std::vector<float>& t) {
        const auto zt = upload_as<float, Dev>(zt_host);
        return unet_(zt, t, ctx, cn_(zt, t, cn_ctx, control));
      };
      const auto r = autograd::ldm_loss(predict, x0, scheduler_, rng);
      total += scalar_value(r.loss);
      autograd::backward(opt_.accum > 1 ? ops::scale(r.loss, 1.0f / static_cast<float>(opt_.accum)) : r.loss);
    }
    // A non-finite loss (a diverging draw) must not poison the weights: its update is skipped, the step still
    // counts (so the data of later steps, drawn from (seed, step), is the same as in any other run).
    if (std::isfinite(total)) optimiser_.step();
    optimiser_.zero_grad();
    ++step_;
    return total / opt_.accum;
  }

  /// A checkpoint: the trimap encoder's weights under "controlnet." (what `generate --trimap-encoder` reads),
  /// the AdamW state under "optimizer.", and in the metadata the config, the step and the seed.
  void save(const std::string& path) const {
    auto& cn = const_cast<models::ControlNetModel<float, Dev>&>(cn_);
    io::SafeTensorsWriter w;
    cn.visit("", [&](const std::string& name, auto& p) { w.add("controlnet." + name, download_as<float>(p.value.detach())); });
    w.add_all(optimiser_.state_dict(), "optimizer.");
    w.metadata("format", "adabldm-trimap-encoder")
        .metadata("controlnet_config", io::controlnet_config_json(cn_.config).dump())
        .metadata("step", std::to_string(step_))
        .metadata("seed", std::to_string(opt_.seed));
    w.write(path);
  }
  /// The trimap encoder alone, as `generate --trimap-encoder` reads it (no optimiser state), its weights in float16
  /// when `f16` (half the size; they load into any storage type).
  void export_weights(const std::string& path, bool f16 = true) const {
    auto& cn = const_cast<models::ControlNetModel<float, Dev>&>(cn_);
    io::SafeTensorsWriter w;
    cn.visit("", [&](const std::string& name, auto& p) {
      const auto host = download_as<float>(p.value.detach());
      if (f16)
        w.add("controlnet." + name, convert_as<half>(host));
      else
        w.add("controlnet." + name, host);
    });
    w.metadata("format", "adabldm-trimap-encoder")
        .metadata("controlnet_config", io::controlnet_config_json(cn_.config).dump())
        .metadata("step", std::to_string(step_))
        .metadata("seed", std::to_string(opt_.seed));
    w.write(path);
  }
  /// Continues from a checkpoint written by save(): weights, optimiser state and step. A checkpoint holding NaN or
  /// Inf values is refused (io::check_finite) unless `allow_non_finite`.
  void resume(const std::string& path, bool allow_non_finite = false) {
    const auto file = io::SafeTensors::open(path).state_dict();
    if (!allow_non_finite) io::check_finite(file);
    const auto it = file.metadata().find("step");
    check<FormatError>(it != file.metadata().end() && file.has_prefix("controlnet."), path,
                       ": not an adabldm training checkpoint (no step / controlnet.* tensors)");
    nn::load_state_dict(cn_, file.with_prefix("controlnet."));
    autograd::track(cn_);
    optimiser_.load_state_dict(file.with_prefix("optimizer."));
    step_ = std::stoll(it->second);
  }

 private:
  Tensor<float> context(const std::string& prompt) {
    auto it = contexts_.find(prompt);
    if (it == contexts_.end())
      it = contexts_.emplace(prompt, sampling::encode_prompt(sd_.tokenizer, sd_.text_encoder, prompt, sd_.pad)).first;
    return it->second;
  }

  const models::StableDiffusion& sd_;
  models::UNet2DConditionModel<float, Dev> unet_;  // frozen (the host's own on the CPU)
  models::AutoencoderKL<float, Dev> vae_;
  models::ControlNetModel<float, Dev>& cn_;
  TrainingSource data_;
  TrainOptions opt_;
  sampling::DDIMScheduler scheduler_;
  autograd::AdamW<float, Dev> optimiser_;
  Tensor<float> empty_;
  std::map<std::string, Tensor<float>> contexts_;
  int64_t step_ = 0;
};

}  // namespace adabldm::defect
