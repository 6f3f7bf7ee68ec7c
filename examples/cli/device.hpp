#pragma once
// --device cpu|cuda, --dtype and --tf32 for the commands that run networks (generate, train, sample). The CUDA variants
// live in cuda_commands.cu, compiled by nvcc and linked only when the CUDA backend is built (ADABLDM_CLI_CUDA).
#include <algorithm>
#include <string>
#include <vector>

#include <adabldm/core/error.hpp>

#include "args.hpp"

namespace cli {

struct DeviceChoice {
  bool cuda = false;
  std::string dtype = "f32";  ///< the networks' storage type on the device
  bool tf32 = false;
};

/// cuda_dtypes: what the command supports on CUDA, its default first. The CPU runs in f32 only.
inline DeviceChoice parse_device(const Args& args, const std::vector<std::string>& cuda_dtypes) {
  using adabldm::check;
  DeviceChoice d;
  const std::string device = args.get("device", "cpu");
  check(device == "cpu" || device == "cuda", "--device ", device, ": expected cpu or cuda");
  d.cuda = device == "cuda";
  d.tf32 = args.flag("tf32");
  if (!d.cuda) {
    d.dtype = args.get("dtype", "f32");
    check(d.dtype == "f32", "--dtype ", d.dtype, ": the CPU runs in f32 (other types need --device cuda)");
    check(!d.tf32, "--tf32 applies to --device cuda only");
    return d;
  }
  d.dtype = args.get("dtype", cuda_dtypes.front());
  std::string allowed;
  for (const auto& t : cuda_dtypes) allowed += (allowed.empty() ? "" : ", ") + t;
  check(std::find(cuda_dtypes.begin(), cuda_dtypes.end(), d.dtype) != cuda_dtypes.end(), "--dtype ", d.dtype,
        ": expected one of ", allowed);
  return d;
}

#if defined(ADABLDM_CLI_CUDA)
int generate_cuda(const Args& args, const DeviceChoice& device);  // cuda_commands.cu
int train_cuda(const Args& args, const DeviceChoice& device);     // cuda_commands.cu
int sample_cuda(const Args& args, const DeviceChoice& device);    // cuda_commands.cu
#else
[[noreturn]] inline void no_cuda_backend() {
  throw adabldm::Error(
      "--device cuda: this adabldm was built without the CUDA backend (CMake found no nvcc with cuBLAS and cuDNN, "
      "or ADABLDM_CUDA=OFF); rebuild with the CUDA toolkit installed");
}
inline int generate_cuda(const Args&, const DeviceChoice&) { no_cuda_backend(); }
inline int train_cuda(const Args&, const DeviceChoice&) { no_cuda_backend(); }
inline int sample_cuda(const Args&, const DeviceChoice&) { no_cuda_backend(); }
#endif

}  // namespace cli
