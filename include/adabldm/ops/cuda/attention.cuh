#pragma once
// CUDA twin of ops/attention.hpp: fused multi-head scaled-dot-product attention, flash style (FlashAttention-2's
// algorithm), forward and backward, for any sequence length (tested up to 4096) and head widths up to 512.
//
// Forward: a block owns 8 warps x R query rows of one (batch, head); key / value tiles of `bk` rows are staged in
// shared memory (as float); each warp keeps its rows' running max, running sum and output accumulator in
// registers (lane l holds columns l, l + 32, ...) and updates them with the online softmax. The L x L score
// matrix is never stored. The forward saves each query row's log-sum-exp (float, [B, H, Lq]).
// Backward: delta = rowsum(dO * O); pass 1 (dQ) walks key tiles for a block of query rows, pass 2 (dK, dV) walks
// query tiles for a block of key rows; probabilities are recomputed as exp(s - lse). Every gradient element is
// written by one thread: deterministic, no atomics.
//
// All arithmetic is float32 (half / bfloat16 are converted when staged). These kernels use CUDA cores. For half
// and bfloat16 the forward runs on tensor cores instead (ops/cuda/attention_tc.cuh, WMMA) when the head widths
// allow it (<= 256 and the shared memory fits) and cuda::tensor_core_attention() is on (the default); it saves the
// same log-sum-exp, so the backward below serves both forwards.
#include "adabldm/core/autograd_record.hpp"
#include "adabldm/core/cuda/tensor.cuh"
#include "adabldm/ops/attention.hpp"
#include "adabldm/ops/cuda/attention_tc.cuh"

