#pragma once
// ftfy 6.3's mojibake heuristic (ftfy/badness.py) and its detector for embedded UTF-8 mojibake
// (chardata.UTF8_DETECTOR_RE), re-expressed as small tables instead of regular expressions.
//
// The heuristic sorts the few hundred characters that occur in UTF-8 mojibake into categories and flags text
// where they sit in unlikely combinations (an accented lower-case letter followed by a currency sign, ...).
// is_bad() answers "does any of those patterns occur anywhere?" -- all that ftfy 6.3's fix_encoding asks.
#include <algorithm>
#include <array>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "adabldm/text/legacy_codecs.hpp"
#include "adabldm/text/unicode.hpp"

namespace adabldm::text::mojibake {

/// Character categories (bit flags; a character can be in several).
enum Category : std::uint32_t {
  kC1 = 1u << 0,            // U+0080..U+009F
  kBad = 1u << 1,           // nearly always mojibake: ¦ ¤ ¨ ¬ ¯ ¸ ƒ ˆ ˇ ˘ ˛ ˜ † ‡ ‰ ⌐ ◊ � ª º
  kCommon = 1u << 2,        // appear in many contexts: NBSP, soft hyphen, · ´ – — ― … ’
  kLaw = 1u << 3,           // ¶ §
  kCurrency = 1u << 4,      // ¢ £ ¥ ₧ €
  kStartPunct = 1u << 5,    // ¡ « ¿ © ΄ ΅ ‘ ‚ “ „ • ‹ U+F8FF
  kEndPunct = 1u << 6,      // ® » ˝ ” › ™
  kNumeric = 1u << 7,       // ± ² ³ µ ¹ ¼ ½ ¾ × ÷ ⁄ № ∂ ∆ ∏ ∑ √ ∞ ∩ ∫ ≈ ≠ ≡ ≤ ≥
  kKaomoji = 1u << 8,       // letters used in emoticon faces: Ò-Ö Ù-Ü ò-ö ø-ü Ő Ō Ū Ų °
  kUpperAccented = 1u << 9,
  kLowerAccented = 1u << 10,
  kUpperCommon = 1u << 11,  // Þ and Greek / Cyrillic capitals
  kLowerCommon = 1u << 12,  // Greek / Cyrillic small letters
  kBox = 1u << 13,          // box drawing and block elements
  kAsciiLower = 1u << 14,
  kAsciiUpper = 1u << 15,
  // UTF-8 clues: what bytes of a UTF-8 sequence look like after decoding them in latin-1 or a sloppy
  // windows-125x codec (1250, 1251, 1252, 1253, 1254, 1257).
  kUtf8First2 = 1u << 16,         // lead bytes C2..DF
  kUtf8First3 = 1u << 17,         // lead bytes E0..EF
  kUtf8First4 = 1u << 18,         // lead bytes F0 and F3 (the others only start unassigned code points)
  kUtf8Continuation = 1u << 19,   // bytes 80..BF, plus a space standing in for A0
  kUtf8ContStrict = 1u << 20,     // the same without space, dashes, quotes, bullet and ellipsis
};

namespace detail {
struct CategoryRun {
  char32_t first, last;
  std::uint32_t categories;
};

// ftfy/badness.py MOJIBAKE_CATEGORIES, as code point runs.
inline constexpr CategoryRun kCategoryRuns[] = {
    // common
    {0xA0, 0xA0, kCommon}, {0xAD, 0xAD, kCommon}, {0xB4, 0xB4, kCommon}, {0xB7, 0xB7, kCommon},
    {0x2013, 0x2015, kCommon}, {0x2019, 0x2019, kCommon}, {0x2026, 0x2026, kCommon},
    // c1
    {0x80, 0x9F, kC1},
    // bad
    {0xA4, 0xA4, kBad}, {0xA6, 0xA6, kBad}, {0xA8, 0xA8, kBad}, {0xAA, 0xAA, kBad}, {0xAC, 0xAC, kBad},
    {0xAF, 0xAF, kBad}, {0xB8, 0xB8, kBad}, {0xBA, 0xBA, kBad}, {0x192, 0x192, kBad}, {0x2C6, 0x2C7, kBad},
    {0x2D8, 0x2D8, kBad}, {0x2DB, 0x2DC, kBad}, {0x2020, 0x2021, kBad}, {0x2030, 0x2030, kBad},
    {0x2310, 0x2310, kBad}, {0x25CA, 0x25CA, kBad}, {0xFFFD, 0xFFFD, kBad},
    // law
    {0xA7, 0xA7, kLaw}, {0xB6, 0xB6, kLaw},
    // currency
    {0xA2, 0xA3, kCurrency}, {0xA5, 0xA5, kCurrency}, {0x20A7, 0x20A7, kCurrency}, {0x20AC, 0x20AC, kCurrency},
    // start_punctuation
    {0xA1, 0xA1, kStartPunct}, {0xA9, 0xA9, kStartPunct}, {0xAB, 0xAB, kStartPunct}, {0xBF, 0xBF, kStartPunct},
    {0x384, 0x385, kStartPunct}, {0x2018, 0x2018, kStartPunct}, {0x201A, 0x201A, kStartPunct},
    {0x201C, 0x201C, kStartPunct}, {0x201E, 0x201E, kStartPunct}, {0x2022, 0x2022, kStartPunct},
    {0x2039, 0x2039, kStartPunct}, {0xF8FF, 0xF8FF, kStartPunct},
    // end_punctuation
    {0xAE, 0xAE, kEndPunct}, {0xBB, 0xBB, kEndPunct}, {0x2DD, 0x2DD, kEndPunct}, {0x201D, 0x201D, kEndPunct},
    {0x203A, 0x203A, kEndPunct}, {0x2122, 0x2122, kEndPunct},
    // numeric
    {0xB1, 0xB3, kNumeric}, {0xB5, 0xB5, kNumeric}, {0xB9, 0xB9, kNumeric}, {0xBC, 0xBE, kNumeric},
    {0xD7, 0xD7, kNumeric}, {0xF7, 0xF7, kNumeric}, {0x2044, 0x2044, kNumeric}, {0x2116, 0x2116, kNumeric},
    {0x2202, 0x2202, kNumeric}, {0x2206, 0x2206, kNumeric}, {0x220F, 0x220F, kNumeric}, {0x2211, 0x2211, kNumeric},
    {0x221A, 0x221A, kNumeric}, {0x221E, 0x221E, kNumeric}, {0x2229, 0x2229, kNumeric}, {0x222B, 0x222B, kNumeric},
    {0x2248, 0x2248, kNumeric}, {0x2260, 0x2261, kNumeric}, {0x2264, 0x2265, kNumeric},
    // kaomoji
    {0xB0, 0xB0, kKaomoji}, {0xD2, 0xD6, kKaomoji}, {0xD9, 0xDC, kKaomoji}, {0xF2, 0xF6, kKaomoji},
    {0xF8, 0xFC, kKaomoji}, {0x14C, 0x14C, kKaomoji}, {0x150, 0x150, kKaomoji}, {0x16A, 0x16A, kKaomoji},
    {0x172, 0x172, kKaomoji},
    // upper_accented
    {0xC0, 0xD1, kUpperAccented}, {0xD8, 0xD8, kUpperAccented}, {0xDC, 0xDD, kUpperAccented},
    {0x100, 0x100, kUpperAccented}, {0x102, 0x102, kUpperAccented}, {0x104, 0x104, kUpperAccented},
    {0x106, 0x106, kUpperAccented}, {0x10C, 0x10C, kUpperAccented}, {0x10E, 0x10E, kUpperAccented},
    {0x110, 0x110, kUpperAccented}, {0x112, 0x112, kUpperAccented}, {0x116, 0x116, kUpperAccented},
    {0x118, 0x118, kUpperAccented}, {0x11A, 0x11A, kUpperAccented}, {0x11E, 0x11E, kUpperAccented},
    {0x122, 0x122, kUpperAccented}, {0x12A, 0x12A, kUpperAccented}, {0x130, 0x130, kUpperAccented},
    {0x136, 0x136, kUpperAccented}, {0x139, 0x139, kUpperAccented}, {0x13B, 0x13B, kUpperAccented},
    {0x13D, 0x13D, kUpperAccented}, {0x141, 0x141, kUpperAccented}, {0x143, 0x143, kUpperAccented},
    {0x145, 0x145, kUpperAccented}, {0x147, 0x147, kUpperAccented}, {0x152, 0x152, kUpperAccented},
    {0x158, 0x158, kUpperAccented}, {0x15A, 0x15A, kUpperAccented}, {0x15E, 0x15E, kUpperAccented},
    {0x160, 0x160, kUpperAccented}, {0x162, 0x162, kUpperAccented}, {0x164, 0x164, kUpperAccented},
    {0x16E, 0x16E, kUpperAccented}, {0x170, 0x170, kUpperAccented}, {0x178, 0x179, kUpperAccented},
    {0x17B, 0x17B, kUpperAccented}, {0x17D, 0x17D, kUpperAccented}, {0x490, 0x490, kUpperAccented},
    // lower_accented
    {0xDF, 0xF1, kLowerAccented}, {0xFC, 0xFC, kLowerAccented}, {0x101, 0x101, kLowerAccented},
    {0x103, 0x103, kLowerAccented}, {0x105, 0x105, kLowerAccented}, {0x107, 0x107, kLowerAccented},
    {0x10D, 0x10D, kLowerAccented}, {0x10F, 0x10F, kLowerAccented}, {0x111, 0x111, kLowerAccented},
    {0x113, 0x113, kLowerAccented}, {0x117, 0x117, kLowerAccented}, {0x119, 0x119, kLowerAccented},
    {0x11B, 0x11B, kLowerAccented}, {0x11F, 0x11F, kLowerAccented}, {0x123, 0x123, kLowerAccented},
    {0x12B, 0x12B, kLowerAccented}, {0x12F, 0x12F, kLowerAccented}, {0x137, 0x137, kLowerAccented},
    {0x13A, 0x13A, kLowerAccented}, {0x13C, 0x13C, kLowerAccented}, {0x13E, 0x13E, kLowerAccented},
    {0x142, 0x142, kLowerAccented}, {0x153, 0x153, kLowerAccented}, {0x155, 0x155, kLowerAccented},
    {0x15B, 0x15B, kLowerAccented}, {0x15F, 0x15F, kLowerAccented}, {0x161, 0x161, kLowerAccented},
    {0x165, 0x165, kLowerAccented}, {0x17A, 0x17A, kLowerAccented}, {0x17C, 0x17C, kLowerAccented},
    {0x17E, 0x17E, kLowerAccented}, {0x491, 0x491, kLowerAccented}, {0xFB01, 0xFB02, kLowerAccented},
    // upper_common
    {0xDE, 0xDE, kUpperCommon}, {0x386, 0x386, kUpperCommon}, {0x388, 0x38A, kUpperCommon},
    {0x38C, 0x38C, kUpperCommon}, {0x38E, 0x38F, kUpperCommon}, {0x391, 0x3AB, kUpperCommon},
    {0x401, 0x42F, kUpperCommon},
    // lower_common
    {0x3AC, 0x3C9, kLowerCommon}, {0x430, 0x45F, kLowerCommon},
    // box
    {0x2502, 0x2502, kBox}, {0x250C, 0x250C, kBox}, {0x2510, 0x2510, kBox}, {0x2518, 0x2518, kBox},
    {0x251C, 0x251C, kBox}, {0x2524, 0x2524, kBox}, {0x252C, 0x252C, kBox}, {0x253C, 0x253C, kBox},
    {0x2550, 0x256C, kBox}, {0x2580, 0x2580, kBox}, {0x2584, 0x2584, kBox}, {0x2588, 0x2588, kBox},
    {0x258C, 0x258C, kBox}, {0x2590, 0x2593, kBox},
    // ASCII letters (for the [a-z] / [A-Za-z] parts of the patterns)
    {'a', 'z', kAsciiLower}, {'A', 'Z', kAsciiUpper},
};

/// code point -> categories, for every code point that has any (all of them are in the BMP).
inline const std::vector<std::pair<char32_t, std::uint32_t>>& category_table() {
  static const auto table = [] {
    std::vector<std::pair<char32_t, std::uint32_t>> t;
    auto add = [&](char32_t c, std::uint32_t cat) { t.emplace_back(c, cat); };
    for (const auto& r : kCategoryRuns)
      for (char32_t c = r.first; c <= r.last; ++c) add(c, r.categories);
    using codecs::Charmap;
    constexpr Charmap kClueCodecs[] = {Charmap::Latin1,           Charmap::SloppyWindows1250,
                                       Charmap::SloppyWindows1251, Charmap::SloppyWindows1252,
                                       Charmap::SloppyWindows1253, Charmap::SloppyWindows1254,
                                       Charmap::SloppyWindows1257};
    auto is_loose_only = [](char32_t c) {  // in the continuation class but too common to be strict evidence
      return c == U' ' || c == 0x2013 || c == 0x2014 || c == 0x2015 || c == 0x2018 || c == 0x2019 ||
             c == 0x201A || c == 0x201C || c == 0x201D || c == 0x201E || c == 0x2022 || c == 0x2026;
    };
    for (Charmap m : kClueCodecs) {
      for (int b = 0x80; b <= 0xFF; ++b) {
        const char32_t c = codecs::decode_byte(m, static_cast<std::uint8_t>(b));
        if (b <= 0xBF) add(c, kUtf8Continuation | (is_loose_only(c) ? 0u : kUtf8ContStrict));
        else if (b <= 0xC1) continue;
        else if (b <= 0xDF) add(c, kUtf8First2);
        else if (b <= 0xEF) add(c, kUtf8First3);
        else if (b == 0xF0 || b == 0xF3) add(c, kUtf8First4);
      }
    }
    add(U' ', kUtf8Continuation);  // a space may have replaced byte A0
    std::sort(t.begin(), t.end());
    std::vector<std::pair<char32_t, std::uint32_t>> merged;
    for (const auto& [c, cat] : t) {
      if (!merged.empty() && merged.back().first == c) merged.back().second |= cat;
      else merged.emplace_back(c, cat);
    }
    return merged;
  }();
  return table;
}
}  // namespace detail

inline std::uint32_t categories(char32_t c) {
  const auto& t = detail::category_table();
  auto it = std::lower_bound(t.begin(), t.end(), c, [](const auto& e, char32_t v) { return e.first < v; });
  return (it != t.end() && it->first == c) ? it->second : 0u;
}

// ---- the badness patterns -----------------------------------------------------------------------------------------
namespace detail {
enum class Special : std::uint8_t { None, PythonSpace, PythonWord, AnyButNewline, NotAsciiLetter };

/// One position of a pattern: a character matches if it has any of `cats` or is one of `chars`.
struct Elem {
  std::uint32_t cats = 0;
  std::u32string_view chars = {};
  Special special = Special::None;
};

struct Pattern {
  std::array<Elem, 7> elems;
  std::uint8_t size;
  bool at_start_only = false;
};

constexpr std::uint32_t kAccentedEtc =
    kLowerAccented | kUpperAccented | kBox | kStartPunct | kEndPunct | kCurrency | kNumeric | kLaw;
constexpr Elem E(std::uint32_t cats, std::u32string_view chars = {}) { return Elem{cats, chars, Special::None}; }
constexpr Elem S(std::u32string_view chars) { return Elem{0, chars, Special::None}; }
constexpr Elem X(Special special) { return Elem{0, {}, special}; }

// BADNESS_RE, one alternative per entry (the optional \s of "[a-z]\s?[ÃÂ][ ]" is spelled out twice).
inline constexpr Pattern kBadnessPatterns[] = {
    {{E(kC1)}, 1},
    {{E(kBad | kAccentedEtc), E(kBad)}, 2},
    {{E(kAsciiLower | kAsciiUpper), E(kLowerCommon | kUpperCommon), E(kBad)}, 3},
    {{E(kBad), E(kAccentedEtc)}, 2},
    {{E(kLowerAccented | kLowerCommon | kBox | kEndPunct | kCurrency | kNumeric), E(kUpperAccented)}, 2},
    {{E(kBox | kEndPunct | kCurrency | kNumeric), E(kLowerAccented)}, 2},
    {{E(kLowerAccented | kBox | kEndPunct), E(kCurrency)}, 2},
    {{X(Special::PythonSpace), E(kUpperAccented), E(kCurrency)}, 3},
    {{E(kUpperAccented | kBox), E(kNumeric | kLaw)}, 2},
    {{E(kLowerAccented | kUpperAccented | kBox | kCurrency | kEndPunct), E(kStartPunct), E(kNumeric)}, 3},
    {{E(kLowerAccented | kUpperAccented | kCurrency | kNumeric | kBox | kLaw), E(kEndPunct), E(kStartPunct)}, 3},
    {{E(kCurrency | kNumeric | kBox), E(kStartPunct)}, 2},
    {{E(kAsciiLower), E(kUpperAccented), E(kStartPunct | kCurrency)}, 3},
    {{E(kBox), E(kKaomoji)}, 2},
    {{E(kLowerAccented | kUpperAccented | kCurrency | kNumeric | kStartPunct | kEndPunct | kLaw), E(kBox)}, 2},
    {{E(kBox), E(kEndPunct)}, 2},
    {{E(kLowerAccented | kUpperAccented), E(kStartPunct | kEndPunct), X(Special::PythonWord)}, 3},
    // the ligature œ when not followed by an unaccented Latin letter
    {{S(U"\u0152\u0153"), X(Special::NotAsciiLetter)}, 2},
    // degree signs after capital letters
    {{E(kUpperAccented), S(U"\u00B0")}, 2},
    // common Windows-1252 2-character mojibake
    {{S(U"\u00C2\u00C3\u00CE\u00D0"),
      E(kStartPunct | kEndPunct,
        U"\u20AC\u0153\u0160\u0161\u00A2\u00A3\u0178\u017E\u00A0\u00AD\u00AE\u00A9\u00B0\u00B7\u00BB\u2013\u2014\u00B4")},
     2},
    {{S(U"\u00D7"), S(U"\u00B2\u00B3")}, 2},
    // Windows-1252 mojibake of Arabic: four characters
    {{S(U"\u00D8\u00D9"), E(kCommon | kCurrency | kBad | kNumeric | kStartPunct, U"\u0178\u0160\u00AE\u00B0\u00B5\u00BB"),
      S(U"\u00D8\u00D9"), E(kCommon | kCurrency | kBad | kNumeric | kStartPunct, U"\u0178\u0160\u00AE\u00B0\u00B5\u00BB")},
     4},
    // Windows-1252 mojibake starting 3-byte sequences of South Asian alphabets
    {{S(U"\u00E0"), S(U"\u00B2\u00B5\u00B9\u00BC\u00BD\u00BE")}, 2},
    // MacRoman mojibake
    {{S(U"\u221A"), S(U"\u00B1\u2202\u2020\u2260\u00AE\u2122\u00B4\u2264\u2265\u00A5\u00B5\u00F8")}, 2},
    {{S(U"\u2248"), S(U"\u00B0\u00A2")}, 2},
    {{S(U"\u201A"), S(U"\u00C4"), S(U"\u00EC\u00EE\u00EF\u00F2\u00F4\u00FA\u00F9\u00FB\u2020\u00B0\u00A2\u03C0")}, 3},
    {{S(U"\u201A"), S(U"\u00E2\u00F3"), S(U"\u00E0\u00E4\u00B0\u00EA")}, 3},
    // Windows-1251 mojibake of U+2000..U+206F
    {{S(U"\u0432"), S(U"\u0402")}, 2},
    // Windows-1251 mojibake of Latin-1 and/or Cyrillic: three characters
    {{S(U"\u0412\u0413\u0420\u0421"), E(kC1 | kBad | kStartPunct | kEndPunct | kCurrency, U"\u00B0\u00B5"),
      S(U"\u0412\u0413\u0420\u0421")},
     3},
    // Windows-1251 over Latin-1 over Windows-1252, next to a Latin letter or space
    {{S(U"\u0413"), S(U"\u045E"), S(U"\u0412"), S(U"\u0402"), S(U"\u0412"), X(Special::AnyButNewline),
      E(kAsciiLower | kAsciiUpper, U" ")},
     7},
    // Windows-1252 encodings of 'à', 'á' and U+A0 itself
    {{S(U"\u00C3"), S(U"\u00A0\u00A1")}, 2},
    {{E(kAsciiLower), S(U"\u00C3\u00C2"), S(U" ")}, 3},
    {{E(kAsciiLower), X(Special::PythonSpace), S(U"\u00C3\u00C2"), S(U" ")}, 4},
    {{S(U"\u00C3\u00C2"), S(U" ")}, 2, true},
    // Â as the encoding of exactly the character it precedes
    {{E(kAsciiLower | kEndPunct, U".,?!"), S(U"\u00C2"), E(kStartPunct | kEndPunct, U" ")}, 3},
    // Windows-1253 mojibake of U+2000..U+206F
    {{S(U"\u03B2"), S(U"\u20AC"), S(U"\u2122\u00A0\u0386\u00AD\u00AE\u00B0")}, 3},
    // Windows-1253 mojibake of Latin-1 and/or Greek
    {{S(U"\u0392\u0393\u039E\u039F"), E(kC1 | kBad | kStartPunct | kEndPunct | kCurrency, U"\u00B0"),
      S(U"\u0392\u0393\u039E\u039F")},
     3},
    // Windows-1257 mojibake of U+2000..U+206F
    {{S(U"\u0101"), S(U"\u20AC")}, 2},
};

inline bool elem_matches(const Elem& e, char32_t c, std::uint32_t cats) {
  switch (e.special) {
    case Special::PythonSpace: return unicode::is_python_space(c);
    case Special::PythonWord: return unicode::is_python_word(c);
    case Special::AnyButNewline: return c != U'\n';
    case Special::NotAsciiLetter: return (cats & (kAsciiLower | kAsciiUpper)) == 0;
    case Special::None: break;
  }
  return (cats & e.cats) != 0 || e.chars.find(c) != std::u32string_view::npos;
}
}  // namespace detail

/// ftfy.badness.is_bad(): does the text contain any sequence the heuristic considers mojibake?
inline bool is_bad(std::u32string_view text) {
  std::vector<std::uint32_t> cats(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) cats[i] = categories(text[i]);
  for (std::size_t i = 0; i < text.size(); ++i) {
    for (const auto& p : detail::kBadnessPatterns) {
      if (p.at_start_only && i != 0) continue;
      if (i + p.size > text.size()) continue;
      bool ok = true;
      for (std::size_t k = 0; k < p.size && ok; ++k) ok = detail::elem_matches(p.elems[k], text[i + k], cats[i + k]);
      if (ok) return true;
    }
  }
  return false;
}

/// The [begin, end) spans that chardata.UTF8_DETECTOR_RE matches, left to right, non-overlapping:
/// runs of "lead character + continuation characters" shaped like UTF-8 read in a single-byte codec, not
/// preceded by a strict continuation character.
inline std::vector<std::pair<std::size_t, std::size_t>> find_utf8_mojibake(std::u32string_view text) {
  std::vector<std::uint32_t> cats(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) cats[i] = categories(text[i]);
  auto unit_length = [&](std::size_t i) -> std::size_t {
    std::size_t len = 0;
    if (cats[i] & kUtf8First2) len = 2;
    else if (cats[i] & kUtf8First3) len = 3;
    else if (cats[i] & kUtf8First4) len = 4;
    if (len == 0 || i + len > text.size()) return 0;
    for (std::size_t k = 1; k < len; ++k)
      if (!(cats[i + k] & kUtf8Continuation)) return 0;
    return len;
  };
  std::vector<std::pair<std::size_t, std::size_t>> spans;
  std::size_t i = 0;
  while (i < text.size()) {
    if (i > 0 && (cats[i - 1] & kUtf8ContStrict)) {
      ++i;
      continue;
    }
    std::size_t end = i;
    while (end < text.size()) {
      const std::size_t len = unit_length(end);
      if (len == 0) break;
      end += len;
    }
    if (end > i) {
      spans.emplace_back(i, end);
      i = end;
    } else {
      ++i;
    }
  }
  return spans;
}

}  // namespace adabldm::text::mojibake
