// SD1.5-sized models with random weights at 256 x 256 on the CPU: time and peak memory of each stage of an
// AdaBLDM sample and of training. Prints a markdown table (docs/performance.md). Threads: ADABLDM_NUM_THREADS.
//   bench_sd15_cpu [--whole]    --whole also runs one complete official sample (50 steps + 200 adaptation steps)
// One component per process (benchmarks/compare_pytorch.sh runs it next to PyTorch; the process's peak RSS is the
// component's), timed as ../shared/peer-bench/peer_torch_bench.py times PyTorch: one warm-up call, then --reps
// calls, the median; prints one line `RESULT {json}` in that script's format:
//   bench_sd15_cpu --component unet|vae_dec|vae_enc|clip|adapt|gemm [--res 32] [--batch 1] [--reps 3]
//                  [--threads N] [--tiny] [--last-blocks K] [--eigen-gemm] [--cpu-matmul f32|bf16] [--no-freeze]
//   unet     UNet step on [batch, 4, res, res] with a [batch, 77, 768] context (CFG's batch 2 is --batch 2)
//   vae_dec  vae.decode of [batch, 4, res, res]; vae_enc: vae.encode(...).mean of [batch, 3, 8 res, 8 res]
//   clip     CLIP-L text encoder on [batch, 77] token ids
//   adapt    one decoder-adaptation iteration: decoder forward on a [1, 4, res, res] latent, MSE against an image,
//            backward, AdamW step on every decoder weight (defect::adapt_decoder's inner step, plain MSE);
//            --last-blocks K: only the last K up blocks and the output layers train (AdaptationOptions::last_blocks;
//            the frozen rest runs once, outside the timed step)
//   gemm     ops::gemm 1024^3 (bench_ops' BM_Matmul/1024): the GEMM's GFLOP/s against the FMA peak
// --tiny swaps in small models of the same architectures (and a 64^3 GEMM): a smoke run for CI, never timed.
// --eigen-gemm: float matrix products through Eigen instead of our AVX-512 SGEMM (ops/gemm_avx512.hpp), for A/B runs.
// --cpu-matmul bf16: float matrix products with bfloat16 operands (ops/gemm_bf16.hpp: AMX or AVX512-BF16); refused
// where the CPU has neither, so a table never shows float32 times under a bf16 label. unet, vae_* and clip then run
// with their weights frozen (ops::FrozenWeights: packed in bfloat16 once, in the warm-up call, as sampling does);
// --no-freeze converts them at every product instead.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "adabldm/defect/pipeline.hpp"
#include "adabldm/defect/training.hpp"

using namespace adabldm;

namespace {
/// Peak resident memory since the last reset, in GB (Linux: /proc/self/status VmHWM; reset via clear_refs).
double peak_gb() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1048576.0;
  return 0;
}
void reset_peak() { std::ofstream("/proc/self/clear_refs") << "5"; }

void row(const char* what, const std::function<void()>& fn, int reps = 1) {
  fn();  // warm-up (allocations, page faults)
  reset_peak();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) fn();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
  std::printf("| %-58s | %9.3f | %7.2f |\n", what, s, peak_gb());
  std::fflush(stdout);
}
template <class M>
void randomise(M& m, uint64_t seed) {
  Rng rng(seed);
  nn::init_missing(m, rng);
}

// ---- one component per process (--component) ------------------------------------------------------------------

struct ComponentArgs {
  std::string component;
  int64_t res = 32, batch = 1;  // latent side (image side 8 x res) and batch
  int reps = 3;
  bool tiny = false;
  int last_blocks = 0;  // adapt: 0 = the whole decoder trains
  bool freeze = true;   // bf16: the inference components' weights packed once (ops::FrozenWeights), as sampling does
};

/// The SD1.5 VAE layout (or a small one of the same architecture with --tiny).
models::AutoencoderKLConfig vae_config(bool tiny) {
  models::AutoencoderKLConfig vc;
  vc.layout.block_out_channels = tiny ? std::vector<int64_t>{8, 16, 32, 32} : std::vector<int64_t>{128, 256, 512, 512};
  vc.layout.layers_per_block = tiny ? 1 : 2;
  vc.layout.norm_num_groups = tiny ? 8 : 32;
  vc.sample_size = 512;
  return vc;
}

/// Parameter elements of a module.
template <class M>
int64_t parameter_count(M& m) {
  int64_t n = 0;
  m.visit("", [&](const std::string&, auto& p) { n += p.shape.numel(); });
  return n;
}