namespace adabldm::ops {

namespace cuda_detail {

inline constexpr int kAttnWarps = 8;

struct AttnDims {
  int64_t B, Lq, Lk, H, D, Dv, qw, vw;
  float scale;
  int causal;
  int tile;            // rows of the streamed tile: keys (forward, dQ) or queries (dK / dV); <= 64
  int kstride, vstride;  // shared-memory row strides of the streamed tiles (odd: no bank conflicts)
};

/// Loads rows [r0, r0 + count) of a [*, width]-strided head slice into shared memory as float, zero beyond `limit`.
template <class T>
__device__ __forceinline__ void stage_rows(float* dst, int dst_stride, const T* src, int64_t src_row_stride,
                                           int64_t r0, int rows, int64_t limit, int64_t cols) {
  for (int64_t idx = threadIdx.x; idx < rows * cols; idx += blockDim.x) {
    const int64_t r = idx / cols, c = idx % cols;
    dst[r * dst_stride + c] = r0 + r < limit ? cuda::detail::ld(src, (r0 + r) * src_row_stride + c) : 0.0f;
  }
}

template <class T, int NC, int R>
__global__ void __launch_bounds__(kAttnWarps * 32)
attention_forward_kernel(const T* q, const T* k, const T* v, T* out, float* lse, AttnDims a) {
  extern __shared__ float smem[];
  constexpr int BQ = kAttnWarps * R;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t bh = blockIdx.y, b = bh / a.H, h = bh % a.H, q0 = static_cast<int64_t>(blockIdx.x) * BQ;
  const int bk = a.tile;
  float* Qs = smem;                  // [BQ, D]
  float* Ks = Qs + BQ * a.D;         // [bk, kstride]
  float* Vs = Ks + bk * a.kstride;   // [bk, Dv]
  float* Ps = Vs + bk * a.Dv;        // [warps * R, bk]
  stage_rows(Qs, static_cast<int>(a.D), q + b * a.Lq * a.qw + h * a.D, a.qw, q0, BQ, a.Lq, a.D);

  float m[R], l[R], o[R][NC];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < NC; ++c) o[r][c] = 0.0f;
  }
  const int64_t k_end = a.causal ? min(a.Lk, q0 + BQ) : a.Lk;
  for (int64_t k0 = 0; k0 < k_end; k0 += bk) {
    const int tk = static_cast<int>(min(static_cast<int64_t>(bk), k_end - k0));
    __syncthreads();  // the previous tile is no longer read
    stage_rows(Ks, a.kstride, k + (b * a.Lk + k0) * a.qw + h * a.D, a.qw, 0, tk, tk, a.D);
    stage_rows(Vs, static_cast<int>(a.Dv), v + (b * a.Lk + k0) * a.vw + h * a.Dv, a.vw, 0, tk, tk, a.Dv);
    __syncthreads();
    // Scores of this warp's rows against keys lane and lane + 32.
    float s[R][2];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r][0] = s[r][1] = 0.0f;
    for (int64_t d = 0; d < a.D; ++d) {
      const float k0v = lane < tk ? Ks[lane * a.kstride + d] : 0.0f;
      const float k1v = lane + 32 < tk ? Ks[(lane + 32) * a.kstride + d] : 0.0f;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float qv = Qs[(warp * R + r) * a.D + d];
        s[r][0] += qv * k0v;
        s[r][1] += qv * k1v;
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t qi = q0 + warp * R + r;
      float sv[2];
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        const int j = lane + 32 * t;
        const bool ok = j < tk && (!a.causal || k0 + j <= qi);
        sv[t] = ok ? s[r][t] * a.scale : -INFINITY;
      }
      const float m_new = fmaxf(m[r], cuda::detail::warp_max(fmaxf(sv[0], sv[1])));
      float corr = 1.0f, p0 = 0.0f, p1 = 0.0f;
      if (m_new != -INFINITY) {
        corr = expf(m[r] - m_new);
        p0 = expf(sv[0] - m_new);
        p1 = expf(sv[1] - m_new);
      }
      l[r] = l[r] * corr + cuda::detail::warp_sum(p0 + p1);
      m[r] = m_new;
#pragma unroll
      for (int c = 0; c < NC; ++c) o[r][c] *= corr;
      float* pr = Ps + (warp * R + r) * bk;
      if (lane < bk) pr[lane] = p0;
      if (lane + 32 < bk) pr[lane + 32] = p1;
    }
    __syncwarp();
    for (int j = 0; j < tk; ++j) {
      float vv[NC];
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        const int64_t d = lane + 32 * c;
        vv[c] = d < a.Dv ? Vs[j * a.Dv + d] : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float p = Ps[(warp * R + r) * bk + j];
#pragma unroll
        for (int c = 0; c < NC; ++c) o[r][c] += p * vv[c];
      }
    }
    __syncwarp();
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t qi = q0 + warp * R + r;
    if (qi >= a.Lq) continue;
    const float inv = 1.0f / l[r];
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int64_t d = lane + 32 * c;
      if (d < a.Dv) cuda::detail::st(out, (b * a.Lq + qi) * a.vw + h * a.Dv + d, o[r][c] * inv);
    }
    if (lse && lane == 0) lse[(b * a.H + h) * a.Lq + qi] = m[r] + logf(l[r]);
  }
}

/// delta[b, h, i] = sum over the head's columns of dout * out.
template <class T>
__global__ void attention_delta_kernel(const T* dout, const T* out, float* delta, int64_t B, int64_t Lq, int64_t H,
                                       int64_t Dv) {
  ADABLDM_GRID_STRIDE(idx, B * H * Lq) {
    const int64_t i = idx % Lq, h = idx / Lq % H, b = idx / (Lq * H);
    const int64_t base = (b * Lq + i) * H * Dv + h * Dv;
    float s = 0.0f;
    for (int64_t d = 0; d < Dv; ++d) s += cuda::detail::ld(dout, base + d) * cuda::detail::ld(out, base + d);
    delta[idx] = s;
  }
}

