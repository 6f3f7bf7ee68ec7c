#pragma once
// PyTorch checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin` written by torch.save since PyTorch 1.6): a ZIP archive
// holding `<archive>/data.pkl` (the pickled object) and one record `<archive>/data/<key>` per tensor storage.
//
// load_torch_checkpoint(path) unpickles data.pkl with the restricted unpickler of pickle.hpp (nothing is ever
// executed; globals that could run code are refused) and returns the tensors of the checkpoint's state dict:
//   1. the top-level dict's "state_dict" entry, when it is a dict (PyTorch Lightning, the official AdaBLDM,
//      ControlNet and original Stable Diffusion `.ckpt` files);
//   2. else the top-level dict itself, when it holds a tensor directly (nn.Module.state_dict() saved as-is:
//      TAESD's `.pth`, `pytorch_model.bin`, ...);
//   3. else the first of its "model_state_dict", "model", "module" entries that is a dict (common training-script
//      wrappers and DeepSpeed);
//   4. else the top-level dict itself (its nested dicts may hold the tensors).
// Inside the chosen dict, nested dicts with string keys are flattened with '.'-joined names (as nn.Module names
// its parameters); entries with non-string keys and values that are neither tensors nor dicts (numbers, lists,
// placeholders of unknown classes, ...) are skipped. A tensor adabldm cannot represent (int8/int16/complex
// storage, quantized, sparse) is a FormatError naming it rather than a silent gap. String, integer, float and
// bool entries of the top-level dict ("epoch", "global_step", "pytorch-lightning_version", ...) are copied into
// StateDict::metadata() as text.
//
// Contiguous tensors (all that torch.save writes for module parameters) are zero-copy views into the mapped file;
// non-contiguous ones (a transposed view saved as-is) are copied into a contiguous buffer. The pre-1.6 ("legacy",
// non-zip) format and TorchScript archives are recognised and refused with a message saying how to convert.
#include <charconv>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "adabldm/core/dtype.hpp"
#include "adabldm/core/error.hpp"
#include "adabldm/core/shape.hpp"
#include "adabldm/io/mapped_file.hpp"
#include "adabldm/io/pickle.hpp"
#include "adabldm/io/state_dict.hpp"
#include "adabldm/io/zip.hpp"

