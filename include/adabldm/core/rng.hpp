#pragma once
// Deterministic random numbers: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
// A counter-based generator: element i of a fill is a pure function of (seed, counter + i), so results are
// identical for any thread count and on any device that implements the same function.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"

namespace adabldm {

namespace detail {
struct Philox4x32 {
  static constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  static constexpr uint32_t kKey0 = 0x9E3779B9u, kKey1 = 0xBB67AE85u;

  /// 4 random 32-bit words for a 128-bit counter (given as two 64-bit halves) under a 64-bit key.
  static void block(uint64_t key, uint64_t ctr_lo, uint64_t ctr_hi, uint32_t out[4]) noexcept {
    uint32_t c0 = static_cast<uint32_t>(ctr_lo), c1 = static_cast<uint32_t>(ctr_lo >> 32);
    uint32_t c2 = static_cast<uint32_t>(ctr_hi), c3 = static_cast<uint32_t>(ctr_hi >> 32);
    uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
    for (int round = 0; round < 10; ++round) {
      const uint64_t p0 = static_cast<uint64_t>(kMul0) * c0, p1 = static_cast<uint64_t>(kMul1) * c2;
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0, n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
      c1 = static_cast<uint32_t>(p1);
      c3 = static_cast<uint32_t>(p0);
      c0 = n0;
      c2 = n2;
      k0 += kKey0;
      k1 += kKey1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
  }
};

/// Uniform in the open interval (0, 1) from 32 random bits (24 significant bits, exact in float).
inline float u32_to_unit_float(uint32_t x) noexcept { return (static_cast<float>(x >> 8) + 0.5f) * 0x1p-24f; }
/// Uniform in (0, 1) from 64 random bits (53 significant bits).
inline double u64_to_unit_double(uint64_t x) noexcept {
  return (static_cast<double>(x >> 11) + 0.5) * 0x1p-53;
}
}  // namespace detail

/// SplitMix64 finaliser: derives independent seeds, e.g. per sample from (run seed, sample index), so that
/// shards of a run reproduce the single run exactly.
inline uint64_t derive_seed(uint64_t seed, uint64_t index) noexcept {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (index + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// A seeded stream of random numbers. Each draw advances a 64-bit counter; tensors are filled in parallel with
/// element i taking counter (offset + i / k), so the result does not depend on the thread count.
class Rng {
 public:
  explicit Rng(uint64_t seed = 0) noexcept : seed_(seed) {}
  uint64_t seed() const noexcept { return seed_; }
  uint64_t offset() const noexcept { return offset_; }
  /// Jumps to a position of the stream (for resuming).
  void set_offset(uint64_t offset) noexcept { offset_ = offset; }

  /// 32 uniformly random bits.
  uint32_t next_u32() noexcept {
    uint32_t w[4];
    detail::Philox4x32::block(seed_, offset_++, kScalarStream, w);
    return w[0];
  }
  /// Uniform in (0, 1).
  double uniform() noexcept {
    uint32_t w[4];
    detail::Philox4x32::block(seed_, offset_++, kScalarStream, w);
    return detail::u64_to_unit_double((static_cast<uint64_t>(w[0]) << 32) | w[1]);
  }
  /// Uniform in [lo, hi).
  double uniform(double lo, double hi) noexcept { return lo + (hi - lo) * uniform(); }
  /// Uniform integer in [lo, hi] (inclusive), without modulo bias.
  int64_t uniform_int(int64_t lo, int64_t hi) {
    check(lo <= hi, "uniform_int: empty range [", lo, ", ", hi, "]");
    const uint64_t span = static_cast<uint64_t>(hi - lo) + 1;
    if (span == 0) return static_cast<int64_t>((static_cast<uint64_t>(next_u32()) << 32) | next_u32());
    const uint64_t limit = UINT64_MAX - UINT64_MAX % span;
    for (;;) {
      const uint64_t r = (static_cast<uint64_t>(next_u32()) << 32) | next_u32();
      if (r < limit) return lo + static_cast<int64_t>(r % span);
    }
  }
  /// Standard normal.
  double normal() noexcept {
    const double u1 = uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }

  /// Fills t (contiguous, host) with U(lo, hi).
  template <class T>
  void fill_uniform(Tensor<T, Cpu>& t, double lo = 0.0, double hi = 1.0) {
    check<ShapeError>(t.is_contiguous(), "fill_uniform needs a contiguous tensor");
    const int64_t n = t.numel(), blocks = (n + 3) / 4;
    const uint64_t base = offset_;
    T* p = t.data();
    parallel_for(blocks, [&](int64_t b) {
      uint32_t w[4];
      detail::Philox4x32::block(seed_, base + static_cast<uint64_t>(b), kTensorStream, w);
      for (int j = 0; j < 4 && b * 4 + j < n; ++j)
        p[b * 4 + j] = convert_element<T>(lo + (hi - lo) * static_cast<double>(detail::u32_to_unit_float(w[j])));
    }, 4096);
    offset_ += static_cast<uint64_t>(blocks);
  }
  /// Fills t (contiguous, host) with N(mean, std^2) by the Box-Muller transform (2 normals per 4 words).
  template <class T>
  void fill_normal(Tensor<T, Cpu>& t, double mean = 0.0, double std = 1.0) {
    check<ShapeError>(t.is_contiguous(), "fill_normal needs a contiguous tensor");
    const int64_t n = t.numel(), blocks = (n + 1) / 2;
    const uint64_t base = offset_;
    T* p = t.data();
    parallel_for(blocks, [&](int64_t b) {
      uint32_t w[4];
      detail::Philox4x32::block(seed_, base + static_cast<uint64_t>(b), kTensorStream, w);
      const double u1 = detail::u64_to_unit_double((static_cast<uint64_t>(w[0]) << 32) | w[1]);
      const double u2 = detail::u64_to_unit_double((static_cast<uint64_t>(w[2]) << 32) | w[3]);
      const double r = std::sqrt(-2.0 * std::log(u1)), th = 2.0 * M_PI * u2;
      p[2 * b] = convert_element<T>(mean + std * r * std::cos(th));
      if (2 * b + 1 < n) p[2 * b + 1] = convert_element<T>(mean + std * r * std::sin(th));
    }, 2048);
    offset_ += static_cast<uint64_t>(blocks);
  }
  template <class T = float>
  Tensor<T, Cpu> normal(const Shape& shape, double mean = 0.0, double std = 1.0) {
    auto t = Tensor<T, Cpu>::empty(shape);
    fill_normal(t, mean, std);
    return t;
  }
  template <class T = float>
  Tensor<T, Cpu> uniform(const Shape& shape, double lo = 0.0, double hi = 1.0) {
    auto t = Tensor<T, Cpu>::empty(shape);
    fill_uniform(t, lo, hi);
    return t;
  }

 private:
  // The high counter word separates scalar draws from tensor fills, so they never reuse a block.
  static constexpr uint64_t kScalarStream = 1, kTensorStream = 2;
  uint64_t seed_ = 0;
  uint64_t offset_ = 0;
};

}  // namespace adabldm
