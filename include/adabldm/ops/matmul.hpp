#pragma once
// Matrix products on the CPU: the gemm primitive (our AVX-512 SGEMM for float, gemm_avx512.hpp, or bfloat16
// products where asked, gemm_bf16.hpp; else Eigen mapped
// over our buffers, no copies), matmul (2-D and batched) and linear (x W^T + b, PyTorch's nn.Linear layout), each with its backward kernels.
#include <Eigen/Core>
#include <mutex>
#include <vector>

#include "adabldm/core/autograd_record.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"
#include "adabldm/ops/gemm_avx512.hpp"
#include "adabldm/ops/gemm_bf16.hpp"

namespace adabldm::ops {

namespace detail {
template <class T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MatMap = Eigen::Map<RowMajor<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using ConstMatMap = Eigen::Map<const RowMajor<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
}  // namespace detail

/// C[M,N] = alpha * op(A) * op(B) + beta * C, all row-major with leading dimensions (row strides) lda/ldb/ldc.
/// op(A) is A[M,K] (or A[K,M] transposed when trans_a). beta == 0 ignores C's previous content (even NaN).
namespace detail {
/// One single-threaded Eigen GEMM on a block (Eigen's own threading is switched off: see gemm()).
template <class T>
void gemm_block(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  MatMap<T> c(C, M, N, Eigen::OuterStride<>(ldc));
  if (beta == T(0)) c.setZero(); else if (beta != T(1)) c *= beta;
  if (K == 0) return;
  ConstMatMap<T> a(A, trans_a ? K : M, trans_a ? M : K, Eigen::OuterStride<>(lda));
  ConstMatMap<T> b(B, trans_b ? N : K, trans_b ? K : N, Eigen::OuterStride<>(ldb));
  if (!trans_a && !trans_b) c.noalias() += alpha * a * b;
  else if (!trans_a && trans_b) c.noalias() += alpha * a * b.transpose();
  else if (trans_a && !trans_b) c.noalias() += alpha * a.transpose() * b;
  else c.noalias() += alpha * a.transpose() * b.transpose();
}
}  // namespace detail

/// C[M,N] = alpha * op(A) * op(B) + beta * C, all row-major with leading dimensions (row strides) lda/ldb/ldc.
/// op(A) is A[M,K] (or A[K,M] transposed when trans_a). beta == 0 ignores C's previous content (even NaN).
/// Threads split C into fixed blocks of rows (or columns when C is wide), each a single-threaded Eigen GEMM:
/// the block layout does not depend on the thread count, so neither do the results, and no thread ever
/// busy-waits for another (Eigen's own parallel GEMM spins, which stalls badly when cores are shared).
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  constexpr int64_t kBlock = 256;
  if constexpr (std::is_same_v<T, float> && detail::kHasOwnSgemm) {  // they split the work over threads themselves
    if (detail::use_bf16_gemm())  // asked for (cpu_matmul_precision) and the CPU has a kernel: gemm_bf16.hpp
      return detail::sgemm_bf16_parallel(detail::bf16_kernel(), trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (detail::use_own_sgemm())
      return detail::sgemm_avx512_parallel(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  if (M * N * K < (int64_t{1} << 22) || (M <= kBlock && N <= kBlock)) {
    detail::gemm_block(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  if (M >= N) {  // blocks of rows of C (rows of op(A))
    parallel_for((M + kBlock - 1) / kBlock, [&](int64_t blk) {
      const int64_t m0 = blk * kBlock, m = std::min(kBlock, M - m0);
      const T* a = trans_a ? A + m0 : A + m0 * lda;
      detail::gemm_block(trans_a, trans_b, m, N, K, alpha, a, lda, B, ldb, beta, C + m0 * ldc, ldc);
    });
  } else {  // blocks of columns of C (columns of op(B))
    parallel_for((N + kBlock - 1) / kBlock, [&](int64_t blk) {
      const int64_t n0 = blk * kBlock, n = std::min(kBlock, N - n0);
      const T* b = trans_b ? B + n0 * ldb : B + n0;
      detail::gemm_block(trans_a, trans_b, M, n, K, alpha, A, lda, b, ldb, beta, C + n0, ldc);
    });
  }
}

/// The column sums of a row-major [rows, cols] matrix (a bias gradient) as a [cols] tensor.
template <class T>
Tensor<T, Cpu> sum_rows(const T* m, int64_t rows, int64_t cols) {
  auto out = Tensor<T, Cpu>::empty({cols});
  auto o = Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(out.data(), cols);
  if (rows == 0) o.setZero();
  else o = detail::ConstMatMap<T>(m, rows, cols, Eigen::OuterStride<>(cols)).colwise().sum();
  return out;
}

/// dA of C = A @ op(B) (see matmul): dC @ op(B)^T, A's shape. b is 2-D (shared by the batch) or batched.
template <class T>
Tensor<T, Cpu> matmul_backward_a(const Tensor<T, Cpu>& dc, const Tensor<T, Cpu>& b, bool trans_b) {
  const int64_t M = dc.dim(-2), N = dc.dim(-1), K = trans_b ? b.dim(-1) : b.dim(-2);
  const int64_t batch = dc.shape().leading_numel(2);
  Shape shape = dc.shape();
  shape[shape.rank() - 1] = K;
  auto da = Tensor<T, Cpu>::empty(shape);
  // op(B)^T: B [K, N] read transposed, or B itself ([N, K]) when trans_b.
  const int64_t ldb = trans_b ? K : N;
  if (b.rank() == 2) {
    gemm<T>(false, !trans_b, batch * M, K, N, T(1), dc.data(), N, b.data(), ldb, T(0), da.data(), K);
  } else {
    for (int64_t i = 0; i < batch; ++i)
      gemm<T>(false, !trans_b, M, K, N, T(1), dc.data() + i * M * N, N, b.data() + i * K * N, ldb, T(0),
              da.data() + i * M * K, K);
  }
  return da;
}

/// dB of C = A @ op(B): A^T @ dC ([K, N]), or dC^T @ A ([N, K]) when trans_b; summed over the batch when B is
/// shared (one GEMM over all rows).
template <class T>
Tensor<T, Cpu> matmul_backward_b(const Tensor<T, Cpu>& dc, const Tensor<T, Cpu>& a, const Shape& b_shape,
                                 bool trans_b) {
  const int64_t M = dc.dim(-2), N = dc.dim(-1), K = a.dim(-1);
  const int64_t batch = dc.shape().leading_numel(2);
  const bool shared = b_shape.rank() == 2;
  const int64_t rows = shared ? batch * M : M, count = shared ? 1 : batch;
  auto db = Tensor<T, Cpu>::empty(b_shape);
  for (int64_t i = 0; i < count; ++i) {
    const T* ai = a.data() + i * M * K;
    const T* gi = dc.data() + i * M * N;
    T* bi = db.data() + i * K * N;
    if (trans_b) gemm<T>(true, false, N, K, rows, T(1), gi, N, ai, K, T(0), bi, K);
    else gemm<T>(true, false, K, N, rows, T(1), ai, K, gi, N, T(0), bi, N);
  }
  return db;
}

namespace detail {
/// The problem matmul(a, b, trans_b) describes (checked; shared by every device's matmul).
struct MatmulShape {
  int64_t M, K, N, batch;
  bool shared_b;  ///< b is 2-D: one matrix for the whole batch
  Shape out;
};
inline MatmulShape matmul_shape(const Shape& a, const Shape& b, bool trans_b) {
  check<ShapeError>(a.rank() >= 2 && b.rank() >= 2, "matmul: needs rank >= 2, got ", a.str(), " and ", b.str());
  const int64_t M = a[a.rank() - 2], K = a[a.rank() - 1];
  const int64_t N = trans_b ? b[b.rank() - 2] : b[b.rank() - 1], Kb = trans_b ? b[b.rank() - 1] : b[b.rank() - 2];
  check<ShapeError>(K == Kb, "matmul: inner dimensions differ: ", a.str(), " @ ", b.str(), trans_b ? " (b transposed)" : "");
  const bool shared_b = b.rank() == 2;
  if (!shared_b)
    check<ShapeError>(a.rank() == b.rank() && std::equal(a.begin(), a.end() - 2, b.begin()),
                      "matmul: batch dimensions differ: ", a.str(), " @ ", b.str());
  Shape out = a;
  out[out.rank() - 1] = N;
  return {M, K, N, a.leading_numel(2), shared_b, out};
}
}  // namespace detail

/// a[..., M, K] @ b[..., K, N] -> [..., M, N] (torch.matmul for rank >= 2). b may be 2-D (shared by the batch)
/// or have the same batch dimensions as a. trans_b reads b as [..., N, K].
template <class T>
Tensor<T, Cpu> matmul(const Tensor<T, Cpu>& a_in, const Tensor<T, Cpu>& b_in, bool trans_b = false) {
  const auto shape = detail::matmul_shape(a_in.shape(), b_in.shape(), trans_b);
  const int64_t M = shape.M, K = shape.K, N = shape.N, batch = shape.batch;
  const bool shared_b = shape.shared_b;
  const Shape& out_shape = shape.out;
  const auto a = a_in.contiguous();
  const auto b = b_in.contiguous();
  auto out = Tensor<T, Cpu>::empty(out_shape);
  if (shared_b) {  // one big GEMM over all rows of a
    gemm<T>(false, trans_b, batch * M, N, K, T(1), a.data(), K, b.data(), trans_b ? K : N, T(0), out.data(), N);
  } else {
    for (int64_t i = 0; i < batch; ++i)
      gemm<T>(false, trans_b, M, N, K, T(1), a.data() + i * M * K, K, b.data() + i * K * N, trans_b ? K : N, T(0),
              out.data() + i * M * N, N);
  }
  if (autograd::should_record(a, b)) {
    // Each side's gradient needs only the other side's value.
    autograd::record("matmul", out, [sa = autograd::slot(a), sb = autograd::slot(b), trans_b,
                                     a_saved = b.requires_grad() ? a.detach() : Tensor<T, Cpu>{},
                                     b_saved = a.requires_grad() ? b.detach() : Tensor<T, Cpu>{}](const Tensor<T, Cpu>& g) {
      if (sa) sa.add(matmul_backward_a(g, b_saved, trans_b));
      if (sb) sb.add(matmul_backward_b(g, a_saved, sb.shape(), trans_b));
    });
  }
  return out;
}

/// nn.Linear: x[..., in] @ weight[out, in]^T + bias[out] -> [..., out]. bias may be undefined.
template <class T>
Tensor<T, Cpu> linear(const Tensor<T, Cpu>& x_in, const Tensor<T, Cpu>& weight, const Tensor<T, Cpu>& bias = {}) {
  check<ShapeError>(weight.rank() == 2, "linear: weight must be [out, in], got ", weight.shape().str());
  check<ShapeError>(x_in.rank() >= 1 && x_in.dim(-1) == weight.dim(1), "linear: input ", x_in.shape().str(),
                    " does not match weight ", weight.shape().str());
  const auto x = x_in.contiguous();
  const auto w = weight.contiguous();
  const int64_t in = w.dim(1), outf = w.dim(0), rows = x.shape().leading_numel(1);
  Shape out_shape = x.shape();
  out_shape[out_shape.rank() - 1] = outf;
  auto out = Tensor<T, Cpu>::empty(out_shape);
  T* o = out.data();
  if (bias.defined()) {
    check<ShapeError>(bias.numel() == outf, "linear: bias ", bias.shape().str(), " does not match ", outf,
                      " outputs");
    const T* bp = bias.data();
    for (int64_t r = 0; r < rows; ++r) std::copy(bp, bp + outf, o + r * outf);
  }
  gemm<T>(false, true, rows, outf, in, T(1), x.data(), in, w.data(), in, bias.defined() ? T(1) : T(0), o, outf);
  if (autograd::should_record(x, w, bias)) {
    autograd::record("linear", out, [sx = autograd::slot(x), sw = autograd::slot(w), sb = autograd::slot(bias),
                                     x_saved = w.requires_grad() ? x.detach() : Tensor<T, Cpu>{},
                                     w_saved = x.requires_grad() ? w.detach() : Tensor<T, Cpu>{}](const Tensor<T, Cpu>& g) {
      const int64_t outf = g.dim(-1), rows = g.shape().leading_numel(1);
      if (sx) {  // dX = dY @ W
        auto dx = Tensor<T, Cpu>::empty(sx.shape());
        const int64_t in = sx.shape().dim(-1);
        gemm<T>(false, false, rows, in, outf, T(1), g.data(), outf, w_saved.data(), in, T(0), dx.data(), in);
        sx.add(dx);
      }
      if (sw) {  // dW = dY^T @ X
        auto dw = Tensor<T, Cpu>::empty(sw.shape());
        const int64_t in = sw.shape()[1];
        gemm<T>(true, false, outf, in, rows, T(1), g.data(), outf, x_saved.data(), in, T(0), dw.data(), in);
        sw.add(dw);
      }
      if (sb) sb.add(sum_rows(g.data(), rows, outf).reshape(sb.shape()));
    });
  }
  return out;
}

/// Weights that nothing changes for a while, such as the UNet's and the trimap encoder's while sampling: with
/// bfloat16 products (gemm_bf16.hpp) each is converted and packed once, at its first product, instead of at every
/// product, which costs about as much as the product itself on AMX. While the scope lives it holds the tensors (so
/// their memory cannot be reused) and packed copies of half their float32 size; a weight written inside it would go
/// on being multiplied as it was, so never freeze what an optimiser steps. Scopes may nest and overlap; without
/// bfloat16 products (or a kernel for them) it changes nothing.
class FrozenWeights {
 public:
  FrozenWeights() = default;
  explicit FrozenWeights(std::vector<Tensor<float>> weights) : weights_(std::move(weights)) {
#ifdef ADABLDM_BF16_GEMM
    auto& reg = detail::bgemm::frozen_registry();
    std::lock_guard<std::mutex> lock(reg.mutex);
    std::size_t done = 0;
    try {
      for (; done < weights_.size(); ++done) ++reg.entries[weights_[done].data()].first;
    } catch (...) {  // out of memory midway: leave no weight registered that no scope will release
      release(done);
      throw;
    }
    reg.size.store(static_cast<int64_t>(reg.entries.size()), std::memory_order_release);
#endif
  }
  FrozenWeights(FrozenWeights&& other) noexcept : weights_(std::move(other.weights_)) { other.weights_.clear(); }
  FrozenWeights(const FrozenWeights&) = delete;
  FrozenWeights& operator=(const FrozenWeights&) = delete;
  FrozenWeights& operator=(FrozenWeights&&) = delete;
  ~FrozenWeights() {
#ifdef ADABLDM_BF16_GEMM
    std::lock_guard<std::mutex> lock(detail::bgemm::frozen_registry().mutex);
    release(weights_.size());
#endif
  }
  /// How many weights this scope holds.
  std::size_t size() const noexcept { return weights_.size(); }

 private:
#ifdef ADABLDM_BF16_GEMM
  /// Unregisters the first n weights (the registry's lock held).
  void release(std::size_t n) noexcept {
    auto& reg = detail::bgemm::frozen_registry();
    for (std::size_t i = 0; i < n; ++i) {
      const auto it = reg.entries.find(weights_[i].data());
      if (it != reg.entries.end() && --it->second.first == 0) reg.entries.erase(it);
    }
    reg.size.store(static_cast<int64_t>(reg.entries.size()), std::memory_order_release);
  }
#endif
  std::vector<Tensor<float>> weights_;
};

}  // namespace adabldm::ops