/// dQ for a block of 8 * R query rows of one (batch, head), walking the key tiles.
template <class T, int NC, int R>
__global__ void __launch_bounds__(kAttnWarps * 32)
attention_dq_kernel(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dq,
                    AttnDims a) {
  extern __shared__ float smem[];
  constexpr int BQ = kAttnWarps * R;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t bh = blockIdx.y, b = bh / a.H, h = bh % a.H, q0 = static_cast<int64_t>(blockIdx.x) * BQ;
  const int bk = a.tile;
  float* Qs = smem;                   // [BQ, D]
  float* Os = Qs + BQ * a.D;          // [BQ, Dv]  (dout rows)
  float* Ks = Os + BQ * a.Dv;         // [bk, kstride]
  float* Vs = Ks + bk * a.kstride;    // [bk, vstride]
  float* Ds = Vs + bk * a.vstride;    // [warps * R, bk]
  stage_rows(Qs, static_cast<int>(a.D), q + b * a.Lq * a.qw + h * a.D, a.qw, q0, BQ, a.Lq, a.D);
  stage_rows(Os, static_cast<int>(a.Dv), dout + b * a.Lq * a.vw + h * a.Dv, a.vw, q0, BQ, a.Lq, a.Dv);
  float row_lse[R], row_delta[R], acc[R][NC];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t qi = q0 + warp * R + r;
    row_lse[r] = qi < a.Lq ? lse[bh * a.Lq + qi] : 0.0f;
    row_delta[r] = qi < a.Lq ? delta[bh * a.Lq + qi] : 0.0f;
#pragma unroll
    for (int c = 0; c < NC; ++c) acc[r][c] = 0.0f;
  }
  const int64_t k_end = a.causal ? min(a.Lk, q0 + BQ) : a.Lk;
  for (int64_t k0 = 0; k0 < k_end; k0 += bk) {
    const int tk = static_cast<int>(min(static_cast<int64_t>(bk), k_end - k0));
    __syncthreads();
    stage_rows(Ks, a.kstride, k + (b * a.Lk + k0) * a.qw + h * a.D, a.qw, 0, tk, tk, a.D);
    stage_rows(Vs, a.vstride, v + (b * a.Lk + k0) * a.vw + h * a.Dv, a.vw, 0, tk, tk, a.Dv);
    __syncthreads();
    float s[R][2], dp[R][2];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r][0] = s[r][1] = dp[r][0] = dp[r][1] = 0.0f;
    for (int64_t d = 0; d < a.D; ++d) {
      const float k0v = lane < tk ? Ks[lane * a.kstride + d] : 0.0f;
      const float k1v = lane + 32 < tk ? Ks[(lane + 32) * a.kstride + d] : 0.0f;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float qv = Qs[(warp * R + r) * a.D + d];
        s[r][0] += qv * k0v;
        s[r][1] += qv * k1v;
      }
    }
    for (int64_t d = 0; d < a.Dv; ++d) {
      const float v0 = lane < tk ? Vs[lane * a.vstride + d] : 0.0f;
      const float v1 = lane + 32 < tk ? Vs[(lane + 32) * a.vstride + d] : 0.0f;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float ov = Os[(warp * R + r) * a.Dv + d];
        dp[r][0] += ov * v0;
        dp[r][1] += ov * v1;
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t qi = q0 + warp * R + r;
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        const int j = lane + 32 * t;
        const bool ok = j < tk && qi < a.Lq && (!a.causal || k0 + j <= qi);
        const float p = ok ? expf(s[r][t] * a.scale - row_lse[r]) : 0.0f;
        if (j < bk) Ds[(warp * R + r) * bk + j] = p * (dp[r][t] - row_delta[r]);
      }
    }
    __syncwarp();
    for (int j = 0; j < tk; ++j) {
      float kv[NC];
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        const int64_t d = lane + 32 * c;
        kv[c] = d < a.D ? Ks[j * a.kstride + d] : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float ds = Ds[(warp * R + r) * bk + j];
#pragma unroll
        for (int c = 0; c < NC; ++c) acc[r][c] += ds * kv[c];
      }
    }
    __syncwarp();
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t qi = q0 + warp * R + r;
    if (qi >= a.Lq) continue;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int64_t d = lane + 32 * c;
      if (d < a.D) cuda::detail::st(dq, (b * a.Lq + qi) * a.qw + h * a.D + d, a.scale * acc[r][c]);
    }
  }
}

