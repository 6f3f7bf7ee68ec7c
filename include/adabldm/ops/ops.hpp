#pragma once
// All CPU ops.
#include "adabldm/ops/activation.hpp"
#include "adabldm/ops/attention.hpp"
#include "adabldm/ops/conv.hpp"
#include "adabldm/ops/elementwise.hpp"
#include "adabldm/ops/embedding.hpp"
#include "adabldm/ops/matmul.hpp"
#include "adabldm/ops/norm.hpp"
#include "adabldm/ops/softmax.hpp"
