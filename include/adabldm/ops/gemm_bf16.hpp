#pragma once
// bfloat16 matrix products for float tensors on the CPU (what torch.set_float32_matmul_precision("medium") allows
// PyTorch): A and B are rounded to bfloat16 (round to nearest even) as they are packed, the products are summed in
// float32 and C stays float32. Off by default; ops::set_cpu_matmul_precision(MatmulPrecision::bf16), the
// environment variable ADABLDM_CPU_MATMUL=bf16 or the CLI's --cpu-matmul bf16 turn it on, and every float
// ops::gemm then takes it (linear layers, convolutions, their backward products), on CPUs that have one of:
//  - AMX (Intel Sapphire Rapids and later): a 32 x 32 block of C held in four 16 x 16 tiles, one TDPBF16PS per
//    tile per 32 values of k;
//  - AVX512-BF16 (AMD Zen 4 / 5, Intel Cooper Lake): VDPBF16PS, two values of k per multiply-add, 8 x 32 of C per
//    pass in registers.
// Both read one packing: A in 32-row panels of bfloat16 rows (AMX's A tile layout), B in 32-column panels of
// k-pairs (the VNNI layout of AMX's B tile and of VDPBF16PS's operands), each zero-padded to a multiple of 32 in k.
// The kernel is picked at run time (CPUID, and Linux's permission to use AMX tiles); elsewhere, or in builds
// without AVX-512, products stay float32. Measured on the Intel Xeon VM (one core, operands in cache): f32 FMA
// 220 GFLOP/s, VDPBF16PS 110 (half its rate: no gain there), AMX 2 600.
// As in gemm_avx512.hpp, the order of each sum depends only on the block sizes: the bits do not depend on the
// thread count.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include "adabldm/core/error.hpp"
#include "adabldm/core/threads.hpp"
#include "adabldm/ops/gemm_avx512.hpp"

// AMX intrinsics and target attributes need GCC >= 11 or clang >= 12 on x86-64; older compilers keep float32.
#if defined(ADABLDM_OWN_SGEMM) && defined(__x86_64__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif
#define ADABLDM_BF16_GEMM 1
#define ADABLDM_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))
#define ADABLDM_TARGET_AMX __attribute__((target("avx512f,avx512bw,avx512bf16,amx-tile,amx-bf16")))
#endif

// nvcc's warning on GCC's unroll pragma silenced up to the end of this header, as in gemm_avx512.hpp.
#ifdef __NVCC__
#pragma nv_diagnostic push
#pragma nv_diag_suppress 1675
#endif

namespace adabldm::ops {

/// The precision of float matrix products on the CPU: exact float32 (the default), or bfloat16 operands with
/// float32 sums where the CPU has AMX or AVX512-BF16 (8 significant bits per operand, 2-3 decimal digits; the
/// hardware's conversion and products treat denormal floats as zero).
enum class MatmulPrecision { f32, bf16 };

/// The process-wide setting (from ADABLDM_CPU_MATMUL=bf16 at first use; any other value means f32). Set it before
/// starting work on other threads: it is read, not synchronised, by every product.
inline MatmulPrecision& cpu_matmul_precision() {
  static MatmulPrecision p = [] {
    const char* e = std::getenv("ADABLDM_CPU_MATMUL");
    return e && std::strcmp(e, "bf16") == 0 ? MatmulPrecision::bf16 : MatmulPrecision::f32;
  }();
  return p;
}
inline void set_cpu_matmul_precision(MatmulPrecision p) { cpu_matmul_precision() = p; }

namespace detail {

enum class Bf16Kernel { none, avx512_bf16, amx };

inline const char* bf16_kernel_name(Bf16Kernel k) {
  return k == Bf16Kernel::amx ? "amx" : k == Bf16Kernel::avx512_bf16 ? "avx512-bf16" : "none";
}

#ifdef ADABLDM_BF16_GEMM
/// What this CPU (and OS) offers, detected once.
inline Bf16Kernel detect_bf16_kernel() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return Bf16Kernel::none;
  const bool amx = (d >> 22 & 1) && (d >> 24 & 1);  // AMX-BF16, AMX-TILE
  unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
  const bool avx512_bf16 = a >= 1 && __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1) && (a1 >> 5 & 1) && (b >> 30 & 1);
  if (!avx512_bf16) return Bf16Kernel::none;
#if defined(__linux__) && defined(SYS_arch_prctl)
  // Linux hands out the 8 KB tile state only on request (ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA).
  if (amx && syscall(SYS_arch_prctl, 0x1023, 18) == 0) return Bf16Kernel::amx;
#else
  (void)amx;
#endif
  return Bf16Kernel::avx512_bf16;
}
#else
inline Bf16Kernel detect_bf16_kernel() { return Bf16Kernel::none; }
#endif

