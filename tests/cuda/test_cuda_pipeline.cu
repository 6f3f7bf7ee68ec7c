// The sampler, the AdaBLDM pipeline, the decoder adaptation and trimap-encoder training with the networks on the
// device (tests/data/tiny_pipeline, real magnetic-tile images): the sampler against diffusers' golden with the
// CPU path's bounds, and every device run against the same run on the CPU (the host draws every random number,
// so both see the same noise; only the float arithmetic differs).
#include "cuda_test_util.cuh"
// (cuda_test_util.cuh includes adabldm/cuda.cuh first: the model headers must come after it.)
#include "../golden.hpp"
#include "../kl_adaptation_case.hpp"

#include "adabldm/defect/pipeline.hpp"
#include "adabldm/defect/training.hpp"
#include "adabldm/io/image.hpp"

using namespace cuda_test;
using namespace adabldm::sampling;

namespace {
const std::string kFolder = golden::path("tiny_pipeline/diffusers");

models::StableDiffusion& tiny_sd() {
  static models::StableDiffusion sd = models::StableDiffusion::load(kFolder);
  return sd;
}

DefectJob job(uint64_t seed) {
  DefectJob j;
  j.ok = read_image(golden::path("magnetic-tile/ok/free_000.png"));
  j.defects.push_back({Tensor<float>{}, read_mask(golden::path("magnetic-tile/masks/blowhole_001.png")), "blowhole_001"});
  j.object = "tile";
  j.defect = "blowhole";
  j.seed = seed;
  return j;
}

template <class T, class Dev>
Pipeline<T, Dev> tiny_pipeline() {
  auto sd = tiny_sd();  // shares the loaded buffers
  auto cn = *sd.controlnet;
  sd.controlnet.reset();
  Pipeline<T, Dev> p(std::move(sd), std::move(cn));
  p.options().size = 64;
  p.options().steps = 10;
  p.options().adaptation.steps = 3;
  return p;
}
}  // namespace

CUDA_TEST_CASE("sampler with the networks on the device equals diffusers (tiny ControlNet pipeline)") {
  ADABLDM_REQUIRE_CUDA();
  auto& sd = tiny_sd();
  REQUIRE(sd.controlnet.has_value());
  const auto unet = nn::convert<float, Cuda>(sd.unet);
  const auto cn = nn::convert<float, Cuda>(*sd.controlnet);
  const auto vae = nn::convert<float, Cuda>(sd.vae);
  const auto ref = io::SafeTensors::open(golden::path("tiny_pipeline/reference/io.safetensors"));
  for (const auto& [file, context] : {std::pair<const char*, ControlContext>{"io.safetensors", ControlContext::Prompt},
                                      {"io_empty_ctx.safetensors", ControlContext::Empty}}) {
    const auto io = io::SafeTensors::open(golden::path(std::string("tiny_pipeline/reference/") + file));
    ConditionedUNet<float, Cuda> model;
    model.unet = &unet;
    model.controlnet = &cn;
    model.guidance = Guidance{9.0};
    model.cond = encode_prompt(sd.tokenizer, sd.text_encoder, "a tile with a blowhole");
    model.uncond = encode_prompt(sd.tokenizer, sd.text_encoder, "");
    model.cn_cond = context == ControlContext::Prompt ? model.cond : model.uncond;
    model.cn_uncond = model.uncond;
    model.control = ref.get<float>("control_image");
    DDIMScheduler scheduler(sd.scheduler);
    scheduler.set_timesteps(10);
    Rng rng(0);
    const auto latents = run_sampler(scheduler, io.get<float>("latents_init"), model, {}, rng);
    GOLDEN_CHECK(std::string("cuda ") + file + " latents_final", latents, io.get<float>("latents_final"));
    const auto image = cuda::to_host(vae.decode_scaled(cuda::to_device(latents)));
    GOLDEN_CHECK(std::string("cuda ") + file + " image_decoded", image, io.get<float>("image_decoded"));
  }
}

CUDA_TEST_CASE("the AdaBLDM pipeline on the device equals the CPU's (float32; half runs and keeps the geometry)") {
  ADABLDM_REQUIRE_CUDA();
  auto cpu = tiny_pipeline<float, Cpu>();
  auto gpu = tiny_pipeline<float, Cuda>();
  const auto a = cpu.generate(job(7)), b = gpu.generate(job(7));
  CHECK(a.mask.to_vector() == b.mask.to_vector());  // the geometry is host code: identical
  CHECK(a.prompt == b.prompt);
  CHECK(b.adapted);
  // Ten sampler steps, three image-editing decodes/encodes and three adaptation steps amplify float32 rounding
  // differences (cuBLAS / cuDNN sum in other orders): the CPU path's golden bound, 1e-4 x max(1, max |ref|), with
  // 10x headroom for the longer chain.
  expect_close("pipeline latent z* [f32]", b.latent, a.latent, 1e-3);
  expect_close("pipeline image [f32]", b.image, a.image, 1e-3);

  auto half_pipe = tiny_pipeline<adabldm::half, Cuda>();
  const auto h = half_pipe.generate(job(7));
  CHECK(h.mask.to_vector() == a.mask.to_vector());
  const auto hv = h.image.to_vector();
  CHECK(std::all_of(hv.begin(), hv.end(), [](float v) { return std::isfinite(v); }));
  // Storage in half through ~30 network evaluations: reported, bounded loosely (a broken kernel is off by O(1)).
  expect_close("pipeline image [f16 UNet/ControlNet]", h.image, a.image, 0.1);
}

