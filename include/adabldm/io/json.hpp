#pragma once
// Reading JSON configs (diffusers config.json, transformers config.json, model_index.json) with errors that
// name the file and the key.
#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "adabldm/core/error.hpp"

namespace adabldm::io {

using Json = nlohmann::json;

/// Parses JSON text; malformed text is an error naming `where`.
inline Json parse_json(const std::string& text, const std::string& where) {
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    throw FormatError(where + ": invalid JSON: " + e.what());
  }
}

/// Parses a JSON file; a missing or malformed file is an error naming it.
inline Json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_json(ss.str(), path);
}

namespace detail {
template <class T>
struct is_vector : std::false_type {};
template <class T>
struct is_vector<std::vector<T>> : std::true_type {};

/// The start of a value for an error message (a wrong value may be a megabyte of JSON).
inline std::string json_excerpt(const Json& j) {
  std::string s = j.dump(-1, ' ', true, Json::error_handler_t::replace);
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}
}  // namespace detail

/// `j` as T, strictly: an integer must be a JSON integer within T's range (no truncated 2.5, no wrapped 2^40 in an
/// int), a floating-point value a finite number within T's range, a bool a JSON boolean, a string a string, a
/// vector an array of such. Anything else is a FormatError naming `where` and `field`, in one line.
template <class T>
T json_as(const Json& j, const std::string& where, const std::string& field) {
  // "has the wrong type" for another JSON type, "is out of range" for a number that does not fit T.
  auto fail = [&](const std::string& expected, bool range = false) -> T {
    throw FormatError(where + ": \"" + field + "\" " + (range ? "is out of range" : "has the wrong type") +
                      ": must be " + expected + ", not " + detail::json_excerpt(j));
  };
  if constexpr (std::is_same_v<T, bool>) {
    return j.is_boolean() ? j.get<bool>() : fail("true or false");
  } else if constexpr (std::is_integral_v<T>) {
    using L = std::numeric_limits<T>;
    const std::string range = "an integer in [" + std::to_string(L::min()) + ", " + std::to_string(L::max()) + "]";
    if (j.is_number_unsigned()) {
      const uint64_t v = j.get<uint64_t>();
      return v <= static_cast<uint64_t>(L::max()) ? static_cast<T>(v) : fail(range, true);
    }
    if (j.is_number_integer()) {
      const int64_t v = j.get<int64_t>();
      const bool fits = v < 0 ? L::is_signed && v >= static_cast<int64_t>(L::min())
                              : static_cast<uint64_t>(v) <= static_cast<uint64_t>(L::max());
      return fits ? static_cast<T>(v) : fail(range, true);
    }
    return fail(range);
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!j.is_number()) return fail("a number");
    const double v = j.get<double>();
    return std::isfinite(v) && std::abs(v) <= std::numeric_limits<T>::max() ? static_cast<T>(v) : fail("a finite number", true);
  } else if constexpr (std::is_same_v<T, std::string>) {
    return j.is_string() ? j.get<std::string>() : fail("a string");
  } else {
    static_assert(detail::is_vector<T>::value, "json_as: bool, integer, floating point, string or std::vector");
    if (!j.is_array()) return fail("a list");
    T out;
    for (std::size_t i = 0; i < j.size(); ++i)
      out.push_back(json_as<typename T::value_type>(j[i], where, field + "[" + std::to_string(i) + "]"));
    return out;
  }
}

/// A JSON object with a name for error messages ("unet/config.json").
struct Config {
  Json json;
  std::string where;

  /// Whether `key` is present and not null. A config that is not a JSON object is an error here, at its
  /// first read, rather than a config of defaults.
  bool has(const char* key) const {
    check<FormatError>(json.is_object(), where, ": not a JSON object but ", detail::json_excerpt(json));
    return json.contains(key) && !json[key].is_null();
  }

  /// json[key] as T (strictly, see json_as), or `fallback` when absent or null.
  template <class T>
  T get(const char* key, T fallback) const {
    return has(key) ? json_as<T>(json[key], where, key) : fallback;
  }
  template <class T>
  T require(const char* key) const {
    check<FormatError>(has(key), where, ": missing \"", key, "\"");
    return get<T>(key, T{});
  }
  /// An integer-or-list option, as a list of `n` entries (a scalar is repeated).
  std::vector<int64_t> int_list(const char* key, std::size_t n, int64_t fallback) const {
    if (!has(key)) return std::vector<int64_t>(n, fallback);
    const Json& v = json[key];
    if (v.is_number()) return std::vector<int64_t>(n, json_as<int64_t>(v, where, key));
    auto list = json_as<std::vector<int64_t>>(v, where, key);
    check<FormatError>(list.size() == n, where, ": \"", key, "\" has ", list.size(), " entries, expected ", n);
    return list;
  }
  /// Throws unless `key` is absent, null or equal to `expected` (options this library does not implement).
  void expect_default(const char* key, const Json& expected) const {
    if (!has(key)) return;
    check<FormatError>(json[key] == expected, where, ": option \"", key, "\" = ", json[key].dump(),
                       " is not supported (only ", expected.dump(), ")");
  }
};

}  // namespace adabldm::io
