#pragma once
// What a tensor carries when it takes part in reverse-mode differentiation (see docs/autograd.md), and the
// thread's active tape. Small on purpose: core/tensor.hpp holds a pointer to Meta and includes only this file,
// so nothing here may need Tensor to be complete. The typed half (gradient access, recording ops and views) is
// core/autograd_record.hpp; it reaches Tensor's member views through Meta::record_view.
#include <array>
#include <cstdint>
#include <memory>
#include <typeinfo>

namespace adabldm {

template <class T, class Dev>
class Tensor;

namespace autograd {

/// How a member view (Tensor::reshape, permute, narrow, clone) was made, so that its backward can undo it.
struct ViewSpec {
  enum Kind : uint8_t { Reshape, Permute, Narrow, Copy };
  Kind kind = Copy;
  int dim = 0;                 ///< Narrow: the dimension
  int64_t start = 0;           ///< Narrow: the first index
  std::array<int, 8> order{};  ///< Permute: out.dim(i) = in.dim(order[i])
};

/// Attached to a tensor that requires a gradient: a tracked parameter or input (a leaf) or the output of a
/// recorded op. Ordinary tensors carry none, so inference pays nothing. Copies of a Tensor handle share it.
/// Made only by the recording code (autograd::detail::make_meta in core/autograd_record.hpp), which fills in
/// the tensor type and the view recorder.
struct Meta {
  std::shared_ptr<void> grad;                 ///< the accumulated gradient, a Tensor<T, Dev> (typed access: autograd_record.hpp)
  const std::type_info* grad_type = nullptr;  ///< typeid of that Tensor, checked on every typed access
  bool grad_shared = false;                   ///< grad's buffer may alias another one: copy before adding in place
  bool keep_grad = false;                     ///< leaves (and retain_grad) keep their gradient after backward
  /// typeid of the Tensor<T, Dev> this Meta was made for (checked by Tensor before it calls record_view).
  const std::type_info* tensor_type = nullptr;
  /// Records `out`, a view or copy of the tensor `in` that carries this Meta, on the active tape; both point to
  /// a Tensor of type *tensor_type. Tensor's member views call it when a tape records, so that core/tensor.hpp
  /// needs no recording code.
  void (*record_view)(const void* in, void* out, const ViewSpec& spec) = nullptr;
};

class Tape;

namespace detail {
inline Tape*& active_tape_slot() noexcept {
  static thread_local Tape* tape = nullptr;
  return tape;
}
}  // namespace detail

/// The tape ops record on in this thread (set by autograd::TrainingScope), or null: then nothing is recorded.
inline Tape* active_tape() noexcept { return detail::active_tape_slot(); }
inline bool recording() noexcept { return active_tape() != nullptr; }

}  // namespace autograd
}  // namespace adabldm
