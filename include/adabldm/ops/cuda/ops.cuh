#pragma once
// All CUDA ops (the twins of ops/ops.hpp for Tensor<T, Cuda>, T = float, half or bfloat16). Compiled only by nvcc.
// Include before the nn / model headers: their layers call ops:: by qualified name (see nn/layers.hpp).
#include "adabldm/ops/cuda/activation.cuh"
#include "adabldm/ops/cuda/attention.cuh"
#include "adabldm/ops/cuda/conv.cuh"
#include "adabldm/ops/cuda/elementwise.cuh"
#include "adabldm/ops/cuda/embedding.cuh"
#include "adabldm/ops/cuda/matmul.cuh"
#include "adabldm/ops/cuda/norm.cuh"
#include "adabldm/ops/cuda/softmax.cuh"

#define ADABLDM_CUDA_OPS_INCLUDED 1
