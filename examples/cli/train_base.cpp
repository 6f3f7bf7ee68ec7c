// adabldm train-base: trains from scratch the small latent diffusion model a fresh clone can run (issue 12), on
// defect-free images only, into a normal diffusers pipeline folder that --model accepts:
//   --stage vae   a small KL autoencoder (factor 4): MSE reconstruction of random resized crops (flips, 90°
//                 turns) plus a small penalty on the latent mean; the posterior is made deterministic (logvar
//                 -30) when saved, as the encoder is trained on its mean only;
//   --stage unet  a small UNet with cross-attention on the trained autoencoder's latents (LDM epsilon loss),
//                 conditioned through a small CLIP text encoder whose random weights stay frozen: it acts as a
//                 fixed embedding of each prompt ("a {object}", and "" for 10 % of the examples so that
//                 classifier-free guidance has an unconditional branch).
// The trimap encoder is then fine-tuned with `adabldm train --model OUT` per defect type.
// Each stage keeps its full training state (float weights, AdamW moments, step) in OUT/train_state/STAGE.safetensors
// every --save-every steps and at the end: rerunning the same command continues from it (a run may span sessions).
// The exported weights are stored in float16 (--dtype f32 keeps float32); the loss per step goes to
// OUT/train_state/STAGE_loss.csv.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <adabldm/adabldm.hpp>
#include <adabldm/models/config_json.hpp>

#include "args.hpp"
#include "commands.hpp"
#include "dataset.hpp"
#include "progress.hpp"

namespace cli {
namespace {
namespace fs = std::filesystem;
using namespace adabldm;
using io::Json;

const char* kUsage =
    "usage: adabldm train-base --stage vae|unet --ok DIR --out MODEL_DIR --steps N [options]\n"
    "  --stage vae|unet        what to train (vae first; unet needs MODEL_DIR/vae)\n"
    "  --ok DIR                defect-free images (gray or RGB)\n"
    "  --out MODEL_DIR         the diffusers pipeline folder being built (rerunning continues a stage)\n"
    "  --steps N               total optimiser steps of the stage\n"
    "  --size PX               working size (default 64; a multiple of 16)\n"
    "  --batch B               images per step (default 8)\n"
    "  --lr LR                 AdamW learning rate (default 1e-3 for vae, 3e-4 for unet; weight decay 0.01)\n"
    "  --object NAME           the prompt of the UNet stage is \"a NAME\" (default tile)\n"
    "  --seed S                (default 0)\n"
    "  --save-every N          write the training state every N steps (default 200)\n"
    "  --dtype f16|f32         storage of the exported weights (default f16)\n"
    "  --quiet                 no progress output\n";

// The architectures: small enough to train on 2 CPU cores in about 90 minutes per stage at 64 px.
const char* kVaeConfig = R"({"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
  "block_out_channels": [32, 64, 64], "layers_per_block": 1, "norm_num_groups": 16, "act_fn": "silu",
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"], "scaling_factor": 1.0})";
const char* kUnetConfig = R"({"_class_name": "UNet2DConditionModel", "in_channels": 4, "out_channels": 4,
  "block_out_channels": [32, 64, 64], "layers_per_block": 1, "norm_num_groups": 16, "cross_attention_dim": 32,
  "attention_head_dim": 4, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]})";
const char* kClipConfig = R"({"architectures": ["CLIPTextModel"], "hidden_size": 32, "intermediate_size": 64,
  "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77, "vocab_size": 49408,
  "hidden_act": "quick_gelu", "projection_dim": 32, "bos_token_id": 49406, "eos_token_id": 49407,
  "pad_token_id": 49407})";

io::Config config_of(const char* text, const char* where) { return {Json::parse(text), where}; }

void write_json(const fs::path& p, const Json& j) {
  const std::string text = j.dump(2) + "\n";
  io::write_file_atomic(p.string(), text.data(), text.size());
}

