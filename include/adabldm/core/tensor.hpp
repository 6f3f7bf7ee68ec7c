#pragma once
// Tensor<T, Dev>: a reference-counted N-d array. Copies share the buffer (like torch.Tensor); views (reshape,
// slice, narrow, permute) share it too. Ops expect contiguous row-major inputs; `contiguous()` makes one.
// A tensor that requires a gradient carries autograd::Meta (docs/autograd.md); its views and copies are recorded
// on the active tape like any op, so model code is the same for inference and training.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "adabldm/core/autograd_meta.hpp"
#include "adabldm/core/device.hpp"
#include "adabldm/core/dtype.hpp"
#include "adabldm/core/error.hpp"
#include "adabldm/core/shape.hpp"

namespace adabldm {

template <class T, class Dev = Cpu>
class Tensor {
 public:
  using value_type = T;
  using device_type = Dev;

  Tensor() = default;

  /// Uninitialised tensor of the given shape.
  static Tensor empty(const Shape& shape) {
    Tensor t;
    // The device's allocator, found by argument-dependent lookup: allocate_bytes(Cpu, n) is in core/device.hpp,
    // allocate_bytes(Cuda, n) in core/cuda/allocator.cuh (so CPU-only code never sees a CUDA symbol).
    t.owner_ = allocate_bytes(Dev{}, static_cast<std::size_t>(shape.numel()) * sizeof(T));
    t.data_ = static_cast<T*>(t.owner_.get());
    t.shape_ = shape;
    t.strides_ = contiguous_strides(shape);
    return t;
  }
  /// A view of memory owned by `owner` (e.g. a memory-mapped file); no copy.
  static Tensor wrap(std::shared_ptr<void> owner, T* data, const Shape& shape) {
    Tensor t;
    t.owner_ = std::move(owner);
    t.data_ = data;
    t.shape_ = shape;
    t.strides_ = contiguous_strides(shape);
    return t;
  }

  // Host-side constructors (CPU tensors).
  static Tensor full(const Shape& shape, T value) {
    static_assert(std::is_same_v<Dev, Cpu>, "full() builds host tensors; copy to the device afterwards");
    Tensor t = empty(shape);
    std::fill(t.data_, t.data_ + t.numel(), value);
    return t;
  }
  static Tensor zeros(const Shape& shape) { return full(shape, T(0.0f)); }
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape) {
    check<ShapeError>(static_cast<int64_t>(values.size()) == shape.numel(), "from_vector: ", values.size(),
                      " values do not fill shape ", shape.str());
    Tensor t = empty(shape);
    std::copy(values.begin(), values.end(), t.data_);
    return t;
  }

  bool defined() const noexcept { return data_ != nullptr; }
  const Shape& shape() const noexcept { return shape_; }
  const Shape& strides() const noexcept { return strides_; }
  int rank() const noexcept { return shape_.rank(); }
  int64_t dim(int i) const { return shape_.dim(i); }
  int64_t numel() const noexcept { return shape_.numel(); }
  std::size_t nbytes() const noexcept { return static_cast<std::size_t>(numel()) * sizeof(T); }
  T* data() noexcept { return data_; }
  const T* data() const noexcept { return data_; }
  /// The buffer's owner (keeps a mapped file or device allocation alive).
  const std::shared_ptr<void>& owner() const noexcept { return owner_; }

  /// Whether this tensor takes part in differentiation (it carries autograd metadata).
  bool requires_grad() const noexcept { return meta_ != nullptr; }
  const std::shared_ptr<autograd::Meta>& autograd_meta() const noexcept { return meta_; }
  void set_autograd_meta(std::shared_ptr<autograd::Meta> meta) noexcept { meta_ = std::move(meta); }
  /// The same data as a constant (no autograd metadata).
  Tensor detach() const {
    Tensor t = *this;
    t.meta_.reset();
    return t;
  }

  bool is_contiguous() const noexcept { return strides_ == contiguous_strides(shape_); }

