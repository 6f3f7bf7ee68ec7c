#pragma once
// A C++ reimplementation of ftfy 6.3.1's fix_text() with its default TextFixerConfig -- the first thing
// CLIP's tokenizer does to a prompt. Written from ftfy's documented behaviour and source (read for facts, not
// copied); see docs/tokenizer.md for what is covered and the few known differences.
//
// The pipeline, per line (a "segment" ends after each '\n', at most max_decode_length code points):
//   repeat until nothing changes:
//     unescape_html (unless the text is HTML: 'auto' switches it off for good once a segment contains '<')
//     fix_encoding        -- mojibake repair: re-encode in a single-byte codec, decode as UTF-8, guided by
//                            the badness heuristic; with restore_byte_a0, replace_lossy_sequences,
//                            decode_inconsistent_utf8 and fix_c1_controls inside
//     fix_c1_controls, fix_latin_ligatures, fix_character_width, uncurl_quotes, fix_line_breaks,
//     fix_surrogates, remove_terminal_escapes, remove_control_chars, NFC
//
// Text is handled as UTF-32 (std::u32string) inside; the UTF-8 entry points reject invalid UTF-8 (see
// utf8_decode). The u32 entry points accept any code points, lone surrogates included, which is how
// fix_surrogates can be exercised at all.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "adabldm/text/html_unescape.hpp"
#include "adabldm/text/legacy_codecs.hpp"
#include "adabldm/text/mojibake_heuristic.hpp"
#include "adabldm/text/unicode.hpp"

namespace adabldm::text {

/// The switches of ftfy's TextFixerConfig that fix_text() reads directly. (Inside fix_text, ftfy runs
/// fix_encoding with its default sub-options -- restore_byte_a0, replace_lossy_sequences,
/// decode_inconsistent_utf8 and fix_c1_controls all on -- whatever the config says; so does this port.)
struct FixTextConfig {
  enum class Html : std::uint8_t { Auto, Always, Never };
  Html unescape_html = Html::Auto;
  bool remove_terminal_escapes = true;
  bool fix_encoding = true;
  bool fix_c1_controls = true;
  bool fix_latin_ligatures = true;
  bool fix_character_width = true;
  bool uncurl_quotes = true;
  bool fix_line_breaks = true;
  bool fix_surrogates = true;
  bool remove_control_chars = true;
  bool normalize_nfc = true;  ///< ftfy's default normalization "NFC" (other forms are not offered)
  std::size_t max_decode_length = 1000000;
};

namespace ftfy {

// ---- single-purpose fixers (ftfy.fixes) ----------------------------------------------------------------------

/// Decodes HTML entities that are unambiguous: "&name;" from html.entities.html5, all-caps spellings of
/// lower-case entities ("&EACUTE;" -> "É"), and numeric references "&#...;" (via html.unescape, kept only
/// when the reference including its ';' was consumed). "&amp" without ';' is left alone, unlike html.unescape.
inline std::u32string unescape_html(std::u32string_view text) {
  auto alnum = [](char32_t c) { return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z'); };
  std::u32string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    // Pattern: & #? [0-9A-Za-z]{1,24} ;
    if (text[i] == U'&') {
      std::size_t j = i + 1;
      const bool numeric = j < text.size() && text[j] == U'#';
      if (numeric) ++j;
      std::size_t k = j;
      while (k < text.size() && k - j < 24 && alnum(text[k])) ++k;
      if (k > j && k < text.size() && text[k] == U';') {
        const std::u32string_view entity = text.substr(i, k + 1 - i);
        const std::string name = *text::detail::ascii_name(entity.substr(1));  // all ASCII by construction
        std::optional<std::string_view> value;
        if (!numeric) {
          value = html5_entity(name);
          if (!value) value = text::detail::find_entity(tables::kUpperCaseEntities, name);
        }
        if (value) {
          out += utf8_decode(*value);
        } else if (numeric) {
          std::u32string decoded = html_unescape(entity);
          out += decoded.find(U';') == std::u32string::npos ? decoded : std::u32string(entity);
        } else {
          out += entity;
        }
        i = k + 1;
        continue;
      }
    }
    out += text[i++];
  }
  return out;
}

/// Removes ANSI terminal escapes: ESC '[' (digits or ';')* letter.
inline std::u32string remove_terminal_escapes(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    if (text[i] == 0x1B && i + 1 < text.size() && text[i + 1] == U'[') {
      std::size_t k = i + 2;
      while (k < text.size() && (text[k] == U';' || unicode::is_python_digit(text[k]))) ++k;
      if (k < text.size() && ((text[k] | 0x20) >= U'a' && (text[k] | 0x20) <= U'z')) {
        i = k + 1;
        continue;
      }
    }
    out += text[i++];
  }
  return out;
}

/// Curly quotes (and U+02BC MODIFIER LETTER APOSTROPHE) become ASCII ' and ".
inline std::u32string uncurl_quotes(std::u32string_view text) {
  std::u32string out(text);
  for (char32_t& c : out) {
    if (c == 0x2BC || (c >= 0x2018 && c <= 0x201B)) c = U'\'';
    else if (c >= 0x201C && c <= 0x201F) c = U'"';
  }
  return out;
}

/// Latin ligatures and legacy digraph code points become their letters (ﬁ -> fi, ǆ -> dž, ŉ -> ʼn).
inline std::u32string fix_latin_ligatures(std::u32string_view text) {
  auto expansion = [](char32_t c) -> std::u32string_view {
    switch (c) {
      case 0x132: return U"IJ";
      case 0x133: return U"ij";
      case 0x149: return U"\u02BCn";
      case 0x1F1: return U"DZ";
      case 0x1F2: return U"Dz";
      case 0x1F3: return U"dz";
      case 0x1C4: return U"D\u017D";
      case 0x1C5: return U"D\u017E";
      case 0x1C6: return U"d\u017E";
      case 0x1C7: return U"LJ";
      case 0x1C8: return U"Lj";
      case 0x1C9: return U"lj";
      case 0x1CA: return U"NJ";
      case 0x1CB: return U"Nj";
      case 0x1CC: return U"nj";
      case 0xFB00: return U"ff";
      case 0xFB01: return U"fi";
      case 0xFB02: return U"fl";
      case 0xFB03: return U"ffi";
      case 0xFB04: return U"ffl";
      case 0xFB05: return U"\u017Ft";
      case 0xFB06: return U"st";
      default: return {};
    }
  };
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    auto e = expansion(c);
    if (e.empty()) out += c;
    else out += e;
  }
  return out;
}

