#pragma once
// Storage types: IEEE binary16 (`half`) and bfloat16, with exact round-to-nearest-even conversions that need
// no hardware support, and the DType tag used by file formats.
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>

#include "adabldm/core/error.hpp"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "adabldm reads little-endian checkpoint files in place and needs a little-endian host"
#endif

namespace adabldm {

template <class To, class From>
inline To bit_cast(const From& from) noexcept {
  static_assert(sizeof(To) == sizeof(From));
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

namespace detail {

/// f32 -> f16 bits, round to nearest even; NaN stays NaN (quietened, sign and top payload kept), overflow -> Inf.
constexpr uint16_t f32_bits_to_f16_bits(uint32_t x) noexcept {
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // Inf or NaN
    if (ax == 0x7f800000u) return sign | 0x7c00u;
    return static_cast<uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  }
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 (half-way above 65504) rounds to Inf
  if (ax >= 0x38800000u) {                       // normal f16: rebias exponent, round 13 dropped bits
    const uint32_t rounded = ax + 0xfffu + ((ax >> 13) & 1u);
    return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
  }
  // Subnormal f16 (or zero): the value in units of 2^-24 is m >> s with s = 126 - exponent.
  const uint32_t exponent = ax >> 23;
  if (exponent < 102) return sign;  // below 2^-25 (half the smallest subnormal) -> signed zero
  const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
  const uint32_t s = 126 - exponent;  // 14..24
  uint32_t q = m >> s;
  const uint32_t rem = m & ((1u << s) - 1u), halfway = 1u << (s - 1);
  if (rem > halfway || (rem == halfway && (q & 1u))) ++q;  // may carry into the smallest normal: correct
  return static_cast<uint16_t>(sign | q);
}

/// f16 bits -> f32 bits (exact).
constexpr uint32_t f16_bits_to_f32_bits(uint16_t h) noexcept {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exponent == 0x1f) return sign | 0x7f800000u | (mant << 13);  // Inf / NaN (payload kept)
  if (exponent == 0) {
    if (mant == 0) return sign;
    // Subnormal: normalise the mantissa.
    exponent = 113;  // 127 - 15 + 1
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exponent;
    }
    return sign | (exponent << 23) | ((mant & 0x3ffu) << 13);
  }
  return sign | ((exponent + 112) << 23) | (mant << 13);
}

/// f32 -> bf16 bits, round to nearest even; NaN stays NaN (quietened).
constexpr uint16_t f32_bits_to_bf16_bits(uint32_t x) noexcept {
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

}  // namespace detail

/// IEEE 754 binary16 storage type. Arithmetic happens in float.
struct half {
  uint16_t bits = 0;
  half() = default;
  explicit half(float f) noexcept : bits(detail::f32_bits_to_f16_bits(bit_cast<uint32_t>(f))) {}
  explicit half(double d) noexcept : half(static_cast<float>(d)) {}
  operator float() const noexcept { return bit_cast<float>(detail::f16_bits_to_f32_bits(bits)); }
  static half from_bits(uint16_t b) noexcept {
    half h;
    h.bits = b;
    return h;
  }
};

/// bfloat16 storage type (the top 16 bits of a float). Arithmetic happens in float.
struct bfloat16 {
  uint16_t bits = 0;
  bfloat16() = default;
  explicit bfloat16(float f) noexcept : bits(detail::f32_bits_to_bf16_bits(bit_cast<uint32_t>(f))) {}
  explicit bfloat16(double d) noexcept : bfloat16(static_cast<float>(d)) {}
  operator float() const noexcept { return bit_cast<float>(static_cast<uint32_t>(bits) << 16); }
  static bfloat16 from_bits(uint16_t b) noexcept {
    bfloat16 h;
    h.bits = b;
    return h;
  }
};

/// Element types that appear in checkpoint files.
enum class DType : uint8_t { F32, F16, BF16, F64, I64, I32, U8, Bool };

inline std::size_t dtype_size(DType d) noexcept {
  switch (d) {
    case DType::F64:
    case DType::I64: return 8;
    case DType::F32:
    case DType::I32: return 4;
    case DType::F16:
    case DType::BF16: return 2;
    case DType::U8:
    case DType::Bool: return 1;
  }
  return 0;
}

/// safetensors spelling ("F32", "BF16", ...).
inline const char* dtype_name(DType d) noexcept {
  switch (d) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::U8: return "U8";
    case DType::Bool: return "BOOL";
  }
  return "?";
}

/// Parses a safetensors dtype name; returns false for names this library does not support.
inline bool parse_dtype(std::string_view s, DType& out) noexcept {
  static constexpr DType all[] = {DType::F32, DType::F16, DType::BF16, DType::F64,
                                  DType::I64, DType::I32, DType::U8,   DType::Bool};
  for (DType d : all)
    if (s == dtype_name(d)) {
      out = d;
      return true;
    }
  return false;
}

template <class T>
struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::F32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::F64; };
template <> struct dtype_of<half> { static constexpr DType value = DType::F16; };
template <> struct dtype_of<bfloat16> { static constexpr DType value = DType::BF16; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::I64; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::I32; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::U8; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::Bool; };
template <class T>
inline constexpr DType dtype_v = dtype_of<T>::value;

/// Converts one element between any two supported element types (through float/double for the 16-bit ones).
template <class To, class From>
inline To convert_element(From v) noexcept {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (std::is_same_v<From, half> || std::is_same_v<From, bfloat16>) {
    return convert_element<To>(static_cast<float>(v));
  } else if constexpr (std::is_same_v<To, half> || std::is_same_v<To, bfloat16>) {
    return To(static_cast<float>(v));
  } else {
    return static_cast<To>(v);
  }
}

}  // namespace adabldm
