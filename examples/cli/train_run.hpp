#pragma once
// adabldm train: fine-tune a trimap encoder (ControlNet) on a few real defects, the base model frozen.
// train_on<Dev> runs the command on device Dev (in float); train.cpp instantiates it for the CPU,
// cuda_commands.cu for CUDA.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <adabldm/defect/training.hpp>

#include "args.hpp"
#include "commands.hpp"
#include "device.hpp"
#include "dataset.hpp"
#include "progress.hpp"

namespace cli {

namespace train_detail {
constexpr int kMaxSkippedInARow = 20;  // non-finite losses in a row that mean divergence, not one bad draw
inline const char* kUsage =
    "usage: adabldm train --model PATH --ok DIR --ng DIR --masks DIR --object NAME --defect NAME --steps N\n"
    "                     --out FILE [options]\n"
    "  --model PATH            base model (diffusers pipeline folder or single file); frozen\n"
    "  --config JSON           configs for what tensor shapes cannot tell (see docs/cli.md)\n"
    "  --allow-non-finite      load weights that hold NaN or Inf values (--model, --init, --resume; default: such\n"
    "                          a checkpoint is refused, naming the file and the tensor; the check costs one pass\n"
    "                          over the weights)\n"
    "  --init PATH             start from this trimap encoder (default: a copy of the base UNet's encoder with a\n"
    "                          fresh hint block and zero convolutions, as ControlNet's tool_add_control)\n"
    "  --ok DIR, --ng DIR, --masks DIR, --object NAME, --defect NAME   as for generate\n"
    "  --prompt-template T     default \"a {object} with a {defect}\"\n"
    "  --steps N               total optimiser steps (a resumed run stops at the same N)\n"
    "  --out FILE              the checkpoint (.safetensors): weights + optimiser state + step\n"
    "  --batch B               examples per micro-batch (default 1)\n"
    "  --accum K               micro-batches per step (default 1)\n"
    "  --lr LR                 AdamW learning rate (default 1e-5; weight decay 0.01)\n"
    "  --seed S                (default 0)\n"
    "  --save-every N          also write the checkpoint every N steps\n"
    "  --resume CKPT           continue a run exactly from its checkpoint\n"
    "  --log LOSS.csv          one row per step: step,loss,seconds\n"
    "  --export FILE           at the end, also the trimap encoder alone in float16 (what --trimap-encoder reads,\n"
    "                          without the optimiser state: a third of the checkpoint's size)\n"
    "  --size PX               training size (default 256)\n"
    "  --prompt-dropout P      fraction of empty prompts (the paper: 0.1; official code and default: 0)\n"
    "  --min-fit-scale S       smallest scale a pasted defect that does not fit is shrunk to (default 0.25)\n"
    "  --anisotropic           the official code's anisotropic rescale of the pasted defects\n"
    "  --keep-edges            a defect touching its image's border is pasted flush with a border (quarter turns)\n"
    "  --device cpu|cuda       where training runs, in f32 (default cpu; cuda needs a build with the CUDA backend)\n"
    "  --tf32                  cuda: allow TF32 tensor cores for f32 matrix products and convolutions\n"
    "  --cpu-matmul f32|bf16   cpu: bf16 multiplies the float matrix products' operands in bfloat16 (float32 sums)\n"
    "                          on CPUs with AMX or AVX512-BF16 (1.6-1.8x per SD1.5 UNet step, VAE decode or\n"
    "                          adaptation step with AMX; 8 significant bits); default f32 (or ADABLDM_CPU_MATMUL)\n"
    "  --quiet                 no progress output\n";
}  // namespace train_detail

inline Args train_args(int argc, char** argv) {
  return Args(argc, argv, 2,
              {"model", "config", "init", "ok", "ng", "masks", "object", "defect", "prompt-template", "steps", "out",
               "batch", "accum", "lr", "seed", "save-every", "resume", "log", "size", "prompt-dropout", "device", "cpu-matmul", "dtype",
               "min-fit-scale", "export"},
              {"help", "quiet", "anisotropic", "tf32", "allow-non-finite", "keep-edges"});
}

template <class Dev>
int train_on(const Args& args) {
  using namespace adabldm;
  using train_detail::kMaxSkippedInARow;
  // Arguments first, all of them: nothing is read or written before they are checked.
  check(args.has("steps"), "--steps must be given (the number of optimiser steps)");
  const int64_t steps = args.integer_in("steps", -1, 1, 100000000);
  const std::string out = args.require_nonempty("out");
  check<IoError>(!std::filesystem::is_directory(out), "--out ", out, ": is a folder; give the checkpoint's file name");
  const int size = static_cast<int>(args.integer_in("size", 256, 8, 4096));
  check(size % 8 == 0, "option --size ", size, ": must be a multiple of 8 (the autoencoder's downscale)");
  const int64_t save_every = args.integer_in("save-every", 0, 0, 100000000);
  defect::TrainOptions topt;
  topt.lr = args.number_in("lr", 1e-5, 1e-12, 1.0);
  topt.batch = static_cast<int>(args.integer_in("batch", 1, 1, 1024));
  topt.accum = static_cast<int>(args.integer_in("accum", 1, 1, 100000));
  topt.seed = static_cast<uint64_t>(args.integer_in("seed", 0, 0, 9007199254740991L));
  topt.prompt_dropout = args.number_in("prompt-dropout", 0.0, 0.0, 1.0);
  topt.synthesis.official_anisotropic_scale = args.flag("anisotropic");
  topt.synthesis.keep_edges = args.flag("keep-edges");
  topt.synthesis.min_fit_scale = args.number_in("min-fit-scale", 0.25, 0.01, 1.0);
  const std::string object = args.require_nonempty("object"), defect_name = args.require_nonempty("defect");
  if (args.has("resume"))
    check<IoError>(std::filesystem::is_regular_file(args.get("resume")), "--resume ", args.get("resume"), ": no such file");

  // Data next: bad input fails before the model is loaded.
  const auto ok_files = list_images(args.require("ok"), "ok");
  const auto defects = read_defects(list_images(args.require("ng"), "ng"), args.require("masks"));
  defect::TrainingSource data;
  for (const auto& f : ok_files) {
    try {
      data.ok_images.push_back(defect::resize_bilinear(read_image(f.string()), size, size));
    } catch (const Error& e) {
      throw IoError(std::string("--ok: ") + e.what());
    }
  }
  for (const auto& d : defects) {
    // Real defects keep their scale relative to the OK images: both are resized by the same factor.
    const double s = static_cast<double>(size) / std::max<int64_t>(d.image.dim(2), d.image.dim(3));
    const int h = std::max(1, static_cast<int>(std::lround(d.image.dim(2) * s))), w = std::max(1, static_cast<int>(std::lround(d.image.dim(3) * s)));
    data.defects.push_back({defect::resize_bilinear(d.image, h, w),
                            defect::resize_defect_mask(d.mask, h, w), d.name});
  }
  data.prompt = fill_prompt(args.get("prompt-template", "a {object} with a {defect}"), object, defect_name);

  const bool quiet = args.flag("quiet");
  Progress note(1, quiet);
  note.note("loading " + args.require("model"));
  const bool allow_non_finite = args.flag("allow-non-finite");
  const models::LoadOptions opt{models::ConfigOverrides::from_file(args.get("config")), "", allow_non_finite};
  const auto sd = models::StableDiffusion::load(args.get("model"), opt);
  check(size % sd.vae_scale() == 0, "option --size ", size, ": must be a multiple of ", sd.vae_scale(),
        " (this model's autoencoder downscale)");
  models::ControlNetModel<float> cn;
  if (args.has("init")) {
    cn = models::load_controlnet(models::ModelSource(args.get("init"), opt));
  } else {
    Rng rng(derive_seed(static_cast<uint64_t>(args.integer("seed", 0)), 0xC0DE));
    // The hint block downsamples the trimap to the latent size: one stride-2 stage per factor of 2 of the VAE
    // (SD's factor 8: 16, 32, 96, 256 channels as ControlNet; a factor-4 model: 16, 32, 96).
    std::vector<int64_t> hint{16};
    for (int64_t f = sd.vae_scale(), i = 0; f > 1; f /= 2, ++i) hint.push_back(std::vector<int64_t>{32, 96, 256, 256}[std::min<int64_t>(i, 3)]);
    cn = models::ControlNetModel<float>::from_unet(sd.unet, 3, hint, rng);
  }
  auto cn_on_device = nn::convert<float, Dev>(cn);  // (the CPU: the same module)
  defect::TrimapEncoderTrainer<Dev> trainer(sd, cn_on_device, std::move(data), topt);
  if (args.has("resume")) {
    trainer.resume(args.get("resume"), allow_non_finite);
    note.note("resumed at step " + std::to_string(trainer.step()));
  }
  std::ofstream log;
  if (args.has("log")) {
    const bool fresh = !args.has("resume") || !std::filesystem::exists(args.get("log"));
    log.open(args.get("log"), fresh ? std::ios::trunc : std::ios::app);
    check<IoError>(log.good(), args.get("log"), ": cannot write");
    if (fresh) log << "step,loss,seconds\n";
  }
  Progress progress(static_cast<int>(steps - trainer.step()), quiet);
  const int64_t first = trainer.step();
  double ema = 0;
  int64_t skipped = 0, skipped_in_a_row = 0;
  while (trainer.step() < steps) {
    const auto t0 = std::chrono::steady_clock::now();
    const double loss = trainer.train_step();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (log.is_open()) log << trainer.step() << "," << loss << "," << secs << "\n" << std::flush;
    if (!std::isfinite(loss)) {
      // The trainer left the weights unchanged; one bad step must not end a long run, a diverged one must.
      ++skipped;
      progress.warn("step " + std::to_string(trainer.step()) + ": non-finite loss, the update was skipped");
      check(++skipped_in_a_row < kMaxSkippedInARow, "training diverged: ", kMaxSkippedInARow,
            " steps in a row had a non-finite loss; try a lower --lr (", out, " holds the last --save-every checkpoint, if any)");
      continue;
    }
    skipped_in_a_row = 0;
    ema = trainer.step() - first == 1 || ema == 0 ? loss : 0.95 * ema + 0.05 * loss;
    char what[128];
    std::snprintf(what, sizeof what, "step %lld/%lld loss %.5f (avg %.5f)", static_cast<long long>(trainer.step()),
                  static_cast<long long>(steps), loss, ema);
    progress.update(static_cast<double>(trainer.step() - first), what);
    if (save_every > 0 && trainer.step() % save_every == 0 && trainer.step() < steps) trainer.save(out);
  }
  trainer.save(out);
  if (args.has("export")) trainer.export_weights(args.get("export"), true);
  if (skipped == 0) {
    progress.finish("trained " + std::to_string(steps - first) + " steps; wrote " + out);
    return 0;
  }
  progress.warn("trained " + std::to_string(steps - first) + " steps, " + std::to_string(skipped) +
                " of them skipped for a non-finite loss; wrote " + out);
  return kExitSomeSamplesFailed;
}

}  // namespace cli
