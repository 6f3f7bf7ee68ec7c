// Models with Dev = Cuda: the UNet, ControlNet, AutoencoderKL, CLIP text, TAESD and VQModel golden cases (diffusers
// 0.27.2 / transformers / taesd.py, tests/data/{unet,controlnet,vae_kl,clip_text,taesd,vae_vq}) run
// on the device and must meet the same bound as the CPU path (1e-4 x max(1, max |ref|), float32); half and bfloat16
// UNets are reported against the same reference with their storage tolerances. Training on the device: the
// gradients of every UNet parameter after one backward agree with the CPU's, and one AdamW step on the device
// equals the host's.
#include "cuda_test_util.cuh"
// (cuda_test_util.cuh includes adabldm/cuda.cuh first: the model headers must come after it.)
#include "../golden.hpp"

#include "adabldm/autograd/autograd.hpp"
#include "adabldm/io/safetensors.hpp"
#include "adabldm/models/autoencoder_kl.hpp"
#include "adabldm/models/clip_text.hpp"
#include "adabldm/models/controlnet.hpp"
#include "adabldm/models/taesd.hpp"
#include "adabldm/models/vq_model.hpp"

using namespace cuda_test;
using namespace adabldm::models;

namespace {
std::vector<float> timesteps(const io::SafeTensors& io) { return io.get<float>("timestep").to_vector(); }

template <class T, class Dev>
UNet2DConditionModel<T, Dev> load_unet() {
  UNet2DConditionModel<T, Dev> unet(UNetConfig::from_json(golden::config("unet/config.json")));
  nn::load_state_dict(unet, io::SafeTensors::open(golden::path("unet/model.safetensors")).state_dict());
  return unet;
}
}  // namespace

CUDA_TEST_CASE("UNet golden on the device (float32): the CPU path's bound") {
  ADABLDM_REQUIRE_CUDA();
  const auto unet = load_unet<float, Cuda>();
  const auto io = io::SafeTensors::open(golden::path("unet/io.safetensors"));
  const auto sample = cuda::to_device(io.get<float>("sample"));
  GOLDEN_CHECK("cuda unet noise_pred",
               cuda::to_host(unet(sample, timesteps(io), cuda::to_device(io.get<float>("encoder_hidden_states")))),
               io.get<float>("noise_pred"));
  GOLDEN_CHECK("cuda unet noise_pred_short",
               cuda::to_host(unet(sample, timesteps(io), cuda::to_device(io.get<float>("encoder_hidden_states_short")))),
               io.get<float>("noise_pred_short"));
}

CUDA_TEST_CASE("UNet golden on the device in half and bfloat16 (storage tolerance x depth)") {
  ADABLDM_REQUIRE_CUDA();
  const auto io = io::SafeTensors::open(golden::path("unet/io.safetensors"));
  const auto sample = io.get<float>("sample"), ctx = io.get<float>("encoder_hidden_states");
  const auto ref = io.get<float>("noise_pred");
  // Each of the ~40 layers on the longest path rounds its output once; the errors add up roughly as a random walk
  // through normalised layers: sqrt(40) ~ 6.3 storage roundings. Bounds: 8 x 2^-11 (f16), 8 x 2^-8 (bf16).
  {
    const auto unet = load_unet<adabldm::half, Cuda>();
    const auto out = down(unet(up<adabldm::half>(sample), timesteps(io), up<adabldm::half>(ctx)));
    expect_close("cuda unet noise_pred [f16]", out, ref, 8.0 / 2048);
  }
  {
    const auto unet = load_unet<adabldm::bfloat16, Cuda>();
    const auto out = down(unet(up<adabldm::bfloat16>(sample), timesteps(io), up<adabldm::bfloat16>(ctx)));
    expect_close("cuda unet noise_pred [bf16]", out, ref, 8.0 / 256);
  }
}

