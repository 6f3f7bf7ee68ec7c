#pragma once
// adabldm sample: plain text(+control)-to-image with DDIM and CFG, exactly as diffusers'
// StableDiffusion(ControlNet)Pipeline does it. sample_on<T, Dev> runs it with the networks in storage type T on
// device Dev; sample.cpp instantiates it for the CPU, cuda_commands.cu for CUDA.
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>

#include <adabldm/io/image.hpp>
#include <adabldm/sampling/text_to_image.hpp>

#include "args.hpp"
#include "commands.hpp"
#include "device.hpp"
#include "progress.hpp"

namespace cli {

namespace sample_detail {
inline const char* kUsage =
    "usage: adabldm sample --model PATH --prompt TEXT --steps N --out IMAGE.png [options]\n"
    "  --model PATH            a diffusers pipeline folder or a single-file checkpoint\n"
    "  --config JSON           configs for what tensor shapes cannot tell (see docs/cli.md)\n"
    "  --allow-non-finite      load weights that hold NaN or Inf values (default: such a checkpoint is refused,\n"
    "                          naming the file and the tensor; the check costs one pass over the weights)\n"
    "  --trimap-encoder PATH   a ControlNet / trimap encoder (default: the model's own controlnet/, if any)\n"
    "  --prompt TEXT           the prompt\n"
    "  --negative TEXT         the negative prompt (default \"\")\n"
    "  --control FILE          control image: a PNG/JPEG (scaled to [0, 1]) or a .safetensors with `control_image`\n"
    "                          [1, C, H, W] in [0, 1]\n"
    "  --control-context C     prompt (diffusers, default) | empty (official AdaBLDM: the ControlNet reads \"\")\n"
    "  --control-scale S       ControlNet residual scale (default 1)\n"
    "  --steps N               DDIM steps\n"
    "  --guidance G            classifier-free guidance scale (default 7.5; <= 1 disables it)\n"
    "  --eta E                 DDIM eta (default 0)\n"
    "  --seed S                seed of the initial latent (default 0), or\n"
    "  --latents-in FILE       a .safetensors with `latents` [1, 4, h, w]\n"
    "  --size PX               image size when neither --latents-in nor --control tells it\n"
    "  --out IMAGE.png         the decoded image\n"
    "  --out-tensors FILE      also write `latents_final` and `image_decoded` (VAE output in [-1, 1], unclamped)\n"
    "  --device cpu|cuda       where the networks run (default cpu; cuda needs a build with the CUDA backend)\n"
    "  --dtype f32|f16         cuda: storage of the UNet and ControlNet (default f16; the VAE runs in f32)\n"
    "  --tf32                  cuda: allow TF32 tensor cores for f32 matrix products and convolutions\n"
    "  --cpu-matmul f32|bf16   cpu: bf16 multiplies the float matrix products' operands in bfloat16 (float32 sums)\n"
    "                          on CPUs with AMX or AVX512-BF16 (1.6-1.8x per SD1.5 UNet step, VAE decode or\n"
    "                          adaptation step with AMX; 8 significant bits); default f32 (or ADABLDM_CPU_MATMUL)\n"
    "  --quiet                 no progress output\n";

inline adabldm::Tensor<float> read_control(const std::string& path, int64_t channels) {
  using namespace adabldm;
  if (io::detect_checkpoint_format(path) == io::CheckpointFormat::Safetensors) {
    auto t = io::SafeTensors::open(path).get<float>("control_image");
    check<ShapeError>(t.rank() == 4 && t.dim(0) == 1 && t.dim(1) == channels, path, ": control_image must be [1, ",
                      channels, ", H, W], got ", t.shape().str());
    return t;
  }
  check(channels == 1 || channels == 3, "the trimap encoder takes ", channels, " channels; give a .safetensors");
  return ops::affine(read_image(path, static_cast<int>(channels)), 0.5f, 0.5f);  // [-1, 1] -> [0, 1]
}
}  // namespace sample_detail

inline Args sample_args(int argc, char** argv) {
  return Args(argc, argv, 2,
              {"model", "config", "trimap-encoder", "prompt", "negative", "control", "control-context",
               "control-scale", "steps", "guidance", "eta", "seed", "latents-in", "size", "out", "out-tensors",
               "device", "cpu-matmul", "dtype"},
              {"help", "quiet", "tf32", "allow-non-finite"});
}

template <class T, class Dev>
int sample_on(const Args& args) {
  using namespace adabldm;
  using namespace sample_detail;
  // Arguments first, all of them, before any file is read.
  const std::string out = args.require_nonempty("out");
  check<IoError>(!std::filesystem::is_directory(out), "--out ", out, ": is a folder; give the image's file name");
  sampling::TextToImageRequest req;
  req.prompt = args.require("prompt");
  req.negative_prompt = args.get("negative", "");
  check(args.has("steps"), "--steps must be given (the number of DDIM steps)");
  req.steps = static_cast<int>(args.integer_in("steps", 0, 1, 1000));
  req.guidance = args.number_in("guidance", 7.5, 0.0, 100.0);
  req.eta = args.number_in("eta", 0.0, 0.0, 1.0);
  req.control_scale = static_cast<float>(args.number_in("control-scale", 1.0, -100.0, 100.0));
  const uint64_t seed = static_cast<uint64_t>(args.integer_in("seed", 0, 0, 9007199254740991L));
  const std::string ctx = args.get("control-context", "prompt");
  check(ctx == "prompt" || ctx == "empty", "--control-context must be prompt or empty, got \"", ctx, "\"");
  req.control_context = ctx == "prompt" ? sampling::ControlContext::Prompt : sampling::ControlContext::Empty;
  if (args.has("size")) {
    const long size = args.integer_in("size", 0, 8, 4096);
    check(size % 8 == 0, "option --size ", size, ": must be a multiple of 8 (the autoencoder's downscale)");
  }
  for (const char* file : {"control", "latents-in"})
    if (args.has(file)) check<IoError>(std::filesystem::is_regular_file(args.get(file)), "--", file, " ", args.get(file), ": no such file");

  const models::LoadOptions opt{models::ConfigOverrides::from_file(args.get("config")), "", args.flag("allow-non-finite")};
  auto sd = models::StableDiffusion::load(args.require("model"), opt);
  std::optional<models::ControlNetModel<float>> own;
  if (args.has("trimap-encoder")) own = models::load_controlnet(models::ModelSource(args.get("trimap-encoder"), opt));
  const models::ControlNetModel<float>* cn = own ? &*own : (sd.controlnet ? &*sd.controlnet : nullptr);
  if (args.has("control")) {
    check(cn != nullptr, "--control given but there is no ControlNet: pass --trimap-encoder or a pipeline with controlnet/");
    req.control = read_control(args.get("control"), cn->config.conditioning_channels);
  }
  if (args.has("latents-in")) {
    req.latents = io::SafeTensors::open(args.get("latents-in")).get<float>("latents");
    check<ShapeError>(req.latents.rank() == 4 && req.latents.dim(0) == 1 && req.latents.dim(1) == sd.unet.config.in_channels,
                      args.get("latents-in"), ": latents must be [1, ", sd.unet.config.in_channels, ", h, w], got ",
                      req.latents.shape().str());
  }
  const int64_t f = sd.vae_scale();
  const int64_t size = args.has("size") ? args.integer("size", 0) : sd.unet.config.sample_size * f;
  check(size % f == 0, "option --size ", size, ": must be a multiple of ", f, " (this model's autoencoder downscale)");
  req.height = req.width = size;
  if (req.control.defined() && req.latents.defined())
    check<ShapeError>(req.control.dim(2) == req.latents.dim(2) * f && req.control.dim(3) == req.latents.dim(3) * f,
                      "the control image ", req.control.shape().str(), " does not match the latents ",
                      req.latents.shape().str(), " (x", f, ")");
  Rng rng(seed);
  Progress progress(req.steps, args.flag("quiet"));
  // The networks on the device (the CPU in float: the same modules).
  const auto unet = nn::convert<T, Dev>(sd.unet);
  const auto vae = nn::convert<float, Dev>(sd.vae);
  std::optional<models::ControlNetModel<T, Dev>> cn_dev;
  if (cn) cn_dev = nn::convert<T, Dev>(*cn);
  const auto r = sampling::text_to_image(sd, unet, cn_dev ? &*cn_dev : nullptr, vae, req, rng, {},
                                         [&](const sampling::StepInfo& s, const auto&, const auto&) {
    progress.update(s.index + 1, "step " + std::to_string(s.index + 1) + "/" + std::to_string(s.num_steps) +
                                     " (t=" + std::to_string(s.t) + ")");
  });
  progress.finish("sampled " + std::to_string(req.steps) + " steps");
  write_image(out, r.image_decoded);
  if (args.has("out-tensors"))
    io::SafeTensorsWriter().add("latents_final", r.latents_final).add("image_decoded", r.image_decoded).write(args.get("out-tensors"));
  if (!args.flag("quiet")) std::fprintf(stderr, "wrote %s\n", out.c_str());
  return 0;
}

}  // namespace cli
