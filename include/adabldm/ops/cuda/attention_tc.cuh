#pragma once
// Tensor-core forward of the fused attention (ops/cuda/attention.cuh) for half and bfloat16, FlashAttention-2's
// algorithm with the WMMA API (nvcuda::wmma, 16 x 16 x 16 fragments, 16-bit inputs, float accumulators).
//
// A block of 4 warps owns 64 query rows of one (batch, head); warp w owns rows 16 w .. 16 w + 15 of the tile.
// Per tile of 64 keys:
//   1. K and V rows are staged in shared memory as 16-bit values (Q once, before the loop); head widths are padded
//      with zeros to multiples of 16 (zero Q / K columns add nothing to a dot product; padded V columns only feed
//      output columns that are never written back), rows past the sequence ends are zeros too;
//   2. S = Q K^T (wmma, float accumulators) is stored to shared memory as float, 16 x 64 per warp;
//   3. online softmax in float, in the log2 domain (s * scale * log2(e), exp2f): two lanes per query row (16 rows
//      per warp), each reading 32 scores into registers; running max m and running sum l per row (both lanes hold
//      them); masked scores (keys past Lk, causal j > i) are -inf; a row whose keys so far are all masked keeps
//      m = -inf, l = 0, O = 0 and never evaluates exp2(-inf - -inf). P is rounded to the 16-bit type and written
//      over the warp's own rows of S (same bytes, after every lane has read its scores);
//   4. the float output accumulator O (shared memory, 16 x Dv per warp) is rescaled row by row by
//      exp2(m_old - m_new) and then O += P V with wmma (accumulator fragments loaded from and stored back to O:
//      WMMA's accumulator layout is opaque, so the per-row rescale happens in shared memory).
// At the end each row is divided by l (l >= 1 for every row that is written: the row's largest visible score
// contributes exp2(0) = 1) and rounded once to T; the log-sum-exp m ln 2 + log(l) is saved exactly like the
// CUDA-core forward's, so the unchanged backward kernels use it.
//
// Numerics: products of 16-bit values are exact in float and summed in float by the tensor cores; the softmax is
// float; the only roundings are P to 16 bits before P V (relative <= 2^-11 for half, 2^-8 for bfloat16 per
// probability, averaged over the keys) and the output's final rounding. l sums the unrounded probabilities, so the
// saved log-sum-exp is the float one. Deterministic: fixed summation orders, every output written by one thread.
//
// Limits: D, Dv <= 256 (padded to multiples of 16) and the block's shared memory within the device's opt-in limit
// (D = Dv = 40: 51.3 KiB, 4 blocks per H100 SM; 64: 61.3 KiB; 80: 71.3 KiB; 160: 121.3 KiB, one block per SM;
// 256: 181.3 KiB, more than an A100's 163 KiB opt-in, so the CUDA-core kernel there); sm_80 or newer (bfloat16
// WMMA). attention_tc_applicable() says whether a shape takes this path; cuda::set_tensor_core_attention
// (false) forces the CUDA-core kernel (tests compare both).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "adabldm/core/cuda/tensor.cuh"

