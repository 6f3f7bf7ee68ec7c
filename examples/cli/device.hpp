#pragma once
// --device cpu|cuda, --dtype, --tf32 and --cpu-matmul for the commands that run networks (generate, train, sample,
// evaluate). The CUDA variants live in cuda_commands.cu, compiled by nvcc and linked only when the CUDA backend is
// built (ADABLDM_CLI_CUDA).
#include <algorithm>
#include <string>
#include <vector>

#include <adabldm/core/error.hpp>
#include <adabldm/ops/gemm_bf16.hpp>

#include "args.hpp"

namespace cli {

struct DeviceChoice {
  bool cuda = false;
  std::string dtype = "f32";  ///< the networks' storage type on the device
  bool tf32 = false;
  std::string cpu_matmul = "f32";  ///< f32, or bf16: bfloat16 operands in the CPU's float products (ops/gemm_bf16.hpp)
};

/// cuda_dtypes: what the command supports on CUDA, its default first. The CPU runs in f32 only.
inline DeviceChoice parse_device(const Args& args, const std::vector<std::string>& cuda_dtypes) {
  using adabldm::check;
  DeviceChoice d;
  const std::string device = args.get("device", "cpu");
  check(device == "cpu" || device == "cuda", "--device ", device, ": expected cpu or cuda");
  d.cuda = device == "cuda";
  d.tf32 = args.flag("tf32");
  // The flag, else the environment's default (ADABLDM_CPU_MATMUL=bf16); either way the setting the run uses.
  namespace ops = adabldm::ops;
  const bool env_bf16 = ops::cpu_matmul_precision() == ops::MatmulPrecision::bf16;
  d.cpu_matmul = args.get("cpu-matmul", env_bf16 ? "bf16" : "f32");
  check(d.cpu_matmul == "f32" || d.cpu_matmul == "bf16", "--cpu-matmul ", d.cpu_matmul, ": expected f32 or bf16");
  if (d.cuda) {
    check(!args.has("cpu-matmul") || d.cpu_matmul == "f32",
          "--cpu-matmul applies to --device cpu only (on cuda see --tf32 and --dtype)");
    d.cpu_matmul = "f32";
  }
  check(d.cpu_matmul == "f32" || ops::detail::bf16_kernel() != ops::detail::Bf16Kernel::none,
        args.has("cpu-matmul") ? "--cpu-matmul bf16" : "ADABLDM_CPU_MATMUL=bf16",
        ": this CPU has neither AMX nor AVX512-BF16 (or adabldm was built without AVX-512)");
  ops::set_cpu_matmul_precision(d.cpu_matmul == "bf16" ? ops::MatmulPrecision::bf16 : ops::MatmulPrecision::f32);
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
int evaluate_cuda(const Args& args, const DeviceChoice& device);  // cuda_commands.cu
#else
[[noreturn]] inline void no_cuda_backend() {
  throw adabldm::Error(
      "--device cuda: this adabldm was built without the CUDA backend (CMake found no nvcc with cuBLAS and cuDNN, "
      "or ADABLDM_CUDA=OFF); rebuild with the CUDA toolkit installed");
}
inline int generate_cuda(const Args&, const DeviceChoice&) { no_cuda_backend(); }
inline int train_cuda(const Args&, const DeviceChoice&) { no_cuda_backend(); }
inline int sample_cuda(const Args&, const DeviceChoice&) { no_cuda_backend(); }
inline int evaluate_cuda(const Args&, const DeviceChoice&) { no_cuda_backend(); }
#endif

}  // namespace cli
