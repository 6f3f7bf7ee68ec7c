#pragma once
// Single-precision GEMM for AVX-512 CPUs (ops::gemm<float> uses it when the build targets AVX-512, unless
// ADABLDM_EIGEN_GEMM=1; Eigen otherwise and for other types). The classic layout of BLIS / GotoBLAS:
//   for each KC x NC block of op(B): pack it into NR-column panels (kept in L3 / L2; a transposed B through
//     16 x 16 in-register transposes);
//     for each MC x KC block of op(A): pack it into MR-row panels (kept in L2: row copies for a row-major A, which
//     the micro-kernel reads at fixed offsets, or interleaved for a transposed one);
//       for each MR x NR tile of C: the micro-kernel, MR x NR accumulators in registers over KC (B's panel in L1).
// MR x NR = 12 x 32: 24 of the 32 zmm registers accumulate, 2 hold a row of B, 1 a broadcast of A; per k, 24 FMAs
// for 14 loads. KC and MC come from the L1 and L2 sizes the CPU reports at run time (sysconf), not from
// constants tuned on one machine. Edges are zero-padded in the packs and written with masked stores.
// The K order of the sums depends only on KC, so results do not depend on the thread count.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "adabldm/core/threads.hpp"

#if defined(__AVX512F__) && !defined(ADABLDM_NO_OWN_SGEMM)
#include <immintrin.h>
#include <unistd.h>
#define ADABLDM_OWN_SGEMM 1
#endif

// nvcc's front end (these headers reach .cu files too) does not know GCC's unroll pragma but passes it on to the
// host compiler, which does: only the warning is silenced, up to the end of this header (the includer's own
// settings are restored there).
#ifdef __NVCC__
#pragma nv_diagnostic push
#pragma nv_diag_suppress 1675
#endif