/// A module's weights as <dir>/config.json + <dir>/<file>, in `dtype` (f16 or f32).
template <class M>
void export_component(M& module, const Json& config, const fs::path& dir, const char* file, bool f16) {
  fs::create_directories(dir);
  write_json(dir / "config.json", config);
  io::SafeTensorsWriter w;
  module.visit("", [&](const std::string& name, auto& p) {
    if (f16)
      w.add(name, convert_as<half>(p.value.detach()));
    else
      w.add(name, p.value.detach().contiguous());
  });
  w.metadata("format", "pt");
  w.write((dir / file).string());
}

/// The defect-free images in memory, [1, 3, H, W] in [-1, 1].
std::vector<Tensor<float>> read_ok_images(const std::string& dir) {
  const auto files = list_images(dir, "ok");
  std::vector<Tensor<float>> out;
  for (const auto& f : files) {
    try {
      out.push_back(read_image(f.string(), 3));
    } catch (const Error& e) {
      throw IoError(std::string("--ok: ") + e.what());
    }
  }
  return out;
}

/// A batch of random resized crops: a square of 60-100 % of the shorter side at a random place, resized to
/// size x size (generate resizes whole images to the working size, so the crops cover that scale and a little
/// closer), then a random horizontal flip and a random quarter turn.
Tensor<float> random_batch(const std::vector<Tensor<float>>& images, int batch, int size, Rng& rng) {
  std::vector<Tensor<float>> items;
  for (int b = 0; b < batch; ++b) {
    const auto& img = images[static_cast<std::size_t>(rng.uniform_int(0, static_cast<int64_t>(images.size()) - 1))];
    const int64_t H = img.dim(2), W = img.dim(3), side = std::min(H, W);
    const int64_t c = std::max<int64_t>(1, static_cast<int64_t>(side * rng.uniform(0.6, 1.0)));
    const int64_t y0 = rng.uniform_int(0, H - c), x0 = rng.uniform_int(0, W - c);
    auto crop = defect::resize_bilinear(img.narrow(2, y0, c).narrow(3, x0, c).contiguous(), size, size);
    const bool flip = rng.uniform() < 0.5;
    const int turns = static_cast<int>(rng.uniform_int(0, 3));
    auto out = Tensor<float>::empty(crop.shape());
    for (int ch = 0; ch < 3; ++ch)
      for (int y = 0; y < size; ++y)
        for (int x = 0; x < size; ++x) {
          int sy = y, sx = flip ? size - 1 - x : x;
          for (int t = 0; t < turns; ++t) std::tie(sy, sx) = std::pair<int, int>{sx, size - 1 - sy};
          out.data()[(static_cast<int64_t>(ch) * size + y) * size + x] =
              crop.data()[(static_cast<int64_t>(ch) * size + sy) * size + sx];
        }
    items.push_back(out);
  }
  return ops::concat(items, 0);
}

/// The training state of a stage: weights under "model.", AdamW under "optimizer.", the step in the metadata.
template <class M>
void save_state(const fs::path& file, M& model, const autograd::AdamW<float>& opt, int64_t step, const Json& extra) {
  fs::create_directories(file.parent_path());
  io::SafeTensorsWriter w;
  model.visit("", [&](const std::string& name, auto& p) { w.add("model." + name, p.value.detach().contiguous()); });
  w.add_all(opt.state_dict(), "optimizer.");
  w.metadata("step", std::to_string(step)).metadata("extra", extra.dump());
  w.write(file.string());
}
/// Loads a state written by save_state; returns the step (0 when there is no state file) and fills `extra`.
template <class M>
int64_t load_state(const fs::path& file, M& model, autograd::AdamW<float>& opt, Json& extra) {
  if (!fs::exists(file)) return 0;
  const auto sd = io::SafeTensors::open(file.string()).state_dict();
  const auto it = sd.metadata().find("step");
  check<FormatError>(it != sd.metadata().end(), file.string(), ": not a train-base state (no step)");
  nn::load_state_dict(model, sd.with_prefix("model."));
  autograd::track(model);
  opt.load_state_dict(sd.with_prefix("optimizer."));
  const auto e = sd.metadata().find("extra");
  if (e != sd.metadata().end()) extra = Json::parse(e->second);
  return std::stoll(it->second);
}