/// Times `fn` as peer_torch_bench.py does (one warm-up call, then reps calls) and prints its RESULT line: seconds
/// per call (median, min, max), the process's peak RSS (VmHWM: model, activations and gradients together) and,
/// when the multiply-adds per call are known (gmac > 0), the achieved GFLOP/s.
void run_component(const ComponentArgs& a, int64_t params, double build_s, const std::function<void()>& fn,
                   double gmac = 0) {
  const auto now = [] { return std::chrono::steady_clock::now(); };
  const auto seconds = [](auto t0, auto t1) { return std::chrono::duration<double>(t1 - t0).count(); };
  auto t0 = now();
  fn();
  const double warm = seconds(t0, now());
  std::vector<double> times;
  for (int i = 0; i < a.reps; ++i) {
    t0 = now();
    fn();
    times.push_back(seconds(t0, now()));
  }
  auto s = times;
  std::sort(s.begin(), s.end());
  const std::size_t n = s.size();
  const double median = n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
  std::printf("RESULT {\"system\": \"adabldm\", \"component\": \"%s\", \"latent\": %lld, \"image\": %lld, "
              "\"batch\": %lld, \"threads\": %d, \"tiny\": %s, \"params\": %lld, \"build_s\": %.2f, "
              "\"warmup_s\": %.3f, \"times_s\": [",
              a.component.c_str(), static_cast<long long>(a.res), static_cast<long long>(8 * a.res),
              static_cast<long long>(a.batch), num_threads(), a.tiny ? "true" : "false", static_cast<long long>(params),
              build_s, warm);
  for (std::size_t i = 0; i < n; ++i) std::printf("%s%.6g", i ? ", " : "", times[i]);
  std::printf("], \"median_s\": %.6g, \"min_s\": %.6g, \"max_s\": %.6g, \"peak_rss_gb\": %.3f", median, s[0],
              s[n - 1], peak_gb());
  if (gmac > 0) std::printf(", \"gmac\": %.3f, \"gflops_achieved\": %.2f", gmac, 2 * gmac / median);
  std::printf("}\n");
  std::fflush(stdout);
}

/// With bf16 products, a model that only runs forward has its weights packed once, in the warm-up call, as the
/// sampler does for its 50 steps (ops::FrozenWeights); --no-freeze packs them at every product instead.
template <class M>
ops::FrozenWeights frozen_weights(const ComponentArgs& a, const M& model) {
  return a.freeze && ops::detail::use_bf16_gemm() ? nn::freeze_weights(model) : ops::FrozenWeights();
}

