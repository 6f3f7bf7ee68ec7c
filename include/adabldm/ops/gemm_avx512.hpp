#pragma once
// Single-precision GEMM for AVX-512 CPUs (ops::gemm<float> uses it when the build targets AVX-512 and
// use_own_sgemm() is on; Eigen otherwise and for other types). The classic layout of BLIS / GotoBLAS:
//   for each KC x NC block of op(B): pack it into NR-column panels (kept in L3 / L2);
//     for each MC x KC block of op(A): pack it into MR-row panels (kept in L2);
//       for each MR x NR tile of C: the micro-kernel, MR x NR accumulators in registers over KC (B's panel in L1).
// MR x NR = 12 x 32: 24 of the 32 zmm registers accumulate, 2 hold a row of B, 1 a broadcast of A; per k, 24 FMAs
// for 14 loads. KC and MC come from the L1 and L2 sizes the CPU reports at run time (sysconf), not from
// constants tuned on one machine. Edges are zero-padded in the packs and written with masked stores.
// The K order of the sums depends only on KC, so results do not depend on the thread count.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>

#if defined(__AVX512F__) && !defined(ADABLDM_NO_OWN_SGEMM)
#include <immintrin.h>
#include <unistd.h>
#define ADABLDM_OWN_SGEMM 1
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
inline Blocking blocking() {
  static const Blocking b = [] {
    auto cache = [](int name, long fallback) {
      const long v = sysconf(name);
      return v > 0 ? v : fallback;
    };
    const long l1 = cache(_SC_LEVEL1_DCACHE_SIZE, 32 * 1024), l2 = cache(_SC_LEVEL2_CACHE_SIZE, 1024 * 1024);
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

/// op(A)[i0 : i0 + mc, k0 : k0 + kc] into MR-row panels: panel p holds, for each k, MR values (rows past mc are 0).
inline void pack_a(bool trans, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst) {
  for (int64_t p = 0; p < mc; p += kMR) {
    const int64_t rows = std::min<int64_t>(kMR, mc - p);
    float* d = dst + p * kc;
    if (!trans) {  // 16 k at a time: 12 row loads, a transpose through the stack, contiguous stores
      const float* src[kMR];
      for (int64_t r = 0; r < kMR; ++r) src[r] = r < rows ? A + (i0 + p + r) * lda + k0 : nullptr;
      alignas(64) float t[kMR][16];
      for (int64_t k = 0; k < kc; k += 16) {
        const int64_t n = std::min<int64_t>(16, kc - k);
        const __mmask16 m = n == 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
        for (int64_t r = 0; r < kMR; ++r)
          _mm512_store_ps(t[r], src[r] ? _mm512_maskz_loadu_ps(m, src[r] + k) : _mm512_setzero_ps());
        for (int64_t kk = 0; kk < n; ++kk)
          for (int64_t r = 0; r < kMR; ++r) d[(k + kk) * kMR + r] = t[r][kk];
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = A + (k0 + k) * lda + i0 + p;
        int64_t r = 0;
        for (; r < rows; ++r) d[k * kMR + r] = src[r];
        for (; r < kMR; ++r) d[k * kMR + r] = 0.0f;
      }
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
    } else {  // 16 k at a time: NR column loads (rows of B), a transpose through the stack, contiguous stores
      alignas(64) float t[kNR][16];
      for (int64_t k = 0; k < kc; k += 16) {
        const int64_t n = std::min<int64_t>(16, kc - k);
        const __mmask16 m = n == 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
        for (int64_t c = 0; c < kNR; ++c)
          _mm512_store_ps(t[c], c < cols ? _mm512_maskz_loadu_ps(m, B + (j0 + q + c) * ldb + k0 + k) : _mm512_setzero_ps());
        for (int64_t kk = 0; kk < n; ++kk) {
          alignas(64) float row[kNR];
          for (int64_t c = 0; c < kNR; ++c) row[c] = t[c][kk];
          _mm512_store_ps(d + (k + kk) * kNR, _mm512_load_ps(row));
          _mm512_store_ps(d + (k + kk) * kNR + 16, _mm512_load_ps(row + 16));
        }
      }
    }
  }
}

/// C[0:mr, 0:nr] (row stride ldc) = alpha * a_panel b_panel + (first ? beta * C : C), beta == 0 ignoring C.
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
  for (int64_t k = 0; k < kc; ++k, a += kMR, b += kNR) {
    _mm_prefetch(reinterpret_cast<const char*>(a + 8 * kMR), _MM_HINT_T0);
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 12
    for (int i = 0; i < kMR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
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

/// C[M,N] = alpha * op(A) * op(B) + beta * C on one thread (row-major, leading dimensions lda/ldb/ldc).
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
  float* pa = scratch(0, static_cast<std::size_t>(mc_max * kc_max));
  float* pb = scratch(1, static_cast<std::size_t>(nc_max * kc_max));
  for (int64_t jc = 0; jc < N; jc += bl.nc) {
    const int64_t nc = std::min(bl.nc, N - jc);
    for (int64_t pc = 0; pc < K; pc += bl.kc) {
      const int64_t kc = std::min(bl.kc, K - pc);
      pack_b(trans_b, B, ldb, pc, kc, jc, nc, pb);
      for (int64_t ic = 0; ic < M; ic += bl.mc) {
        const int64_t mc = std::min(bl.mc, M - ic);
        pack_a(trans_a, A, lda, ic, mc, pc, kc, pa);
        for (int64_t ir = 0; ir < mc; ir += kMR)
          for (int64_t jr = 0; jr < nc; jr += kNR)
            micro_kernel(kc, pa + ir * kc, pb + jr * kc, C + (ic + ir) * ldc + jc + jr, ldc,
                         std::min<int64_t>(kMR, mc - ir), std::min<int64_t>(kNR, nc - jr), alpha, beta, pc == 0);
      }
    }
  }
}
#else
inline constexpr bool kHasOwnSgemm = false;
inline void sgemm_avx512(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                         float, float*, int64_t) {}
#endif

/// Whether ops::gemm<float> uses sgemm_avx512 (where built). Off by default: on the Intel Xeon of 2026-12-07 it
/// was 10 % faster than Eigen on a 1024^3 product (165 against 150 GFLOP/s on one thread) but 10 % slower on the
/// SD1.5 UNet step, whose products are mostly transposed and thin (docs/performance.md). ADABLDM_OWN_SGEMM=1 in the
/// environment turns it on for a run; tests switch it on to compare it with Eigen.
inline bool& use_own_sgemm() {
  static bool on = [] {
    const char* e = std::getenv("ADABLDM_OWN_SGEMM");
    return e && *e && *e != '0';
  }();
  return on;
}

}  // namespace adabldm::ops::detail
