#pragma once
// Scaled-dot-product multi-head attention, flash style: queries in tiles of 64, keys/values in tiles of 256,
// an online softmax (running max and sum) per query row, so the L x L score matrix is never materialised
// (64 x 256 scores per task at any sequence length).
//
// Backward (FlashAttention-2, Dao 2023): the forward saves each query row's log-sum-exp; the backward recomputes
// the probabilities tile by tile as exp(s - lse) in two passes, one over query tiles (dQ) and one over key tiles
// (dK, dV), so every gradient element is written by one task and L x L is never materialised either.
#include <cmath>
#include <limits>

#include <Eigen/Core>

#include "adabldm/core/autograd_record.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"
#include "adabldm/ops/vec_exp.hpp"

namespace adabldm::ops {

struct AttentionParams {
  int64_t heads = 1;
  double scale = 0;     ///< softmax(scale * q k^T); 0 means 1 / sqrt(head_dim)
  bool causal = false;  ///< query i sees keys j <= i (CLIP's text encoder)
};

namespace detail {
template <class T>
struct AttentionTypes {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using CMap = Eigen::Map<const Mat, Eigen::Unaligned, Eigen::OuterStride<>>;
  using OMap = Eigen::Map<Mat, Eigen::Unaligned, Eigen::OuterStride<>>;
  using Vec = Eigen::Array<T, Eigen::Dynamic, 1>;
};

/// row[j] = exp(row[j] + shift) for j < n.
template <class T>
void exp_row(T* row, int64_t n, T shift) {
  if constexpr (std::is_same_v<T, float>) exp_span(row, row, n, 1.0f, shift);
  else
    for (int64_t j = 0; j < n; ++j) row[j] = std::exp(row[j] + shift);
}

template <class T>
T attention_scale(const AttentionParams& p, int64_t head_dim) {
  return static_cast<T>(p.scale > 0 ? p.scale : 1.0 / std::sqrt(static_cast<double>(head_dim)));
}

/// The forward on contiguous q, k, v; writes each query row's log-sum-exp of the scaled scores to lse
/// ([B, H, Lq]) when lse is not null.
template <class T>
Tensor<T, Cpu> attention_forward(const Tensor<T, Cpu>& q, const Tensor<T, Cpu>& k, const Tensor<T, Cpu>& v,
                                 const AttentionParams& p, T* lse) {
  const int64_t B = q.dim(0), Lq = q.dim(1), Lk = k.dim(1), H = p.heads;
  const int64_t D = q.dim(2) / H, Dv = v.dim(2) / H, qw = q.dim(2), vw = v.dim(2);
  const T scale = attention_scale<T>(p, D);
  auto out = Tensor<T, Cpu>::empty({B, Lq, vw});

  constexpr int64_t kTq = 64, kTk = 256;
  const int64_t q_tiles = (Lq + kTq - 1) / kTq;
  using Mat = typename AttentionTypes<T>::Mat;
  using CMap = typename AttentionTypes<T>::CMap;
  using OMap = typename AttentionTypes<T>::OMap;
  using Vec = typename AttentionTypes<T>::Vec;
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
      // Row by row, vectorised (the broadcast form called std::exp per score).
      for (int64_t i = 0; i < tq; ++i) exp_row(&St(i, 0), tk, -m_new(i));
      l = l * corr + St.rowwise().sum().array();
      O = corr.matrix().asDiagonal() * O;
      O.noalias() += St * V;
      m = m_new;
    }
    OMap(op + (b * Lq + q0) * vw + h * Dv, tq, Dv, Eigen::OuterStride<>(vw)) =
        l.inverse().matrix().asDiagonal() * O;
    if (lse)
      for (int64_t i = 0; i < tq; ++i) lse[(b * H + h) * Lq + q0 + i] = m(i) + std::log(l(i));
  }, grain_for(2 * kTq * Lk * (D + Dv)));
  return out;
}
}  // namespace detail

