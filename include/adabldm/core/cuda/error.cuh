#pragma once
// Error checking for the CUDA runtime, cuBLAS(Lt) and cuDNN: every failing call throws adabldm::CudaError naming
// the call, where it was made and the library's own message. Compiled only by nvcc (see docs/cuda.md).
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <string>

#include "adabldm/core/error.hpp"

namespace adabldm {

/// A failure reported by the CUDA runtime or one of its libraries (cuBLAS, cuBLASLt, cuDNN).
class CudaError : public Error {
 public:
  using Error::Error;
};

namespace cuda::detail {

inline std::string where(const char* call, const char* file, int line) {
  return std::string(call) + " at " + file + ":" + std::to_string(line);
}

inline void check_runtime(cudaError_t e, const char* call, const char* file, int line) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();  // reset a non-sticky error so that the next check does not report it again
  throw CudaError("CUDA error: " + where(call, file, line) + ": " + cudaGetErrorName(e) + " (" +
                  cudaGetErrorString(e) + ")");
}

inline const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

inline void check_cublas(cublasStatus_t s, const char* call, const char* file, int line) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  throw CudaError("cuBLAS error: " + where(call, file, line) + ": " + cublas_status_name(s) + " (" +
                  std::to_string(static_cast<int>(s)) + ")");
}

inline void check_cudnn(cudnnStatus_t s, const char* call, const char* file, int line) {
  if (s == CUDNN_STATUS_SUCCESS) return;
  throw CudaError("cuDNN error: " + where(call, file, line) + ": " + cudnnGetErrorString(s) + " (" +
                  std::to_string(static_cast<int>(s)) + ")");
}

}  // namespace cuda::detail
}  // namespace adabldm

/// Throws adabldm::CudaError unless the CUDA runtime call succeeds.
#define ADABLDM_CUDA_CHECK(call) ::adabldm::cuda::detail::check_runtime((call), #call, __FILE__, __LINE__)
/// Throws adabldm::CudaError unless the cuBLAS / cuBLASLt call succeeds.
#define ADABLDM_CUBLAS_CHECK(call) ::adabldm::cuda::detail::check_cublas((call), #call, __FILE__, __LINE__)
/// Throws adabldm::CudaError unless the cuDNN call succeeds.
#define ADABLDM_CUDNN_CHECK(call) ::adabldm::cuda::detail::check_cudnn((call), #call, __FILE__, __LINE__)
/// Checks the launch of the kernel just issued (configuration errors; execution errors surface at the next sync).
#define ADABLDM_CUDA_CHECK_LAUNCH() ADABLDM_CUDA_CHECK(cudaGetLastError())
