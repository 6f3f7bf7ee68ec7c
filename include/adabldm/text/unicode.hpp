#pragma once
// Unicode helpers for the CLIP text pipeline: strict UTF-8 <-> UTF-32, the character classes that Python's
// `re` and the `regex` module use, Python's str.lower() (full mapping, final sigma included) and NFC.
//
// Every table comes from scripts/gen_unicode_tables.py, run on the interpreter that produced the golden
// tokenizer files (Python 3.11 unicodedata = Unicode 14.0; regex module 2022.10.31 = Unicode 15.0), so these
// functions agree with that reference code point for code point, not merely with "some" Unicode version.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "adabldm/core/error.hpp"
#include "adabldm/text/unicode_tables.hpp"

namespace adabldm::text {

// ---- UTF-8 ------------------------------------------------------------------------------------------------------

/// Appends the UTF-8 encoding of c (any value up to U+10FFFF; lone surrogates are written as-is, WTF-8 style,
/// which only matters for the u32 API that accepts them).
inline void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    check(c <= 0x10FFFF, "append_utf8: U+", std::hex, static_cast<std::uint32_t>(c), " is beyond U+10FFFF");
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

inline std::string utf8_encode(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) append_utf8(out, c);
  return out;
}

/// Decodes well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF).
/// Anything else throws adabldm::Error naming the byte offset -- the same input Python's bytes.decode('utf-8')
/// rejects, so a caller never tokenizes text that the reference tokenizer could not have been given.
inline std::u32string utf8_decode(std::string_view bytes) {
  std::u32string out;
  out.reserve(bytes.size());
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const std::size_t n = bytes.size();
  std::size_t i = 0;
  auto fail = [&](const char* why) {
    throw Error(adabldm::detail::concat("invalid UTF-8 at byte offset ", i, ": ", why));
  };
  while (i < n) {
    const unsigned b0 = p[i];
    if (b0 < 0x80) {
      out += static_cast<char32_t>(b0);
      ++i;
      continue;
    }
    std::size_t len;
    char32_t cp, min;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2, cp = b0 & 0x1F, min = 0x80;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3, cp = b0 & 0x0F, min = 0x800;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4, cp = b0 & 0x07, min = 0x10000;
    } else {
      fail(b0 >= 0x80 && b0 <= 0xBF ? "unexpected continuation byte" : "byte that never starts a sequence");
    }
    if (i + len > n) fail("truncated sequence");
    for (std::size_t k = 1; k < len; ++k) {
      const unsigned b = p[i + k];
      if ((b & 0xC0) != 0x80) fail("missing continuation byte");
      cp = (cp << 6) | (b & 0x3F);
    }
    if (cp < min) fail("overlong encoding");
    if (cp >= 0xD800 && cp <= 0xDFFF) fail("encoded surrogate");
    if (cp > 0x10FFFF) fail("code point beyond U+10FFFF");
    out += cp;
    i += len;
  }
  return out;
}

// ---- character classes ------------------------------------------------------------------------------------------
namespace unicode {

template <std::size_t N>
bool in_ranges(const tables::CodeRange (&table)[N], char32_t c) {
  const auto* it = std::upper_bound(table, table + N, c,
                                    [](char32_t v, const tables::CodeRange& r) { return v < r.first; });
  return it != table && c <= (it - 1)->last;
}

/// str.isspace(), which is also Python `re`'s \s (used by str.strip() and ftfy's heuristic).
inline bool is_python_space(char32_t c) { return in_ranges(tables::kPythonSpace, c); }
/// Python `re`'s \w (letters, anything with a numeric value, underscore).
inline bool is_python_word(char32_t c) { return in_ranges(tables::kPythonWord, c); }
/// Python `re`'s \d (decimal digits of any script).
inline bool is_python_digit(char32_t c) { return in_ranges(tables::kPythonDigit, c); }
/// The `regex` module's \s (unlike str.isspace() it leaves out U+001C..U+001F).
inline bool is_regex_space(char32_t c) { return in_ranges(tables::kRegexSpace, c); }
/// CLIP's [\p{L}], [\p{N}] and [^\s\p{L}\p{N}] as the `regex` module evaluates them under IGNORECASE.
inline bool is_regex_letter(char32_t c) { return in_ranges(tables::kRegexLetter, c); }
inline bool is_regex_number(char32_t c) { return in_ranges(tables::kRegexNumber, c); }
inline bool is_regex_other(char32_t c) { return in_ranges(tables::kRegexOther, c); }

/// Does c match the ASCII letter `letter` under the regex module's IGNORECASE (e.g. U+017F for 's')?
inline bool regex_equal_ignore_case(char32_t c, char letter) {
  const char32_t lower = static_cast<char32_t>(letter | 0x20);
  if ((c | 0x20) == lower && c < 0x80) return true;
  for (const auto& m : tables::kRegexCaseVariants)
    if (m.from == lower && m.to == c) return true;
  return false;
}

// ---- str.lower() -------------------------------------------------------------------------------------------------

/// Single-code-point lower-case mapping (no context; U+0130 and final sigma are handled by python_lower).
inline char32_t simple_lower(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  const auto& runs = tables::kLowerRuns;
  const auto* end = runs + std::size(runs);
  const auto* it = std::upper_bound(runs, end, c, [](char32_t v, const tables::CaseRun& r) { return v < r.first; });
  if (it == runs) return c;
  --it;
  if (c > it->last || (c - it->first) % it->stride != 0) return c;
  return static_cast<char32_t>(static_cast<std::int64_t>(c) + it->delta);
}

/// Python's str.lower(): full mappings (U+0130 -> "i\u0307") and the Final_Sigma context for U+03A3.
inline std::u32string python_lower(std::u32string_view text) {
  auto cased = [](char32_t c) { return in_ranges(tables::kCased, c); };
  auto ignorable = [](char32_t c) { return in_ranges(tables::kCaseIgnorable, c); };
  std::u32string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    if (c == 0x130) {
      out += U'i';
      out += U'\u0307';
    } else if (c == 0x3A3) {
      // Final sigma: a cased letter before (skipping case-ignorables) and none after.
      std::size_t j = i;
      while (j > 0 && ignorable(text[j - 1])) --j;
      bool final_sigma = j > 0 && cased(text[j - 1]);
      if (final_sigma) {
        std::size_t k = i + 1;
        while (k < text.size() && ignorable(text[k])) ++k;
        final_sigma = k == text.size() || !cased(text[k]);
      }
      out += final_sigma ? U'\u03C2' : U'\u03C3';
    } else {
      out += simple_lower(c);
    }
  }
  return out;
}