/// Gradients of out = attention(q, k, v) given dout, from the saved inputs, output and log-sum-exp (all
/// contiguous). dq / dk / dv are computed only when the pointer is not null.
template <class T>
void attention_backward(const Tensor<T, Cpu>& dout, const Tensor<T, Cpu>& q, const Tensor<T, Cpu>& k,
                        const Tensor<T, Cpu>& v, const Tensor<T, Cpu>& out, const Tensor<T, Cpu>& lse,
                        const AttentionParams& p, Tensor<T, Cpu>* dq, Tensor<T, Cpu>* dk, Tensor<T, Cpu>* dv) {
  const int64_t B = q.dim(0), Lq = q.dim(1), Lk = k.dim(1), H = p.heads;
  const int64_t D = q.dim(2) / H, Dv = v.dim(2) / H, qw = q.dim(2), vw = v.dim(2);
  const T scale = detail::attention_scale<T>(p, D);
  using Mat = typename detail::AttentionTypes<T>::Mat;
  using CMap = typename detail::AttentionTypes<T>::CMap;
  using OMap = typename detail::AttentionTypes<T>::OMap;
  const T *qp = q.data(), *kp = k.data(), *vp = v.data(), *gp = dout.data(), *lp = lse.data(), *outp = out.data();

  // delta[b, h, i] = sum_d dout * out over the head's columns: the softmax backward's row term.
  std::vector<T> delta(static_cast<std::size_t>(B * H * Lq));
  parallel_for(B * Lq, [&](int64_t bi) {
    const int64_t b = bi / Lq, i = bi % Lq;
    for (int64_t h = 0; h < H; ++h) {
      T s = 0;
      for (int64_t d = 0; d < Dv; ++d) s += gp[bi * vw + h * Dv + d] * outp[bi * vw + h * Dv + d];
      delta[static_cast<std::size_t>((b * H + h) * Lq + i)] = s;
    }
  }, grain_for(H * Dv));

  // P = exp(scale * Q K^T - lse) for query rows [q0, q0 + tq) and keys [k0, k0 + tk), causal entries zeroed.
  auto probabilities = [&](Mat& P, const CMap& Q, const CMap& K, int64_t b, int64_t h, int64_t q0, int64_t tq,
                           int64_t k0, int64_t tk) {
    P.resize(tq, tk);
    P.noalias() = scale * Q * K.transpose();
    for (int64_t i = 0; i < tq; ++i) {
      detail::exp_row(&P(i, 0), tk, -lp[(b * H + h) * Lq + q0 + i]);
      if (p.causal)
        for (int64_t j = std::max<int64_t>(0, q0 + i + 1 - k0); j < tk; ++j) P(i, j) = T(0);
    }
  };
  // dS = P .* (dO V^T - delta) (in place of P).
  auto score_gradient = [&](Mat& P, const CMap& dO, const CMap& V, int64_t b, int64_t h, int64_t q0, int64_t tq) {
    const Mat dP = dO * V.transpose();
    for (int64_t i = 0; i < tq; ++i) {
      const T di = delta[static_cast<std::size_t>((b * H + h) * Lq + q0 + i)];
      P.row(i).array() *= dP.row(i).array() - di;
    }
  };

  if (dq) {  // pass 1: one task per (batch, head, query tile), looping over key tiles
    *dq = Tensor<T, Cpu>::empty(q.shape());
    T* dqp = dq->data();
    constexpr int64_t kTq = 64, kTk = 256;
    const int64_t q_tiles = (Lq + kTq - 1) / kTq;
    parallel_for(B * H * q_tiles, [&](int64_t task) {
      const int64_t b = task / (H * q_tiles), h = task / q_tiles % H, q0 = task % q_tiles * kTq;
      const int64_t tq = std::min(kTq, Lq - q0);
      CMap Q(qp + (b * Lq + q0) * qw + h * D, tq, D, Eigen::OuterStride<>(qw));
      CMap dO(gp + (b * Lq + q0) * vw + h * Dv, tq, Dv, Eigen::OuterStride<>(vw));
      Mat acc = Mat::Zero(tq, D), P;
      const int64_t k_end = p.causal ? std::min(Lk, q0 + tq) : Lk;
      for (int64_t k0 = 0; k0 < k_end; k0 += kTk) {
        const int64_t tk = std::min(kTk, k_end - k0);
        CMap K(kp + (b * Lk + k0) * qw + h * D, tk, D, Eigen::OuterStride<>(qw));
        CMap V(vp + (b * Lk + k0) * vw + h * Dv, tk, Dv, Eigen::OuterStride<>(vw));
        probabilities(P, Q, K, b, h, q0, tq, k0, tk);
        score_gradient(P, dO, V, b, h, q0, tq);
        acc.noalias() += P * K;
      }
      OMap(dqp + (b * Lq + q0) * qw + h * D, tq, D, Eigen::OuterStride<>(qw)) = scale * acc;
    }, grain_for(4 * kTq * Lk * (D + Dv)));
  }
  if (dk || dv) {  // pass 2: one task per (batch, head, key tile), looping over query tiles
    if (dk) *dk = Tensor<T, Cpu>::empty(k.shape());
    if (dv) *dv = Tensor<T, Cpu>::empty(v.shape());
    T* dkp = dk ? dk->data() : nullptr;
    T* dvp = dv ? dv->data() : nullptr;
    constexpr int64_t kTk = 64, kTq = 256;
    const int64_t k_tiles = (Lk + kTk - 1) / kTk;
    parallel_for(B * H * k_tiles, [&](int64_t task) {
      const int64_t b = task / (H * k_tiles), h = task / k_tiles % H, k0 = task % k_tiles * kTk;
      const int64_t tk = std::min(kTk, Lk - k0);
      CMap K(kp + (b * Lk + k0) * qw + h * D, tk, D, Eigen::OuterStride<>(qw));
      CMap V(vp + (b * Lk + k0) * vw + h * Dv, tk, Dv, Eigen::OuterStride<>(vw));
      Mat acc_k = Mat::Zero(tk, D), acc_v = Mat::Zero(tk, Dv), P;
      // Causal: query rows before k0 see none of these keys.
      for (int64_t q0 = p.causal ? k0 / kTq * kTq : 0; q0 < Lq; q0 += kTq) {
        const int64_t tq = std::min(kTq, Lq - q0);
        CMap Q(qp + (b * Lq + q0) * qw + h * D, tq, D, Eigen::OuterStride<>(qw));
        CMap dO(gp + (b * Lq + q0) * vw + h * Dv, tq, Dv, Eigen::OuterStride<>(vw));
        probabilities(P, Q, K, b, h, q0, tq, k0, tk);
        if (dv) acc_v.noalias() += P.transpose() * dO;
        if (!dk) continue;
        score_gradient(P, dO, V, b, h, q0, tq);
        acc_k.noalias() += P.transpose() * Q;
      }
      if (dk) OMap(dkp + (b * Lk + k0) * qw + h * D, tk, D, Eigen::OuterStride<>(qw)) = scale * acc_k;
      if (dv) OMap(dvp + (b * Lk + k0) * vw + h * Dv, tk, Dv, Eigen::OuterStride<>(vw)) = acc_v;
    }, grain_for(4 * kTk * Lq * (D + Dv)));
  }
}

