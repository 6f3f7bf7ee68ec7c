#pragma once
// Shape: up to 8 dimensions stored inline (no heap), with the helpers every op needs.
#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "adabldm/core/error.hpp"

namespace adabldm {

class Shape {
 public:
  static constexpr int kMaxRank = 8;

  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) { assign(dims.begin(), dims.end()); }
  explicit Shape(const std::vector<int64_t>& dims) { assign(dims.begin(), dims.end()); }

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return rank_; }
  int64_t operator[](int i) const noexcept { return d_[static_cast<std::size_t>(i)]; }
  int64_t& operator[](int i) noexcept { return d_[static_cast<std::size_t>(i)]; }
  /// Dimension i, where negative i counts from the end (-1 = last).
  int64_t dim(int i) const {
    const int j = i < 0 ? i + rank_ : i;
    check<ShapeError>(j >= 0 && j < rank_, "dimension ", i, " out of range for shape ", str());
    return d_[static_cast<std::size_t>(j)];
  }
  const int64_t* begin() const noexcept { return d_.data(); }
  const int64_t* end() const noexcept { return d_.data() + rank_; }

  int64_t numel() const noexcept {
    int64_t n = 1;
    for (int i = 0; i < rank_; ++i) n *= d_[static_cast<std::size_t>(i)];
    return n;
  }
  /// The product of all dimensions but the last `trailing` (the batch of a matrix op; 1 for none). Not
  /// numel() / (inner dims), which is 0 when an inner dimension is 0.
  int64_t leading_numel(int trailing) const noexcept {
    int64_t n = 1;
    for (int i = 0; i < rank_ - trailing; ++i) n *= d_[static_cast<std::size_t>(i)];
    return n;
  }
  void push_back(int64_t v) {
    check<ShapeError>(rank_ < kMaxRank, "shape rank exceeds ", kMaxRank);
    d_[static_cast<std::size_t>(rank_++)] = v;
  }
  /// Whether the product of the dimensions that are not 0 fits in int64_t: then numel(), leading_numel() and
  /// every contiguous stride do too, also when a 0 makes the element count 0. Readers of files check it on every
  /// shape they are given (a Shape itself is also used for strides, whose product means nothing).
  static bool size_fits(const int64_t* b, const int64_t* e) noexcept {
    int64_t n = 1;
    for (; b != e; ++b)
      if (*b != 0 && __builtin_mul_overflow(n, *b, &n)) return false;
    return true;
  }
  std::vector<int64_t> vec() const { return {begin(), end()}; }

  friend bool operator==(const Shape& a, const Shape& b) noexcept {
    return a.rank_ == b.rank_ && std::equal(a.begin(), a.end(), b.begin());
  }
  friend bool operator!=(const Shape& a, const Shape& b) noexcept { return !(a == b); }

  /// "[2, 4, 64, 64]"
  std::string str() const {
    std::string s = "[";
    for (int i = 0; i < rank_; ++i) s += (i ? ", " : "") + std::to_string(d_[static_cast<std::size_t>(i)]);
    return s + "]";
  }

 private:
  template <class It>
  void assign(It b, It e) {
    check<ShapeError>(e - b <= kMaxRank, "shape rank exceeds ", kMaxRank);
    rank_ = 0;
    for (; b != e; ++b) {
      check<ShapeError>(*b >= 0, "negative dimension in shape");
      d_[static_cast<std::size_t>(rank_++)] = *b;
    }
  }
  std::array<int64_t, kMaxRank> d_{};
  int rank_ = 0;
};

/// Row-major (C-order) strides of a shape, in elements.
inline Shape contiguous_strides(const Shape& s) {
  Shape st = s;
  int64_t acc = 1;
  for (int i = s.rank() - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

}  // namespace adabldm
