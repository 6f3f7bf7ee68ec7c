// SD1.5-sized models with random weights on the GPU (CUDA backend): the time of each stage of an AdaBLDM sample
// and of training, at 256 x 256 and 512 x 512, batch 2 (classifier-free guidance) for the UNet / ControlNet steps.
// Prints a markdown table and one machine-readable line per stage ("RESULT <key> <seconds>") that
// benchmarks/gpu_check.sh joins with PyTorch's timings (benchmarks/gpu/torch_ref.py).
//   bench_gpu [--quick]      --quick: 256 x 256 only, fewer repetitions
// First: attention alone (f16, tensor-core and CUDA-core forwards, with TFLOP/s). Last: one whole `official`
// AdaBLDM sample at 256 x 256 (the issue's target: under 4 s on an H100).
// Timing: CUDA events around `reps` repetitions after `warmup` runs (which also fill the caching allocator and the
// cuDNN algorithm cache; cuDNN algorithms are measured: cuda::set_conv_benchmark(true)).
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>

#include "adabldm/cuda.cuh"
// (the CUDA ops must be declared before the model headers)
#include "adabldm/autograd/autograd.hpp"
#include "adabldm/models/autoencoder_kl.hpp"
#include "adabldm/models/controlnet.hpp"
#include "adabldm/defect/pipeline.hpp"

using namespace adabldm;

