#pragma once
// What a tensor carries when it takes part in reverse-mode differentiation (see docs/autograd.md), and the
// thread's active tape. Small on purpose: core/tensor.hpp holds a pointer to Meta, so nothing here may need
// Tensor to be complete. The typed half (gradient access, recording ops) is core/autograd_record.hpp.
#include <array>
#include <cstdint>
#include <memory>
#include <typeinfo>

namespace adabldm {

template <class T, class Dev>
class Tensor;

namespace autograd {

/// Attached to a tensor that requires a gradient: a tracked parameter or input (a leaf) or the output of a
/// recorded op. Ordinary tensors carry none, so inference pays nothing. Copies of a Tensor handle share it.
struct Meta {
  std::shared_ptr<void> grad;                 ///< the accumulated gradient, a Tensor<T, Dev> (typed access: autograd_record.hpp)
  const std::type_info* grad_type = nullptr;  ///< typeid of that Tensor, checked on every typed access
  bool grad_shared = false;                   ///< grad's buffer may alias another one: copy before adding in place
  bool keep_grad = false;                     ///< leaves (and retain_grad) keep their gradient after backward
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

/// How a member view (Tensor::reshape, permute, narrow, clone) was made, so that its backward can undo it.
struct ViewSpec {
  enum Kind : uint8_t { Reshape, Permute, Narrow, Copy };
  Kind kind = Copy;
  int dim = 0;                 ///< Narrow: the dimension
  int64_t start = 0;           ///< Narrow: the first index
  std::array<int, 8> order{};  ///< Permute: out.dim(i) = in.dim(order[i])
};

namespace detail {
/// Records `out`, a view of or copy of `in` (which requires a gradient), on the active tape. Defined in
/// core/autograd_record.hpp, which core/tensor.hpp includes at its end.
template <class T, class Dev>
void record_view(const Tensor<T, Dev>& in, Tensor<T, Dev>& out, const ViewSpec& spec);
}  // namespace detail

}  // namespace autograd
}  // namespace adabldm
