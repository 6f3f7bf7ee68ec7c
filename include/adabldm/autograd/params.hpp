#pragma once
// Module-level autograd: which parameters train (nn::Param::trainable), attaching leaf Meta to them (track),
// reading and clearing their gradients. A frozen parameter carries no Meta, so it costs no gradient memory and
// the ops skip its gradient (conv2d computes no dW for a frozen weight).
#include <string>

#include "adabldm/autograd/backward.hpp"
#include "adabldm/nn/module.hpp"

namespace adabldm::autograd {

/// Makes every trainable, loaded parameter of `module` a leaf that requires a gradient and removes the Meta
/// (and gradient) of every frozen one. Call it again after changing `trainable` flags.
template <class M>
void track(M& module) {
  module.visit("", [](const std::string&, auto& p) {
    if (!p.loaded()) return;
    if (p.trainable) {
      if (!p.value.requires_grad()) p.value = leaf(p.value);
    } else {
      p.value = p.value.detach();
    }
  });
}

/// Removes the Meta of every parameter (inference only again); the gradients go with it.
template <class M>
void untrack(M& module) {
  module.visit("", [](const std::string&, auto& p) { p.value = p.value.detach(); });
}

/// Sets `trainable` on every parameter whose name starts with `prefix` (all: ""), then re-tracks the module.
template <class M>
void set_trainable(M& module, bool trainable, const std::string& prefix = "") {
  module.visit("", [&](const std::string& name, auto& p) {
    if (name.compare(0, prefix.size(), prefix) == 0) p.trainable = trainable;
  });
  track(module);
}
template <class M>
void freeze(M& module, const std::string& prefix = "") { set_trainable(module, false, prefix); }
template <class M>
void unfreeze(M& module, const std::string& prefix = "") { set_trainable(module, true, prefix); }

/// The gradient of a parameter (undefined if it is frozen or none has reached it).
template <class T, class Dev>
Tensor<T, Dev> grad(const nn::Param<T, Dev>& p) {
  return grad(p.value);
}

/// Adds g to the gradient of a tracked parameter, as a backward through it would (e.g. the gradient of a
/// lower-precision compute copy handed to the master weights).
template <class T, class Dev>
void add_grad(nn::Param<T, Dev>& p, const Tensor<T, Dev>& g) {
  check(p.value.requires_grad(), "add_grad: the parameter is not tracked (autograd::track)");
  check<ShapeError>(g.shape() == p.shape, "add_grad: gradient ", g.shape().str(), " for a parameter ", p.shape.str());
  accumulate_grad(*p.value.autograd_meta(), g.detach().contiguous());
}

/// Drops every parameter gradient (PyTorch's zero_grad(set_to_none=True)): the next backward starts afresh.
template <class M>
void zero_grad(M& module) {
  module.visit("", [](const std::string&, auto& p) {
    if (p.value.requires_grad()) {
      p.value.autograd_meta()->grad.reset();
      p.value.autograd_meta()->grad_type = nullptr;
    }
  });
}

/// Number of trainable parameter elements (what an optimiser keeps two moments for).
template <class M>
int64_t trainable_parameter_count(M& module) {
  int64_t n = 0;
  module.visit("", [&](const std::string&, auto& p) {
    if (p.trainable) n += p.shape.numel();
  });
  return n;
}

}  // namespace adabldm::autograd
