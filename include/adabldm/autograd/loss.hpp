#pragma once
// Differentiable losses, each one op with its own backward: mean squared error (F.mse_loss, reduction "mean")
// and a masked variant (the mean over the elements a mask selects, e.g. the background of an image); for
// segmentation, binary cross-entropy on logits with a positive-class weight and the soft Dice loss.
#include <cmath>
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

namespace detail {
template <class T>
void check_segmentation_args(const Tensor<T, Cpu>& logits, const Tensor<T, Cpu>& target, const char* what) {
  check<ShapeError>(logits.shape() == target.shape(), what, ": logits ", logits.shape().str(), " and target ",
                    target.shape().str(), " differ");
  check<ShapeError>(logits.numel() > 0, what, ": empty tensors");
  check(!target.requires_grad(), what, ": the target receives no gradient (detach it)");
}
/// Sums over fixed-size chunks in double, so the value does not depend on the thread count.
template <class F>
double chunked_sum(int64_t n, F term) {
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<std::size_t>(chunks), 0.0);
  parallel_for(chunks, [&](int64_t c) {
    double s = 0;
    for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) s += term(i);
    partial[static_cast<std::size_t>(c)] = s;
  });
  double s = 0;
  for (double v : partial) s += v;
  return s;
}
inline double sigmoid(double z) { return z >= 0 ? 1.0 / (1.0 + std::exp(-z)) : std::exp(z) / (1.0 + std::exp(z)); }
}  // namespace detail

/// mean over all elements of -[w y log s(z) + (1 - y) log(1 - s(z))], s the logistic function, y in [0, 1]
/// (F.binary_cross_entropy_with_logits with pos_weight = w, reduction "mean"); computed stably from the logits.
/// The gradient is (s(z) (w y + 1 - y) - w y) / n.
template <class T>
Tensor<T, Cpu> bce_with_logits(const Tensor<T, Cpu>& logits_in, const Tensor<T, Cpu>& target_in, double pos_weight = 1.0) {
  detail::check_segmentation_args(logits_in, target_in, "bce_with_logits");
  check(pos_weight > 0 && std::isfinite(pos_weight), "bce_with_logits: pos_weight must be positive, got ", pos_weight);
  const auto z = logits_in.contiguous(), y = target_in.contiguous();
  const T *zp = z.data(), *yp = y.data();
  const int64_t n = z.numel();
  // log s(z) = -softplus(-z), log(1 - s(z)) = -softplus(z); softplus(x) = max(x, 0) + log1p(exp(-|x|)).
  auto softplus = [](double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x))); };
  const double total = detail::chunked_sum(n, [&](int64_t i) {
    const double zi = zp[i], yi = yp[i];
    return pos_weight * yi * softplus(-zi) + (1.0 - yi) * softplus(zi);
  });
  auto loss = Tensor<T, Cpu>::full({}, static_cast<T>(total / static_cast<double>(n)));
  if (should_record(z))
    record("bce_with_logits", loss, [sz = slot(z), z = z.detach(), y, pos_weight, n](const Tensor<T, Cpu>& g) {
      const double scale = static_cast<double>(g.data()[0]) / static_cast<double>(n);
      auto dz = Tensor<T, Cpu>::empty(z.shape());
      const T *zp = z.data(), *yp = y.data();
      T* dp = dz.data();
      parallel_for(n, [&](int64_t i) {
        const double s = detail::sigmoid(zp[i]), yi = yp[i];
        dp[i] = static_cast<T>(scale * (s * (pos_weight * yi + 1.0 - yi) - pos_weight * yi));
      }, 1 << 14);
      sz.add(dz);
    });
  return loss;
}

/// The soft Dice loss over the whole batch: 1 - (2 sum s(z) y + eps) / (sum s(z) + sum y + eps), s the logistic
/// function, y in [0, 1]. eps keeps it defined (and 0) when neither has any mass.
template <class T>
Tensor<T, Cpu> dice_loss(const Tensor<T, Cpu>& logits_in, const Tensor<T, Cpu>& target_in, double eps = 1.0) {
  detail::check_segmentation_args(logits_in, target_in, "dice_loss");
  check(eps > 0 && std::isfinite(eps), "dice_loss: eps must be positive, got ", eps);
  const auto z = logits_in.contiguous(), y = target_in.contiguous();
  const T *zp = z.data(), *yp = y.data();
  const int64_t n = z.numel();
  const double inter = detail::chunked_sum(n, [&](int64_t i) { return detail::sigmoid(zp[i]) * yp[i]; });
  const double mass = detail::chunked_sum(n, [&](int64_t i) { return detail::sigmoid(zp[i]) + yp[i]; });
  auto loss = Tensor<T, Cpu>::full({}, static_cast<T>(1.0 - (2.0 * inter + eps) / (mass + eps)));
  if (should_record(z))
    record("dice_loss", loss, [sz = slot(z), z = z.detach(), y, inter, mass, eps, n](const Tensor<T, Cpu>& g) {
      // d loss / d s_i = -(2 y_i (mass + eps) - (2 inter + eps)) / (mass + eps)^2, and d s / d z = s (1 - s).
      const double d = mass + eps, num = 2.0 * inter + eps, scale = static_cast<double>(g.data()[0]);
      auto dz = Tensor<T, Cpu>::empty(z.shape());
      const T *zp = z.data(), *yp = y.data();
      T* dp = dz.data();
      parallel_for(n, [&](int64_t i) {
        const double s = detail::sigmoid(zp[i]);
        dp[i] = static_cast<T>(-scale * (2.0 * yp[i] * d - num) / (d * d) * s * (1.0 - s));
      }, 1 << 14);
      sz.add(dz);
    });
  return loss;
}

}  // namespace adabldm::autograd