// ---- NFC --------------------------------------------------------------------------------------------------------

inline std::uint8_t combining_class(char32_t c) {
  if (c < 0x300) return 0;
  const auto& runs = tables::kCombiningClass;
  const auto* end = runs + std::size(runs);
  const auto* it =
      std::upper_bound(runs, end, c, [](char32_t v, const tables::CombiningRun& r) { return v < r.first; });
  return (it != runs && c <= (it - 1)->last) ? (it - 1)->ccc : 0;
}

namespace detail {
// Hangul syllables are composed and decomposed arithmetically (Unicode ch. 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

inline void decompose_into(std::u32string& out, char32_t c) {
  if (c >= kSBase && c < kSBase + kSCount) {
    const char32_t s = c - kSBase;
    out += kLBase + s / kNCount;
    out += kVBase + (s % kNCount) / kTCount;
    if (s % kTCount) out += kTBase + s % kTCount;
    return;
  }
  const auto& table = tables::kDecompositions;
  const auto* end = table + std::size(table);
  const auto* it =
      std::lower_bound(table, end, c, [](const tables::Decomposition& d, char32_t v) { return d.cp < v; });
  if (it == end || it->cp != c) {
    out += c;
    return;
  }
  decompose_into(out, it->first);
  if (it->second) decompose_into(out, it->second);
}

inline char32_t compose_pair(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  const auto& table = tables::kCompositions;
  const auto* end = table + std::size(table);
  const auto* it = std::lower_bound(table, end, std::make_pair(a, b), [](const tables::Composition& t, auto key) {
    return t.first < key.first || (t.first == key.first && t.second < key.second);
  });
  return (it != end && it->first == a && it->second == b) ? it->composite : 0;
}
}  // namespace detail

/// Unicode Normalization Form C (canonical decomposition, canonical ordering, canonical composition).
inline std::u32string nfc(std::u32string_view text) {
  // Nothing below U+0300 decomposes into something that recomposes differently.
  if (std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0x300; })) return std::u32string(text);
  std::u32string s;
  s.reserve(text.size() + 8);
  for (char32_t c : text) detail::decompose_into(s, c);
  // Canonical ordering: stable-sort each run of non-starters by combining class.
  for (std::size_t i = 0; i < s.size();) {
    if (combining_class(s[i]) == 0) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < s.size() && combining_class(s[j]) != 0) ++j;
    std::stable_sort(s.begin() + static_cast<std::ptrdiff_t>(i), s.begin() + static_cast<std::ptrdiff_t>(j),
                     [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
  if (s.empty()) return s;
  // Canonical composition: a character joins the last starter unless something between them blocks it.
  std::size_t starter = 0, write = 1;
  int last_class = combining_class(s[0]) == 0 ? 0 : 256;
  for (std::size_t read = 1; read < s.size(); ++read) {
    const char32_t c = s[read];
    const int cls = combining_class(c);
    if (last_class == 0 || (last_class != 256 && last_class < cls)) {
      if (char32_t composite = detail::compose_pair(s[starter], c)) {
        s[starter] = composite;
        continue;
      }
    }
    if (cls == 0) starter = write;
    last_class = cls;
    s[write++] = c;
  }
  s.resize(write);
  return s;
}

}  // namespace unicode
}  // namespace adabldm::text