  /// Same data, new shape (one entry may be -1). Needs a contiguous tensor.
  Tensor reshape(std::initializer_list<int64_t> dims) const { return reshape(std::vector<int64_t>(dims)); }
  Tensor reshape(std::vector<int64_t> dims) const {
    check<ShapeError>(is_contiguous(), "reshape of a non-contiguous tensor; call contiguous() first");
    int64_t known = 1;
    int infer = -1;
    for (std::size_t i = 0; i < dims.size(); ++i) {
      if (dims[i] == -1) {
        check<ShapeError>(infer < 0, "reshape: more than one -1");
        infer = static_cast<int>(i);
      } else {
        known *= dims[i];
      }
    }
    if (infer >= 0) {
      check<ShapeError>(known > 0 && numel() % known == 0, "reshape: cannot infer -1 for ", shape_.str());
      dims[static_cast<std::size_t>(infer)] = numel() / known;
    }
    Shape s(dims);
    check<ShapeError>(s.numel() == numel(), "reshape: ", shape_.str(), " has ", numel(), " elements, ", s.str(),
                      " needs ", s.numel());
    Tensor t = *this;
    t.shape_ = s;
    t.strides_ = contiguous_strides(s);
    return view_of(std::move(t), {autograd::ViewSpec::Reshape});
  }
  Tensor reshape(const Shape& s) const { return reshape(s.vec()); }

  /// Rows [begin, end) of dimension 0 (a view).
  Tensor slice(int64_t begin, int64_t end) const { return narrow(0, begin, end - begin); }
  /// `length` entries of dimension `d` starting at `start` (a strided view).
  Tensor narrow(int d, int64_t start, int64_t length) const {
    const int k = d < 0 ? d + rank() : d;
    check<ShapeError>(k >= 0 && k < rank(), "narrow: dimension ", d, " out of range for ", shape_.str());
    check<ShapeError>(start >= 0 && length >= 0 && start + length <= shape_[k], "narrow: [", start, ", ",
                      start + length, ") out of range for dimension ", d, " of ", shape_.str());
    Tensor t = *this;
    t.data_ = data_ + start * strides_[k];
    t.shape_[k] = length;
    autograd::ViewSpec spec{autograd::ViewSpec::Narrow};
    spec.dim = k;
    spec.start = start;
    return view_of(std::move(t), spec);
  }
  /// Reorders dimensions (a strided view): out.dim(i) = in.dim(order[i]).
  Tensor permute(std::initializer_list<int> order) const { return permute(std::vector<int>(order)); }
  Tensor permute(const std::vector<int>& order) const {
    check<ShapeError>(static_cast<int>(order.size()) == rank(), "permute: ", order.size(), " axes for ",
                      shape_.str());
    Tensor t = *this;
    autograd::ViewSpec spec{autograd::ViewSpec::Permute};
    int i = 0;
    std::vector<bool> seen(static_cast<std::size_t>(rank()), false);
    for (int a : order) {
      check<ShapeError>(a >= 0 && a < rank() && !seen[static_cast<std::size_t>(a)], "permute: bad axis list");
      seen[static_cast<std::size_t>(a)] = true;
      t.shape_[i] = shape_[a];
      t.strides_[i] = strides_[a];
      spec.order[static_cast<std::size_t>(i)] = a;
      ++i;
    }
    return view_of(std::move(t), spec);
  }

  /// This tensor if contiguous, else a contiguous copy.
  Tensor contiguous() const { return is_contiguous() ? *this : clone(); }
  /// A contiguous deep copy.
  Tensor clone() const {
    Tensor t = copy_to_contiguous(*this);
    if (meta_ && autograd::recording()) record_view(t, {autograd::ViewSpec::Copy});
    return t;
  }