/// dK and dV for a block of 8 * R key rows of one (batch, head), walking the query tiles.
template <class T, int NC, int R>
__global__ void __launch_bounds__(kAttnWarps * 32)
attention_dkdv_kernel(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dk,
                      T* dv, AttnDims a) {
  extern __shared__ float smem[];
  constexpr int BK = kAttnWarps * R;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t bh = blockIdx.y, b = bh / a.H, h = bh % a.H, k0 = static_cast<int64_t>(blockIdx.x) * BK;
  const int bq = a.tile;
  float* Kown = smem;                   // [BK, D]
  float* Vown = Kown + BK * a.D;        // [BK, Dv]
  float* Qs = Vown + BK * a.Dv;         // [bq, kstride]
  float* Os = Qs + bq * a.kstride;      // [bq, vstride]  (dout rows)
  float* Ls = Os + bq * a.vstride;      // [bq] lse
  float* Es = Ls + bq;                  // [bq] delta
  float* Pw = Es + bq;                  // [warps * R, bq] probabilities
  float* Dw = Pw + kAttnWarps * R * bq; // [warps * R, bq] score gradients
  stage_rows(Kown, static_cast<int>(a.D), k + b * a.Lk * a.qw + h * a.D, a.qw, k0, BK, a.Lk, a.D);
  stage_rows(Vown, static_cast<int>(a.Dv), v + b * a.Lk * a.vw + h * a.Dv, a.vw, k0, BK, a.Lk, a.Dv);
  float acc_k[R][NC], acc_v[R][NC];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int c = 0; c < NC; ++c) acc_k[r][c] = acc_v[r][c] = 0.0f;
  // Causal: queries before k0 see none of these keys.
  for (int64_t q0 = a.causal ? k0 / bq * bq : 0; q0 < a.Lq; q0 += bq) {
    const int tq = static_cast<int>(min(static_cast<int64_t>(bq), a.Lq - q0));
    __syncthreads();
    stage_rows(Qs, a.kstride, q + (b * a.Lq + q0) * a.qw + h * a.D, a.qw, 0, tq, tq, a.D);
    stage_rows(Os, a.vstride, dout + (b * a.Lq + q0) * a.vw + h * a.Dv, a.vw, 0, tq, tq, a.Dv);
    for (int i = threadIdx.x; i < tq; i += blockDim.x) {
      Ls[i] = lse[bh * a.Lq + q0 + i];
      Es[i] = delta[bh * a.Lq + q0 + i];
    }
    __syncthreads();
    float s[R][2], dp[R][2];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r][0] = s[r][1] = dp[r][0] = dp[r][1] = 0.0f;
    for (int64_t d = 0; d < a.D; ++d) {
      const float q0v = lane < tq ? Qs[lane * a.kstride + d] : 0.0f;
      const float q1v = lane + 32 < tq ? Qs[(lane + 32) * a.kstride + d] : 0.0f;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float kv = Kown[(warp * R + r) * a.D + d];
        s[r][0] += kv * q0v;
        s[r][1] += kv * q1v;
      }
    }
    for (int64_t d = 0; d < a.Dv; ++d) {
      const float o0 = lane < tq ? Os[lane * a.vstride + d] : 0.0f;
      const float o1 = lane + 32 < tq ? Os[(lane + 32) * a.vstride + d] : 0.0f;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float vv = Vown[(warp * R + r) * a.Dv + d];
        dp[r][0] += vv * o0;
        dp[r][1] += vv * o1;
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t kj = k0 + warp * R + r;
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        const int i = lane + 32 * t;
        const bool ok = i < tq && kj < a.Lk && (!a.causal || kj <= q0 + i);
        const float p = ok ? expf(s[r][t] * a.scale - Ls[i]) : 0.0f;
        if (i < bq) {
          Pw[(warp * R + r) * bq + i] = p;
          Dw[(warp * R + r) * bq + i] = ok ? p * (dp[r][t] - Es[i]) : 0.0f;
        }
      }
    }
    __syncwarp();
    for (int i = 0; i < tq; ++i) {
      float qv[NC], ov[NC];
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        const int64_t d = lane + 32 * c;
        qv[c] = d < a.D ? Qs[i * a.kstride + d] : 0.0f;
        ov[c] = d < a.Dv ? Os[i * a.vstride + d] : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float p = Pw[(warp * R + r) * bq + i], ds = Dw[(warp * R + r) * bq + i];
#pragma unroll
        for (int c = 0; c < NC; ++c) {
          acc_v[r][c] += p * ov[c];
          acc_k[r][c] += ds * qv[c];
        }
      }
    }
    __syncwarp();
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t kj = k0 + warp * R + r;
    if (kj >= a.Lk) continue;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int64_t d = lane + 32 * c;
      if (dk && d < a.D) cuda::detail::st(dk, (b * a.Lk + kj) * a.qw + h * a.D + d, a.scale * acc_k[r][c]);
      if (dv && d < a.Dv) cuda::detail::st(dv, (b * a.Lk + kj) * a.vw + h * a.Dv + d, acc_v[r][c]);
    }
  }
}

