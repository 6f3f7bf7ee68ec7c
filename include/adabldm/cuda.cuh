#pragma once
// adabldm's CUDA backend in one include: the core (Tensor<T, Cuda>, allocator, streams, copies), every CUDA op,
// with autograd on device tensors, and the device losses and AdamW update. Compiled only by nvcc; link the CMake
// target adabldm::cuda. See docs/cuda.md.
#include "adabldm/core/cuda/cuda.cuh"
#include "adabldm/ops/cuda/ops.cuh"
#include "adabldm/autograd/cuda/loss.cuh"
#include "adabldm/autograd/cuda/optim.cuh"