/// Full-width and half-width forms (U+FF01..U+FFEF) become their NFKC forms; U+3000 becomes a space.
inline std::u32string fix_character_width(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    if (c == 0x3000 || (c >= 0xFF01 && c <= 0xFFEF)) {
      const auto& map = tables::kWidthMap;
      const auto* end = map + std::size(map);
      const auto* it =
          std::lower_bound(map, end, c, [](const tables::WidthMapping& m, char32_t v) { return m.from < v; });
      if (it != end && it->from == c) {
        out += it->first;
        if (it->second) out += it->second;
        continue;
      }
    }
    out += c;
  }
  return out;
}

/// CRLF, CR, U+2028, U+2029 and U+0085 become LF.
inline std::u32string fix_line_breaks(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    if (c == U'\r') {
      out += U'\n';
      if (i + 1 < text.size() && text[i + 1] == U'\n') ++i;
    } else if (c == 0x2028 || c == 0x2029 || c == 0x85) {
      out += U'\n';
    } else {
      out += c;
    }
  }
  return out;
}

/// UTF-16 surrogate pairs become the code point they encode; unpaired surrogates become U+FFFD.
inline std::u32string fix_surrogates(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    if (c >= 0xD800 && c <= 0xDBFF && i + 1 < text.size() && text[i + 1] >= 0xDC00 && text[i + 1] <= 0xDFFF) {
      out += 0x10000 + (c - 0xD800) * 0x400 + (text[i + 1] - 0xDC00);
      ++i;
    } else if (c >= 0xD800 && c <= 0xDFFF) {
      out += 0xFFFD;
    } else {
      out += c;
    }
  }
  return out;
}

/// Drops control characters with no visible effect: C0 controls except \t \n \f \r, DEL, the deprecated
/// Arabic format controls U+206A..U+206F, U+FEFF, and U+FFF9..U+FFFC. (C1 controls stay: they are evidence
/// of mojibake, handled by fix_c1_controls.)
inline std::u32string remove_control_chars(std::u32string_view text) {
  auto removed = [](char32_t c) {
    return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F || (c >= 0x206A && c <= 0x206F) ||
           c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
  };
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text)
    if (!removed(c)) out += c;
  return out;
}

