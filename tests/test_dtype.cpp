// f16 / bf16 conversions: exhaustive over all 16-bit patterns, every rounding boundary, and against the
// compiler's own _Float16 conversion where available.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "adabldm/core/dtype.hpp"
#include "adabldm/core/rng.hpp"

using namespace adabldm;

namespace {
bool is_nan_f16(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }
bool is_nan_bf16(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0; }
uint32_t bits(float f) { return bit_cast<uint32_t>(f); }

// Independent f16 -> double decoding by the textbook formula.
double f16_value(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double sign = s ? -1.0 : 1.0;
  if (e == 0) return sign * std::ldexp(m, -24);
  if (e == 31) return m ? std::numeric_limits<double>::quiet_NaN() : sign * INFINITY;
  return sign * std::ldexp(1024 + m, e - 25);
}
}  // namespace

TEST_CASE("f16 -> f32 is exact for all 65536 patterns") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = half::from_bits(static_cast<uint16_t>(h));
    const double want = f16_value(static_cast<uint16_t>(h));
    if (is_nan_f16(static_cast<uint16_t>(h))) {
      REQUIRE(std::isnan(f));
      continue;
    }
    REQUIRE(static_cast<double>(f) == want);
    REQUIRE(std::signbit(f) == bool(h & 0x8000));  // -0 stays -0
  }
}

TEST_CASE("f32 -> f16 round-trips every f16 value and keeps NaN a NaN") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = half::from_bits(static_cast<uint16_t>(h));
    const uint16_t back = half(f).bits;
    if (is_nan_f16(static_cast<uint16_t>(h))) {
      REQUIRE(is_nan_f16(back));
      REQUIRE((back & 0x8000) == (h & 0x8000));
    } else {
      REQUIRE(back == h);
    }
  }
}

TEST_CASE("f32 -> f16 rounds to nearest, ties to even, at every boundary") {
  // For each pair of neighbouring non-negative f16 values a < b: the exact midpoint goes to the even one, and
  // the f32 just below / above it go to a / b. Covers subnormals, the normal range and the overflow to Inf.
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const double a = f16_value(static_cast<uint16_t>(h));
    const double b = h + 1 == 0x7c00 ? 65536.0 : f16_value(static_cast<uint16_t>(h + 1));  // 65536: "next" above max
    const float mid = static_cast<float>((a + b) / 2);                                     // exact in f32
    REQUIRE(static_cast<double>(mid) == (a + b) / 2);
    const uint16_t even = (h & 1) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h);
    CHECK(half(mid).bits == even);
    CHECK(half(std::nextafter(mid, 0.0f)).bits == h);
    CHECK(half(std::nextafter(mid, INFINITY)).bits == h + 1);
    CHECK(half(-mid).bits == (even | 0x8000));
  }
  CHECK(half(65504.0f).bits == 0x7bff);
  CHECK(half(1e6f).bits == 0x7c00);
  CHECK(half(-INFINITY).bits == 0xfc00);
  CHECK(half(std::numeric_limits<float>::denorm_min()).bits == 0);  // f32 denormals flush to signed zero
  CHECK(half(-std::numeric_limits<float>::denorm_min()).bits == 0x8000);
  CHECK(half(std::ldexp(1.0f, -25)).bits == 0);  // exactly half the smallest subnormal: tie -> even (0)
  CHECK(half(std::nextafter(std::ldexp(1.0f, -25), 1.0f)).bits == 1);
}

#if defined(__FLT16_MAX__)
TEST_CASE("f32 -> f16 equals the compiler's _Float16 conversion on 16.7M patterns") {
  // Every 256th f32 bit pattern plus a random low byte: all exponents, signs and NaN payloads.
  Rng rng(7);
  int64_t mismatches = 0;
  for (uint64_t hi = 0; hi < (1ull << 24); ++hi) {
    const uint32_t x = static_cast<uint32_t>(hi << 8) | (rng.next_u32() & 0xff);
    const float f = bit_cast<float>(x);
    const uint16_t ours = half(f).bits;
    const _Float16 ref = static_cast<_Float16>(f);
    const uint16_t rb = bit_cast<uint16_t>(ref);
    if (std::isnan(f) ? !is_nan_f16(ours) : ours != rb) ++mismatches;
  }
  CHECK(mismatches == 0);
}
#endif

TEST_CASE("bf16: all patterns round-trip, rounding is nearest-even, NaN stays NaN") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bfloat16::from_bits(static_cast<uint16_t>(h));
    REQUIRE(bits(f) == h << 16);  // bf16 -> f32 is the top half
    const uint16_t back = bfloat16(f).bits;
    if (is_nan_bf16(static_cast<uint16_t>(h))) REQUIRE(is_nan_bf16(back));
    else REQUIRE(back == h);
  }
  for (uint32_t h = 0; h < 0x7f80; ++h) {  // positive finite neighbours a, b = h, h+1
    const uint32_t mid = (h << 16) | 0x8000u;
    const uint16_t even = (h & 1) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h);
    CHECK(bfloat16(bit_cast<float>(mid)).bits == even);
    CHECK(bfloat16(bit_cast<float>(mid - 1)).bits == h);
    CHECK(bfloat16(bit_cast<float>(mid + 1)).bits == h + 1);
  }
  CHECK(bfloat16(std::numeric_limits<float>::max()).bits == 0x7f80);  // rounds up to Inf
  CHECK(is_nan_bf16(bfloat16(bit_cast<float>(0x7f800001u)).bits));     // signalling NaN with low payload only
}

TEST_CASE("dtype names parse and sizes match") {
  DType d{};
  for (DType x : {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I64, DType::I32, DType::U8, DType::Bool}) {
    REQUIRE(parse_dtype(dtype_name(x), d));
    CHECK(d == x);
  }
  CHECK_FALSE(parse_dtype("F8_E4M3", d));
  CHECK(dtype_size(DType::BF16) == 2);
  CHECK(dtype_size(DType::I64) == 8);
}
