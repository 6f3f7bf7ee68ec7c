#pragma once
// Reading JSON configs (diffusers config.json, transformers config.json, model_index.json) with errors that
// name the file and the key.
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "adabldm/core/error.hpp"

namespace adabldm::io {

using Json = nlohmann::json;

/// Parses a JSON file; a missing or malformed file is an error naming it.
inline Json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return Json::parse(ss.str());
  } catch (const Json::exception& e) {
    throw FormatError(path + ": invalid JSON: " + e.what());
  }
}

/// A JSON object with a name for error messages ("unet/config.json").
struct Config {
  Json json;
  std::string where;

  bool has(const char* key) const { return json.is_object() && json.contains(key) && !json[key].is_null(); }

  /// json[key] as T, or `fallback` when absent or null; a value of the wrong type is an error naming the key.
  template <class T>
  T get(const char* key, T fallback) const {
    if (!has(key)) return fallback;
    try {
      return json[key].get<T>();
    } catch (const Json::exception&) {
      throw FormatError(where + ": \"" + key + "\" has the wrong type (" + json[key].dump() + ")");
    }
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
    if (v.is_number_integer()) return std::vector<int64_t>(n, v.get<int64_t>());
    auto list = get<std::vector<int64_t>>(key, {});
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
