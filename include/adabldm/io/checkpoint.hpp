#pragma once
// One entry point for checkpoint files: the format is recognised by content (never by file name), then the file
// is read by the matching reader into a StateDict.
#include <cstdint>
#include <cstring>
#include <string>

#include "adabldm/core/error.hpp"
#include "adabldm/io/mapped_file.hpp"
#include "adabldm/io/safetensors.hpp"
#include "adabldm/io/state_dict.hpp"
#include "adabldm/io/torch_checkpoint.hpp"

namespace adabldm::io {

enum class CheckpointFormat { Safetensors, TorchZip, TorchLegacy, Unknown };

inline const char* checkpoint_format_name(CheckpointFormat f) noexcept {
  switch (f) {
    case CheckpointFormat::Safetensors: return "safetensors";
    case CheckpointFormat::TorchZip: return "PyTorch zip checkpoint";
    case CheckpointFormat::TorchLegacy: return "legacy PyTorch checkpoint";
    case CheckpointFormat::Unknown: return "unknown";
  }
  return "unknown";
}

/// The format of these leading bytes of a file of `file_size` bytes.
inline CheckpointFormat detect_checkpoint_format(const std::byte* p, std::size_t file_size) {
  if (file_size >= 4 && std::memcmp(p, "PK\x03\x04", 4) == 0) return CheckpointFormat::TorchZip;
  if (is_legacy_torch_format(p, file_size)) return CheckpointFormat::TorchLegacy;
  // safetensors: a u64 little-endian header length that fits the file, then a JSON object.
  if (file_size >= 10) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(p[i]);
    if (n >= 2 && n <= file_size - 8 && static_cast<char>(p[8]) == '{') return CheckpointFormat::Safetensors;
  }
  return CheckpointFormat::Unknown;
}

/// The format of the file at `path` (IoError if it cannot be opened).
inline CheckpointFormat detect_checkpoint_format(const std::string& path) {
  auto file = MappedFile::open(path);
  return detect_checkpoint_format(file->data(), file->size());
}

/// Reads any supported checkpoint (safetensors, PyTorch zip) into a StateDict.
inline StateDict load_checkpoint(const std::string& path) {
  switch (detect_checkpoint_format(path)) {
    case CheckpointFormat::Safetensors: return SafeTensors::open(path).state_dict();
    case CheckpointFormat::TorchZip:
    case CheckpointFormat::TorchLegacy: return load_torch_checkpoint(path);  // explains how to convert legacy files
    case CheckpointFormat::Unknown: break;
  }
  throw FormatError(path + ": not a recognised checkpoint format (expected safetensors or a PyTorch checkpoint "
                           "written by torch.save)");
}

}  // namespace adabldm::io
