#pragma once
// HTML character references, two ways:
//  * html_unescape(): Python's html.unescape (HTML5 rules: named references with or without ';' and the
//    longest-prefix fallback, numeric references with the invalid-codepoint replacement table). CLIP applies it
//    twice after ftfy.
//  * html_entity(): the table lookup ftfy's more cautious unescaper uses (see ftfy.hpp).
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "adabldm/text/html_entity_tables.hpp"
#include "adabldm/text/unicode.hpp"

namespace adabldm::text {

namespace detail {
template <std::size_t N>
std::optional<std::string_view> find_entity(const tables::NamedEntity (&table)[N], std::string_view name) {
  const auto* end = table + N;
  const auto* it = std::lower_bound(table, end, name,
                                    [](const tables::NamedEntity& e, std::string_view v) { return e.name < v; });
  if (it != end && std::string_view(it->name) == name) return std::string_view(it->value);
  return std::nullopt;
}

/// The name as a narrow string if every code point is ASCII (entity names always are).
inline std::optional<std::string> ascii_name(std::u32string_view name) {
  std::string out;
  out.reserve(name.size());
  for (char32_t c : name) {
    if (c >= 0x80) return std::nullopt;
    out += static_cast<char>(c);
  }
  return out;
}
}  // namespace detail

/// html.entities.html5[name] (name without '&', with or without the trailing ';'), as UTF-8.
inline std::optional<std::string_view> html5_entity(std::string_view name) {
  return detail::find_entity(tables::kHtml5Entities, name);
}

/// What html.unescape turns the numeric reference number `num` into (saturated: any num > U+10FFFF is "too big").
inline std::u32string html_numeric_reference(std::uint64_t num) {
  for (const auto& r : tables::kInvalidCharrefs)
    if (r.number == num) return utf8_decode(r.value);
  if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return U"\uFFFD";
  for (std::uint32_t bad : tables::kInvalidCodepoints)
    if (bad == num) return U"";
  return std::u32string(1, static_cast<char32_t>(num));
}

/// Python's html.unescape(s).
inline std::u32string html_unescape(std::u32string_view s) {
  if (s.find(U'&') == std::u32string_view::npos) return std::u32string(s);
  auto is_digit = [](char32_t c) { return c >= '0' && c <= '9'; };
  auto is_hex = [&](char32_t c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); };
  auto hex_value = [&](char32_t c) -> std::uint64_t { return is_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10; };
  constexpr std::uint64_t kTooBig = 0x110000;  // saturation point: every larger number behaves the same
  std::u32string out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    if (s[i] != U'&') {
      out += s[i++];
      continue;
    }
    const std::size_t n = s.size();
    std::size_t j = i + 1;
    if (j < n && s[j] == U'#') {
      // &#123;  or  &#x1F;  (';' optional); "&#" followed by anything else is left alone.
      const bool hex = j + 1 < n && (s[j + 1] == U'x' || s[j + 1] == U'X');
      std::size_t k = j + (hex ? 2 : 1);
      std::uint64_t num = 0;
      const std::size_t digits_begin = k;
      while (k < n && (hex ? is_hex(s[k]) : is_digit(s[k]))) {
        num = std::min(kTooBig, num * (hex ? 16 : 10) + (hex ? hex_value(s[k]) : s[k] - U'0'));
        ++k;
      }
      if (k == digits_begin) {
        out += s[i++];
        continue;
      }
      if (k < n && s[k] == U';') ++k;
      out += html_numeric_reference(num);
      i = k;
      continue;
    }
    // Named: 1..32 characters other than \t \n \f space < & # ;, then an optional ';'.
    std::size_t k = j;
    auto allowed = [](char32_t c) {
      return c != U'\t' && c != U'\n' && c != U'\f' && c != U' ' && c != U'<' && c != U'&' && c != U'#' && c != U';';
    };
    while (k < n && k - j < 32 && allowed(s[k])) ++k;
    if (k == j) {
      out += s[i++];
      continue;
    }
    if (k < n && s[k] == U';') ++k;
    const std::u32string_view name = s.substr(j, k - j);
    i = k;
    if (auto narrow = detail::ascii_name(name)) {
      if (auto value = html5_entity(*narrow)) {
        out += utf8_decode(*value);
        continue;
      }
    }
    // The longest prefix (at least two characters) that is a known name; the rest stays as it was.
    bool replaced = false;
    for (std::size_t len = name.size() - 1; len >= 2 && name.size() >= 3; --len) {
      auto narrow = detail::ascii_name(name.substr(0, len));
      if (!narrow) continue;
      if (auto value = html5_entity(*narrow)) {
        out += utf8_decode(*value);
        out += name.substr(len);
        replaced = true;
        break;
      }
    }
    if (!replaced) {
      out += U'&';
      out += name;
    }
  }
  return out;
}

}  // namespace adabldm::text