namespace detail {
/// q [B, Lq, H*D], k [B, Lk, H*D], v [B, Lk, H*Dv] with Lk > 0 (shared by every device's attention).
inline void check_attention_shapes(const Shape& q, const Shape& k, const Shape& v, int64_t heads) {
  check<ShapeError>(q.rank() == 3 && k.rank() == 3 && v.rank() == 3, "attention: q, k, v must be [B, L, H*D], got ",
                    q.str(), ", ", k.str(), ", ", v.str());
  check<ShapeError>(k[0] == q[0] && v[0] == q[0] && v[1] == k[1], "attention: batch or key length mismatch: q ",
                    q.str(), ", k ", k.str(), ", v ", v.str());
  check<ShapeError>(heads > 0 && q[2] % heads == 0 && v[2] % heads == 0 && q[2] == k[2], "attention: widths ", q[2],
                    "/", k[2], "/", v[2], " do not split into ", heads, " heads");
  check<ShapeError>(k[1] > 0, "attention: empty key sequence");
}
}  // namespace detail

/// q[B, Lq, H*D], k[B, Lk, H*D], v[B, Lk, H*Dv] -> [B, Lq, H*Dv]. Heads are interleaved along the last
/// dimension exactly as diffusers' / transformers' head_to_batch_dim reshapes expect (head h = columns h*D..).
template <class T>
Tensor<T, Cpu> attention(const Tensor<T, Cpu>& q_in, const Tensor<T, Cpu>& k_in, const Tensor<T, Cpu>& v_in,
                         const AttentionParams& p) {
  detail::check_attention_shapes(q_in.shape(), k_in.shape(), v_in.shape(), p.heads);
  const int64_t B = q_in.dim(0), Lq = q_in.dim(1), H = p.heads;
  const auto q = q_in.contiguous();
  const auto k = k_in.contiguous();
  const auto v = v_in.contiguous();
  if (!autograd::should_record(q, k, v)) return detail::attention_forward<T>(q, k, v, p, nullptr);
  auto lse = Tensor<T, Cpu>::empty({B, H, Lq});
  auto out = detail::attention_forward<T>(q, k, v, p, lse.data());
  // The backward needs q, k, v and the output whatever is wanted (the probabilities are recomputed).
  autograd::record("attention", out, [sq = autograd::slot(q), sk = autograd::slot(k), sv = autograd::slot(v),
                                      q = q.detach(), k = k.detach(), v = v.detach(), o = out.detach(), lse,
                                      p](const Tensor<T, Cpu>& g) {
    Tensor<T, Cpu> dq, dk, dv;
    attention_backward(g, q, k, v, o, lse, p, sq ? &dq : nullptr, sk ? &dk : nullptr, sv ? &dv : nullptr);
    if (sq) sq.add(dq);
    if (sk) sk.add(dk);
    if (sv) sv.add(dv);
  });
  return out;
}

}  // namespace adabldm::ops