inline int odd_stride(int64_t cols) { return static_cast<int>(cols % 2 ? cols : cols + 1); }

/// Registers per lane: the widest head must fit NC * 32 columns.
inline int attention_chunks(int64_t D, int64_t Dv) {
  const int64_t w = std::max(D, Dv);
  check<ShapeError>(w <= 512, "attention (CUDA): head width ", w, " exceeds the supported 512");
  return w <= 64 ? 2 : w <= 128 ? 4 : w <= 256 ? 8 : 16;
}
constexpr int attention_rows(int nc) { return nc >= 16 ? 2 : 4; }

/// The largest streamed tile (64, 32, 16 or 8 rows) whose shared memory fits 48 KB, or else the device's opt-in
/// limit; `bytes(tile)` gives a tile's shared memory.
template <class F>
int pick_tile(F bytes, std::size_t& chosen_bytes) {
  const std::size_t optin = cuda::device_properties().sharedMemPerBlockOptin;
  for (std::size_t limit : {std::size_t{48} << 10, optin})
    for (int tile : {64, 32, 16, 8})
      if (bytes(tile) <= limit) {
        chosen_bytes = bytes(tile);
        return tile;
      }
  throw ShapeError("attention (CUDA): head widths too large for shared memory");
}

template <class T, int NC>
void attention_forward_launch(const T* q, const T* k, const T* v, T* out, float* lse, AttnDims a) {
  constexpr int R = attention_rows(NC), BQ = kAttnWarps * R;
  a.kstride = odd_stride(a.D);
  a.vstride = static_cast<int>(a.Dv);
  std::size_t bytes = 0;
  a.tile = pick_tile([&](int bk) {
    return sizeof(float) * static_cast<std::size_t>(BQ * a.D + bk * a.kstride + bk * a.Dv + kAttnWarps * R * bk);
  }, bytes);
  auto kernel = attention_forward_kernel<T, NC, R>;
  cuda::detail::allow_dynamic_shared(kernel, bytes);
  const dim3 grid(static_cast<unsigned>((a.Lq + BQ - 1) / BQ), static_cast<unsigned>(a.B * a.H));
  kernel<<<grid, kAttnWarps * 32, bytes, cuda::current_stream()>>>(q, k, v, out, lse, a);
  ADABLDM_CUDA_CHECK_LAUNCH();
}