namespace adabldm {
namespace cuda {
namespace detail {
inline std::atomic<bool>& tensor_core_attention_slot() {
  static std::atomic<bool> on{true};
  return on;
}
}  // namespace detail
/// Whether half / bfloat16 attention forwards use the tensor-core kernel when the shape allows it (default on).
inline void set_tensor_core_attention(bool on) noexcept { detail::tensor_core_attention_slot().store(on); }
inline bool tensor_core_attention() noexcept { return detail::tensor_core_attention_slot().load(); }
}  // namespace cuda

namespace ops::cuda_detail {

inline constexpr int kTcWarps = 4;
inline constexpr int kTcThreads = kTcWarps * 32;
inline constexpr int kTcBq = kTcWarps * 16;  // query rows per block (16 per warp)
inline constexpr int kTcBk = 64;             // keys per tile (the softmax code assumes 64: 2 lanes x 32 keys)
inline constexpr int kTcMaxWidth = 256;      // D and Dv
inline constexpr int kTcSld = kTcBk + 4;     // S row stride in floats (multiple of 4 for wmma; 4 banks per row)
inline constexpr int kTcPld = 2 * kTcSld;    // P row stride in 16-bit elements (P overlays S row by row)
static_assert(kTcBk == 64 && kTcBq == 64, "the softmax's lane mapping assumes 64 x 64 tiles");

/// Shared-memory layout of one block (byte offsets; every region starts on a 128-byte boundary, so every wmma
/// pointer below is 32-byte aligned: row offsets are multiples of 16 rows x a stride of 16 bytes and column offsets
/// multiples of 16 elements).
struct TcLayout {
  int dp, dvp;          // D and Dv padded to multiples of 16
  int qk_ld, v_ld;      // 16-bit row strides of Q / K and V: padded width + 8 (multiples of 8, conflict-free)
  int o_ld;             // float row stride of O: dvp + 4 (multiple of 4)
  int q_off, k_off, v_off, s_off, o_off, r_off, bytes;
};
__host__ __device__ constexpr int tc_align(int bytes) { return (bytes + 127) / 128 * 128; }
__host__ __device__ inline TcLayout tc_layout(int D, int Dv) {
  TcLayout L{};
  L.dp = (D + 15) / 16 * 16;
  L.dvp = (Dv + 15) / 16 * 16;
  L.qk_ld = L.dp + 8;
  L.v_ld = L.dvp + 8;
  L.o_ld = L.dvp + 4;
  L.q_off = 0;
  L.k_off = L.q_off + tc_align(kTcBq * L.qk_ld * 2);
  L.v_off = L.k_off + tc_align(kTcBk * L.qk_ld * 2);
  L.s_off = L.v_off + tc_align(kTcBk * L.v_ld * 2);
  L.o_off = L.s_off + tc_align(kTcBq * kTcSld * 4);
  L.r_off = L.o_off + tc_align(kTcBq * L.o_ld * 4);
  L.bytes = L.r_off + tc_align(kTcBq * 4);
  return L;
}

/// The CUDA 16-bit type WMMA takes for a storage type, and the float -> 16-bit rounding (nearest even).
template <class T>
struct TcType;
template <>
struct TcType<adabldm::half> {
  using type = __half;
  static __device__ __forceinline__ type round(float f) { return __float2half_rn(f); }
};
template <>
struct TcType<adabldm::bfloat16> {
  using type = __nv_bfloat16;
  static __device__ __forceinline__ type round(float f) { return __float2bfloat16_rn(f); }
};

struct TcDims {
  int64_t B, Lq, Lk, H, qw, vw;  // qw = H * D, vw = H * Dv: row strides of q / k and v / out
  int D, Dv;
  float scale_log2;              // scale * log2(e)
  int causal;
  int vec_qk, vec_v;             // 16-byte loads allowed (width % 8 == 0 and 16-byte aligned base pointers)
};

/// Copies rows [0, rows_valid) x columns [0, cols) of a 16-bit matrix (row stride src_ld elements) into a
/// kTcBq- (= kTcBk-) row shared tile with stride ld, zero-filling columns [cols, cols_padded) and rows
/// [rows_valid, 64). vec: 16-byte copies (needs cols % 8 == 0, src_ld % 8 == 0, a 16-byte aligned src).
__device__ __forceinline__ void tc_stage(uint16_t* dst, int ld, const uint16_t* src, int64_t src_ld, int rows_valid,
                                         int cols, int cols_padded, bool vec) {
  if (vec) {
    const int cpr = cols_padded / 8;
    for (int idx = threadIdx.x; idx < kTcBk * cpr; idx += kTcThreads) {
      const int r = idx / cpr, c = (idx - r * cpr) * 8;
      uint4 val = make_uint4(0u, 0u, 0u, 0u);
      if (r < rows_valid && c < cols) val = __ldg(reinterpret_cast<const uint4*>(src + r * src_ld + c));
      *reinterpret_cast<uint4*>(dst + r * ld + c) = val;
    }
  } else {
    for (int idx = threadIdx.x; idx < kTcBk * cols_padded; idx += kTcThreads) {
      const int r = idx / cols_padded, c = idx - r * cols_padded;
      dst[r * ld + c] = r < rows_valid && c < cols ? src[r * src_ld + c] : uint16_t{0};
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kTcThreads)
attention_tc_forward_kernel(const T* q, const T* k, const T* v, T* out, float* lse, TcDims a) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  using E = typename TcType<T>::type;
  extern __shared__ __align__(128) unsigned char attn_tc_smem[];
  const TcLayout L = tc_layout(a.D, a.Dv);
  E* const Qs = reinterpret_cast<E*>(attn_tc_smem + L.q_off);      // [64][qk_ld]
  E* const Ks = reinterpret_cast<E*>(attn_tc_smem + L.k_off);      // [64][qk_ld]
  E* const Vs = reinterpret_cast<E*>(attn_tc_smem + L.v_off);      // [64][v_ld]
  float* const Ss = reinterpret_cast<float*>(attn_tc_smem + L.s_off);  // [64][kTcSld] scores
  E* const Ps = reinterpret_cast<E*>(attn_tc_smem + L.s_off);      // [64][kTcPld] probabilities, over S
  float* const Os = reinterpret_cast<float*>(attn_tc_smem + L.o_off);  // [64][o_ld] output accumulator
  float* const Rs = reinterpret_cast<float*>(attn_tc_smem + L.r_off);  // [64] per-row factor (rescale, 1 / l)

  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int w0 = warp * 16;  // this warp's first row in the tile
  const int64_t bh = blockIdx.y, b = bh / a.H, h = bh % a.H, q0 = static_cast<int64_t>(blockIdx.x) * kTcBq;
  const int tq = static_cast<int>(min(static_cast<int64_t>(kTcBq), a.Lq - q0));
  const uint16_t* const q16 = reinterpret_cast<const uint16_t*>(q);
  const uint16_t* const k16 = reinterpret_cast<const uint16_t*>(k);
  const uint16_t* const v16 = reinterpret_cast<const uint16_t*>(v);

  tc_stage(reinterpret_cast<uint16_t*>(Qs), L.qk_ld, q16 + (b * a.Lq + q0) * a.qw + h * a.D, a.qw, tq, a.D, L.dp,
           a.vec_qk);
  for (int i = lane; i < 16 * L.o_ld; i += 32) Os[w0 * L.o_ld + i] = 0.0f;  // each warp zeroes its own rows

  // Softmax mapping: lane -> row w0 + (lane >> 1) and the keys j = (2 jj + shift) mod 64, jj = 0..31, of one
  // parity (lane & 1). The shift 2 (r >> 3) makes the 32 lanes' reads of S (row stride 68 floats = 4 banks) hit 32
  // different banks, and the P writes 16 different words (a lane pair shares one).
  const int r = lane >> 1, row = w0 + r;
  const int shift = 2 * (r >> 3) + (lane & 1);
  const int64_t qi = q0 + row;
  float m = -INFINITY, l = 0.0f;

  const int64_t k_end = a.causal ? min(a.Lk, q0 + kTcBq) : a.Lk;
  for (int64_t k0 = 0; k0 < k_end; k0 += kTcBk) {
    const int tk = static_cast<int>(min(static_cast<int64_t>(kTcBk), k_end - k0));
    __syncthreads();  // every warp is done with the previous K / V tile (and Q, O zeroing are done on entry)
    tc_stage(reinterpret_cast<uint16_t*>(Ks), L.qk_ld, k16 + (b * a.Lk + k0) * a.qw + h * a.D, a.qw, tk, a.D, L.dp,
             a.vec_qk);
    tc_stage(reinterpret_cast<uint16_t*>(Vs), L.v_ld, v16 + (b * a.Lk + k0) * a.vw + h * a.Dv, a.vw, tk, a.Dv,
             L.dvp, a.vec_v);
    __syncthreads();

    // 2. S = Q K^T for this warp's 16 rows x 64 keys (unscaled; K^T is K read as a column-major matrix_b).
    {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf[4];
#pragma unroll
      for (int n = 0; n < 4; ++n) wmma::fill_fragment(sf[n], 0.0f);
      for (int d = 0; d < L.dp; d += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::row_major> qf;
        wmma::load_matrix_sync(qf, Qs + w0 * L.qk_ld + d, L.qk_ld);
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::col_major> kf;
          wmma::load_matrix_sync(kf, Ks + n * 16 * L.qk_ld + d, L.qk_ld);
          wmma::mma_sync(sf[n], qf, kf, sf[n]);
        }
      }
#pragma unroll
      for (int n = 0; n < 4; ++n) wmma::store_matrix_sync(Ss + w0 * kTcSld + n * 16, sf[n], kTcSld, wmma::mem_row_major);
    }
    __syncwarp();  // the warp's S rows are visible to all its lanes

    // 3. Online softmax, two lanes per row.
    float p[32];
    float mx = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < 32; ++jj) {
      const int j = (2 * jj + shift) & 63;
      const bool ok = j < tk && (!a.causal || k0 + j <= qi);
      p[jj] = ok ? Ss[row * kTcSld + j] * a.scale_log2 : -INFINITY;
      mx = fmaxf(mx, p[jj]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_new = fmaxf(m, mx);
    float corr = 1.0f, sum = 0.0f;
    if (m_new != -INFINITY) {
      corr = exp2f(m - m_new);  // m = -inf (nothing seen yet): 0, and O, l are 0 anyway
#pragma unroll
      for (int jj = 0; jj < 32; ++jj) {
        p[jj] = exp2f(p[jj] - m_new);  // masked: exp2(-inf) = 0
        sum += p[jj];
      }
    } else {  // every key so far is masked for this row: nothing to add, no exp2(-inf - -inf)
#pragma unroll
      for (int jj = 0; jj < 32; ++jj) p[jj] = 0.0f;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * corr + sum;
    m = m_new;
    const bool rescale = __any_sync(0xffffffffu, corr != 1.0f);
    __syncwarp();  // every lane has read its scores: P may overwrite the warp's S rows
#pragma unroll
    for (int jj = 0; jj < 32; ++jj) Ps[row * kTcPld + ((2 * jj + shift) & 63)] = TcType<T>::round(p[jj]);
    if ((lane & 1) == 0) Rs[row] = corr;
    __syncwarp();  // P and the factors are visible

    // 4. O = O * corr (per row), then O += P V.
    if (rescale)
      for (int i = lane; i < 16 * L.dvp; i += 32) {
        const int rr = i / L.dvp, c = i - rr * L.dvp;
        Os[(w0 + rr) * L.o_ld + c] *= Rs[w0 + rr];
      }
    __syncwarp();
    {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::row_major> pf[4];
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wmma::load_matrix_sync(pf[kk], Ps + w0 * kTcPld + kk * 16, kTcPld);
      for (int c = 0; c < L.dvp; c += 16) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> of;
        wmma::load_matrix_sync(of, Os + w0 * L.o_ld + c, L.o_ld, wmma::mem_row_major);
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::row_major> vf;
          wmma::load_matrix_sync(vf, Vs + kk * 16 * L.v_ld + c, L.v_ld);
          wmma::mma_sync(of, pf[kk], vf, of);
        }
        wmma::store_matrix_sync(Os + w0 * L.o_ld + c, of, L.o_ld, wmma::mem_row_major);
      }
    }
    // (the next tile's first __syncthreads orders these reads of P, V and Rs before their overwrites)
  }

  __syncwarp();  // O stores visible to the warp; Rs (the rescale factors) no longer read
  if ((lane & 1) == 0) {
    Rs[row] = l > 0.0f ? 1.0f / l : 0.0f;
    if (lse && qi < a.Lq) lse[bh * a.Lq + qi] = m * 0.69314718055994531f + logf(l);
  }
  __syncwarp();
  for (int i = lane; i < 16 * a.Dv; i += 32) {
    const int rr = i / a.Dv, c = i - rr * a.Dv;
    const int64_t qr = q0 + w0 + rr;
    if (qr < a.Lq)
      cuda::detail::st(out, (b * a.Lq + qr) * a.vw + h * a.Dv + c, Os[(w0 + rr) * L.o_ld + c] * Rs[w0 + rr]);
  }
#else
  __trap();  // never launched: attention_tc_applicable() requires compute capability 8.0
#endif
}

/// Whether attention_forward<T> takes the tensor-core path for these head widths on the current device.
template <class T>
bool attention_tc_applicable(int64_t D, int64_t Dv) {
  if constexpr (!std::is_same_v<T, adabldm::half> && !std::is_same_v<T, adabldm::bfloat16>) {
    (void)D;
    (void)Dv;
    return false;
  } else {
    if (!cuda::tensor_core_attention() || D < 1 || Dv < 1 || D > kTcMaxWidth || Dv > kTcMaxWidth) return false;
    const auto& p = cuda::device_properties();
    // The kernel's code must be sm_80+ too (built for an older architecture only, its body is a trap).
    static const bool compiled_for_sm80 = [] {
      cudaFuncAttributes fa{};
      if (cudaFuncGetAttributes(&fa, attention_tc_forward_kernel<T>) == cudaSuccess) return fa.ptxVersion >= 80;
      (void)cudaGetLastError();  // (not left for the next launch check)
      return false;
    }();
    return p.major >= 8 && compiled_for_sm80 &&
           static_cast<std::size_t>(tc_layout(static_cast<int>(D), static_cast<int>(Dv)).bytes) <=
               p.sharedMemPerBlockOptin;
  }
}

/// Launches the tensor-core forward (the caller checked attention_tc_applicable<T>). q, k, v, out contiguous.
template <class T>
void attention_tc_forward_launch(const T* q, const T* k, const T* v, T* out, float* lse, int64_t B, int64_t Lq,
                                 int64_t Lk, int64_t H, int64_t D, int64_t Dv, float scale, bool causal) {
  static_assert(std::is_same_v<T, adabldm::half> || std::is_same_v<T, adabldm::bfloat16>,
                "tensor-core attention: half or bfloat16");
  const auto aligned16 = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  TcDims a{};
  a.B = B;
  a.Lq = Lq;
  a.Lk = Lk;
  a.H = H;
  a.qw = H * D;
  a.vw = H * Dv;
  a.D = static_cast<int>(D);
  a.Dv = static_cast<int>(Dv);
  a.scale_log2 = static_cast<float>(static_cast<double>(scale) * 1.4426950408889634);
  a.causal = causal ? 1 : 0;
  a.vec_qk = D % 8 == 0 && aligned16(q) && aligned16(k) ? 1 : 0;  // (D % 8 == 0 makes H * D and h * D multiples too)
  a.vec_v = Dv % 8 == 0 && aligned16(v) ? 1 : 0;
  const std::size_t bytes = static_cast<std::size_t>(tc_layout(a.D, a.Dv).bytes);
  auto kernel = attention_tc_forward_kernel<T>;
  cuda::detail::allow_dynamic_shared(kernel, bytes);
  const dim3 grid(static_cast<unsigned>((Lq + kTcBq - 1) / kTcBq), static_cast<unsigned>(B * H));
  kernel<<<grid, kTcThreads, bytes, cuda::current_stream()>>>(q, k, v, out, lse, a);
  ADABLDM_CUDA_CHECK_LAUNCH();
}

}  // namespace ops::cuda_detail
}  // namespace adabldm
