#pragma once
// Matrix products on the CPU through Eigen (mapped over our buffers, no copies): the gemm primitive, matmul
// (2-D and batched) and linear (x W^T + b, PyTorch's nn.Linear layout).
#include <Eigen/Core>

#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"

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
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  using detail::ConstMatMap;
  using detail::MatMap;
  MatMap<T> c(C, M, N, Eigen::OuterStride<>(ldc));
  if (K == 0) {
    if (beta == T(0)) c.setZero(); else c *= beta;
    return;
  }
  ConstMatMap<T> a(A, trans_a ? K : M, trans_a ? M : K, Eigen::OuterStride<>(lda));
  ConstMatMap<T> b(B, trans_b ? N : K, trans_b ? K : N, Eigen::OuterStride<>(ldb));
  if (beta == T(0)) c.setZero(); else if (beta != T(1)) c *= beta;
  if (!trans_a && !trans_b) c.noalias() += alpha * a * b;
  else if (!trans_a && trans_b) c.noalias() += alpha * a * b.transpose();
  else if (trans_a && !trans_b) c.noalias() += alpha * a.transpose() * b;
  else c.noalias() += alpha * a.transpose() * b.transpose();
}

/// a[..., M, K] @ b[..., K, N] -> [..., M, N] (torch.matmul for rank >= 2). b may be 2-D (shared by the batch)
/// or have the same batch dimensions as a. trans_b reads b as [..., N, K].
template <class T>
Tensor<T, Cpu> matmul(const Tensor<T, Cpu>& a_in, const Tensor<T, Cpu>& b_in, bool trans_b = false) {
  check<ShapeError>(a_in.rank() >= 2 && b_in.rank() >= 2, "matmul: needs rank >= 2, got ", a_in.shape().str(),
                    " and ", b_in.shape().str());
  const auto a = a_in.contiguous();
  const auto b = b_in.contiguous();
  const int64_t M = a.dim(-2), K = a.dim(-1);
  const int64_t N = trans_b ? b.dim(-2) : b.dim(-1), Kb = trans_b ? b.dim(-1) : b.dim(-2);
  check<ShapeError>(K == Kb, "matmul: inner dimensions differ: ", a.shape().str(), " @ ", b.shape().str(),
                    trans_b ? " (b transposed)" : "");
  const int64_t batch = a.numel() / std::max<int64_t>(1, M * K);
  const bool shared_b = b.rank() == 2;
  if (!shared_b) {
    Shape ab = a.shape(), bb = b.shape();
    check<ShapeError>(a.rank() == b.rank() && std::equal(ab.begin(), ab.end() - 2, bb.begin()),
                      "matmul: batch dimensions differ: ", a.shape().str(), " @ ", b.shape().str());
  }
  Shape out_shape = a.shape();
  out_shape[out_shape.rank() - 1] = N;
  auto out = Tensor<T, Cpu>::empty(out_shape);
  if (shared_b) {  // one big GEMM over all rows of a
    gemm<T>(false, trans_b, batch * M, N, K, T(1), a.data(), K, b.data(), trans_b ? K : N, T(0), out.data(), N);
  } else {
    for (int64_t i = 0; i < batch; ++i)
      gemm<T>(false, trans_b, M, N, K, T(1), a.data() + i * M * K, K, b.data() + i * K * N, trans_b ? K : N, T(0),
              out.data() + i * M * N, N);
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
  const int64_t in = w.dim(1), outf = w.dim(0), rows = x.numel() / std::max<int64_t>(1, in);
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
  return out;
}

}  // namespace adabldm::ops