template <class T, int NC>
void attention_backward_launch(const T* q, const T* k, const T* v, const T* dout, const float* lse,
                               const float* delta, T* dq, T* dk, T* dv, AttnDims a) {
  constexpr int R = attention_rows(NC), BQ = kAttnWarps * R;
  cudaStream_t stream = cuda::current_stream();
  a.kstride = odd_stride(a.D);
  a.vstride = odd_stride(a.Dv);
  if (dq) {
    std::size_t bytes = 0;
    AttnDims d = a;
    d.tile = pick_tile([&](int bk) {
      return sizeof(float) * static_cast<std::size_t>(BQ * a.D + BQ * a.Dv + bk * a.kstride + bk * a.vstride +
                                                      kAttnWarps * R * bk);
    }, bytes);
    auto kernel = attention_dq_kernel<T, NC, R>;
    cuda::detail::allow_dynamic_shared(kernel, bytes);
    const dim3 grid(static_cast<unsigned>((a.Lq + BQ - 1) / BQ), static_cast<unsigned>(a.B * a.H));
    kernel<<<grid, kAttnWarps * 32, bytes, stream>>>(q, k, v, dout, lse, delta, dq, d);
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  if (dk || dv) {
    std::size_t bytes = 0;
    AttnDims d = a;
    d.tile = pick_tile([&](int bq) {
      return sizeof(float) * static_cast<std::size_t>(BQ * a.D + BQ * a.Dv + bq * a.kstride + bq * a.vstride + 2 * bq +
                                                      2 * kAttnWarps * R * bq);
    }, bytes);
    auto kernel = attention_dkdv_kernel<T, NC, R>;
    cuda::detail::allow_dynamic_shared(kernel, bytes);
    const dim3 grid(static_cast<unsigned>((a.Lk + BQ - 1) / BQ), static_cast<unsigned>(a.B * a.H));
    kernel<<<grid, kAttnWarps * 32, bytes, stream>>>(q, k, v, dout, lse, delta, dk, dv, d);
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
}

inline AttnDims attention_dims(const Shape& q, const Shape& k, const Shape& v, const AttentionParams& p) {
  AttnDims a{};
  a.B = q[0];
  a.Lq = q[1];
  a.Lk = k[1];
  a.H = p.heads;
  a.D = q[2] / p.heads;
  a.Dv = v[2] / p.heads;
  a.qw = q[2];
  a.vw = v[2];
  a.scale = detail::attention_scale<float>(p, a.D);
  a.causal = p.causal ? 1 : 0;
  check<ShapeError>(a.B * a.H <= 65535, "attention (CUDA): batch x heads = ", a.B * a.H, " exceeds 65535");
  return a;
}

}  // namespace cuda_detail

/// Gradients of out = attention(q, k, v) given dout, from the saved inputs, output and log-sum-exp ([B, H, Lq]
/// float). dq / dk / dv are computed only when the pointer is not null.
template <class T>
void attention_backward(const Tensor<T, Cuda>& dout_in, const Tensor<T, Cuda>& q, const Tensor<T, Cuda>& k,
                        const Tensor<T, Cuda>& v, const Tensor<T, Cuda>& out, const Tensor<float, Cuda>& lse,
                        const AttentionParams& p, Tensor<T, Cuda>* dq, Tensor<T, Cuda>* dk, Tensor<T, Cuda>* dv) {
  const auto dout = dout_in.contiguous();
  const auto a = cuda_detail::attention_dims(q.shape(), k.shape(), v.shape(), p);
  if (dq) *dq = Tensor<T, Cuda>::empty(q.shape());
  if (dk) *dk = Tensor<T, Cuda>::empty(k.shape());
  if (dv) *dv = Tensor<T, Cuda>::empty(v.shape());
  if (a.B * a.H == 0) return;
  if (a.Lq == 0) {  // no query: the key and value gradients are zero
    if (dk) *dk = cuda::zeros<T>(k.shape());
    if (dv) *dv = cuda::zeros<T>(v.shape());
    return;
  }
  auto delta = Tensor<float, Cuda>::empty({a.B, a.H, a.Lq});
  cuda_detail::attention_delta_kernel<T><<<cuda::detail::grid_for(delta.numel()), cuda::detail::kThreads, 0,
                                           cuda::current_stream()>>>(dout.data(), out.data(), delta.data(), a.B, a.Lq,
                                                                     a.H, a.Dv);
  ADABLDM_CUDA_CHECK_LAUNCH();
  T* dqp = dq ? dq->data() : nullptr;
  T* dkp = dk ? dk->data() : nullptr;
  T* dvp = dv ? dv->data() : nullptr;
  switch (cuda_detail::attention_chunks(a.D, a.Dv)) {
    case 2: cuda_detail::attention_backward_launch<T, 2>(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dqp, dkp, dvp, a); break;
    case 4: cuda_detail::attention_backward_launch<T, 4>(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dqp, dkp, dvp, a); break;
    case 8: cuda_detail::attention_backward_launch<T, 8>(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dqp, dkp, dvp, a); break;
    default: cuda_detail::attention_backward_launch<T, 16>(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dqp, dkp, dvp, a); break;
  }
}

/// The forward on contiguous q, k, v; writes each query row's log-sum-exp to lse ([B, H, Lq] float) when lse is
/// not null. half / bfloat16 take the tensor-core kernel when cuda_detail::attention_tc_applicable says so.
template <class T>
Tensor<T, Cuda> attention_forward(const Tensor<T, Cuda>& q, const Tensor<T, Cuda>& k, const Tensor<T, Cuda>& v,
                                  const AttentionParams& p, float* lse) {
  const auto a = cuda_detail::attention_dims(q.shape(), k.shape(), v.shape(), p);
  auto out = Tensor<T, Cuda>::empty({a.B, a.Lq, v.dim(2)});
  if (a.B * a.H * a.Lq == 0) return out;  // (Dv == 0 still writes the log-sum-exp the backward reads)
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
    if (cuda_detail::attention_tc_applicable<T>(a.D, a.Dv)) {
      cuda_detail::attention_tc_forward_launch<T>(q.data(), k.data(), v.data(), out.data(), lse, a.B, a.Lq, a.Lk, a.H,
                                                  a.D, a.Dv, a.scale, a.causal != 0);
      return out;
    }
  }
  switch (cuda_detail::attention_chunks(a.D, a.Dv)) {
    case 2: cuda_detail::attention_forward_launch<T, 2>(q.data(), k.data(), v.data(), out.data(), lse, a); break;
    case 4: cuda_detail::attention_forward_launch<T, 4>(q.data(), k.data(), v.data(), out.data(), lse, a); break;
    case 8: cuda_detail::attention_forward_launch<T, 8>(q.data(), k.data(), v.data(), out.data(), lse, a); break;
    default: cuda_detail::attention_forward_launch<T, 16>(q.data(), k.data(), v.data(), out.data(), lse, a); break;
  }
  return out;
}

