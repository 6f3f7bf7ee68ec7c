#pragma once
// Tensor-level autograd: make a leaf that requires a gradient, run the tape backwards from an output, read a
// gradient. See docs/autograd.md.
#include <memory>
#include <type_traits>

#include "adabldm/core/autograd_record.hpp"
#include "adabldm/core/autograd_tape.hpp"
#include "adabldm/core/tensor.hpp"

namespace adabldm::autograd {

/// The same data as a leaf that requires a gradient (fresh Meta that keeps its gradient after backward). Copies
/// of the returned handle share the Meta; copies made from `t` before the call do not.
template <class T, class Dev>
Tensor<T, Dev> leaf(const Tensor<T, Dev>& t) {
  check(t.defined(), "autograd::leaf: undefined tensor");
  auto out = t.detach();
  auto meta = detail::make_meta<T, Dev>();
  meta->keep_grad = true;
  out.set_autograd_meta(std::move(meta));
  return out;
}

/// The gradient accumulated for t (undefined when t requires none or none has reached it).
template <class T, class Dev>
Tensor<T, Dev> grad(const Tensor<T, Dev>& t) {
  return t.requires_grad() ? grad_of<T, Dev>(*t.autograd_meta()) : Tensor<T, Dev>{};
}

/// Keeps the gradient of a non-leaf tensor (an op's output) after backward, for inspection.
template <class T, class Dev>
void retain_grad(const Tensor<T, Dev>& t) {
  check(t.requires_grad(), "autograd::retain_grad: the tensor does not require a gradient");
  t.autograd_meta()->keep_grad = true;
}

/// Seeds output's gradient with grad_output (output's shape) and runs the active tape backwards: every leaf the
/// output depends on receives (adds) its gradient. Consumes the tape (records are freed as they run).
template <class T, class Dev>
void backward(const Tensor<T, Dev>& output, const Tensor<T, Dev>& grad_output) {
  Tape* tape = active_tape();
  check(tape != nullptr, "autograd::backward: no active tape (run the forward and backward inside a TrainingScope)");
  check(output.requires_grad(), "autograd::backward: the output does not depend on anything that requires a gradient "
        "(no trainable parameter or tracked input reached it, or it was computed outside a TrainingScope)");
  check<ShapeError>(grad_output.shape() == output.shape(), "autograd::backward: gradient of shape ",
                    grad_output.shape().str(), " for an output of shape ", output.shape().str());
  accumulate_grad(*output.autograd_meta(), grad_output.contiguous().detach());
  tape->run_backward();
}

/// backward from a scalar (one-element) loss: d loss / d loss = 1.
template <class T, class Dev>
void backward(const Tensor<T, Dev>& loss) {
  check<ShapeError>(loss.numel() == 1, "autograd::backward: the loss must have one element, got shape ",
                    loss.shape().str(), " (pass the output's gradient explicitly)");
  if constexpr (std::is_same_v<Dev, Cpu>) backward(loss, Tensor<T, Dev>::full(loss.shape(), T(1)));
  else backward(loss, autograd_ones_like(loss));  // the device backend's, by argument-dependent lookup
}

}  // namespace adabldm::autograd
