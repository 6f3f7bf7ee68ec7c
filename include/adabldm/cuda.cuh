#pragma once
// adabldm's CUDA backend in one include: the core (Tensor<T, Cuda>, allocator, streams, copies) and every CUDA op,
// with autograd on device tensors. Compiled only by nvcc; link the CMake target adabldm::cuda. See docs/cuda.md.
#include "adabldm/core/cuda/cuda.cuh"
#include "adabldm/ops/cuda/ops.cuh"
