#pragma once
// Scaled-dot-product multi-head attention, flash style: queries in tiles of 64, keys/values in tiles of 256,
// an online softmax (running max and sum) per query row, so the L x L score matrix is never materialised
// (64 x 256 scores per task at any sequence length).
#include <cmath>
#include <limits>

#include <Eigen/Core>

#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"

namespace adabldm::ops {

struct AttentionParams {
  int64_t heads = 1;
  double scale = 0;     ///< softmax(scale * q k^T); 0 means 1 / sqrt(head_dim)
  bool causal = false;  ///< query i sees keys j <= i (CLIP's text encoder)
};

/// q[B, Lq, H*D], k[B, Lk, H*D], v[B, Lk, H*Dv] -> [B, Lq, H*Dv]. Heads are interleaved along the last
/// dimension exactly as diffusers' / transformers' head_to_batch_dim reshapes expect (head h = columns h*D..).
template <class T>
Tensor<T, Cpu> attention(const Tensor<T, Cpu>& q_in, const Tensor<T, Cpu>& k_in, const Tensor<T, Cpu>& v_in,
                         const AttentionParams& p) {
  check<ShapeError>(q_in.rank() == 3 && k_in.rank() == 3 && v_in.rank() == 3,
                    "attention: q, k, v must be [B, L, H*D], got ", q_in.shape().str(), ", ", k_in.shape().str(),
                    ", ", v_in.shape().str());
  const int64_t B = q_in.dim(0), Lq = q_in.dim(1), Lk = k_in.dim(1), H = p.heads;
  check<ShapeError>(k_in.dim(0) == B && v_in.dim(0) == B && v_in.dim(1) == Lk,
                    "attention: batch or key length mismatch: q ", q_in.shape().str(), ", k ", k_in.shape().str(),
                    ", v ", v_in.shape().str());
  check<ShapeError>(H > 0 && q_in.dim(2) % H == 0 && v_in.dim(2) % H == 0 && q_in.dim(2) == k_in.dim(2),
                    "attention: widths ", q_in.dim(2), "/", k_in.dim(2), "/", v_in.dim(2), " do not split into ", H,
                    " heads");
  check<ShapeError>(Lk > 0, "attention: empty key sequence");
  const auto q = q_in.contiguous();
  const auto k = k_in.contiguous();
  const auto v = v_in.contiguous();
  const int64_t D = q.dim(2) / H, Dv = v.dim(2) / H, qw = q.dim(2), vw = v.dim(2);
  const T scale = static_cast<T>(p.scale > 0 ? p.scale : 1.0 / std::sqrt(static_cast<double>(D)));
  auto out = Tensor<T, Cpu>::empty({B, Lq, vw});

  constexpr int64_t kTq = 64, kTk = 256;
  const int64_t q_tiles = (Lq + kTq - 1) / kTq;
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using CMap = Eigen::Map<const Mat, Eigen::Unaligned, Eigen::OuterStride<>>;
  using OMap = Eigen::Map<Mat, Eigen::Unaligned, Eigen::OuterStride<>>;
  using Vec = Eigen::Array<T, Eigen::Dynamic, 1>;
  const T* qp = q.data();
  const T* kp = k.data();
  const T* vp = v.data();
  T* op = out.data();

  parallel_for(B * H * q_tiles, [&](int64_t task) {
    const int64_t b = task / (H * q_tiles), h = task / q_tiles % H, q0 = task % q_tiles * kTq;
    const int64_t tq = std::min(kTq, Lq - q0);
    CMap Q(qp + (b * Lq + q0) * qw + h * D, tq, D, Eigen::OuterStride<>(qw));
    Mat S(tq, std::min(kTk, Lk)), O = Mat::Zero(tq, Dv);
    Vec m = Vec::Constant(tq, -std::numeric_limits<T>::infinity()), l = Vec::Zero(tq);
    const int64_t k_end = p.causal ? std::min(Lk, q0 + tq) : Lk;
    for (int64_t k0 = 0; k0 < k_end; k0 += kTk) {
      const int64_t tk = std::min(kTk, k_end - k0);
      CMap K(kp + (b * Lk + k0) * qw + h * D, tk, D, Eigen::OuterStride<>(qw));
      CMap V(vp + (b * Lk + k0) * vw + h * Dv, tk, Dv, Eigen::OuterStride<>(vw));
      auto St = S.leftCols(tk);
      St.noalias() = scale * Q * K.transpose();
      if (p.causal && k0 + tk - 1 > q0)
        for (int64_t i = 0; i < tq; ++i)
          for (int64_t j = std::max<int64_t>(0, q0 + i + 1 - k0); j < tk; ++j)
            St(i, j) = -std::numeric_limits<T>::infinity();
      const Vec m_new = m.max(St.rowwise().maxCoeff().array());
      const Vec corr = (m - m_new).exp();
      St = (St.array().colwise() - m_new).exp().matrix();
      l = l * corr + St.rowwise().sum().array();
      O = corr.matrix().asDiagonal() * O;
      O.noalias() += St * V;
      m = m_new;
    }
    OMap(op + (b * Lq + q0) * vw + h * Dv, tq, Dv, Eigen::OuterStride<>(vw)) =
        l.inverse().matrix().asDiagonal() * O;
  });
  return out;
}

}  // namespace adabldm::ops