/// C1 controls U+0080..U+009F become what their byte means in (sloppy) Windows-1252, as browsers do.
inline std::u32string fix_c1_controls(std::u32string_view text) {
  std::u32string out(text);
  for (char32_t& c : out)
    if (c >= 0x80 && c <= 0x9F) c = codecs::decode_byte(codecs::Charmap::SloppyWindows1252, static_cast<std::uint8_t>(c));
  return out;
}

// ---- byte-level repairs used inside fix_encoding ------------------------------------------------------------------
namespace detail {
/// A set of bytes given as up to six inclusive ranges.
struct ByteSet {
  std::uint8_t lo[6], hi[6];
  std::uint8_t n;
  constexpr bool has(std::uint8_t b) const {
    for (std::uint8_t k = 0; k < n; ++k)
      if (b >= lo[k] && b <= hi[k]) return true;
    return false;
  }
};
struct BytePattern {
  ByteSet at[6];
  std::uint8_t size;
};
constexpr ByteSet B(std::uint8_t lo, std::uint8_t hi) { return ByteSet{{lo}, {hi}, 1}; }
constexpr ByteSet kSpace = B(0x20, 0x20);
constexpr ByteSet kCont = B(0x80, 0xBF);
constexpr ByteSet kContNotA0or85 = ByteSet{{0x80, 0x86, 0xA1}, {0x84, 0x9F, 0xBF}, 3};
constexpr ByteSet kSub = B(0x1A, 0x1A);
constexpr ByteSet kSubOrQuestion = ByteSet{{0x1A, 0x3F}, {0x1A, 0x3F}, 2};
constexpr ByteSet kSubOrCont = ByteSet{{0x1A, 0x80}, {0x1A, 0xBF}, 2};
constexpr ByteSet kSubQuestionOrCont = ByteSet{{0x1A, 0x3F, 0x80}, {0x1A, 0x3F, 0xBF}, 3};

// chardata.ALTERED_UTF8_RE: UTF-8 sequences that would be valid if a space were byte A0.
inline constexpr BytePattern kAlteredUtf8[] = {
    {{ByteSet{{0xC2, 0xC3, 0xC5, 0xCE, 0xD0, 0xD9}, {0xC2, 0xC3, 0xC5, 0xCE, 0xD0, 0xD9}, 6}, kSpace}, 2},
    {{B(0xE2, 0xE3), kSpace, kContNotA0or85}, 3},
    {{B(0xE0, 0xE3), kContNotA0or85, kSpace}, 3},
    {{B(0xF0, 0xF0), kSpace, kCont, kCont}, 4},
    {{B(0xF0, 0xF0), kCont, kSpace, kCont}, 4},
    {{B(0xF0, 0xF0), kCont, kCont, kSpace}, 4},
};

// chardata.LOSSY_UTF8_RE: UTF-8 / CESU-8 sequences with bytes lost to 1A (U+FFFD in a sloppy codec) or '?'.
inline constexpr BytePattern kLossyUtf8[] = {
    {{B(0xC2, 0xDF), kSub}, 2},
    {{B(0xC2, 0xC3), B('?', '?')}, 2},
    {{B(0xED, 0xED), B(0xA0, 0xAF), kSubOrQuestion, B(0xED, 0xED), B(0xB0, 0xBF), kSubQuestionOrCont}, 6},
    {{B(0xED, 0xED), B(0xA0, 0xAF), kSubQuestionOrCont, B(0xED, 0xED), B(0xB0, 0xBF), kSubOrQuestion}, 6},
    {{B(0xE0, 0xEF), kSubOrQuestion, kSubOrCont}, 3},
    {{B(0xE0, 0xEF), kSubOrCont, kSubOrQuestion}, 3},
    {{B(0xF0, 0xF4), kSubOrQuestion, kSubOrCont, kSubOrCont}, 4},
    {{B(0xF0, 0xF4), kSubOrCont, kSubOrQuestion, kSubOrCont}, 4},
    {{B(0xF0, 0xF4), kSubOrCont, kSubOrCont, kSubOrQuestion}, 4},
    {{kSub}, 1},
};

/// Length of the first alternative matching at bytes[i], or 0 (regex alternation order).
template <std::size_t N>
std::size_t match_at(const BytePattern (&patterns)[N], std::string_view bytes, std::size_t i) {
  for (const auto& p : patterns) {
    if (i + p.size > bytes.size()) continue;
    bool ok = true;
    for (std::size_t k = 0; k < p.size && ok; ++k) ok = p.at[k].has(static_cast<std::uint8_t>(bytes[i + k]));
    if (ok) return p.size;
  }
  return 0;
}

template <std::size_t N>
bool search(const BytePattern (&patterns)[N], std::string_view bytes) {
  for (std::size_t i = 0; i < bytes.size(); ++i)
    if (match_at(patterns, bytes, i)) return true;
  return false;
}
}  // namespace detail