CUDA_TEST_CASE("decoder adaptation on the device equals the CPU's") {
  ADABLDM_REQUIRE_CUDA();
  auto [vae, ok, latent, mask] = kl_adaptation_case();
  const auto vae_gpu = nn::convert<float, Cuda>(vae);
  defect::AdaptationOptions opt;
  opt.steps = 15;
  opt.lr = 1e-3;
  const auto c = defect::adapt_decoder(vae, latent, ok, mask, opt);
  const auto g = defect::adapt_decoder(vae_gpu, latent, ok, mask, opt);
  REQUIRE(g.losses.size() == c.losses.size());
  for (std::size_t i = 0; i < c.losses.size(); ++i) CHECK(g.losses[i] == doctest::Approx(c.losses[i]).epsilon(1e-3));
  expect_close("adaptation unadapted decode", g.unadapted, c.unadapted, 1e-4);
  expect_close("adaptation adapted decode (15 AdamW steps)", g.image, c.image, 1e-3);
  // The device's original decoder is untouched.
  expect_close("device decoder after adaptation", cuda::to_host(vae_gpu.decode_scaled(cuda::to_device(latent))),
               c.unadapted, 1e-4);
  // Mixed precision (bfloat16 compute, float master weights and AdamW): the loss falls like the float run's, and
  // the adapted image stays within a few bfloat16 roundings of it (each step's gradient carries ~2^-8 relative
  // error; AdamW normalises its size, so the updates' directions are what must agree).
  const auto m = defect::adapt_decoder<adabldm::bfloat16>(vae_gpu, latent, ok, mask, opt);
  REQUIRE(m.losses.size() == c.losses.size());
  for (std::size_t i = 0; i < c.losses.size(); ++i) CHECK(m.losses[i] == doctest::Approx(c.losses[i]).epsilon(0.05));
  CHECK(m.losses.back() < 0.8 * m.losses.front());
  expect_close("adaptation in bf16 (mixed) vs float, adapted decode", m.image, c.image, 0.05);
  expect_close("adaptation in bf16 (mixed): unadapted decode in float", m.unadapted, c.unadapted, 1e-4);
}

CUDA_TEST_CASE("trimap-encoder training on the device follows the CPU's; its checkpoint is a host checkpoint") {
  ADABLDM_REQUIRE_CUDA();
  auto& sd = tiny_sd();
  const int S = 64;
  defect::TrainingSource src;
  for (const char* f : {"free_000", "free_001"})
    src.ok_images.push_back(defect::resize_bilinear(read_image(golden::path(std::string("magnetic-tile/ok/") + f + ".png")), S, S));
  src.defects.push_back({defect::resize_bilinear(read_image(golden::path("magnetic-tile/ng/blowhole_001.png")), 96, 96),
                         defect::resize_mask(read_mask(golden::path("magnetic-tile/masks/blowhole_001.png")), 96, 96),
                         "blowhole_001"});
  src.prompt = "a tile with a blowhole";
  Rng rng(1);
  auto cn_cpu = models::ControlNetModel<float>::from_unet(sd.unet, 3, {8, 16, 32, 64}, rng);
  auto cn_gpu = nn::convert<float, Cuda>(cn_cpu);
  defect::TrainOptions opt;
  opt.lr = 1e-3;
  opt.batch = 2;
  defect::TrimapEncoderTrainer cpu(sd, cn_cpu, src, opt);
  defect::TrimapEncoderTrainer gpu(sd, cn_gpu, src, opt);
  for (int i = 0; i < 3; ++i) {
    const double lc = cpu.train_step(), lg = gpu.train_step();
    std::printf("  training step %d: loss cpu %.6f, cuda %.6f\n", i, lc, lg);
    CHECK(lg == doctest::Approx(lc).epsilon(1e-3));
  }
  const auto w_gpu = nn::convert<float, Cpu>(cn_gpu);
  expect_close("trained controlnet_down_blocks.0.weight", w_gpu.controlnet_down_blocks[0].weight(),
               cn_cpu.controlnet_down_blocks[0].weight(), 1e-4);
  const auto path = (std::filesystem::temp_directory_path() / ("adabldm_cuda_ckpt_" + std::to_string(::getpid()) + ".safetensors")).string();
  gpu.save(path);
  const auto loaded = models::load_controlnet(models::ModelSource(path));
  CHECK(loaded.controlnet_down_blocks[0].weight().to_vector() == w_gpu.controlnet_down_blocks[0].weight().to_vector());
  std::filesystem::remove(path);
}