/// The kernel bf16 products use (tests may switch it to another the CPU has, or to none).
inline Bf16Kernel& bf16_kernel() {
  static Bf16Kernel k = detect_bf16_kernel();
  return k;
}

#ifdef ADABLDM_BF16_GEMM
namespace bgemm {
constexpr int kMR = 32, kNR = 32, kKStep = 32;

using sgemm::Blocking;
/// KC: B's 32-column panel (2 bytes a value) in two thirds of L1; MC: A's block in half of L2 (sysconf).
inline Blocking blocking() {
  static const Blocking b = [] {
    const auto [l1, l2] = sgemm::cache_sizes();
    Blocking r;
    r.kc = std::clamp<int64_t>((l1 * 2 / 3) / (kNR * 2) / kKStep * kKStep, 64, 1024);
    r.mc = std::clamp<int64_t>((l2 / 2) / (r.kc * 2) / kMR * kMR, kMR, 2048);
    r.nc = 4096;
    return r;
  }();
  return b;
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline __mmask16 lanes(int64_t n) { return n >= 16 ? 0xFFFF : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1); }

/// 32 floats (n of them valid, the rest 0) -> 32 bfloat16 in order.
ADABLDM_TARGET_BF16 inline __m512i to_bf16(const float* src, int64_t n) {
  const __m512 lo = _mm512_maskz_loadu_ps(lanes(n), src), hi = _mm512_maskz_loadu_ps(lanes(n - 16), src + 16);
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
}

/// op(A)[i0 : i0 + mc, k0 : k0 + kc] as bfloat16 rows of kcp values (kc rounded up to 32, zero-padded; rows past mc
/// up to the next multiple of 32 are zero).
ADABLDM_TARGET_BF16 inline void pack_a(bool trans, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0,
                                       int64_t kc, int64_t kcp, uint16_t* dst) {
  const int64_t mcp = round_up(mc, kMR);
  if (!trans) {
    for (int64_t i = 0; i < mcp; ++i) {
      uint16_t* row = dst + i * kcp;
      if (i >= mc) {
        std::memset(row, 0, static_cast<std::size_t>(kcp) * 2);
        continue;
      }
      const float* src = A + (i0 + i) * lda + k0;
      for (int64_t k = 0; k < kcp; k += 32) _mm512_store_si512(row + k, to_bf16(src + k, kc - k));
    }
    return;
  }
  // A stored [K, M]: 16 x 16 blocks (16 k of 16 rows) transposed in registers, two of them per 32 k.
  for (int64_t i = 0; i < mcp; i += 16) {
    const __mmask16 mi = lanes(mc - i);
    for (int64_t k = 0; k < kcp; k += 32) {
      __m512 lo[16], hi[16];
      for (int64_t kk = 0; kk < 16; ++kk) {
        lo[kk] = k + kk < kc ? _mm512_maskz_loadu_ps(mi, A + (k0 + k + kk) * lda + i0 + i) : _mm512_setzero_ps();
        hi[kk] = k + 16 + kk < kc ? _mm512_maskz_loadu_ps(mi, A + (k0 + k + 16 + kk) * lda + i0 + i) : _mm512_setzero_ps();
      }
      sgemm::transpose16(lo);
      sgemm::transpose16(hi);
      for (int64_t r = 0; r < 16; ++r) {
        const int64_t t = sgemm::transposed_row(r);
        _mm512_store_si512(dst + (i + r) * kcp + k, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi[t], lo[t])));
      }
    }
  }
}