struct StageSettings {
  std::string ok, out;
  int64_t steps = 0, save_every = 200;
  int size = 64, batch = 8;
  double lr = 0;
  uint64_t seed = 0;
  std::string object;
  bool f16 = true, quiet = false;
};

/// The loop shared by both stages: step(rng) returns the loss of one optimiser step.
template <class M, class Step>
int run_stage(const char* stage, const StageSettings& s, M& model, autograd::AdamW<float>& opt, Json& extra, Step step,
              const std::function<void()>& export_model) {
  const fs::path state = fs::path(s.out) / "train_state" / (std::string(stage) + ".safetensors");
  const fs::path csv = fs::path(s.out) / "train_state" / (std::string(stage) + "_loss.csv");
  int64_t done = load_state(state, model, opt, extra);
  Progress progress(static_cast<int>(std::max<int64_t>(1, s.steps - done)), s.quiet);
  if (done > 0) progress.note(std::string("resuming the ") + stage + " stage at step " + std::to_string(done));
  fs::create_directories(state.parent_path());
  if (done > 0 && fs::exists(csv)) {  // rows after the state's step were logged by a run that then stopped: redone
    std::ifstream in(csv);
    std::string kept, line;
    for (int64_t row = 0; std::getline(in, line); ++row)
      if (row == 0 || std::atoll(line.c_str()) <= done) kept += line + "\n";
    in.close();
    std::ofstream(csv, std::ios::trunc) << kept;
  }
  std::ofstream log(csv, done > 0 ? std::ios::app : std::ios::trunc);
  check<IoError>(log.good(), csv.string(), ": cannot write");
  if (done == 0) log << "step,loss,seconds\n";
  const int64_t first = done;
  double ema = 0;
  while (done < s.steps) {
    const auto t0 = std::chrono::steady_clock::now();
    Rng rng(derive_seed(s.seed, static_cast<uint64_t>(done)));  // a resumed run draws what a straight one would
    const double loss = step(rng);
    ++done;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    log << done << "," << loss << "," << secs << "\n" << std::flush;
    ema = done - first == 1 ? loss : 0.98 * ema + 0.02 * loss;
    char what[96];
    std::snprintf(what, sizeof what, "%s step %lld/%lld loss %.5f (avg %.5f)", stage, static_cast<long long>(done),
                  static_cast<long long>(s.steps), loss, ema);
    progress.update(static_cast<double>(done - first), what);
    if (done % s.save_every == 0 || done == s.steps) {
      save_state(state, model, opt, done, extra);
      export_model();
    }
  }
  if (done == first) export_model();
  progress.finish(std::string("trained the ") + stage + " stage to step " + std::to_string(done) + "; wrote " + s.out);
  return 0;
}

