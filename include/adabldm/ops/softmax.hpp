#pragma once
// Softmax over the last dimension (max-subtracted, so large logits do not overflow).
#include <cmath>
#include <limits>

#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"

namespace adabldm::ops {

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
  }, 16);
  return y;
}

}  // namespace adabldm::ops