namespace {
int g_warmup = 2, g_reps = 5;

/// Seconds per call of fn, measured on the current stream.
double time_it(const std::function<void()>& fn) {
  for (int i = 0; i < g_warmup; ++i) fn();
  cudaEvent_t start, stop;
  ADABLDM_CUDA_CHECK(cudaEventCreate(&start));
  ADABLDM_CUDA_CHECK(cudaEventCreate(&stop));
  cudaStream_t s = cuda::current_stream();
  ADABLDM_CUDA_CHECK(cudaEventRecord(start, s));
  for (int i = 0; i < g_reps; ++i) fn();
  ADABLDM_CUDA_CHECK(cudaEventRecord(stop, s));
  ADABLDM_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  ADABLDM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  ADABLDM_CUDA_CHECK(cudaEventDestroy(start));
  ADABLDM_CUDA_CHECK(cudaEventDestroy(stop));
  return ms / 1000.0 / g_reps;
}

/// Times fn, prints its table row and RESULT line; returns the seconds per call (0 when it failed).
double row(const std::string& key, const std::string& what, const std::function<void()>& fn) {
  double s = 0;
  try {
    s = time_it(fn);
    const auto st = cuda::allocator_stats();
    std::printf("| %-62s | %9.4f | %8.2f |\n", what.c_str(), s, static_cast<double>(st.peak_bytes_in_use) / (1 << 30));
    std::printf("RESULT %s %.6f\n", key.c_str(), s);
  } catch (const std::exception& e) {
    s = 0;
    std::printf("| %-62s | failed: %s |\n", what.c_str(), e.what());
  }
  std::fflush(stdout);
  cuda::CachingAllocator::instance().reset_counters();
  return s;
}

template <class T>
const char* tname() {
  return std::is_same_v<T, float> ? "f32" : std::is_same_v<T, adabldm::half> ? "f16" : "bf16";
}
template <class T>
Tensor<T, Cuda> dev(const Tensor<float, Cpu>& x) {
  if constexpr (std::is_same_v<T, float>) return cuda::to_device(x);
  else return cuda::to_device(x.to<T>());
}

models::AutoencoderKLConfig sd_vae_config() {
  models::AutoencoderKLConfig vc;
  vc.layout.block_out_channels = {128, 256, 512, 512};
  vc.layout.layers_per_block = 2;
  vc.layout.norm_num_groups = 32;
  vc.sample_size = 512;
  return vc;
}

/// Attention alone (the UNet's first-level self-attention: B = 2, 8 heads of 40, half) at L = 1024 and 4096 (256
/// and 512 images), tensor-core and CUDA-core forwards; TFLOP/s counts 4 B H L^2 D (Q K^T and P V).
void attention_alone() {
  Rng rng(4);
  const int64_t B = 2, H = 8, D = 40;
  const ops::AttentionParams p{H, 0.0, false};
  for (int64_t L : {1024, 4096}) {
    const auto q = dev<adabldm::half>(rng.normal({B, L, H * D})), k = dev<adabldm::half>(rng.normal({B, L, H * D})),
               v = dev<adabldm::half>(rng.normal({B, L, H * D}));
    const double flops = 4.0 * static_cast<double>(B * H * L * L * D);
    for (const bool tc : {true, false}) {
      cuda::set_tensor_core_attention(tc);
      const std::string l = std::to_string(L), path = tc ? "tensor cores" : "CUDA cores";
      const double s = row(std::string("attention_") + (tc ? "tc" : "cc") + "_f16_L" + l,
                           "attention B2 H8 D40 L" + l + ", f16, " + path, [&] { (void)ops::attention(q, k, v, p); });
      if (s > 0) {
        char rate[64];
        std::snprintf(rate, sizeof rate, "%.1f TFLOP/s", flops / s * 1e-12);
        std::printf("|   %-60s |           |          |\n", rate);
      }
    }
  }
  cuda::set_tensor_core_attention(true);
}

/// Inference stages in storage type T at S x S.
template <class T>
void inference(int64_t S) {
  Rng rng(1);
  const int64_t s = S / 8;
  const std::string res = std::to_string(S), tn = tname<T>();
  const models::UNetConfig unet_config;  // SD1.5 (named variables: GCC 12 fails on the braced temporaries in nvcc's output)
  models::UNet2DConditionModel<T, Cuda> unet(unet_config);
  nn::init_missing(unet, rng);
  models::ControlNetConfig cc;
  models::ControlNetModel<T, Cuda> cn(cc);
  nn::init_missing(cn, rng);
  models::AutoencoderKL<T, Cuda> vae(sd_vae_config());
  nn::init_missing(vae, rng);
  const auto z2 = dev<T>(rng.normal({2, 4, s, s})), ctx2 = dev<T>(rng.normal({2, 77, 768}));
  const auto hint2 = dev<T>(rng.uniform({2, 3, S, S}));
  const auto image = dev<T>(rng.uniform({1, 3, S, S}, -1.0, 1.0));
  const auto latent = dev<T>(rng.normal({1, 4, s, s}));
  const std::vector<float> t{500.0f};
  row("unet_" + tn + "_" + res, "UNet step, CFG batch 2, " + res + ", " + tn, [&] { (void)unet(z2, t, ctx2); });
  row("controlnet_" + tn + "_" + res, "ControlNet step, CFG batch 2, " + res + ", " + tn,
      [&] { (void)cn(z2, t, ctx2, hint2); });
  row("unet_controlnet_" + tn + "_" + res, "UNet + ControlNet (one sampler step), " + res + ", " + tn,
      [&] { (void)unet(z2, t, ctx2, cn(z2, t, ctx2, hint2)); });
  row("vae_encode_" + tn + "_" + res, "VAE encode (moments), batch 1, " + res + ", " + tn,
      [&] { (void)vae.moments(image); });
  row("vae_decode_" + tn + "_" + res, "VAE decode, batch 1, " + res + ", " + tn, [&] { (void)vae.decode(latent); });
}

/// Training stages (float32 parameters and gradients, as the CPU path) at S x S.
void training(int64_t S) {
  Rng rng(2);
  const int64_t s = S / 8;
  const std::string res = std::to_string(S);
  // Decoder adaptation: the loss of defect/decoder_adaptation.hpp on the device (decoder forward, two masked
  // MSE terms, backward, AdamW) for one latent.
  {
    models::AutoencoderKL<float, Cuda> vae(sd_vae_config());
    nn::init_missing(vae, rng);
    auto decoder = vae.decoder;
    autograd::track(decoder);
    autograd::AdamW<float, Cuda> opt(decoder, {1e-4, 0.9, 0.999, 1e-8, 0.01});
    const auto h = vae.post_quant_conv(cuda::to_device(rng.normal({1, 4, s, s})));
    auto mask_h = Tensor<float, Cpu>::zeros({1, 1, S, S});
    for (int64_t y = S / 3; y < S / 2; ++y)
      for (int64_t x = S / 3; x < S / 2; ++x) mask_h.at({0, 0, y, x}) = 1.0f;
    const auto mask = cuda::to_device(mask_h), background = ops::affine(mask, -1.0f, 1.0f);
    const auto target_fg = ops::mul(cuda::to_device(rng.uniform({1, 3, S, S}, -1.0, 1.0)), mask);
    const auto target_bg = ops::mul(cuda::to_device(rng.uniform({1, 3, S, S}, -1.0, 1.0)), background);
    row("adaptation_iter_f32_" + res, "decoder adaptation iteration (fwd + bwd + AdamW), " + res + ", f32", [&] {
      {
        autograd::TrainingScope scope;
        const auto x = decoder(h);
        const auto loss = ops::add(autograd::mse(ops::mul(x, mask), target_fg),
                                   ops::scale(autograd::mse(ops::mul(x, background), target_bg), 100.0f));
        autograd::backward(loss);
      }
      opt.step();
      opt.zero_grad();
    });
  }
  // Trimap-encoder training step: ControlNet (trainable) into the frozen UNet, epsilon loss, batch 1.
  {
    const models::UNetConfig unet_config;
    models::UNet2DConditionModel<float, Cuda> unet(unet_config);
    nn::init_missing(unet, rng);
    const models::ControlNetConfig cn_config;
    models::ControlNetModel<float, Cuda> cn(cn_config);
    nn::init_missing(cn, rng);
    autograd::freeze(unet);
    autograd::track(cn);
    autograd::AdamW<float, Cuda> opt(cn, {1e-5, 0.9, 0.999, 1e-8, 0.01});
    const auto zt = cuda::to_device(rng.normal({1, 4, s, s})), noise = cuda::to_device(rng.normal({1, 4, s, s}));
    const auto ctx = cuda::to_device(rng.normal({1, 77, 768})), hint = cuda::to_device(rng.uniform({1, 3, S, S}));
    row("trimap_step_f32_" + res, "trimap-encoder training step, batch 1 (fwd + bwd + AdamW), " + res + ", f32", [&] {
      {
        autograd::TrainingScope scope;
        const auto pred = unet(zt, {500.0f}, ctx, cn(zt, {500.0f}, ctx, hint));
        autograd::backward(autograd::mse(pred, noise));
      }
      opt.step();
      opt.zero_grad();
    });
  }
}

/// One complete AdaBLDM sample with the `official` preset (50 DDIM steps with CFG, latent and image editing, 200
/// decoder-adaptation steps) at S x S: UNet and trimap encoder in half, the VAE and the adaptation in float
/// (TF32 as set by the caller). Wall-clock time of Pipeline::generate, which ends with the image on the host.
void whole_sample(int64_t S, const std::string& key, const std::string& what, bool adapt_in_bf16 = false) {
  try {
    Rng rng(3);
    models::UNet2DConditionModel<float> unet{models::UNetConfig{}};
    nn::init_missing(unet, rng);
    models::AutoencoderKL<float> vae(sd_vae_config());
    nn::init_missing(vae, rng);
    models::ClipTextModel<float> clip(models::ClipTextConfig::sd1_vit_l14());
    nn::init_missing(clip, rng);
    auto cn = models::ControlNetModel<float>::from_unet(unet, 3, {16, 32, 96, 256}, rng);
    nn::init_missing(cn, rng);
    models::StableDiffusion sd{unet, vae, clip, text::ClipTokenizer::load_default(), models::sd_scheduler_config(),
                               text::ClipTokenizer::Pad::Eos, std::nullopt};
    Pipeline<adabldm::half, Cuda> pipe(std::move(sd), std::move(cn));
    pipe.options().size = static_cast<int>(S);
    pipe.options().adapt_in_bf16 = adapt_in_bf16;
    DefectJob job;
    job.ok = rng.uniform({1, 3, S, S}, -1.0, 1.0);
    auto mask = Tensor<float>::zeros({1, 1, S, S});
    for (int64_t y = S / 3; y < S / 2; ++y)
      for (int64_t x = S / 3; x < S / 2; ++x) mask.at({0, 0, y, x}) = 1.0f;
    job.defects.push_back({Tensor<float>{}, mask, "square"});
    job.object = "tile";
    job.defect = "crack";
    (void)pipe.generate(job);  // warm-up: cuDNN algorithm search, allocator, prompt cache
    const auto sample = pipe.generate(job);
    const auto& t = sample.timings;
    std::printf("| %-62s | %9.4f | %8.2f |\n", what.c_str(), t.at("total"),
                static_cast<double>(cuda::allocator_stats().peak_bytes_in_use) / (1 << 30));
    for (const char* k : {"sampling", "decode"}) std::printf("|   of which %-51s | %9.4f |          |\n", k, t.at(k));
    std::printf("RESULT %s %.6f\n", key.c_str(), t.at("total"));
  } catch (const std::exception& e) {
    std::printf("| %-62s | failed: %s |\n", what.c_str(), e.what());
  }
  std::fflush(stdout);
}
}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && !std::strcmp(argv[1], "--quick");
  if (!cuda_available()) {
    std::printf("bench_gpu: no CUDA device\n");
    return 0;
  }
  if (quick) g_reps = 2;
  cuda::set_conv_benchmark(true);
  const auto& p = cuda::device_properties();
  std::printf("SD1.5-sized random models on %s (sm_%d%d), TF32 %s\n\n", p.name, p.major, p.minor,
              cuda::allow_tf32() ? "on" : "off");
  std::printf("| stage | seconds | peak GiB |\n|---|---:|---:|\n");
  attention_alone();
  for (int64_t S : quick ? std::vector<int64_t>{256} : std::vector<int64_t>{256, 512}) {
    inference<adabldm::half>(S);
    inference<float>(S);
    training(S);
  }
  whole_sample(256, "whole_official_256", "whole official sample 256 (50 steps + 200 adaptation), f16 UNet");
  cuda::set_allow_tf32(true);
  whole_sample(256, "whole_official_256_tf32", "the same with TF32 for the f32 VAE / adaptation");
  cuda::set_allow_tf32(false);
  whole_sample(256, "whole_official_256_bf16_adapt", "the same with the adaptation in bf16 (mixed precision)", true);
  return 0;
}