CUDA_TEST_CASE("ControlNet golden on the device: residuals and the controlled UNet") {
  ADABLDM_REQUIRE_CUDA();
  const auto unet = load_unet<float, Cuda>();
  ControlNetModel<float, Cuda> cn(ControlNetConfig::from_json(golden::config("controlnet/config.json")));
  nn::load_state_dict(cn, io::SafeTensors::open(golden::path("controlnet/model.safetensors")).state_dict());
  const auto io = io::SafeTensors::open(golden::path("controlnet/io.safetensors"));
  const auto sample = cuda::to_device(io.get<float>("sample")), ctx = cuda::to_device(io.get<float>("encoder_hidden_states"));
  const auto res = cn(sample, timesteps(io), ctx, cuda::to_device(io.get<float>("controlnet_cond")));
  REQUIRE(res.down.size() == 6);
  for (std::size_t i = 0; i < res.down.size(); ++i) {
    const std::string name = "down_block_res_sample_0" + std::to_string(i);
    GOLDEN_CHECK("cuda controlnet " + name, cuda::to_host(res.down[i]), io.get<float>(name));
  }
  GOLDEN_CHECK("cuda controlnet mid_block_res_sample", cuda::to_host(res.mid), io.get<float>("mid_block_res_sample"));
  GOLDEN_CHECK("cuda unet + controlnet residuals", cuda::to_host(unet(sample, timesteps(io), ctx, res)),
               io.get<float>("unet_noise_pred_controlled"));
}

CUDA_TEST_CASE("UNet training step on the device: every parameter gradient matches the CPU; AdamW step") {
  ADABLDM_REQUIRE_CUDA();
  auto cpu = load_unet<float, Cpu>();
  auto dev = load_unet<float, Cuda>();
  autograd::track(cpu);
  autograd::track(dev);
  const auto io = io::SafeTensors::open(golden::path("unet/io.safetensors"));
  const auto sample = io.get<float>("sample"), ctx = io.get<float>("encoder_hidden_states");
  const auto gout = randn({2, 4, 8, 8});
  {
    autograd::TrainingScope scope;
    autograd::backward(cpu(sample, timesteps(io), ctx), gout);
  }
  {
    autograd::TrainingScope scope;
    autograd::backward(dev(cuda::to_device(sample), timesteps(io), cuda::to_device(ctx)), cuda::to_device(gout));
  }
  std::map<std::string, F32> cpu_grads;
  cpu.visit("", [&](const std::string& name, nn::Param<float, Cpu>& p) { cpu_grads[name] = autograd::grad(p); });
  double worst = 0;
  std::string worst_name;
  int64_t count = 0;
  dev.visit("", [&](const std::string& name, nn::Param<float, Cuda>& p) {
    const auto g = autograd::grad(p);
    REQUIRE_MESSAGE(g.defined(), name);
    const Diff d = compare(cuda::to_host(g), cpu_grads.at(name));
    if (std::isnan(d.relative()) || d.relative() > worst) {  // a NaN gradient must fail the check below
      worst = d.relative();
      worst_name = name;
    }
    ++count;
  });
  std::printf("  UNet gradients: %lld parameters, worst relative difference %.3e (%s)\n",
              static_cast<long long>(count), worst, worst_name.c_str());
  // The longest reductions in the backward are the weight gradients of the first convolutions (N*H*W = 128 terms)
  // and the attention sums; 1e-5 * sqrt(4096) bounds them with the margin of cuda_test_util.cuh.
  CHECK(worst <= tolerance<float>(4096));
  // A tiny learning rate: the first AdamW update is ~lr * sign(g), so a gradient within rounding of zero may flip
  // sign between the devices; lr = 1e-6 keeps such a flip far below the tolerance.
  autograd::AdamWOptions o;
  o.lr = 1e-6;
  autograd::AdamW<float, Cpu> opt_cpu(cpu, o);
  autograd::AdamW<float, Cuda> opt_dev(dev, o);
  opt_cpu.step();
  opt_dev.step();
  expect_close("conv_in.weight after one AdamW step", cuda::to_host(dev.encoder.conv_in.weight()),
               cpu.encoder.conv_in.weight().detach(), 1e-5);
}