namespace adabldm::io {

/// Whether these leading bytes are PyTorch's pre-1.6 serialization: a pickled magic number (the legacy format)
/// or a tar archive (the format of PyTorch <= 0.1.10).
inline bool is_legacy_torch_format(const std::byte* p, std::size_t n) {
  static constexpr uint8_t kMagic[] = {0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
  auto at = [&](std::size_t i) { return static_cast<uint8_t>(p[i]); };
  if (n >= 262 && std::memcmp(p + 257, "ustar", 5) == 0) return true;
  if (n < 2 || at(0) != 0x80 || at(1) < 2 || at(1) > 5) return false;
  std::size_t i = 2;
  if (n > i && at(i) == 0x95) i += 9;  // protocol 4+ FRAME
  return n >= i + sizeof kMagic && std::memcmp(p + i, kMagic, sizeof kMagic) == 0;
}

namespace torch_detail {

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// torch's notion of contiguity: the strides of dimensions of size 1 do not matter.
inline bool is_contiguous(const Shape& shape, const Shape& stride) {
  int64_t expected = 1;
  for (int i = shape.rank() - 1; i >= 0; --i) {
    if (shape[i] == 0) return true;
    if (shape[i] == 1) continue;
    if (stride[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

/// The tensor's bytes as a TensorRef: a view of the storage when contiguous, else a contiguous copy, paid from
/// `copy_budget` (bytes): an expanded or transposed view costs memory the file does not hold, so what all copies
/// of one file may take is bounded by the file's size (plus 256 MB for small files' expanded views).
inline TensorRef tensor_ref(const std::string& path, const std::string& name, const PyTensor& t,
                            std::size_t& copy_budget) {
  const PyStorage& s = *t.storage;
  if (!s.supported)
    throw FormatError(path + ": tensor \"" + name + "\" is stored as torch." + s.type_name +
                      ", an element type adabldm does not read (supported: float32, float16, bfloat16, float64, "
                      "int64, int32, uint8, bool)");
  if (t.shape.numel() == 0) return TensorRef{s.dtype, t.shape, s.bytes.owner, s.bytes.data};
  const std::size_t es = dtype_size(s.dtype);
  const std::byte* base = s.bytes.data + static_cast<std::size_t>(t.offset) * es;  // offsets checked on rebuild
  if (is_contiguous(t.shape, t.stride)) return TensorRef{s.dtype, t.shape, s.bytes.owner, base};

  // Strided (or overlapping, e.g. expanded) view: copy element by element (numel < 2^62, checked on rebuild).
  const auto numel = static_cast<uint64_t>(t.shape.numel());
  if (numel > copy_budget / es)
    throw FormatError(path + ": tensor \"" + name + "\" is a strided view of " + std::to_string(numel) + " x " +
                      std::to_string(es) + " bytes over a storage of " + std::to_string(s.bytes.size) +
                      "; with the file's other strided views that is more than the file holds (refusing to expand it)");
  const std::size_t bytes = static_cast<std::size_t>(numel) * es;
  copy_budget -= bytes;
  auto buffer = std::make_shared<std::vector<std::byte>>(bytes);
  std::byte* out = buffer->data();
  const int r = t.shape.rank();
  int64_t idx[Shape::kMaxRank] = {};
  for (int64_t done = 0, n = t.shape.numel(); done < n; ++done) {
    int64_t off = 0;
    for (int d = 0; d < r; ++d) off += idx[d] * t.stride[d];
    std::memcpy(out, base + static_cast<std::size_t>(off) * es, es);
    out += es;
    for (int d = r - 1; d >= 0; --d) {
      if (++idx[d] < t.shape[d]) break;
      idx[d] = 0;
    }
  }
  return TensorRef{s.dtype, t.shape, buffer, buffer->data()};
}

/// Adds the tensors of a dict (nested dicts flattened with '.') to a StateDict. The pickle is a graph: its memo
/// lets a small file refer to one object many times, so each dict is walked once (a dict reached twice is an
/// error) and each tensor is converted once (a tensor under several names shares its bytes).
struct TensorCollector {
  std::string path;
  StateDict& out;
  std::size_t copy_budget;
  std::unordered_map<const PyObject*, std::string> dicts;  // walked, with their first name
  std::unordered_map<const PyTensor*, TensorRef> refs;

  void collect(const PyObject& dict, const std::string& prefix, int depth) {
    constexpr int kMaxDepth = 16;
    if (depth > kMaxDepth)
      throw FormatError(path + ": dicts nested more than " + std::to_string(kMaxDepth) + " deep under \"" + prefix + "\"");
    if (auto [it, fresh] = dicts.emplace(&dict, prefix); !fresh)
      throw FormatError(path + ": the same dict is both \"" + it->second + "\" and \"" + prefix +
                        "\" (a shared or cyclic dict; a state dict is a tree)");
    for (const auto& [key, value] : dict.items) {
      if (!key->is_str()) continue;
      const std::string name = prefix + key->text;
      if (value->kind == PyKind::Tensor) {
        auto it = refs.find(value->tensor);
        if (it == refs.end()) it = refs.emplace(value->tensor, tensor_ref(path, name, *value->tensor, copy_budget)).first;
        out.add(name, it->second);
      } else if (value->is_dict()) {
        collect(*value, name + ".", depth + 1);
      } else if (value->kind == PyKind::UnsupportedTensor) {
        throw FormatError(path + ": tensor \"" + name + "\" cannot be read: " + value->text);
      }
    }
  }
};

inline bool has_direct_tensor(const PyObject& dict) {
  for (const auto& kv : dict.items)
    if (kv.second->kind == PyKind::Tensor) return true;
  return false;
}

/// The dict whose tensors are the checkpoint's state dict (rules 1-4 of the header comment).
inline const PyObject& select_state_dict(const PyObject& root) {
  if (const PyObject* sd = root.find("state_dict"); sd && sd->is_dict()) return *sd;
  if (has_direct_tensor(root)) return root;
  for (const char* key : {"model_state_dict", "model", "module"})
    if (const PyObject* sd = root.find(key); sd && sd->is_dict()) return *sd;
  return root;
}

/// Scalar top-level entries as text ("epoch" -> "3").
inline void copy_scalar_metadata(const PyObject& root, StateDict& out) {
  for (const auto& [key, value] : root.items) {
    if (!key->is_str()) continue;
    switch (value->kind) {
      case PyKind::Str: out.metadata()[key->text] = value->text; break;
      case PyKind::Int: out.metadata()[key->text] = std::to_string(value->integer); break;
      case PyKind::Bool: out.metadata()[key->text] = value->boolean ? "True" : "False"; break;
      case PyKind::Float: {
        char buf[32];
        auto res = std::to_chars(buf, buf + sizeof buf, value->real);  // shortest round-trip form
        out.metadata()[key->text] = std::string(buf, res.ptr);
        break;
      }
      default: break;
    }
  }
}

}  // namespace torch_detail

/// Reads the state dict of a PyTorch zip checkpoint (see the rules above). Malformed or hostile files are a
/// FormatError naming the file; a file that cannot be opened is an IoError.
inline StateDict load_torch_checkpoint(const std::string& path) {
  using namespace torch_detail;
  auto file = MappedFile::open(path);
  if (is_legacy_torch_format(file->data(), file->size()))
    throw FormatError(path + ": legacy PyTorch serialization (torch.save before PyTorch 1.6, or with "
                             "_use_new_zipfile_serialization=False) is not supported; convert it with PyTorch >= "
                             "1.6: torch.save(torch.load(old_path, weights_only=True), new_path), or save it as "
                             "safetensors");
  ZipArchive zip(file);

  // torch writes every record under one folder named after the archive ("archive/", or the file's stem).
  const ZipArchive::Entry* pkl = nullptr;
  for (const auto& e : zip.entries()) {
    const bool top_level_pickle =
        e.name == "data.pkl" || (ends_with(e.name, "/data.pkl") && e.name.find('/') == e.name.size() - 9);
    if (!top_level_pickle) continue;
    if (pkl) throw FormatError(path + ": two pickles (\"" + pkl->name + "\", \"" + e.name + "\") in one archive");
    pkl = &e;
  }
  if (!pkl) throw FormatError(path + ": a zip archive without data.pkl is not a PyTorch checkpoint");
  const std::string prefix = pkl->name.substr(0, pkl->name.size() - 8);  // "archive/" (or "")
  if (zip.find(prefix + "constants.pkl"))
    throw FormatError(path + ": a TorchScript archive (torch.jit.save) is not a checkpoint; in Python, save "
                             "torch.jit.load(path).state_dict() with torch.save or as safetensors");
  if (const ZipArchive::Entry* order = zip.find(prefix + "byteorder")) {
    const ZipBytes b = zip.read(*order, true);
    const std::string text(reinterpret_cast<const char*>(b.data), b.size);
    if (text.compare(0, 6, "little") != 0)
      throw FormatError(path + ": tensors stored with byte order \"" + text + "\"; only little-endian is supported");
  }

  const ZipBytes pickle = zip.read(*pkl, true);
  auto load_storage = [&](const std::string& key) {
    const ZipArchive::Entry* e = zip.find(prefix + "data/" + key);
    if (!e) throw FormatError(path + ": storage \"" + key + "\" (" + prefix + "data/" + key + ") is missing");
    const ZipBytes b = zip.read(*e);
    return SharedBytes{b.owner, b.data, b.size};
  };
  Unpickler unpickler(path + ": " + pkl->name, pickle.data, pickle.size, load_storage);
  const PyObject& root = *unpickler.load();
  if (!root.is_dict())
    throw FormatError(path + ": the pickled object is not a dict of tensors (a whole pickled model?); save "
                             "model.state_dict() instead");

  StateDict out(path);
  TensorCollector{path, out, file->size() + (std::size_t{256} << 20), {}, {}}.collect(select_state_dict(root), "", 0);
  copy_scalar_metadata(root, out);
  return out;
}

}  // namespace adabldm::io