/// op(B)[k0 : k0 + kc, j0 : j0 + nc] into 32-column panels of k-pairs: panel q holds, for each pair p, 32 columns
/// of (op(B)[2p][j], op(B)[2p + 1][j]) (64 values); kc is zero-padded to kcp, columns past nc are 0.
ADABLDM_TARGET_BF16 inline void pack_b(bool trans, const float* B, int64_t ldb, int64_t k0, int64_t kc, int64_t kcp,
                                       int64_t j0, int64_t nc, uint16_t* dst) {
  for (int64_t q = 0; q < nc; q += kNR) {
    uint16_t* d = dst + q * kcp;
    for (int64_t h = 0; h < kNR; h += 16) {
      const int64_t cols = std::min<int64_t>(16, nc - q - h);  // may be <= 0: a zero half
      if (!trans) {
        // Rows 2p and 2p + 1 converted together, then interleaved: (r0[0], r1[0], r0[1], r1[1], ...).
        const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23,
                                                     7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        const __mmask16 m = lanes(cols);
        for (int64_t p = 0; p < kcp / 2; ++p) {
          const int64_t k = 2 * p;
          const __m512 r0 = k < kc ? _mm512_maskz_loadu_ps(m, B + (k0 + k) * ldb + j0 + q + h) : _mm512_setzero_ps();
          const __m512 r1 = k + 1 < kc ? _mm512_maskz_loadu_ps(m, B + (k0 + k + 1) * ldb + j0 + q + h) : _mm512_setzero_ps();
          const __m512i both = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(r1, r0));
          _mm512_store_si512(d + p * 2 * kNR + 2 * h, _mm512_permutexvar_epi16(interleave, both));
        }
      } else {
        // B stored [N, K]: a column's k-pairs are adjacent; 16 columns x 16 pairs transposed as 32-bit words.
        for (int64_t k = 0; k < kcp; k += 32) {
          __m512 r[16];
          for (int64_t c = 0; c < 16; ++c)
            r[c] = c < cols ? reinterpret_cast<__m512>(to_bf16(B + (j0 + q + h + c) * ldb + k0 + k, kc - k))
                            : _mm512_setzero_ps();
          sgemm::transpose16(r);
          for (int64_t pp = 0; pp < 16; ++pp)
            _mm512_store_ps(reinterpret_cast<float*>(d + (k / 2 + pp) * 2 * kNR + 2 * h), r[sgemm::transposed_row(pp)]);
        }
      }
    }
  }
}

/// tile (32 x 32 floats) -> C[0:mr, 0:nr] = alpha * tile + (first ? beta * C : C), beta == 0 ignoring C.
ADABLDM_TARGET_BF16 inline void write_c(const float* tile, float* c, int64_t ldc, int64_t mr, int64_t nr, float alpha,
                                        float beta, bool first) {
  const __mmask16 m0 = lanes(nr), m1 = lanes(nr - 16);
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(first ? beta : 1.0f);
  const bool read_c = !first || beta != 0.0f;
  for (int64_t i = 0; i < mr; ++i) {
    float* row = c + i * ldc;
    __m512 v0 = _mm512_mul_ps(va, _mm512_load_ps(tile + i * kNR)), v1 = _mm512_mul_ps(va, _mm512_load_ps(tile + i * kNR + 16));
    if (read_c) {
      v0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, row), v0);
      v1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, row + 16), v1);
    }
    _mm512_mask_storeu_ps(row, m0, v0);
    _mm512_mask_storeu_ps(row + 16, m1, v1);
  }
}

/// The AMX tile configuration: tiles 0-3 are C (16 rows of 16 floats), 4-5 A (16 rows of 32 bfloat16), 6-7 B (16
/// pairs of 16 columns).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes_per_row[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

/// tile = A panel (32 rows, kcp apart) x B panel (kcp / 2 pairs of 32 columns), on AMX.
ADABLDM_TARGET_AMX inline void kernel_amx(int64_t kcp, const uint16_t* a, const uint16_t* b, float* tile) {
  // GCC's _tile_loadd is an asm without a memory clobber: the packing's stores must not move past it.
  asm volatile("" ::: "memory");
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t a_stride = kcp * 2;
  for (int64_t k = 0; k < kcp; k += kKStep) {
    _tile_loadd(4, a + k, a_stride);
    _tile_loadd(5, a + 16 * kcp + k, a_stride);
    _tile_loadd(6, b + k * kNR, 4 * kNR);  // pairs k/2 .. k/2 + 15, columns 0-15 (a pair-row is 128 bytes)
    _tile_loadd(7, b + k * kNR + 32, 4 * kNR);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, tile, 4 * kNR);
  _tile_stored(1, tile + 16, 4 * kNR);
  _tile_stored(2, tile + 16 * kNR, 4 * kNR);
  _tile_stored(3, tile + 16 * kNR + 16, 4 * kNR);
}