/// q[B, Lq, H*D], k[B, Lk, H*D], v[B, Lk, H*Dv] -> [B, Lq, H*Dv] (heads interleaved as in the CPU twin).
template <class T>
Tensor<T, Cuda> attention(const Tensor<T, Cuda>& q_in, const Tensor<T, Cuda>& k_in, const Tensor<T, Cuda>& v_in,
                          const AttentionParams& p) {
  static_assert(cuda::is_cuda_float_v<T>, "CUDA ops: float, half or bfloat16 tensors");
  detail::check_attention_shapes(q_in.shape(), k_in.shape(), v_in.shape(), p.heads);
  const int64_t B = q_in.dim(0), Lq = q_in.dim(1), H = p.heads;
  const auto q = q_in.contiguous();
  const auto k = k_in.contiguous();
  const auto v = v_in.contiguous();
  if (!autograd::should_record(q, k, v)) return attention_forward<T>(q, k, v, p, nullptr);
  auto lse = Tensor<float, Cuda>::empty({B, H, Lq});
  auto out = attention_forward<T>(q, k, v, p, lse.data());
  autograd::record("attention", out, [sq = autograd::slot(q), sk = autograd::slot(k), sv = autograd::slot(v),
                                      q = q.detach(), k = k.detach(), v = v.detach(), o = out.detach(), lse,
                                      p](const Tensor<T, Cuda>& g) {
    Tensor<T, Cuda> dq, dk, dv;
    attention_backward(g, q, k, v, o, lse, p, sq ? &dq : nullptr, sk ? &dk : nullptr, sv ? &dv : nullptr);
    if (sq) sq.add(dq);
    if (sk) sk.add(dk);
    if (sv) sv.add(dv);
  });
  return out;
}

}  // namespace adabldm::ops
