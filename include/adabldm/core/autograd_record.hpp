#pragma once
// The typed half of autograd that every op uses: gradients held in a tensor's Meta, GradSlot (where an op's
// backward sends one input's gradient) and record(), which puts a differentiable op on the active tape; plus the
// backward of Tensor's member views, which Tensor reaches through the recorder that make_meta puts in every Meta
// (core/tensor.hpp itself includes only core/autograd_meta.hpp). Every op header includes this file.
#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "adabldm/core/autograd_tape.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"

namespace adabldm::autograd {

namespace detail {
template <class T, class Dev>
Tensor<T, Dev>& stored_grad(const Meta& m) {
  check(m.grad_type && *m.grad_type == typeid(Tensor<T, Dev>), "autograd: gradient stored as ",
        m.grad_type ? m.grad_type->name() : "nothing", ", read as ", typeid(Tensor<T, Dev>).name());
  return *static_cast<Tensor<T, Dev>*>(m.grad.get());
}

/// dst[i] (a strided host view) = src[i] (contiguous, same shape).
template <class T>
void copy_into(Tensor<T, Cpu> dst, const Tensor<T, Cpu>& src) {
  const int r = dst.rank();
  const int64_t n = dst.numel();
  if (n == 0) return;
  std::vector<int64_t> idx(static_cast<std::size_t>(r), 0);
  const int64_t inner = r ? dst.shape()[r - 1] : 1, inner_stride = r ? dst.strides()[r - 1] : 1;
  const T* in = src.data();
  for (int64_t done = 0; done < n; done += inner) {
    T* out = dst.data();
    for (int d = 0; d < r - 1; ++d) out += idx[static_cast<std::size_t>(d)] * dst.strides()[d];
    for (int64_t i = 0; i < inner; ++i) out[i * inner_stride] = *in++;
    for (int d = r - 2; d >= 0; --d) {
      if (++idx[static_cast<std::size_t>(d)] < dst.shape()[d]) break;
      idx[static_cast<std::size_t>(d)] = 0;
    }
  }
}
}  // namespace detail

/// The gradient accumulated in `m` (undefined when none has reached it).
template <class T, class Dev>
Tensor<T, Dev> grad_of(const Meta& m) {
  if (!m.grad) return {};
  return detail::stored_grad<T, Dev>(m);
}

/// Adds g (contiguous, the tensor's shape) to the gradient in `m`. The first gradient is adopted without a copy
/// (it may alias another buffer, so it is marked shared); the second one allocates the sum; later ones add in
/// place.
/// Device tensors (Dev other than Cpu) are summed by the device's backend, found by argument-dependent lookup:
/// autograd_add(a, b) -> a + b and autograd_add_inplace(a, b) (CUDA: adabldm/core/cuda/tensor.cuh).
template <class T, class Dev>
void accumulate_grad(Meta& m, Tensor<T, Dev> g) {
  if (!m.grad) {
    m.grad = std::make_shared<Tensor<T, Dev>>(g.detach());
    m.grad_type = &typeid(Tensor<T, Dev>);
    m.grad_shared = true;
    return;
  }
  auto& cur = detail::stored_grad<T, Dev>(m);
  check<ShapeError>(cur.shape() == g.shape(), "autograd: gradient of shape ", g.shape().str(),
                    " added to one of shape ", cur.shape().str());
  if constexpr (!std::is_same_v<Dev, Cpu>) {
    if (m.grad_shared) {
      cur = autograd_add(cur, g);
      m.grad_shared = false;
    } else {
      autograd_add_inplace(cur, g);
    }
  } else {
    const T* gp = g.data();
    const int64_t n = g.numel();
    if (m.grad_shared) {
      auto sum = Tensor<T, Dev>::empty(cur.shape());
      const T* cp = cur.data();
      T* sp = sum.data();
      parallel_for(n, [&](int64_t i) { sp[i] = cp[i] + gp[i]; }, 1 << 14);
      cur = sum;
      m.grad_shared = false;
    } else {
      T* cp = cur.data();
      parallel_for(n, [&](int64_t i) { cp[i] += gp[i]; }, 1 << 14);
    }
  }
}

/// Where an op's backward sends the gradient of one input: the input's Meta and shape (not its data, which the
/// record need not keep alive). Empty (false) when the input does not require a gradient: then its gradient is
/// never computed.
template <class T, class Dev = Cpu>
class GradSlot {
 public:
  GradSlot() = default;
  explicit GradSlot(const Tensor<T, Dev>& t) : meta_(t.autograd_meta()), shape_(t.shape()) {}
  explicit operator bool() const noexcept { return meta_ != nullptr; }
  const Shape& shape() const noexcept { return shape_; }
  /// Adds g (any layout, this input's shape) to the input's gradient.
  void add(const Tensor<T, Dev>& g) const {
    check<ShapeError>(g.shape() == shape_, "autograd: gradient of shape ", g.shape().str(), " for an input of shape ",
                      shape_.str());
    accumulate_grad(*meta_, g.is_contiguous() ? g : g.clone());
  }