int train_vae(const StageSettings& s) {
  const auto images = read_ok_images(s.ok);
  models::AutoencoderKLConfig config = models::AutoencoderKLConfig::from_json(config_of(kVaeConfig, "train-base vae"));
  config.sample_size = s.size;
  models::AutoencoderKL<float> vae(config);
  Rng init(derive_seed(s.seed, 0x5AE));
  nn::init_missing(vae, init);
  autograd::track(vae);
  autograd::AdamW<float> opt(vae, {s.lr, 0.9, 0.999, 1e-8, 0.01});
  const int64_t C = config.layout.latent_channels;
  Json extra = Json::object();
  auto export_model = [&] {
    // The posterior made deterministic: logvar = -30 (std 3e-7) whatever the encoder says, since only the mean
    // was trained; the scaling factor makes the latents of the training data unit-variance (as SD's 0.18215).
    auto exported = vae;  // shares parameter buffers; the logvar rows are replaced by fresh tensors below
    auto w = exported.quant_conv.weight.value.clone(), b = exported.quant_conv.bias.value.clone();
    for (int64_t o = C; o < 2 * C; ++o) {
      for (int64_t i = 0; i < w.numel() / w.dim(0); ++i) w.data()[o * (w.numel() / w.dim(0)) + i] = 0.0f;
      b.data()[o] = -30.0f;
    }
    exported.quant_conv.weight.value = w;
    exported.quant_conv.bias.value = b;
    Rng r(derive_seed(s.seed, 0x5CA1E));
    double sq = 0;
    int64_t n = 0;
    for (int i = 0; i < 4; ++i) {
      const auto z = vae.moments(random_batch(images, s.batch, s.size, r)).narrow(1, 0, C).contiguous();
      for (int64_t k = 0; k < z.numel(); ++k) sq += static_cast<double>(z.data()[k]) * z.data()[k], ++n;
    }
    exported.config.scaling_factor = 1.0 / std::sqrt(std::max(1e-12, sq / static_cast<double>(n)));
    export_component(exported, io::vae_config_json(exported.config), fs::path(s.out) / "vae",
                     "diffusion_pytorch_model.safetensors", s.f16);
  };
  return run_stage("vae", s, vae, opt, extra, [&](Rng& rng) {
    const auto x = random_batch(images, s.batch, s.size, rng);
    autograd::TrainingScope scope;
    const auto mean = vae.moments(x).narrow(1, 0, C);
    const auto recon = vae.decode(mean);
    const auto loss = ops::add(autograd::mse(recon, x), ops::scale(autograd::mse(mean, Tensor<float>::zeros(mean.shape())), 1e-4f));
    const double value = scalar_value(loss);
    autograd::backward(loss);
    if (std::isfinite(value)) opt.step();
    opt.zero_grad();
    return value;
  }, export_model);
}

