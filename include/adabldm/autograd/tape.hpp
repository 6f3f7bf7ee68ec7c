#pragma once
// The tape and the recording scopes live in core (core/autograd_tape.hpp): every op records its backward, and the
// ops are below autograd (docs/architecture.md, "Layers"). This header keeps the old include path working.
#include "adabldm/core/autograd_tape.hpp"
