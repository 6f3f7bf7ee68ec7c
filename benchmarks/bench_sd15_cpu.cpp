// SD1.5-sized models with random weights at 256 x 256 on the CPU: time and peak memory of each stage of an
// AdaBLDM sample and of training. Prints a markdown table (docs/performance.md). Threads: ADABLDM_NUM_THREADS.
//   bench_sd15_cpu [--whole]    --whole also runs one complete official sample (50 steps + 200 adaptation steps)
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>

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
}  // namespace

int main(int argc, char** argv) {
  const bool whole = argc > 1 && !std::strcmp(argv[1], "--whole");
  const int64_t S = 256, s = S / 8;
  Rng rng(1);
  std::printf("SD1.5-sized random models, %lldx%lld, %d threads\n\n", static_cast<long long>(S), static_cast<long long>(S),
              num_threads());
  models::UNet2DConditionModel<float> unet{models::UNetConfig{}};
  randomise(unet, 1);
  models::AutoencoderKLConfig vc;
  vc.layout.block_out_channels = {128, 256, 512, 512};
  vc.layout.layers_per_block = 2;
  vc.layout.norm_num_groups = 32;
  vc.sample_size = 512;
  models::AutoencoderKL<float> vae(vc);
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