int component_main(const ComponentArgs& a) {
  const auto t_build = std::chrono::steady_clock::now();
  const auto built = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t_build).count(); };
  Rng rng(1);
  const int64_t B = a.batch, s = a.res;
  if (a.component == "unet") {
    models::UNetConfig uc;  // SD1.5
    if (a.tiny) {
      uc.down_block_types = {"CrossAttnDownBlock2D", "DownBlock2D"};
      uc.up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D"};
      uc.block_out_channels = {32, 64};
      uc.layers_per_block = 1;
      uc.cross_attention_dim = 32;
      uc.heads = {4, 4};
      uc.transformer_layers = {1, 1};
      uc.norm_num_groups = 8;
    }
    models::UNet2DConditionModel<float> unet{uc};
    randomise(unet, 1);
    const auto z = rng.normal({B, 4, s, s}), ctx = rng.normal({B, 77, uc.cross_attention_dim});
    const auto frozen = frozen_weights(a, unet);
    run_component(a, parameter_count(unet), built(), [&] { (void)unet(z, {500.0f}, ctx); });
  } else if (a.component == "vae_dec" || a.component == "vae_enc") {
    models::AutoencoderKL<float> vae(vae_config(a.tiny));
    randomise(vae, 2);
    const auto frozen = frozen_weights(a, vae);
    const int64_t f = vae.downscale();
    if (a.component == "vae_dec") {
      const auto z = rng.normal({B, 4, s, s});
      run_component(a, parameter_count(vae), built(), [&] { (void)vae.decode(z); });
    } else {
      const auto image = rng.normal({B, 3, s * f, s * f});
      run_component(a, parameter_count(vae), built(), [&] { (void)vae.encode(image).mean; });
    }
  } else if (a.component == "clip") {
    auto cc = models::ClipTextConfig::sd1_vit_l14();
    if (a.tiny) cc.hidden_size = 32, cc.intermediate_size = 64, cc.num_hidden_layers = 2, cc.num_attention_heads = 4;
    models::ClipTextModel<float> clip(cc);
    randomise(clip, 3);
    const auto frozen = frozen_weights(a, clip);
    auto ids = Tensor<int64_t>::empty({B, 77});
    for (int64_t i = 0; i < ids.numel(); ++i) ids.data()[i] = rng.uniform_int(0, cc.vocab_size - 1);
    run_component(a, parameter_count(clip), built(), [&] { (void)clip(ids); });
  } else if (a.component == "adapt") {
    // defect::adapt_decoder's inner step (forward, loss, backward, AdamW with its lr and weight decay, zero_grad)
    // with a plain MSE against a random image where the pipeline has two masked MSE terms (two elementwise
    // products fewer); the PyTorch side, peer_adapt_bench.py, does exactly this. post_quant_conv is frozen in the
    // pipeline and applied once, so it is not part of the step.
    const auto vc = vae_config(a.tiny);
    models::VaeDecoder<float> decoder(vc.layout);
    randomise(decoder, 2);
    const int64_t f = vc.layout.downscale();
    const auto h = rng.normal({1, 4, s, s}), target = rng.uniform({1, 3, s * f, s * f}, -1.0, 1.0);
    const auto time_steps = [&](auto& net, const Tensor<float>& input) {
      autograd::track(net);
      autograd::AdamW<float> optimiser(net, {1e-4, 0.9, 0.999, 1e-8, 0.01});
      run_component(a, parameter_count(net), built(), [&] {
        {
          autograd::TrainingScope scope;
          autograd::backward(autograd::mse(net(input), target));
        }
        optimiser.step();
        optimiser.zero_grad();
      });
    };
    const auto blocks = decoder.up_blocks.size();
    if (a.last_blocks < 0 || static_cast<std::size_t>(a.last_blocks) > blocks) {
      std::fprintf(stderr, "bench_sd15_cpu: --last-blocks must be in [0, %zu]\n", blocks);
      std::exit(2);
    }
    if (a.last_blocks > 0) {
      const std::size_t first = blocks - static_cast<std::size_t>(a.last_blocks);
      defect::VaeDecoderTail<float, Cpu> tail(decoder, first);
      const auto x = defect::VaeDecoderTail<float, Cpu>::head(decoder, first, h);
      time_steps(tail, x);
    } else {
      time_steps(decoder, h);
    }
  } else if (a.component == "gemm") {
    // bench_ops' BM_Matmul: C = A B, n x n x n (its RESULT's latent / image fields mean nothing). One product
    // takes milliseconds: 20 timed products per --reps.
    const int64_t n = a.tiny ? 64 : 1024;
    const auto A = rng.normal({n, n}), Bm = rng.normal({n, n});
    auto C = Tensor<float>::empty({n, n});
    ComponentArgs g = a;
    g.reps = 20 * a.reps;
    run_component(g, 0, built(), [&] {
      ops::gemm<float>(false, false, n, n, n, 1.0f, A.data(), n, Bm.data(), n, 0.0f, C.data(), n);
    }, 1e-9 * double(n) * n * n);
  } else {
    std::fprintf(stderr, "bench_sd15_cpu: unknown --component %s (unet, vae_dec, vae_enc, clip, adapt, gemm)\n",
                 a.component.c_str());
    return 2;
  }
  return 0;
}

// ---- the table of every stage (no --component) ----------------------------------------------------------------