/// fixes.restore_byte_a0: puts back byte A0 where a space replaced it inside a would-be UTF-8 sequence.
/// "Ã " followed by a new word is read as "à " (the space kept), except before "quele/quela/quilo/s ".
inline std::string restore_byte_a0(std::string_view bytes) {
  std::string step1;
  step1.reserve(bytes.size() + 8);
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    if (static_cast<unsigned char>(bytes[i]) == 0xC3 && i + 1 < bytes.size() && bytes[i + 1] == ' ') {
      const std::string_view rest = bytes.substr(i + 2);
      auto starts = [&](std::string_view p) { return rest.substr(0, p.size()) == p; };
      if (!(starts(" ") || starts("quele") || starts("quela") || starts("quilo") || starts("s "))) {
        step1 += "\xC3\xA0 ";
        ++i;
        continue;
      }
    }
    step1 += bytes[i];
  }
  std::string out;
  out.reserve(step1.size());
  for (std::size_t i = 0; i < step1.size();) {
    if (std::size_t len = detail::match_at(detail::kAlteredUtf8, step1, i)) {
      for (std::size_t k = 0; k < len; ++k) out += step1[i + k] == ' ' ? '\xA0' : step1[i + k];
      i += len;
    } else {
      out += step1[i++];
    }
  }
  return out;
}

/// fixes.replace_lossy_sequences: a UTF-8 sequence with lost bytes becomes the UTF-8 of U+FFFD.
inline std::string replace_lossy_sequences(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (std::size_t i = 0; i < bytes.size();) {
    if (std::size_t len = detail::match_at(detail::kLossyUtf8, bytes, i)) {
      out += "\xEF\xBF\xBD";
      i += len;
    } else {
      out += bytes[i++];
    }
  }
  return out;
}

// ---- fix_encoding -----------------------------------------------------------------------------------------------

inline std::u32string fix_encoding(std::u32string_view text);

/// fixes.decode_inconsistent_utf8: fixes each UTF-8-looking run on its own when the whole text has no
/// consistent re-encoding (a run is fixed only if it is shorter than the text and looks bad by itself).
inline std::u32string decode_inconsistent_utf8(std::u32string_view text) {
  std::u32string out;
  std::size_t pos = 0;
  for (const auto& [begin, end] : mojibake::find_utf8_mojibake(text)) {
    out += text.substr(pos, begin - pos);
    const std::u32string_view run = text.substr(begin, end - begin);
    if (run.size() < text.size() && mojibake::is_bad(run)) out += fix_encoding(run);
    else out += run;
    pos = end;
  }
  out += text.substr(pos);
  return out;
}

