#pragma once
// Differentiable losses, each one op with its own backward: mean squared error (F.mse_loss, reduction "mean")
// and a masked variant (the mean over the elements a mask selects, e.g. the background of an image).
#include <vector>

#include "adabldm/core/autograd_record.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"
#include "adabldm/ops/elementwise.hpp"

namespace adabldm::autograd {

namespace detail {
/// sum_i w_i * (a_i - b_i)^2 in double, w = 1 when weight is null; fixed-size chunks keep it thread-independent.
template <class T>
double weighted_squared_error(const T* a, const T* b, const T* weight, int64_t n) {
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<std::size_t>(chunks), 0.0);
  parallel_for(chunks, [&](int64_t c) {
    double s = 0;
    for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) {
      const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
      s += (weight ? static_cast<double>(weight[i]) : 1.0) * d * d;
    }
    partial[static_cast<std::size_t>(c)] = s;
  });
  double s = 0;
  for (double v : partial) s += v;
  return s;
}

/// The loss op: value = sum w (a - b)^2 / norm; da = 2 w (a - b) / norm * dloss, db = -da.
template <class T>
Tensor<T, Cpu> weighted_mse(const Tensor<T, Cpu>& a, const Tensor<T, Cpu>& b, const Tensor<T, Cpu>& weight,
                            double norm, const char* name) {
  const T* wp = weight.defined() ? weight.data() : nullptr;
  auto loss = Tensor<T, Cpu>::full({}, static_cast<T>(weighted_squared_error(a.data(), b.data(), wp, a.numel()) / norm));
  if (should_record(a, b))
    record(name, loss, [sa = slot(a), sb = slot(b), a = a.detach(), b = b.detach(), weight, norm](const Tensor<T, Cpu>& g) {
      const T scale = static_cast<T>(2.0 * static_cast<double>(g.data()[0]) / norm);
      const T *ap = a.data(), *bp = b.data(), *wp = weight.defined() ? weight.data() : nullptr;
      auto da = Tensor<T, Cpu>::empty(a.shape());
      T* dp = da.data();
      parallel_for(a.numel(), [&](int64_t i) { dp[i] = scale * (wp ? wp[i] : T(1)) * (ap[i] - bp[i]); }, 1 << 14);
      if (sa) sa.add(da);
      if (sb) sb.add(ops::affine(da, T(-1)));
    });
  return loss;
}
}  // namespace detail

/// mean((a - b)^2) over all elements -> a scalar (rank-0) tensor. a and b have the same shape.
template <class T>
Tensor<T, Cpu> mse(const Tensor<T, Cpu>& a_in, const Tensor<T, Cpu>& b_in) {
  check<ShapeError>(a_in.shape() == b_in.shape(), "mse: shapes differ: ", a_in.shape().str(), " vs ", b_in.shape().str());
  check<ShapeError>(a_in.numel() > 0, "mse: empty tensors");
  const auto a = a_in.contiguous(), b = b_in.contiguous();
  return detail::weighted_mse(a, b, Tensor<T, Cpu>{}, static_cast<double>(a.numel()), "mse");
}

/// sum(mask * (a - b)^2) / sum(mask broadcast to a's shape): the mean squared error over the masked elements
/// (mask in [0, 1], broadcast to a's shape, e.g. [B, 1, H, W] over the channels; it receives no gradient).
template <class T>
Tensor<T, Cpu> masked_mse(const Tensor<T, Cpu>& a_in, const Tensor<T, Cpu>& b_in, const Tensor<T, Cpu>& mask) {
  check<ShapeError>(a_in.shape() == b_in.shape(), "masked_mse: shapes differ: ", a_in.shape().str(), " vs ",
                    b_in.shape().str());
  check<ShapeError>(ops::broadcast_shape(a_in.shape(), mask.shape()) == a_in.shape(), "masked_mse: mask ",
                    mask.shape().str(), " does not broadcast to ", a_in.shape().str());
  const auto a = a_in.contiguous(), b = b_in.contiguous();
  Tensor<T, Cpu> w;
  {
    NoGradScope constant_mask;
    w = ops::add(Tensor<T, Cpu>::zeros(a.shape()), mask.detach());  // the mask broadcast to a's shape
  }
  double total = 0;
  for (int64_t i = 0; i < w.numel(); ++i) total += static_cast<double>(w.data()[i]);
  check(total > 0, "masked_mse: the mask selects nothing");
  return detail::weighted_mse(a, b, w, total, "masked_mse");
}

}  // namespace adabldm::autograd