int stage_table(bool whole) {
  const int64_t S = 256, s = S / 8;
  Rng rng(1);
  std::printf("SD1.5-sized random models, %lldx%lld, %d threads\n\n", static_cast<long long>(S), static_cast<long long>(S),
              num_threads());
  models::UNet2DConditionModel<float> unet{models::UNetConfig{}};
  randomise(unet, 1);
  models::AutoencoderKL<float> vae(vae_config(false));
  randomise(vae, 2);
  models::ClipTextModel<float> clip(models::ClipTextConfig::sd1_vit_l14());
  randomise(clip, 3);
  auto cn = models::ControlNetModel<float>::from_unet(unet, 3, {16, 32, 96, 256}, rng);
  randomise(cn, 4);  // the zero convolutions too, so the residuals are not trivially zero
  const auto z2 = rng.normal({2, 4, s, s}), ctx2 = rng.normal({2, 77, 768}), hint2 = rng.uniform({2, 3, S, S});
  const auto image = rng.uniform({1, 3, S, S}, -1.0, 1.0);
  std::printf("| stage | seconds | peak GB |\n|---|---:|---:|\n");
  row("UNet step, CFG batch 2 (no control)", [&] { (void)unet(z2, {500.0f}, ctx2); });
  row("ControlNet (trimap encoder) step, CFG batch 2", [&] { (void)cn(z2, {500.0f}, ctx2, hint2); });
  row("UNet + ControlNet step, CFG batch 2 (one sampler step)", [&] { (void)unet(z2, {500.0f}, ctx2, cn(z2, {500.0f}, ctx2, hint2)); });
  row("VAE encode 256x256", [&] { (void)vae.encode_scaled(image, &rng); });
  const auto latent = vae.encode_scaled(image);
  row("VAE decode 256x256", [&] { (void)vae.decode_scaled(latent); });
  auto mask = Tensor<float>::zeros({1, 1, S, S});
  for (int64_t y = 100; y < 140; ++y)
    for (int64_t x = 90; x < 150; ++x) mask.at({0, 0, y, x}) = 1.0f;
  defect::AdaptationOptions one;
  one.steps = 1;
  row("decoder adaptation iteration 256x256 (forward + backward + AdamW)",
      [&] { (void)defect::adapt_decoder(vae, latent, image, mask, one); });
  {
    models::StableDiffusion sd{unet, vae, clip, text::ClipTokenizer::load_default(), models::sd_scheduler_config(),
                               text::ClipTokenizer::Pad::Eos, std::nullopt};
    defect::TrainingSource data;
    data.ok_images.push_back(image);
    data.defects.push_back({rng.uniform({1, 3, 64, 64}, -1.0, 1.0), Tensor<float>::full({1, 1, 64, 64}, 1.0f), "square"});
    data.prompt = "a tile with a crack";
    auto cn_train = cn;
    nn::clone_parameters(cn_train);
    defect::TrimapEncoderTrainer trainer(sd, cn_train, data, {});
    row("trimap-encoder training step, batch 1 (forward + backward + AdamW)", [&] { (void)trainer.train_step(); });
    {
      autograd::CheckpointBlocks on;
      row("the same with gradient checkpointing of the UNet/ControlNet blocks", [&] { (void)trainer.train_step(); });
    }
    if (whole) {
      Pipeline<> pipe(sd, cn);
      DefectJob job;
      job.ok = image;
      job.defects.push_back({Tensor<float>{}, mask, "mask"});
      job.object = "tile";
      job.defect = "crack";
      const auto t0 = std::chrono::steady_clock::now();
      reset_peak();
      const auto sample = pipe.generate(job);
      std::printf("| %-58s | %9.1f | %7.2f |\n", "whole official sample (50 steps + 200 adaptation steps)",
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), peak_gb());
      for (const auto& [k, v] : sample.timings) std::printf("|   of which %-47s | %9.1f |         |\n", k.c_str(), v);
    }
  }
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  bool whole = false;
  ComponentArgs a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_sd15_cpu: %s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--whole") whole = true;
    else if (arg == "--component") a.component = value();
    else if (arg == "--res") a.res = std::atoll(value());
    else if (arg == "--batch") a.batch = std::atoll(value());
    else if (arg == "--reps") a.reps = std::atoi(value());
    else if (arg == "--threads") set_num_threads(std::max(1, std::atoi(value())));
    else if (arg == "--tiny") a.tiny = true;
    else if (arg == "--last-blocks") a.last_blocks = std::atoi(value());
    else if (arg == "--no-freeze") a.freeze = false;
    else if (arg == "--eigen-gemm") ops::detail::use_own_sgemm() = false;
    else if (arg == "--cpu-matmul") {
      const std::string p = value();
      if (p != "f32" && p != "bf16") {
        std::fprintf(stderr, "bench_sd15_cpu: --cpu-matmul must be f32 or bf16, got %s\n", p.c_str());
        return 2;
      }
      if (p == "bf16" && ops::detail::bf16_kernel() == ops::detail::Bf16Kernel::none) {
        std::fprintf(stderr, "bench_sd15_cpu: --cpu-matmul bf16: this CPU (or build) has neither AMX nor AVX512-BF16\n");
        return 3;
      }
      ops::set_cpu_matmul_precision(p == "bf16" ? ops::MatmulPrecision::bf16 : ops::MatmulPrecision::f32);
    }
    else {
      std::fprintf(stderr, "bench_sd15_cpu: unknown argument %s (see the comment at the top of bench_sd15_cpu.cpp)\n",
                   arg.c_str());
      return 2;
    }
  }
  if (a.component.empty()) return stage_table(whole);
  if (a.res < 1 || a.batch < 1 || a.reps < 1) {
    std::fprintf(stderr, "bench_sd15_cpu: --res, --batch and --reps must be >= 1\n");
    return 2;
  }
  try {
    return component_main(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_sd15_cpu: %s\n", e.what());
    return 1;
  }
}