/// One step of ftfy's fix_encoding_and_explain (its plan is not recorded).
inline std::u32string fix_encoding_one_step(std::u32string_view text) {
  using codecs::Charmap;
  const std::u32string unchanged(text);
  if (text.empty()) return unchanged;
  const bool ascii = std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0x80; });
  if (ascii || !mojibake::is_bad(text)) return unchanged;

  // Most likely: UTF-8 that was decoded in a single-byte codec. The first codec that turns the text back
  // into valid UTF-8 (after the A0 / lossy-byte repairs) wins.
  bool latin1_possible = false;
  for (Charmap m : codecs::kMojibakeCharmaps) {
    if (!codecs::can_encode(m, text)) continue;
    if (m == Charmap::Latin1) latin1_possible = true;
    std::string bytes = *codecs::encode(m, text);
    if (m != Charmap::MacRoman && detail::search(detail::kAlteredUtf8, bytes)) bytes = restore_byte_a0(bytes);
    if (codecs::is_sloppy(m)) bytes = replace_lossy_sequences(bytes);
    if (auto fixed = codecs::decode_utf8_variants(bytes)) return *fixed;
  }

  // UTF-8 mojibake embedded in otherwise consistent text.
  if (!mojibake::find_utf8_mojibake(text).empty()) {
    std::u32string fixed = decode_inconsistent_utf8(text);
    if (fixed != text) return fixed;
  }

  // Latin-1 that was meant as Windows-1252 (C1 controls in Latin-1 text). ftfy first asks whether
  // "windows-1252" is among the possible codecs, but that name never is (only "sloppy-windows-1252"),
  // so this step always runs when Latin-1 was possible.
  if (latin1_possible) {
    if (auto fixed = codecs::decode(Charmap::Windows1252, *codecs::encode(Charmap::Latin1, text))) {
      if (*fixed != text) return *fixed;
    }
  }

  // Single C1 controls, each read as Windows-1252.
  if (std::any_of(text.begin(), text.end(), [](char32_t c) { return c >= 0x80 && c <= 0x9F; }))
    return fix_c1_controls(text);
  return unchanged;
}

/// ftfy.fix_encoding (default options): repeats one step until the text stops changing.
inline std::u32string fix_encoding(std::u32string_view text) {
  std::u32string current(text);
  while (true) {
    std::u32string next = fix_encoding_one_step(current);
    if (next == current) return current;
    current = std::move(next);
  }
}

// ---- fix_text ---------------------------------------------------------------------------------------------------

/// ftfy.fix_and_explain without the explanation: all enabled fixes, repeated until the segment is stable.
inline std::u32string fix_text_segment(std::u32string_view segment, FixTextConfig config = {}) {
  if (config.unescape_html == FixTextConfig::Html::Auto && segment.find(U'<') != std::u32string_view::npos)
    config.unescape_html = FixTextConfig::Html::Never;
  std::u32string text(segment);
  while (true) {
    const std::u32string original = text;
    if (config.unescape_html != FixTextConfig::Html::Never) text = unescape_html(text);
    if (config.fix_encoding) text = fix_encoding(text);
    if (config.fix_c1_controls) text = fix_c1_controls(text);
    if (config.fix_latin_ligatures) text = fix_latin_ligatures(text);
    if (config.fix_character_width) text = fix_character_width(text);
    if (config.uncurl_quotes) text = uncurl_quotes(text);
    if (config.fix_line_breaks) text = fix_line_breaks(text);
    if (config.fix_surrogates) text = fix_surrogates(text);
    if (config.remove_terminal_escapes) text = remove_terminal_escapes(text);
    if (config.remove_control_chars) text = remove_control_chars(text);
    if (config.normalize_nfc) text = unicode::nfc(text);
    if (text == original) return text;
  }
}

/// ftfy.fix_text: fixes each line separately. With unescape_html 'auto', the first segment that contains
/// '<' switches HTML unescaping off for itself and every later segment (as ftfy does).
inline std::u32string fix_text(std::u32string_view text, FixTextConfig config = {}) {
  const std::size_t max_len = std::max<std::size_t>(1, config.max_decode_length);
  std::u32string out;
  out.reserve(text.size());
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t newline = text.find(U'\n', pos);
    std::size_t end = newline == std::u32string_view::npos ? text.size() : newline + 1;
    if (end - pos > max_len) end = pos + max_len;
    const std::u32string_view segment = text.substr(pos, end - pos);
    if (config.unescape_html == FixTextConfig::Html::Auto && segment.find(U'<') != std::u32string_view::npos)
      config.unescape_html = FixTextConfig::Html::Never;
    out += fix_text_segment(segment, config);
    pos = end;
  }
  return out;
}

}  // namespace ftfy

/// ftfy.fix_text(text) on UTF-8 (invalid UTF-8 throws adabldm::Error naming the byte offset).
inline std::string fix_text(std::string_view utf8, const FixTextConfig& config = {}) {
  return utf8_encode(ftfy::fix_text(utf8_decode(utf8), config));
}

/// ftfy.fix_encoding(text) on UTF-8: only the mojibake repair.
inline std::string fix_encoding(std::string_view utf8) { return utf8_encode(ftfy::fix_encoding(utf8_decode(utf8))); }

}  // namespace adabldm::text
