// CPU op throughput. Run: build/benchmarks/bench_ops [--benchmark_filter=...]; threads from ADABLDM_NUM_THREADS.
// Each benchmark reports GFLOP/s (multiply-add = 2 flops) as the "GFLOPS" counter.
#include <benchmark/benchmark.h>

#include "adabldm/core/rng.hpp"
#include "adabldm/ops/ops.hpp"

using namespace adabldm;

namespace {
void set_flops(benchmark::State& st, double flops_per_iter) {
  st.counters["GFLOPS"] = benchmark::Counter(flops_per_iter * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["threads"] = num_threads();
}

void BM_Matmul(benchmark::State& st) {
  const int64_t n = st.range(0);
  Rng rng(1);
  auto a = rng.normal({n, n}), b = rng.normal({n, n});
  auto c = Tensor<float>::empty({n, n});
  for (auto _ : st) {
    ops::gemm<float>(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  set_flops(st, 2.0 * n * n * n);
}
BENCHMARK(BM_Matmul)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Conv3x3(benchmark::State& st) {
  const int64_t hw = st.range(0), c = 320;
  Rng rng(2);
  auto x = rng.normal({1, c, hw, hw}), w = rng.normal({c, c, 3, 3}), b = rng.normal({c});
  for (auto _ : st) benchmark::DoNotOptimize(ops::conv2d(x, w, b, ops::Conv2dParams::same(1)).data());
  set_flops(st, 2.0 * c * c * 9 * hw * hw);
}
BENCHMARK(BM_Conv3x3)->Arg(32)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Conv3x3Small(benchmark::State& st) {
  // Batch 8: the detector's few channels (eval/detector.hpp) and SD's 320; arg 2 = 1 for the direct kernel.
  const int64_t c = st.range(0), hw = st.range(1);
  ops::detail::use_direct_conv3x3() = st.range(2) != 0;
  Rng rng(2);
  auto x = rng.normal({8, c, hw, hw}), w = rng.normal({c, c, 3, 3}), b = rng.normal({c});
  for (auto _ : st) benchmark::DoNotOptimize(ops::conv2d(x, w, b, ops::Conv2dParams::same(1)).data());
  ops::detail::use_direct_conv3x3() = true;
  set_flops(st, 2.0 * 8 * c * c * 9 * hw * hw);
}
BENCHMARK(BM_Conv3x3Small)->ArgsProduct({{16}, {128}, {0, 1}})->ArgsProduct({{64}, {32}, {0, 1}})->ArgsProduct({{320}, {32}, {0, 1}})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Attention(benchmark::State& st) {
  // SD1.5's first level: 320 channels as 8 heads of 40, self-attention over L = H*W tokens.
  const int64_t L = st.range(0), heads = 8, d = 40;
  Rng rng(3);
  auto q = rng.normal({1, L, heads * d}), k = rng.normal({1, L, heads * d}), v = rng.normal({1, L, heads * d});
  for (auto _ : st) benchmark::DoNotOptimize(ops::attention(q, k, v, {heads}).data());
  set_flops(st, 4.0 * heads * L * L * d);  // q k^T and p v
}
BENCHMARK(BM_Attention)->Arg(1024)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_GroupNormSiLU(benchmark::State& st) {
  const int64_t hw = st.range(0), c = 320;
  Rng rng(4);
  auto x = rng.normal({1, c, hw, hw}), g = rng.normal({c}), b = rng.normal({c});
  for (auto _ : st)
    benchmark::DoNotOptimize(ops::group_norm(x, 32, g, b, 1e-5, ops::Activation::SiLU).data());
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations()) * x.numel() * 8);  // one read + one write
  set_flops(st, 8.0 * x.numel());
}
BENCHMARK(BM_GroupNormSiLU)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
}  // namespace

BENCHMARK_MAIN();