namespace adabldm::ops::detail {

#ifdef ADABLDM_OWN_SGEMM
inline constexpr bool kHasOwnSgemm = true;

namespace sgemm {
constexpr int kMR = 12, kNR = 32;

/// Block sizes from the cache sizes of the machine (sysconf; defaults when it does not say): B's KC x NR panel
/// takes two thirds of L1 (measured best on a 48 KB L1: KC 256), A's MC x KC block half of L2.
struct Blocking {
  int64_t kc, mc, nc;
};
/// The L1 data and L2 cache sizes in bytes, as sysconf reports them (32 KB and 1 MB when it does not say).
struct CacheSizes {
  long l1, l2;
};
inline CacheSizes cache_sizes() {
  auto cache = [](int name, long fallback) {
    const long v = sysconf(name);
    return v > 0 ? v : fallback;
  };
  return {cache(_SC_LEVEL1_DCACHE_SIZE, 32 * 1024), cache(_SC_LEVEL2_CACHE_SIZE, 1024 * 1024)};
}
inline Blocking blocking() {
  static const Blocking b = [] {
    const auto [l1, l2] = cache_sizes();
    Blocking r;
    r.kc = std::clamp<int64_t>((l1 * 2 / 3) / (kNR * 4) / 16 * 16, 64, 512);
    r.mc = std::clamp<int64_t>((l2 / 2) / (r.kc * 4) / kMR * kMR, kMR, 1200);
    r.nc = 4096;
    return r;
  }();
  return b;
}

/// A per-thread 64-byte aligned scratch buffer of at least n floats (grows, never shrinks).
inline float* scratch(int which, std::size_t n) {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<float, Free> buf[2];
  thread_local std::size_t cap[2] = {0, 0};
  if (cap[which] < n) {
    const std::size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    buf[which].reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    if (!buf[which]) throw std::bad_alloc();
    cap[which] = n;
  }
  return buf[which].get();
}

/// A transposed op(A) (A stored [K, M]) into MR-row panels: panel p holds, for each k, its MR values, which are
/// contiguous in A (rows past mc are 0).
inline void pack_a_transposed(const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst) {
  for (int64_t p = 0; p < mc; p += kMR) {
    const int64_t rows = std::min<int64_t>(kMR, mc - p);
    float* d = dst + p * kc;
    for (int64_t k = 0; k < kc; ++k) {
      const float* src = A + (k0 + k) * lda + i0 + p;
      int64_t r = 0;
      for (; r < rows; ++r) d[k * kMR + r] = src[r];
      for (; r < kMR; ++r) d[k * kMR + r] = 0.0f;
    }
  }
}

/// Transposes 16 rows of 16 floats in registers: row kk of the transpose ends up in r[transposed_row(kk)]
/// (unpack, then 128-bit lane shuffles, which leave the middle two of each group of four swapped). The masked forms
/// with every lane set are the plain instructions; unlike the plain intrinsics they do not start from GCC 12's
/// "undefined" vector, which it warns about wherever this is not inlined.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_mask_unpacklo_ps(r[2 * i], 0xFFFF, r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_mask_unpackhi_ps(r[2 * i], 0xFFFF, r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 2; ++j) {
      const __m512d a = _mm512_castps_pd(t[4 * i + j]), b = _mm512_castps_pd(t[4 * i + j + 2]);
      r[4 * i + j] = _mm512_castpd_ps(_mm512_mask_unpacklo_pd(a, 0xFF, a, b));
      r[4 * i + j + 2] = _mm512_castpd_ps(_mm512_mask_unpackhi_pd(a, 0xFF, a, b));
    }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_mask_shuffle_f32x4(r[8 * i + j], 0xFFFF, r[8 * i + j], r[8 * i + j + 4], 0x88);
      t[8 * i + j + 4] = _mm512_mask_shuffle_f32x4(r[8 * i + j], 0xFFFF, r[8 * i + j], r[8 * i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_mask_shuffle_f32x4(t[j], 0xFFFF, t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_mask_shuffle_f32x4(t[j], 0xFFFF, t[j], t[j + 8], 0xdd);
  }
}
inline int64_t transposed_row(int64_t kk) { return (kk & ~int64_t{3}) | ((kk & 1) << 1) | ((kk >> 1) & 1); }

/// A row-major op(A) (not transposed) is packed as rows instead: panel p holds its MR rows, each kRowStride floats
/// apart, so packing is a copy of each row's kc values (no transpose) and the micro-kernel reads the row r's k-th
/// value at a constant offset r * kRowStride from its k-th step.
constexpr int64_t kRowStride = 512;  // >= the largest KC
inline void pack_a_rows(const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst) {
  for (int64_t p = 0; p < mc; p += kMR) {
    const int64_t rows = std::min<int64_t>(kMR, mc - p);
    float* d = dst + p * kRowStride;
    for (int64_t r = 0; r < kMR; ++r) {
      float* row = d + r * kRowStride;
      if (r < rows) std::memcpy(row, A + (i0 + p + r) * lda + k0, static_cast<std::size_t>(kc) * sizeof(float));
      else std::memset(row, 0, static_cast<std::size_t>(kc) * sizeof(float));
    }
  }
}

/// op(B)[k0 : k0 + kc, j0 : j0 + nc] into NR-column panels: panel q holds, for each k, NR values (columns past nc
/// are 0).
inline void pack_b(bool trans, const float* B, int64_t ldb, int64_t k0, int64_t kc, int64_t j0, int64_t nc, float* dst) {
  for (int64_t q = 0; q < nc; q += kNR) {
    const int64_t cols = std::min<int64_t>(kNR, nc - q);
    float* d = dst + q * kc;
    if (!trans) {
      const __mmask16 m0 = cols >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << cols) - 1);
      const __mmask16 m1 = cols >= 32 ? 0xFFFF : cols > 16 ? static_cast<__mmask16>((1u << (cols - 16)) - 1) : 0;
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = B + (k0 + k) * ldb + j0 + q;
        _mm512_store_ps(d + k * kNR, _mm512_maskz_loadu_ps(m0, src));
        _mm512_store_ps(d + k * kNR + 16, _mm512_maskz_loadu_ps(m1, src + 16));
      }
    } else {  // 16 k at a time: 16 x 16 blocks of B's rows, transposed in registers
      for (int64_t k = 0; k < kc; k += 16) {
        const int64_t n = std::min<int64_t>(16, kc - k);
        const __mmask16 m = n == 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
        for (int64_t half = 0; half < kNR; half += 16) {
          __m512 r[16];
          for (int64_t c = 0; c < 16; ++c)
            r[c] = half + c < cols ? _mm512_maskz_loadu_ps(m, B + (j0 + q + half + c) * ldb + k0 + k) : _mm512_setzero_ps();
          transpose16(r);
          for (int64_t kk = 0; kk < n; ++kk) _mm512_store_ps(d + (k + kk) * kNR + half, r[transposed_row(kk)]);
        }
      }
    }
  }
}

/// C[0:mr, 0:nr] (row stride ldc) = alpha * a_panel b_panel + (first ? beta * C : C), beta == 0 ignoring C.
/// `kRows`: A is a row panel (pack_a_rows), else interleaved (pack_a_transposed).
template <bool kRows>
inline void micro_kernel(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int64_t mr, int64_t nr,
                         float alpha, float beta, bool first) {
  // The C tile's rows are 4 KB apart in a large product: no hardware prefetcher finds them, and waiting for
  // them after the loop cost a third of the time. Asked for now, they arrive while the FMAs run.
  for (int64_t i = 0; i < mr; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 16), _MM_HINT_T0);
  }
  __m512 acc[kMR][2];
#pragma GCC unroll 12
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k, a += kRows ? 1 : kMR, b += kNR) {
    if constexpr (!kRows) _mm_prefetch(reinterpret_cast<const char*>(a + 8 * kMR), _MM_HINT_T0);
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 12
    for (int i = 0; i < kMR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[kRows ? i * kRowStride : i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
  }
  const __mmask16 m0 = nr >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << nr) - 1);
  const __mmask16 m1 = nr >= 32 ? 0xFFFF : nr > 16 ? static_cast<__mmask16>((1u << (nr - 16)) - 1) : 0;
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(first ? beta : 1.0f);
  const bool read_c = !first || beta != 0.0f;
