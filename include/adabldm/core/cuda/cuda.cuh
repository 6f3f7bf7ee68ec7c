#pragma once
// The CUDA core: errors, devices, streams and library handles, the caching allocator, Tensor<T, Cuda> with host
// copies and conversions. Compiled only by nvcc (see docs/cuda.md).
#include "adabldm/core/cuda/allocator.cuh"
#include "adabldm/core/cuda/device.cuh"
#include "adabldm/core/cuda/error.cuh"
#include "adabldm/core/cuda/kernel_utils.cuh"
#include "adabldm/core/cuda/tensor.cuh"