int train_unet(const StageSettings& s) {
  const auto images = read_ok_images(s.ok);
  const fs::path out(s.out);
  check<IoError>(fs::exists(out / "vae" / "config.json"), "--stage unet: ", (out / "vae").string(),
                 " does not exist; train the autoencoder first (--stage vae)");
  const auto vae = models::load_vae(models::ModelSource((out / "vae").string()));
  // The frozen random text encoder: created once (seeded) and exported with the model.
  models::ClipTextModel<float> clip(models::ClipTextConfig::from_json(config_of(kClipConfig, "train-base text encoder")));
  if (fs::exists(out / "text_encoder" / "config.json")) {
    clip = models::load_text_encoder(models::ModelSource((out / "text_encoder").string()));
  } else {
    Rng init(derive_seed(s.seed, 0xC11B));
    nn::init_missing(clip, init);
    export_component(clip, io::clip_text_config_json(clip.config, s.f16 ? "float16" : "float32"), out / "text_encoder",
                     "model.safetensors", s.f16);
    clip = models::load_text_encoder(models::ModelSource((out / "text_encoder").string()));  // as stored (f16-rounded)
  }
  const auto tokenizer = text::ClipTokenizer::load_default();
  const auto cond = sampling::encode_prompt(tokenizer, clip, "a " + s.object, text::ClipTokenizer::Pad::Eos);
  const auto uncond = sampling::encode_prompt(tokenizer, clip, "", text::ClipTokenizer::Pad::Eos);

  models::UNetConfig config = models::UNetConfig::from_json(config_of(kUnetConfig, "train-base unet"));
  config.sample_size = s.size / vae.config.layout.downscale();
  models::UNet2DConditionModel<float> unet(config);
  Rng init(derive_seed(s.seed, 0x0E7));
  nn::init_missing(unet, init);
  autograd::track(unet);
  autograd::AdamW<float> opt(unet, {s.lr, 0.9, 0.999, 1e-8, 0.01});
  sampling::DDIMScheduler scheduler(models::sd_scheduler_config());
  Json extra = {{"prompt", "a " + s.object}};
  auto export_model = [&] {
    export_component(unet, io::unet_config_json(unet.config), out / "unet", "diffusion_pytorch_model.safetensors", s.f16);
    fs::create_directories(out / "scheduler");
    write_json(out / "scheduler" / "scheduler_config.json", io::sd_scheduler_config_json());
    auto entry = [](const char* library, const char* cls) { return Json::array({library, cls}); };
    write_json(out / "model_index.json",
               Json{{"_class_name", "StableDiffusionPipeline"}, {"_diffusers_version", io::kDiffusersVersion},
                    {"feature_extractor", Json::array({nullptr, nullptr})}, {"requires_safety_checker", false},
                    {"safety_checker", Json::array({nullptr, nullptr})}, {"scheduler", entry("diffusers", "DDIMScheduler")},
                    {"text_encoder", entry("transformers", "CLIPTextModel")}, {"unet", entry("diffusers", "UNet2DConditionModel")},
                    {"vae", entry("diffusers", "AutoencoderKL")}});
  };
  return run_stage("unet", s, unet, opt, extra, [&](Rng& rng) {
    const auto x = random_batch(images, s.batch, s.size, rng);
    const auto x0 = models::scaled_latent(vae.config, vae.moments(x), nullptr);  // the deterministic mean
    std::vector<Tensor<float>> contexts;
    for (int b = 0; b < s.batch; ++b) contexts.push_back(rng.uniform() < 0.1 ? uncond : cond);
    const auto ctx = ops::concat(contexts, 0);
    autograd::TrainingScope scope;
    const auto r = autograd::ldm_loss([&](const Tensor<float>& zt, const std::vector<float>& t) { return unet(zt, t, ctx); },
                                      x0, scheduler, rng);
    const double value = scalar_value(r.loss);
    autograd::backward(r.loss);
    if (std::isfinite(value)) opt.step();
    opt.zero_grad();
    return value;
  }, export_model);
}

}  // namespace

int cmd_train_base(int argc, char** argv) {
  const Args args(argc, argv, 2, {"stage", "ok", "out", "steps", "size", "batch", "lr", "object", "seed", "save-every", "dtype"},
                  {"help", "quiet"});
  if (args.flag("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  check(args.positional().empty(), "unexpected argument \"", args.positional().empty() ? "" : args.positional()[0], "\"");
  const std::string stage = args.require("stage");
  check(stage == "vae" || stage == "unet", "--stage ", stage, ": expected vae or unet");
  StageSettings s;
  s.ok = args.require_nonempty("ok");
  s.out = args.require_nonempty("out");
  check<IoError>(!fs::exists(s.out) || fs::is_directory(s.out), "--out ", s.out, ": exists and is not a folder");
  check(args.has("steps"), "--steps must be given");
  s.steps = args.integer_in("steps", 0, 1, 100000000);
  s.size = static_cast<int>(args.integer_in("size", 64, 16, 1024));
  check(s.size % 16 == 0, "option --size ", s.size, ": must be a multiple of 16");
  s.batch = static_cast<int>(args.integer_in("batch", 8, 1, 1024));
  s.lr = args.number_in("lr", stage == "vae" ? 1e-3 : 3e-4, 1e-12, 1.0);
  s.seed = static_cast<uint64_t>(args.integer_in("seed", 0, 0, 9007199254740991L));
  s.save_every = args.integer_in("save-every", 200, 1, 100000000);
  s.object = args.get("object", "tile");
  const std::string dtype = args.get("dtype", "f16");
  check(dtype == "f16" || dtype == "f32", "--dtype ", dtype, ": expected f16 or f32");
  s.f16 = dtype == "f16";
  s.quiet = args.flag("quiet");
  return stage == "vae" ? train_vae(s) : train_unet(s);
}

}  // namespace cli
