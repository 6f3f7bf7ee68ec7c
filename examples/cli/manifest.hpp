#pragma once
// The manifest.jsonl that `adabldm generate` appends one line to per finished sample, and that --resume and the
// contact sheet read back. Its lines are untrusted (a killed run leaves a torn last line, users edit files), so a
// line counts only when it is a whole entry: a JSON object with an integer "index" >= 0 and the strings
// "ok_source", "image", "mask" and "prompt". Other lines are skipped: their samples are made again.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include <adabldm/io/json.hpp>

namespace cli {

struct ManifestEntry {
  int64_t index = 0;
  std::string ok_source, image, mask, prompt;  ///< image and mask relative to the output folder
};

/// The entry on one line, or false when the line is not a whole entry.
inline bool parse_manifest_line(const std::string& line, ManifestEntry& e) {
  try {
    const adabldm::io::Config c{adabldm::io::parse_json(line, "manifest line"), "manifest line"};
    e.index = c.require<int64_t>("index");
    e.ok_source = c.require<std::string>("ok_source");
    e.image = c.require<std::string>("image");
    e.mask = c.require<std::string>("mask");
    e.prompt = c.require<std::string>("prompt");
    return e.index >= 0;
  } catch (const adabldm::FormatError&) {
    return false;
  }
}

/// The whole entries of a manifest by index (a later line for the same index replaces an earlier one).
inline std::map<int64_t, ManifestEntry> read_manifest(const std::filesystem::path& manifest) {
  std::map<int64_t, ManifestEntry> entries;
  std::ifstream in(manifest);
  ManifestEntry e;
  for (std::string line; std::getline(in, line);)
    if (parse_manifest_line(line, e)) entries[e.index] = e;
  return entries;
}

/// An entry as its line (the fields read back; generate writes more).
inline std::string manifest_line(const ManifestEntry& e) {
  return adabldm::io::Json{{"index", e.index}, {"ok_source", e.ok_source}, {"image", e.image}, {"mask", e.mask},
                           {"prompt", e.prompt}}.dump(-1, ' ', false, adabldm::io::Json::error_handler_t::replace);
}

}  // namespace cli
