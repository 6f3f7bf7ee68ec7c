// Weight-loading throughput: writes a random SD1.5-UNet-sized float16 single file (1.72 GB, original LDM names)
// once, then measures open + parse + load into UNet2DConditionModel<float> (f16 -> f32 conversion), and the
// same for a float32 copy (zero-copy: the tensors alias the mapping). Reports GB/s of file bytes. BM_CheckFinite_*:
// the scan for NaN and Inf that loaders run on every file (io::non_finite_tensors; docs/reliability.md), over the
// same files in the page cache, and over $ADABLDM_BENCH_CHECKPOINT (any checkpoint) when set.
//   bench_load [--benchmark_filter=...]   (the files go to $ADABLDM_BENCH_DIR or /tmp)
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>

#include "adabldm/io/checkpoint.hpp"
#include "adabldm/io/safetensors.hpp"
#include "adabldm/models/ldm_unet_keys.hpp"
#include "adabldm/models/unet.hpp"

using namespace adabldm;

namespace {
std::string bench_file(const char* dtype) {
  const char* dir = std::getenv("ADABLDM_BENCH_DIR");
  return (std::filesystem::path(dir ? dir : "/tmp") / (std::string("adabldm_bench_sd15_unet_") + dtype + ".safetensors")).string();
}

/// SD1.5's UNet with every parameter random, written under original names (model.diffusion_model.*).
template <class S>
const std::string& make_file(const char* dtype) {
  static const std::string path = [&] {
    const std::string p = bench_file(dtype);
    if (std::filesystem::exists(p)) return p;
    const models::UNetConfig sd15;
    models::UNet2DConditionModel<float> unet(sd15);
    io::SafeTensorsWriter w;
    Rng rng(1);
    unet.visit("", [&](const std::string& name, auto& param) {
      auto t = rng.uniform<float>(param.shape, -0.05, 0.05);
      w.add("model.diffusion_model." + io::ldm_unet_name(name, unet.config), t.template to<S>());
    });
    w.write(p);
    return p;
  }();
  return path;
}

template <class S>
void BM_LoadUNet(benchmark::State& st, const char* dtype) {
  const std::string& path = make_file<S>(dtype);
  const double bytes = static_cast<double>(std::filesystem::file_size(path));
  for (auto _ : st) {
    const auto file = io::SafeTensors::open(path).state_dict();
    const models::UNetConfig sd15;
    models::UNet2DConditionModel<float> unet(sd15);
    nn::load_state_dict(unet, io::unet_from_ldm(file.with_prefix("model.diffusion_model."), unet));
    // touch every parameter so lazily mapped pages are really read
    double sum = 0;
    unet.visit("", [&](const std::string&, auto& p) {
      const float* d = p.value.data();
      for (int64_t i = 0; i < p.value.numel(); i += 1024) sum += d[i];
    });
    benchmark::DoNotOptimize(sum);
  }
  st.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["GB"] = bytes * 1e-9;
}
void BM_LoadUNet_f16_to_f32(benchmark::State& st) { BM_LoadUNet<half>(st, "f16"); }
void BM_LoadUNet_f32_zero_copy(benchmark::State& st) { BM_LoadUNet<float>(st, "f32"); }
BENCHMARK(BM_LoadUNet_f16_to_f32)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(BM_LoadUNet_f32_zero_copy)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

/// The non-finite scan of a whole file already opened (the pages faulted in by one scan before timing).
void check_finite_of(benchmark::State& st, const std::string& path) {
  const auto file = io::load_checkpoint(path);
  const double bytes = static_cast<double>(std::filesystem::file_size(path));
  benchmark::DoNotOptimize(io::non_finite_tensors(file));
  for (auto _ : st) benchmark::DoNotOptimize(io::non_finite_tensors(file));
  st.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["GB"] = bytes * 1e-9;
}
void BM_CheckFinite_f16(benchmark::State& st) { check_finite_of(st, make_file<half>("f16")); }
void BM_CheckFinite_f32(benchmark::State& st) { check_finite_of(st, make_file<float>("f32")); }
void BM_CheckFinite_given_file(benchmark::State& st) {
  const char* path = std::getenv("ADABLDM_BENCH_CHECKPOINT");
  if (!path || !*path) {
    st.SkipWithError("set ADABLDM_BENCH_CHECKPOINT to a checkpoint file");
    return;
  }
  check_finite_of(st, path);
}
BENCHMARK(BM_CheckFinite_f16)->Unit(benchmark::kMillisecond)->UseRealTime()->Repetitions(5);
BENCHMARK(BM_CheckFinite_f32)->Unit(benchmark::kMillisecond)->UseRealTime()->Repetitions(5);
BENCHMARK(BM_CheckFinite_given_file)->Unit(benchmark::kMillisecond)->UseRealTime()->Repetitions(5);
}  // namespace

BENCHMARK_MAIN();
