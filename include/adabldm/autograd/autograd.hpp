#pragma once
// Reverse-mode differentiation and training (docs/autograd.md): tape and scopes, leaves and backward, module
// parameters, gradient checkpointing, losses, AdamW, the differentiable copy to the host and the finite-difference
// checker.
#include "adabldm/autograd/backward.hpp"
#include "adabldm/autograd/checkpoint.hpp"
#include "adabldm/autograd/gradcheck.hpp"
#include "adabldm/autograd/loss.hpp"
#include "adabldm/autograd/optim.hpp"
#include "adabldm/autograd/params.hpp"
#include "adabldm/autograd/transfer.hpp"
#include "adabldm/core/autograd_record.hpp"
#include "adabldm/core/autograd_tape.hpp"