/// The same with VDPBF16PS, 8 rows at a time (16 accumulators), rows past mr skipped.
ADABLDM_TARGET_BF16 inline void kernel_avx512(int64_t kcp, const uint16_t* a, const uint16_t* b, float* tile, int64_t mr) {
  for (int64_t g = 0; g < mr; g += 8) {
    __m512 acc[8][2];
    for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    const uint16_t* ag = a + g * kcp;
    for (int64_t p = 0; p < kcp / 2; ++p) {
      const __m512bh b0 = reinterpret_cast<__m512bh>(_mm512_load_si512(b + p * 2 * kNR));
      const __m512bh b1 = reinterpret_cast<__m512bh>(_mm512_load_si512(b + p * 2 * kNR + 32));
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        uint32_t pair;
        std::memcpy(&pair, ag + i * kcp + 2 * p, 4);
        const __m512bh ai = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(pair)));
        acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
        acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
      }
    }
    for (int i = 0; i < 8; ++i) {
      _mm512_store_ps(tile + (g + i) * kNR, acc[i][0]);
      _mm512_store_ps(tile + (g + i) * kNR + 16, acc[i][1]);
    }
  }
}

/// An operand packed whole in advance (a frozen weight, below): its K block pc holds `rows_p` rows (A) or columns
/// (B), a multiple of 32, of kcp values each, at data + rows_p * pc; this product reads from row (column) `first`.
/// data == nullptr: the product packs each block itself as it goes.
struct Prepacked {
  const uint16_t* data = nullptr;
  int64_t rows_p = 0, first = 0;
};

/// One thread's product (kernel != none).
template <Bf16Kernel kKernel>
ADABLDM_TARGET_AMX inline void run(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                                   const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                                   int64_t ldc, Prepacked packed_a, Prepacked packed_b) {
  const Blocking bl = blocking();
  const int64_t kcp_max = round_up(std::min(bl.kc, K), kKStep), mc_max = std::min(bl.mc, round_up(M, kMR));
  const int64_t nc_max = std::min(bl.nc, round_up(N, kNR));
  // Scratch in floats: two bfloat16 per float.
  auto* pa = packed_a.data ? nullptr : reinterpret_cast<uint16_t*>(sgemm::scratch(0, static_cast<std::size_t>(mc_max * kcp_max / 2)));
  auto* pb = packed_b.data ? nullptr : reinterpret_cast<uint16_t*>(sgemm::scratch(1, static_cast<std::size_t>(nc_max * kcp_max / 2)));
  alignas(64) float tile[kMR * kNR];
  if constexpr (kKernel == Bf16Kernel::amx) {
    static const TileConfig config;
    _tile_loadconfig(&config);
  }
  for (int64_t jc = 0; jc < N; jc += bl.nc) {
    const int64_t nc = std::min(bl.nc, N - jc);
    for (int64_t pc = 0; pc < K; pc += bl.kc) {
      const int64_t kc = std::min(bl.kc, K - pc), kcp = round_up(kc, kKStep);
      const uint16_t* b_block = pb;
      if (packed_b.data) b_block = packed_b.data + packed_b.rows_p * pc + (packed_b.first + jc) * kcp;
      else pack_b(trans_b, B, ldb, pc, kc, kcp, jc, nc, pb);
      for (int64_t ic = 0; ic < M; ic += bl.mc) {
        const int64_t mc = std::min(bl.mc, M - ic);
        const uint16_t* a_block = pa;
        if (packed_a.data) a_block = packed_a.data + packed_a.rows_p * pc + (packed_a.first + ic) * kcp;
        else pack_a(trans_a, A, lda, ic, mc, pc, kc, kcp, pa);
        for (int64_t ir = 0; ir < mc; ir += kMR)
          for (int64_t jr = 0; jr < nc; jr += kNR) {
            const int64_t mr = std::min<int64_t>(kMR, mc - ir), nr = std::min<int64_t>(kNR, nc - jr);
            if constexpr (kKernel == Bf16Kernel::amx) kernel_amx(kcp, a_block + ir * kcp, b_block + jr * kcp, tile);
            else kernel_avx512(kcp, a_block + ir * kcp, b_block + jr * kcp, tile, mr);
            write_c(tile, C + (ic + ir) * ldc + jc + jr, ldc, mr, nr, alpha, beta, pc == 0);
          }
      }
    }
  }
  if constexpr (kKernel == Bf16Kernel::amx) _tile_release();
}

