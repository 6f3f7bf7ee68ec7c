// adabldm generate / sample / train / evaluate with --device cuda: the same commands (generate_run.hpp,
// sample_run.hpp, train_run.hpp, evaluate_run.hpp) with the networks on the GPU. Compiled by nvcc and linked only
// when the CUDA backend is built.
#include <adabldm/cuda.cuh>  // first: the CUDA ops must be declared before the model headers

#include <cstdio>

#include "evaluate_run.hpp"
#include "generate_run.hpp"
#include "sample_run.hpp"
#include "train_run.hpp"

namespace cli {

namespace {
void start_cuda(const DeviceChoice& d, bool quiet) {
  adabldm::check(adabldm::cuda_available(),
                 "--device cuda: no CUDA device is visible (cudaGetDeviceCount reports none, or no driver)");
  adabldm::cuda::set_allow_tf32(d.tf32);
  adabldm::cuda::set_conv_benchmark(true);  // measure cuDNN's algorithms once per shape: many samples follow
  const auto& p = adabldm::cuda::device_properties();
  if (!quiet)
    std::fprintf(stderr, "cuda: %s (sm_%d%d), networks in %s%s\n", p.name, p.major, p.minor, d.dtype.c_str(),
                 d.tf32 ? ", TF32 allowed" : "");
}
}  // namespace

int generate_cuda(const Args& args, const DeviceChoice& d) {
  start_cuda(d, args.flag("quiet"));
  if (d.dtype == "f16") return generate_on<adabldm::half, adabldm::Cuda>(args);
  return generate_on<float, adabldm::Cuda>(args);
}

int sample_cuda(const Args& args, const DeviceChoice& d) {
  start_cuda(d, args.flag("quiet"));
  if (d.dtype == "f16") return sample_on<adabldm::half, adabldm::Cuda>(args);
  return sample_on<float, adabldm::Cuda>(args);
}

int train_cuda(const Args& args, const DeviceChoice& d) {
  start_cuda(d, args.flag("quiet"));
  return train_on<adabldm::Cuda>(args);
}

int evaluate_cuda(const Args& args, const DeviceChoice& d) {
  start_cuda(d, args.flag("quiet"));
  return evaluate_on<adabldm::Cuda>(args);
}

}  // namespace cli
