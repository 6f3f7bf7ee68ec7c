// The CUDA backend through the package (adabldm::cuda): a conv2d on the GPU equals the CPU's, or, without a
// device, a line saying so (the build proves the headers and libraries are usable).
#include <adabldm/cuda.cuh>  // first: the CUDA ops before any nn / model header
#include <adabldm/adabldm.hpp>

#include <cmath>
#include <cstdio>

namespace ab = adabldm;

int main() {
  if (!ab::cuda_available()) {
    std::printf("consumer_cuda: built with adabldm::cuda; no CUDA device here, nothing to run\n");
    return 0;
  }
  ab::Rng rng(1);
  const auto x = rng.normal({1, 3, 8, 8}), w = rng.normal({4, 3, 3, 3});
  const auto p = ab::ops::Conv2dParams::same(1);
  const auto cpu = ab::ops::conv2d(x, w, {}, p);
  const auto gpu = ab::cuda::to_host(ab::ops::conv2d(ab::cuda::to_device(x), ab::cuda::to_device(w), {}, p));
  double err = 0;
  for (int64_t i = 0; i < cpu.numel(); ++i) err = std::fmax(err, std::fabs(cpu.data()[i] - gpu.data()[i]));
  std::printf("consumer_cuda: conv2d on %s, max |gpu - cpu| %.2e\n", ab::cuda::device_properties().name, err);
  return err < 1e-4 ? 0 : 1;
}
