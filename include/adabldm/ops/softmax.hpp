#pragma once
// Softmax over the last dimension (max-subtracted, so large logits do not overflow) and its backward
// dx = y * (dy - sum(dy * y)) per row, from the saved output.
#include <cmath>
#include <limits>

#include "adabldm/core/autograd_record.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"

namespace adabldm::ops {

/// dx of y = softmax(x) given dy and y (both contiguous, same shape).
template <class T>
Tensor<T, Cpu> softmax_backward(const Tensor<T, Cpu>& dy, const Tensor<T, Cpu>& y) {
  const int64_t D = y.dim(-1), rows = y.numel() / std::max<int64_t>(1, D);
  auto dx = Tensor<T, Cpu>::empty(y.shape());
  const T *yp = y.data(), *gp = dy.data();
  T* dp = dx.data();
  parallel_for(rows, [&](int64_t r) {
    const T* yr = yp + r * D;
    const T* gr = gp + r * D;
    T s = 0;
    for (int64_t i = 0; i < D; ++i) s += gr[i] * yr[i];
    for (int64_t i = 0; i < D; ++i) dp[r * D + i] = yr[i] * (gr[i] - s);
  }, grain_for(4 * D));
  return dx;
}

template <class T>
Tensor<T, Cpu> softmax(const Tensor<T, Cpu>& x_in) {
  check<ShapeError>(x_in.rank() >= 1, "softmax: needs rank >= 1");
  const auto x = x_in.contiguous();
  const int64_t D = x.dim(-1), rows = x.numel() / std::max<int64_t>(1, D);
  auto y = Tensor<T, Cpu>::empty(x.shape());
  const T* xp = x.data();
  T* yp = y.data();
  parallel_for(rows, [&](int64_t r) {
    const T* a = xp + r * D;
    T* b = yp + r * D;
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < D; ++i) m = std::max(m, a[i]);
    T s = 0;
    for (int64_t i = 0; i < D; ++i) s += (b[i] = std::exp(a[i] - m));
    const T inv = T(1) / s;
    for (int64_t i = 0; i < D; ++i) b[i] *= inv;
  }, grain_for(4 * D));
  if (autograd::should_record(x))
    autograd::record("softmax", y, [sx = autograd::slot(x), y = y.detach()](const Tensor<T, Cpu>& g) {
      sx.add(softmax_backward(g, y));
    });
  return y;
}

}  // namespace adabldm::ops