CUDA_TEST_CASE("AutoencoderKL golden on the device: encoder, moments, decoder, scaled latents") {
  ADABLDM_REQUIRE_CUDA();
  AutoencoderKL<float, Cuda> vae(AutoencoderKLConfig::from_json(golden::config("vae_kl/config.json")));
  nn::load_state_dict(vae, io::SafeTensors::open(golden::path("vae_kl/model.safetensors")).state_dict());
  const auto io = io::SafeTensors::open(golden::path("vae_kl/io.safetensors"));
  const auto image = cuda::to_device(io.get<float>("image"));
  GOLDEN_CHECK("cuda vae_kl encoder_out", cuda::to_host(vae.encoder_out(image)), io.get<float>("encoder_out"));
  GOLDEN_CHECK("cuda vae_kl moments", cuda::to_host(vae.moments(image)), io.get<float>("moments"));
  GOLDEN_CHECK("cuda vae_kl latent_scaled", cuda::to_host(vae.encode_scaled(image)), io.get<float>("latent_scaled"));
  GOLDEN_CHECK("cuda vae_kl decoded_mean", cuda::to_host(vae.decode(cuda::to_device(io.get<float>("posterior_mean")))),
               io.get<float>("decoded_mean"));
  GOLDEN_CHECK("cuda vae_kl decoded_z", cuda::to_host(vae.decode(cuda::to_device(io.get<float>("z")))),
               io.get<float>("decoded_z"));
}

CUDA_TEST_CASE("CLIP text golden on the device: every hidden state, last state, pooler output") {
  ADABLDM_REQUIRE_CUDA();
  const auto config = ClipTextConfig::from_json(golden::config("clip_text/config.json"));
  ClipTextModel<float, Cuda> clip(config);
  load_clip_text(clip, io::SafeTensors::open(golden::path("clip_text/model.safetensors")).state_dict());
  const auto io = io::SafeTensors::open(golden::path("clip_text/io.safetensors"));
  const auto out = clip(io.get<int64_t>("input_ids"));
  REQUIRE(out.hidden_states.size() == 4);
  for (std::size_t i = 0; i < out.hidden_states.size(); ++i) {
    const std::string name = "hidden_states_0" + std::to_string(i);
    GOLDEN_CHECK("cuda clip " + name, cuda::to_host(out.hidden_states[i]), io.get<float>(name));
  }
  GOLDEN_CHECK("cuda clip last_hidden_state", cuda::to_host(out.last_hidden_state), io.get<float>("last_hidden_state"));
  GOLDEN_CHECK("cuda clip pooler_output", cuda::to_host(out.pooler_output), io.get<float>("pooler_output"));
}

CUDA_TEST_CASE("TAESD and VQModel golden on the device") {
  ADABLDM_REQUIRE_CUDA();
  TAESD<float, Cuda> taesd(TaesdConfig::from_json(golden::config("taesd/config.json")));
  taesd.load(io::SafeTensors::open(golden::path("taesd/model.safetensors")).state_dict());
  const auto tio = io::SafeTensors::open(golden::path("taesd/io.safetensors"));
  for (const std::string which : {"synthetic", "photo"}) {
    const auto latent = taesd.encode01(cuda::to_device(tio.get<float>("image01_" + which)));
    GOLDEN_CHECK("cuda taesd latent_" + which, cuda::to_host(latent), tio.get<float>("latent_" + which));
    GOLDEN_CHECK("cuda taesd latent_scaled_uint8domain_" + which, cuda::to_host(taesd.scale_latents(latent)),
                 tio.get<float>("latent_scaled_uint8domain_" + which));
    GOLDEN_CHECK("cuda taesd recon01_" + which, cuda::to_host(taesd.decode01(cuda::to_device(tio.get<float>("latent_" + which)))),
                 tio.get<float>("recon01_" + which));
  }
  VQModel<float, Cuda> vq(VQModelConfig::from_json(golden::config("vae_vq/config.json")));
  nn::load_state_dict(vq, io::SafeTensors::open(golden::path("vae_vq/model.safetensors")).state_dict());
  const auto vio = io::SafeTensors::open(golden::path("vae_vq/io.safetensors"));
  const auto latent = vq.encode(cuda::to_device(vio.get<float>("image")));
  GOLDEN_CHECK("cuda vae_vq latent_prequant", cuda::to_host(latent), vio.get<float>("latent_prequant"));
  const auto q = vq.quantize(cuda::to_device(vio.get<float>("latent_prequant")));
  GOLDEN_CHECK("cuda vae_vq latent_quantized", cuda::to_host(q.quantized), vio.get<float>("latent_quantized"));
  CHECK(q.indices.to_vector() == vio.get<int64_t>("codebook_indices").to_vector());
  GOLDEN_CHECK("cuda vae_vq decoded", cuda::to_host(vq.decode(cuda::to_device(vio.get<float>("latent_prequant")))),
               vio.get<float>("decoded"));
}