 private:
  std::shared_ptr<Meta> meta_;
  Shape shape_;
};

template <class T, class Dev>
GradSlot<T, Dev> slot(const Tensor<T, Dev>& t) {
  return GradSlot<T, Dev>(t);
}

/// Whether an op must be recorded: one of its inputs requires a gradient and a tape is active.
template <class... Ts>
bool should_record(const Ts&... inputs) noexcept {
  return (inputs.requires_grad() || ...) && recording();
}
template <class T, class Dev>
bool should_record(const std::vector<Tensor<T, Dev>>& inputs) noexcept {
  return recording() &&
         std::any_of(inputs.begin(), inputs.end(), [](const Tensor<T, Dev>& t) { return t.requires_grad(); });
}

namespace detail {
template <class T, class Dev>
void record_view(const Tensor<T, Dev>& in, Tensor<T, Dev>& out, const ViewSpec& spec);
/// Meta::record_view for a Tensor<T, Dev>.
template <class T, class Dev>
void record_view_of(const void* in, void* out, const ViewSpec& spec) {
  record_view(*static_cast<const Tensor<T, Dev>*>(in), *static_cast<Tensor<T, Dev>*>(out), spec);
}
/// Fresh Meta for a Tensor<T, Dev>: every Meta is made here, so that its tensor's views are recorded.
template <class T, class Dev>
std::shared_ptr<Meta> make_meta() {
  auto meta = std::make_shared<Meta>();
  meta->tensor_type = &typeid(Tensor<T, Dev>);
  meta->record_view = &record_view_of<T, Dev>;
  return meta;
}
}  // namespace detail

/// Gives `out` fresh Meta and puts the op on the active tape. `backward(grad_out)` runs during
/// autograd::backward with the gradient of `out` (contiguous, out's shape), must not modify it, and adds the
/// inputs' gradients to their GradSlots. What the closure captures is what the record saves.
template <class T, class Dev, class F>
void record(const char* op, Tensor<T, Dev>& out, F&& backward) {
  Tape* tape = active_tape();
  check(tape != nullptr, "autograd: record(", op, ") without an active tape");
  auto meta = detail::make_meta<T, Dev>();
  out.set_autograd_meta(meta);
  Record r;
  r.op = op;
  r.outputs.push_back(meta);
  r.backward = [m = meta.get(), f = std::forward<F>(backward)]() mutable { f(grad_of<T, Dev>(*m)); };
  tape->push(std::move(r));
}

namespace detail {
/// Views of device tensors: the same records; a narrow's backward (zero tensor with the gradient copied into the
/// narrowed range) is the backend's autograd_unnarrow(g, full_shape, dim, start), found by argument-dependent
/// lookup (CUDA: adabldm/core/cuda/tensor.cuh).
template <class T, class Dev>
void record_view(const Tensor<T, Dev>& in, Tensor<T, Dev>& out, const ViewSpec& spec) {
  if constexpr (!std::is_floating_point_v<T>) {
    (void)in, (void)out, (void)spec;
    throw Error(std::string("autograd: only float and double tensors are differentiable, not ") + typeid(T).name());
  } else {
    const GradSlot<T, Dev> s(in);
    switch (spec.kind) {
      case ViewSpec::Reshape:
        record("reshape", out, [s](const Tensor<T, Dev>& g) { s.add(g.reshape(s.shape())); });
        break;
      case ViewSpec::Permute: {
        std::vector<int> inverse(static_cast<std::size_t>(in.rank()));
        for (int i = 0; i < in.rank(); ++i) inverse[static_cast<std::size_t>(spec.order[static_cast<std::size_t>(i)])] = i;
        record("permute", out, [s, inverse](const Tensor<T, Dev>& g) { s.add(g.permute(inverse).contiguous()); });
        break;
      }
      case ViewSpec::Narrow:
        record("narrow", out, [s, d = spec.dim, start = spec.start](const Tensor<T, Dev>& g) {
          if constexpr (std::is_same_v<Dev, Cpu>) {
            auto full = Tensor<T, Dev>::zeros(s.shape());
            copy_into(full.narrow(d, start, g.shape()[d]), g);
            s.add(full);
          } else {
            s.add(autograd_unnarrow(g, s.shape(), d, start));
          }
        });
        break;
      case ViewSpec::Copy:
        record("clone", out, [s](const Tensor<T, Dev>& g) { s.add(g); });
        break;
    }
  }
}
}  // namespace detail

}  // namespace adabldm::autograd
