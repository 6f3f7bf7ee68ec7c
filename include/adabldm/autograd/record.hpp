#pragma once
// Recording an op on the tape lives in core (core/autograd_record.hpp): every op records its backward, and the
// ops are below autograd (docs/architecture.md, "Layers"). This header keeps the old include path working.
#include "adabldm/core/autograd_record.hpp"