  /// Host only: element access by index.
  T& at(std::initializer_list<int64_t> idx) const {
    static_assert(std::is_same_v<Dev, Cpu>, "at() reads host tensors");
    check<ShapeError>(static_cast<int>(idx.size()) == rank(), "at: ", idx.size(), " indices for ", shape_.str());
    int64_t off = 0;
    int i = 0;
    for (int64_t v : idx) {
      check<ShapeError>(v >= 0 && v < shape_[i], "at: index ", v, " out of range for dim ", i, " of ",
                        shape_.str());
      off += v * strides_[i++];
    }
    return data_[off];
  }
  /// Host only: the elements in row-major order.
  std::vector<T> to_vector() const {
    static_assert(std::is_same_v<Dev, Cpu>, "to_vector() reads host tensors; copy to the host first");
    Tensor c = contiguous();
    return std::vector<T>(c.data_, c.data_ + c.numel());
  }
  /// Host only: element-type conversion (contiguous result; a plain copy when U == T).
  template <class U>
  Tensor<U, Dev> to() const {
    static_assert(std::is_same_v<Dev, Cpu>, "to<U>() converts host tensors");
    Tensor c = contiguous();
    auto out = Tensor<U, Dev>::empty(shape_);
    const int64_t n = numel();
    for (int64_t i = 0; i < n; ++i) out.data()[i] = convert_element<U>(c.data_[i]);
    return out;
  }

 private:
  /// A view `t` made from this tensor: a constant, unless this tensor requires a gradient and a tape is
  /// recording, in which case the view is recorded (its gradient flows back into this tensor).
  Tensor view_of(Tensor t, const autograd::ViewSpec& spec) const {
    if (meta_) {
      t.meta_.reset();
      if (autograd::recording()) record_view(t, spec);
    }
    return t;
  }
  /// Records `out`, a view or copy of this tensor (which carries Meta), through the recorder its Meta carries.
  void record_view(Tensor& out, const autograd::ViewSpec& spec) const {
    check(meta_->record_view != nullptr && meta_->tensor_type != nullptr && *meta_->tensor_type == typeid(Tensor),
          "autograd: a view of a tensor whose Meta was not made for a ", typeid(Tensor).name(),
          " (make tracked tensors with autograd::leaf)");
    meta_->record_view(this, &out, spec);
  }

  std::shared_ptr<void> owner_;
  T* data_ = nullptr;
  Shape shape_;
  Shape strides_;
  std::shared_ptr<autograd::Meta> meta_;  // null unless the tensor requires a gradient
};

/// Contiguous copy of a (possibly strided) host tensor.
template <class T>
Tensor<T, Cpu> copy_to_contiguous(const Tensor<T, Cpu>& src) {
  auto dst = Tensor<T, Cpu>::empty(src.shape());
  const int r = src.rank();
  const int64_t n = src.numel();
  if (n == 0) return dst;
  if (src.is_contiguous()) {
    std::memcpy(dst.data(), src.data(), dst.nbytes());
    return dst;
  }
  // Walk the output in order with an index counter; the innermost dimension is a strided run.
  std::vector<int64_t> idx(static_cast<std::size_t>(r), 0);
  const int64_t inner = r ? src.shape()[r - 1] : 1, inner_stride = r ? src.strides()[r - 1] : 1;
  T* out = dst.data();
  for (int64_t done = 0; done < n; done += inner) {
    const T* in = src.data();
    for (int d = 0; d < r - 1; ++d) in += idx[static_cast<std::size_t>(d)] * src.strides()[d];
    for (int64_t i = 0; i < inner; ++i) *out++ = in[i * inner_stride];
    for (int d = r - 2; d >= 0; --d) {
      if (++idx[static_cast<std::size_t>(d)] < src.shape()[d]) break;
      idx[static_cast<std::size_t>(d)] = 0;
    }
  }
  return dst;
}

/// Throws a ShapeError naming `what` unless t has exactly the expected shape.
template <class T, class Dev>
void expect_shape(const Tensor<T, Dev>& t, const Shape& expected, const char* what) {
  check<ShapeError>(t.shape() == expected, what, ": expected shape ", expected.str(), ", got ", t.shape().str());
}
/// Throws a ShapeError naming `what` unless t has the given rank.
template <class T, class Dev>
void expect_rank(const Tensor<T, Dev>& t, int rank, const char* what) {
  check<ShapeError>(t.rank() == rank, what, ": expected a ", rank, "-d tensor, got shape ", t.shape().str());
}

}  // namespace adabldm