/// Weights registered by ops::FrozenWeights, each with the packed forms made for it so far (one per way it is
/// multiplied: as A or B, transposed or not, its shape and leading dimension). A product holds its form by a
/// shared pointer, so a scope ending on another thread meanwhile cannot free it under the product.
struct FrozenForm {
  bool as_b, trans;
  int64_t rows, depth, ld;
  std::shared_ptr<const uint16_t> data;  // rows_p * round_up(depth, 32) values, run()'s Prepacked layout
};
struct FrozenRegistry {
  std::mutex mutex;
  std::atomic<int64_t> size{0};  // entries: products skip the lock while nothing is frozen
  std::atomic<int64_t> uses{0};  // products that read a packed form (tests check it moves)
  std::unordered_map<const float*, std::pair<int, std::vector<FrozenForm>>> entries;  // data -> (scopes, forms)
};
inline FrozenRegistry& frozen_registry() {
  static FrozenRegistry r;
  return r;
}

/// The packed form of op(X) (as_b false: X is A, `rows` = M; true: X is B, `rows` = N; `depth` = K) when X is a
/// frozen weight, made (over the threads, outside the registry's lock) at its first product; null otherwise.
inline std::shared_ptr<const uint16_t> frozen_packed(bool as_b, bool trans, const float* X, int64_t ld, int64_t rows,
                                                     int64_t depth) {
  FrozenRegistry& reg = frozen_registry();
  if (reg.size.load(std::memory_order_acquire) == 0) return nullptr;
  const auto find = [&]() -> std::pair<bool, std::shared_ptr<const uint16_t>> {  // (frozen, its form if made)
    const auto it = reg.entries.find(X);
    if (it == reg.entries.end()) return {false, nullptr};
    for (const FrozenForm& f : it->second.second)
      if (f.as_b == as_b && f.trans == trans && f.rows == rows && f.depth == depth && f.ld == ld) return {true, f.data};
    return {true, nullptr};
  };
  {
    std::lock_guard<std::mutex> lock(reg.mutex);
    auto [frozen, form] = find();
    if (!frozen) return nullptr;
    if (form) {
      reg.uses.fetch_add(1, std::memory_order_relaxed);
      return form;
    }
  }
  const Blocking bl = blocking();
  const int64_t rows_p = round_up(rows, 32);
  // 64-byte aligned, as the packing's stores and the kernels' loads need (a multiple of 64 bytes: rows_p % 32 == 0).
  auto* dst = static_cast<uint16_t*>(std::aligned_alloc(64, static_cast<std::size_t>(rows_p * round_up(depth, kKStep)) * 2));
  if (!dst) throw std::bad_alloc();
  std::shared_ptr<const uint16_t> data(dst, [](const uint16_t* p) { std::free(const_cast<uint16_t*>(p)); });
  constexpr int64_t kChunk = 256;
  const int64_t chunks = (rows + kChunk - 1) / kChunk, blocks = (depth + bl.kc - 1) / bl.kc;
  parallel_for(blocks * chunks, [&](int64_t t) {
    const int64_t pc = t / chunks * bl.kc, r0 = t % chunks * kChunk, n = std::min(kChunk, rows - r0);
    const int64_t kc = std::min(bl.kc, depth - pc), kcp = round_up(kc, kKStep);
    uint16_t* block = dst + rows_p * pc + r0 * kcp;
    if (as_b) pack_b(trans, X, ld, pc, kc, kcp, r0, n, block);
    else pack_a(trans, X, ld, r0, n, pc, kc, kcp, block);
  });
  std::lock_guard<std::mutex> lock(reg.mutex);
  reg.uses.fetch_add(1, std::memory_order_relaxed);
  auto [frozen, form] = find();  // another thread may have made it meanwhile, or the last scope ended
  if (form) return form;
  if (frozen) reg.entries[X].second.push_back(FrozenForm{as_b, trans, rows, depth, ld, data});
  return data;
}
}  // namespace bgemm

