#pragma once
// adabldm — industrial defect generation with blended latent diffusion (AdaBLDM), header-only.
#include "adabldm/version.hpp"
#include "adabldm/core/dtype.hpp"
#include "adabldm/core/error.hpp"
#include "adabldm/core/rng.hpp"
#include "adabldm/core/shape.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"
#include "adabldm/ops/ops.hpp"
#include "adabldm/io/image.hpp"
#include "adabldm/io/safetensors.hpp"