#pragma GCC unroll 12
  for (int i = 0; i < kMR; ++i) {
    if (i >= mr) break;
    float* row = c + i * ldc;
    __m512 v0 = _mm512_mul_ps(va, acc[i][0]), v1 = _mm512_mul_ps(va, acc[i][1]);
    if (read_c) {
      v0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, row), v0);
      v1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, row + 16), v1);
    }
    _mm512_mask_storeu_ps(row, m0, v0);
    _mm512_mask_storeu_ps(row + 16, m1, v1);
  }
}
}  // namespace sgemm

/// C[M,N] = alpha * op(A) * op(B) + beta * C on one thread (row-major, leading dimensions lda/ldb/ldc). Each C
/// element sums in an order fixed by KC alone, so a product split into slices of rows or columns gives the same
/// bits as the whole.
inline void sgemm_avx512(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                         int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  using namespace sgemm;
  if (M <= 0 || N <= 0) return;
  if (K == 0) {  // no products: C = beta * C (beta == 0 clears, also NaN)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  const Blocking bl = blocking();
  const int64_t kc_max = std::min(bl.kc, K), mc_max = std::min(bl.mc, (M + kMR - 1) / kMR * kMR);
  const int64_t nc_max = std::min(bl.nc, (N + kNR - 1) / kNR * kNR);
  const bool rows = !trans_a;
  float* pa = scratch(0, static_cast<std::size_t>(mc_max * (rows ? kRowStride : kc_max)));
  float* pb = scratch(1, static_cast<std::size_t>(nc_max * kc_max));
  for (int64_t jc = 0; jc < N; jc += bl.nc) {
    const int64_t nc = std::min(bl.nc, N - jc);
    for (int64_t pc = 0; pc < K; pc += bl.kc) {
      const int64_t kc = std::min(bl.kc, K - pc);
      pack_b(trans_b, B, ldb, pc, kc, jc, nc, pb);
      for (int64_t ic = 0; ic < M; ic += bl.mc) {
        const int64_t mc = std::min(bl.mc, M - ic);
        if (rows) pack_a_rows(A, lda, ic, mc, pc, kc, pa);
        else pack_a_transposed(A, lda, ic, mc, pc, kc, pa);
        for (int64_t ir = 0; ir < mc; ir += kMR)
          for (int64_t jr = 0; jr < nc; jr += kNR) {
            float* ct = C + (ic + ir) * ldc + jc + jr;
            const int64_t mr = std::min<int64_t>(kMR, mc - ir), nr = std::min<int64_t>(kNR, nc - jr);
            if (rows) micro_kernel<true>(kc, pa + ir * kRowStride, pb + jr * kc, ct, ldc, mr, nr, alpha, beta, pc == 0);
            else micro_kernel<false>(kc, pa + ir * kc, pb + jr * kc, ct, ldc, mr, nr, alpha, beta, pc == 0);
          }
      }
    }
  }
}

/// The same over the threads: one slice of rows (or of columns, when C is wide) per thread, each a whole
/// sgemm_avx512, so there is one hand-over per product (no thread waits for another between K blocks, which
/// stalls when the cores are shared) and the bits do not depend on the thread count.
inline void sgemm_avx512_parallel(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                                  const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                                  int64_t ldc) {
  using namespace sgemm;
  const int64_t threads = num_threads();
  if (threads <= 1 || M * N * K < (int64_t{1} << 22))
    return sgemm_avx512(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  if (M >= N) {
    const int64_t slice = ((M + threads - 1) / threads + kMR - 1) / kMR * kMR;
    parallel_for((M + slice - 1) / slice, [&](int64_t s) {
      const int64_t m0 = s * slice, m = std::min(slice, M - m0);
      sgemm_avx512(trans_a, trans_b, m, N, K, alpha, trans_a ? A + m0 : A + m0 * lda, lda, B, ldb, beta, C + m0 * ldc, ldc);
    });
  } else {
    const int64_t slice = ((N + threads - 1) / threads + kNR - 1) / kNR * kNR;
    parallel_for((N + slice - 1) / slice, [&](int64_t s) {
      const int64_t n0 = s * slice, n = std::min(slice, N - n0);
      sgemm_avx512(trans_a, trans_b, M, n, K, alpha, A, lda, trans_b ? B + n0 * ldb : B + n0, ldb, beta, C + n0, ldc);
    });
  }
}
#else
inline constexpr bool kHasOwnSgemm = false;
inline void sgemm_avx512(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                         float, float*, int64_t) {}
inline void sgemm_avx512_parallel(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                                  int64_t, float, float*, int64_t) {}
#endif

/// Whether ops::gemm<float> uses sgemm_avx512 (where built): on, unless the environment variable
/// ADABLDM_EIGEN_GEMM=1 asks for Eigen's kernel for a run (A/B timings); tests switch it to compare the two.
inline bool& use_own_sgemm() {
  static bool on = [] {
    const char* e = std::getenv("ADABLDM_EIGEN_GEMM");
    return !(e && *e && *e != '0');
  }();
  return on;
}

}  // namespace adabldm::ops::detail

#ifdef __NVCC__
#pragma nv_diagnostic pop
#endif