/// C[M,N] = alpha * op(A) * op(B) + beta * C with A and B rounded to bfloat16, on one thread, with `kernel`
/// (not none; the caller checks the CPU has it).
inline void sgemm_bf16(Bf16Kernel kernel, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                       const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
                       bgemm::Prepacked packed_a = {}, bgemm::Prepacked packed_b = {}) {
  if (M <= 0 || N <= 0) return;
  if (K == 0) return sgemm_avx512(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);  // C = beta C
  if (kernel == Bf16Kernel::amx)
    bgemm::run<Bf16Kernel::amx>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, packed_a, packed_b);
  else
    bgemm::run<Bf16Kernel::avx512_bf16>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, packed_a,
                                        packed_b);
}

/// The same over the threads, one slice of rows (or columns) per thread, as sgemm_avx512_parallel; a frozen
/// weight (ops::FrozenWeights) is read from its packed form instead of being converted again.
inline void sgemm_bf16_parallel(Bf16Kernel kernel, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                                float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                                float* C, int64_t ldc) {
  using bgemm::kMR;
  using bgemm::kNR;
  if (M <= 0 || N <= 0) return;
  bgemm::Prepacked pa, pb;
  std::shared_ptr<const uint16_t> frozen_a, frozen_b;  // held for the whole product
  if (K > 0) {
    frozen_a = bgemm::frozen_packed(false, trans_a, A, lda, M, K);
    frozen_b = bgemm::frozen_packed(true, trans_b, B, ldb, N, K);
    pa.data = frozen_a.get(), pa.rows_p = bgemm::round_up(M, kMR);
    pb.data = frozen_b.get(), pb.rows_p = bgemm::round_up(N, kNR);
  }
  const int64_t threads = num_threads();
  if (threads <= 1 || M * N * K < (int64_t{1} << 22))
    return sgemm_bf16(kernel, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, pa, pb);
  if (M >= N) {
    const int64_t slice = bgemm::round_up((M + threads - 1) / threads, kMR);
    parallel_for((M + slice - 1) / slice, [&](int64_t s) {
      const int64_t m0 = s * slice, m = std::min(slice, M - m0);
      bgemm::Prepacked a = pa;
      a.first = m0;
      sgemm_bf16(kernel, trans_a, trans_b, m, N, K, alpha, trans_a ? A + m0 : A + m0 * lda, lda, B, ldb, beta,
                 C + m0 * ldc, ldc, a, pb);
    });
  } else {
    const int64_t slice = bgemm::round_up((N + threads - 1) / threads, kNR);
    parallel_for((N + slice - 1) / slice, [&](int64_t s) {
      const int64_t n0 = s * slice, n = std::min(slice, N - n0);
      bgemm::Prepacked b = pb;
      b.first = n0;
      sgemm_bf16(kernel, trans_a, trans_b, M, n, K, alpha, A, lda, trans_b ? B + n0 * ldb : B + n0, ldb, beta,
                 C + n0, ldc, pa, b);
    });
  }
}
#else
// No bfloat16 kernel in this build: bf16_kernel() is always none, so nothing calls these; a caller that forces a
// kernel gets an error, not an untouched C.
[[noreturn]] inline void no_bf16_gemm() {
  throw Error("bf16 GEMM: this build has no bfloat16 kernel (it needs AVX-512, x86-64 and GCC >= 11 or clang >= 12)");
}
inline void sgemm_bf16(Bf16Kernel, bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                       int64_t, float, float*, int64_t) {
  no_bf16_gemm();
}
inline void sgemm_bf16_parallel(Bf16Kernel, bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                                const float*, int64_t, float, float*, int64_t) {
  no_bf16_gemm();
}
#endif

/// Whether ops::gemm<float> takes the bfloat16 path now (asked for, and the CPU has a kernel).
inline bool use_bf16_gemm() {
  return cpu_matmul_precision() == MatmulPrecision::bf16 && bf16_kernel() != Bf16Kernel::none;
}

}  // namespace detail

/// The bf16 kernel this process would use for MatmulPrecision::bf16: "amx", "avx512-bf16" or "none" (products
/// then stay float32).
inline const char* cpu_bf16_kernel() { return detail::bf16_kernel_name(detail::bf16_kernel()); }

}  // namespace adabldm::ops

#ifdef __NVCC__
#pragma nv_diagnostic pop
#endif
