#pragma once
// The byte encodings ftfy re-encodes mojibake with, reproduced from its `bad_codecs` package:
//  * single-byte charmaps (latin-1, windows-125x, iso-8859-2, macroman, cp437), in "sloppy" form for the
//    windows-125x family: unassigned bytes decode to the Latin-1 code point with the same number (as browsers
//    do) and byte 0x1A stands for U+FFFD (ftfy's marker for lossy text);
//  * "utf-8-variants": strict UTF-8 that also accepts CESU-8 surrogate pairs and Java's C0 80 for U+0000.
// Decoders return std::nullopt where Python would raise UnicodeDecodeError / UnicodeEncodeError.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "adabldm/text/codec_tables.hpp"

namespace adabldm::text::codecs {

enum class Charmap : std::uint8_t {
  Latin1,
  SloppyWindows1252,
  SloppyWindows1251,
  SloppyWindows1250,
  SloppyWindows1253,
  SloppyWindows1254,
  SloppyWindows1257,
  Iso8859_2,
  MacRoman,
  Cp437,
  Windows1252,  ///< strict: unassigned bytes are errors (ftfy's latin-1 -> windows-1252 fallback)
};

/// ftfy's CHARMAP_ENCODINGS, in the order fix_encoding tries them.
inline constexpr std::array<Charmap, 10> kMojibakeCharmaps = {
    Charmap::Latin1,           Charmap::SloppyWindows1252, Charmap::SloppyWindows1251, Charmap::SloppyWindows1250,
    Charmap::SloppyWindows1253, Charmap::SloppyWindows1254, Charmap::SloppyWindows1257, Charmap::Iso8859_2,
    Charmap::MacRoman,         Charmap::Cp437};

inline bool is_sloppy(Charmap m) {
  return m >= Charmap::SloppyWindows1252 && m <= Charmap::SloppyWindows1257;
}

inline constexpr char32_t kUnassigned = 0xFFFF;

/// What byte b decodes to in charmap m (kUnassigned for a hole in a strict charmap).
inline char32_t decode_byte(Charmap m, std::uint8_t b) {
  if (is_sloppy(m) && b == 0x1A) return 0xFFFD;
  if (b < 0x80) return b;
  const std::uint16_t* high = nullptr;
  switch (m) {
    case Charmap::Latin1: return b;
    case Charmap::SloppyWindows1252:
    case Charmap::Windows1252: high = tables::kWindows1252; break;
    case Charmap::SloppyWindows1251: high = tables::kWindows1251; break;
    case Charmap::SloppyWindows1250: high = tables::kWindows1250; break;
    case Charmap::SloppyWindows1253: high = tables::kWindows1253; break;
    case Charmap::SloppyWindows1254: high = tables::kWindows1254; break;
    case Charmap::SloppyWindows1257: high = tables::kWindows1257; break;
    case Charmap::Iso8859_2: high = tables::kIso8859_2; break;
    case Charmap::MacRoman: high = tables::kMacRoman; break;
    case Charmap::Cp437: high = tables::kCp437; break;
  }
  const char32_t c = high[b - 0x80];
  if (c == kUnassigned && is_sloppy(m)) return b;  // the "sloppy" fill: same number as the byte
  return c;
}

namespace detail {
/// code point -> byte, built once per charmap (function-local statics: thread-safe initialisation).
inline const std::unordered_map<char32_t, std::uint8_t>& encoding_map(Charmap m) {
  static const auto maps = [] {
    std::array<std::unordered_map<char32_t, std::uint8_t>, 11> all;
    for (std::size_t k = 0; k < all.size(); ++k) {
      for (int b = 0; b < 256; ++b) {
        const char32_t c = decode_byte(static_cast<Charmap>(k), static_cast<std::uint8_t>(b));
        if (c != kUnassigned) all[k].emplace(c, static_cast<std::uint8_t>(b));
      }
    }
    return all;
  }();
  return maps[static_cast<std::size_t>(m)];
}
}  // namespace detail

/// ftfy's possible_encoding(): can every character be encoded in m?
inline bool can_encode(Charmap m, std::u32string_view text) {
  if (m == Charmap::Latin1) {
    for (char32_t c : text)
      if (c > 0xFF) return false;
    return true;
  }
  const auto& map = detail::encoding_map(m);
  for (char32_t c : text)
    if (c >= 0x80 || c == 0x1A) {
      if (map.find(c) == map.end()) return false;
    }
  return true;
}

/// text.encode(m); std::nullopt when some character has no byte.
inline std::optional<std::string> encode(Charmap m, std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  const auto& map = detail::encoding_map(m);
  for (char32_t c : text) {
    if (c < 0x80 && !(c == 0x1A && is_sloppy(m))) {
      out += static_cast<char>(c);
      continue;
    }
    auto it = map.find(c);
    if (it == map.end()) return std::nullopt;
    out += static_cast<char>(it->second);
  }
  return out;
}

/// bytes.decode(m) (strict for the non-sloppy charmaps).
inline std::optional<std::u32string> decode(Charmap m, std::string_view bytes) {
  std::u32string out;
  out.reserve(bytes.size());
  for (char ch : bytes) {
    const char32_t c = decode_byte(m, static_cast<std::uint8_t>(ch));
    if (c == kUnassigned) return std::nullopt;
    out += c;
  }
  return out;
}

/// ftfy's "utf-8-variants" decoder: standard strict UTF-8 plus two extensions --
/// C0 80 is U+0000 (Java), and ED A0-AF xx ED B0-BF xx is a CESU-8 surrogate pair.
/// (ftfy uses plain UTF-8 when neither byte C0 nor ED occurs; on such input the two decoders agree.)
inline std::optional<std::u32string> decode_utf8_variants(std::string_view bytes) {
  std::u32string out;
  out.reserve(bytes.size());
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const std::size_t n = bytes.size();
  auto cont = [&](std::size_t k, unsigned lo = 0x80, unsigned hi = 0xBF) { return k < n && p[k] >= lo && p[k] <= hi; };
  std::size_t i = 0;
  while (i < n) {
    const unsigned b = p[i];
    if (b < 0x80) {
      out += static_cast<char32_t>(b);
      i += 1;
    } else if (b == 0xC0 && cont(i + 1, 0x80, 0x80)) {
      out += U'\0';
      i += 2;
    } else if (b == 0xED && cont(i + 1, 0xA0, 0xAF) && cont(i + 2) && i + 3 < n && p[i + 3] == 0xED &&
               cont(i + 4, 0xB0, 0xBF) && cont(i + 5)) {
      out += static_cast<char32_t>(0x10000 + ((p[i + 1] & 0x0Fu) << 16) + ((p[i + 2] & 0x3Fu) << 10) +
                                   ((p[i + 4] & 0x0Fu) << 6) + (p[i + 5] & 0x3Fu));
      i += 6;
    } else if (b >= 0xC2 && b <= 0xDF && cont(i + 1)) {
      out += static_cast<char32_t>(((b & 0x1Fu) << 6) | (p[i + 1] & 0x3Fu));
      i += 2;
    } else if (b >= 0xE0 && b <= 0xEF &&
               cont(i + 1, b == 0xE0 ? 0xA0 : 0x80, b == 0xED ? 0x9F : 0xBF) && cont(i + 2)) {
      out += static_cast<char32_t>(((b & 0x0Fu) << 12) | ((p[i + 1] & 0x3Fu) << 6) | (p[i + 2] & 0x3Fu));
      i += 3;
    } else if (b >= 0xF0 && b <= 0xF4 &&
               cont(i + 1, b == 0xF0 ? 0x90 : 0x80, b == 0xF4 ? 0x8F : 0xBF) && cont(i + 2) && cont(i + 3)) {
      out += static_cast<char32_t>(((b & 0x07u) << 18) | ((p[i + 1] & 0x3Fu) << 12) | ((p[i + 2] & 0x3Fu) << 6) |
                                   (p[i + 3] & 0x3Fu));
      i += 4;
    } else {
      return std::nullopt;
    }
  }
  return out;
}

}  // namespace adabldm::text::codecs
