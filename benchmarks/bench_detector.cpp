// The evaluation's detector (eval/detector.hpp): one training step (forward + backward + AdamW, batch 8) at the
// crop sides the evaluation uses, and scoring one whole 256 px image. Issue 21's budget is set by these.
// Run: build/bin/bench_detector; threads from ADABLDM_NUM_THREADS.
#include <benchmark/benchmark.h>

#include "adabldm/core/rng.hpp"
#include "adabldm/eval/train_detector.hpp"

using namespace adabldm;

namespace {
// Flops of one forward pass of the default detector on a side-k image (3x3 and 1x1 convolutions only).
double detector_flops(const eval::DetectorConfig& c, int k) {
  double f = 0;
  const auto& w = c.widths;
  for (int i = 0; i < c.levels(); ++i) {
    const double hw = static_cast<double>(k >> i) * (k >> i);
    f += 2.0 * 9 * hw * (i == 0 ? c.in_channels : w[i - 1]) * w[i] + 2.0 * 9 * hw * w[i] * w[i];
    if (i + 1 < c.levels()) f += 2.0 * 9 * hw * (w[i + 1] + w[i]) * w[i] + 2.0 * 9 * hw * w[i] * w[i];
  }
  return f + 2.0 * k * k * w[0];
}

void BM_DetectorTrainStep(benchmark::State& st) {
  const int k = static_cast<int>(st.range(0)), B = 8;
  eval::SegmentationDetector<float> det;
  Rng rng(7);
  nn::init_missing(det, rng);
  autograd::track(det);
  autograd::AdamW<float> opt(det, {1e-3, 0.9, 0.999, 1e-8, 1e-2});
  auto x = rng.normal({B, 1, k, k});
  auto y = Tensor<float, Cpu>::zeros({B, 1, k, k});
  for (int64_t i = 0; i < y.numel(); i += 37) y.data()[i] = 1.0f;
  for (auto _ : st) {
    autograd::TrainingScope scope;
    const auto logits = det(x);
    auto loss = ops::add(autograd::bce_with_logits(logits, y, 5.0), autograd::dice_loss(logits, y));
    autograd::backward(loss);
    opt.step();
    autograd::zero_grad(det);
  }
  autograd::untrack(det);
  // the backward's two products per convolution (input and weight gradients) are twice the forward's.
  st.counters["GFLOPS"] = benchmark::Counter(3.0 * B * detector_flops(det.config, k) * 1e-9,
                                             benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_DetectorTrainStep)->Arg(128)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_DetectorScore(benchmark::State& st) {
  eval::SegmentationDetector<float> det;
  Rng rng(8);
  nn::init_missing(det, rng);
  auto x = rng.normal({1, 256, 256});
  for (auto _ : st) benchmark::DoNotOptimize(eval::score_image(det, x).data());
  st.counters["GFLOPS"] = benchmark::Counter(detector_flops(det.config, 256) * 1e-9,
                                             benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_DetectorScore)->Unit(benchmark::kMillisecond)->UseRealTime();
}  // namespace

BENCHMARK_MAIN();
