#pragma once
// The safetensors format (https://github.com/huggingface/safetensors): u64 little-endian header length N, N bytes
// of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the raw
// little-endian tensor bytes (offsets relative to the data section).
//
// Reading memory-maps the file and validates the whole header before any tensor is touched: every malformed
// file is an adabldm::FormatError naming the file, the tensor and the problem, never an out-of-bounds read. The
// rules (those of the reference reader): header length within the file and at most 100 MB; the header a JSON
// object beginning with '{' (trailing spaces allowed); no duplicate names; known dtypes; shapes of at most 8
// integers whose element count (also of the dimensions that are not 0) fits 64 bits; data_offsets [begin, end]
// with begin <= end and end - begin = elements x dtype size; the tensors, sorted by offset, cover the data section
// exactly: no overlaps, no holes, nothing after the last.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "adabldm/core/dtype.hpp"
#include "adabldm/core/error.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/io/mapped_file.hpp"
#include "adabldm/io/state_dict.hpp"

namespace adabldm::io {


/// What the header says about one tensor.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  std::size_t offset = 0;  ///< begin, relative to the data section
  std::size_t nbytes = 0;
};

class SafeTensors {
 public:
  /// Largest header this reader accepts (the reference implementation's limit is 100 MB).
  static constexpr std::size_t kMaxHeader = 100u << 20;

  /// Maps and validates `path`.
  static SafeTensors open(const std::string& path) {
    SafeTensors st;
    st.file_ = MappedFile::open(path);
    st.parse();
    return st;
  }

  const std::string& path() const noexcept { return file_->path(); }
  /// Tensor names in file order (by data offset).
  const std::vector<std::string>& names() const noexcept { return order_; }
  std::size_t size() const noexcept { return order_.size(); }
  bool contains(const std::string& name) const { return infos_.count(name) != 0; }
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

  const TensorInfo& info(const std::string& name) const {
    auto it = infos_.find(name);
    if (it == infos_.end()) throw Error(path() + ": no tensor named \"" + name + "\"");
    return it->second;
  }
  /// The tensor's raw bytes inside the mapping.
  const std::byte* raw(const std::string& name) const { return data_ + info(name).offset; }

  /// The stored tensor (dtype, shape, bytes in the mapping).
  TensorRef ref(const std::string& name) const {
    const TensorInfo& ti = info(name);
    return TensorRef{ti.dtype, ti.shape, file_, data_ + ti.offset};
  }
  /// The tensor as T (any numeric dtype converts); zero-copy for aligned data of type T (see TensorRef::to).
  template <class T>
  Tensor<T, Cpu> get(const std::string& name) const {
    return ref(name).to<T>();
  }
  /// Every tensor, as a StateDict (no data is read or copied).
  StateDict state_dict() const {
    StateDict sd(path());
    for (const auto& name : order_) sd.add(name, ref(name));
    sd.metadata() = metadata_;
    return sd;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const { throw FormatError(path() + ": " + what); }

  static bool checked_mul(std::size_t a, std::size_t b, std::size_t& out) {
    if (a != 0 && b > std::numeric_limits<std::size_t>::max() / a) return false;
    out = a * b;
    return true;
  }

  void parse() {
    const std::size_t size = file_->size();
    const std::byte* base = file_->data();
    if (size == 0) fail("empty file (not a safetensors file)");
    if (size < 8) fail("truncated: " + std::to_string(size) + " bytes, the 8-byte header length is incomplete");
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint64_t>(base[i]);
    if (n > size - 8)
      fail("header length " + std::to_string(n) + " exceeds the file size " + std::to_string(size) +
           " (truncated or not a safetensors file)");
    if (n > kMaxHeader) fail("header length " + std::to_string(n) + " exceeds the 100 MB limit");
    if (n < 2) fail("header of " + std::to_string(n) + " bytes cannot hold a JSON object");
    if (static_cast<char>(base[8]) != '{') fail("the header does not begin with '{' (not a safetensors file)");
    data_ = const_cast<std::byte*>(base) + 8 + n;
    const std::size_t data_size = size - 8 - static_cast<std::size_t>(n);

    const char* h = reinterpret_cast<const char*>(base + 8);
    std::set<std::string> top_keys;
    std::string duplicate;
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(h, h + n, [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& j) {
        if (ev == nlohmann::json::parse_event_t::key && depth == 1 && !top_keys.insert(j.get<std::string>()).second &&
            duplicate.empty())
          duplicate = j.get<std::string>();
        return true;
      });
    } catch (const nlohmann::json::exception& e) {
      fail(std::string("invalid JSON header: ") + e.what());
    }
    if (!duplicate.empty()) fail("duplicate tensor name \"" + duplicate + "\" in the header");
    if (!header.is_object()) fail("the header is not a JSON object");

    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      const auto& v = it.value();
      if (name == "__metadata__") {
        if (!v.is_object()) fail("__metadata__ is not an object of strings");
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (!m.value().is_string()) fail("__metadata__ entry \"" + m.key() + "\" is not a string");
          metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      const std::string where = "tensor \"" + name + "\": ";
      if (!v.is_object()) fail(where + "entry is not an object");
      for (const char* field : {"dtype", "shape", "data_offsets"})
        if (!v.contains(field)) fail(where + "missing \"" + field + "\"");
      TensorInfo ti;
      ti.name = name;
      if (!v["dtype"].is_string()) fail(where + "dtype is not a string");
      const std::string dt = v["dtype"].get<std::string>();
      if (!parse_dtype(dt, ti.dtype)) fail(where + "unsupported dtype \"" + dt + "\"");
      const auto& shape = v["shape"];
      if (!shape.is_array()) fail(where + "shape is not an array");
      if (shape.size() > static_cast<std::size_t>(Shape::kMaxRank))
        fail(where + "rank " + std::to_string(shape.size()) + " exceeds " + std::to_string(Shape::kMaxRank));
      std::vector<int64_t> dims;
      for (const auto& d : shape) {
        if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
          fail(where + "shape entries must be integers in [0, 2^63)");
        dims.push_back(d.get<int64_t>());
      }
      ti.shape = Shape(dims);
      // Also with a 0 dimension (no bytes): the others' product must fit, or strides computed from them overflow.
      if (!Shape::size_fits(ti.shape.begin(), ti.shape.end()))
        fail(where + "shape " + ti.shape.str() + ": its element count overflows 64 bits");
      const auto numel = static_cast<std::size_t>(ti.shape.numel());
      const auto& off = v["data_offsets"];
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
        fail(where + "data_offsets must be two non-negative integers");
      const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
      if (b > e) fail(where + "data_offsets begin " + std::to_string(b) + " > end " + std::to_string(e));
      if (e > data_size)
        fail(where + "data_offsets [" + std::to_string(b) + ", " + std::to_string(e) + ") out of range: the data section has " +
             std::to_string(data_size) + " bytes (truncated file?)");
      std::size_t expect = 0;
      if (!checked_mul(numel, dtype_size(ti.dtype), expect) || expect != e - b)
        fail(where + "shape " + ti.shape.str() + " of " + dt + " needs " + std::to_string(numel) + " x " +
             std::to_string(dtype_size(ti.dtype)) + " bytes but data_offsets span " + std::to_string(e - b));
      ti.offset = static_cast<std::size_t>(b);
      ti.nbytes = static_cast<std::size_t>(e - b);
      infos_.emplace(name, std::move(ti));
    }
    // The format's layout: sorted by offset, each tensor begins where the one before it ends (the first at 0), the
    // last ends at the end of the file. No overlaps, no holes, no trailing bytes (as the reference reader checks).
    for (const auto& kv : infos_) order_.push_back(kv.first);
    std::sort(order_.begin(), order_.end(), [&](const std::string& a, const std::string& b) {
      const auto &ia = infos_.at(a), &ib = infos_.at(b);
      return ia.offset != ib.offset ? ia.offset < ib.offset : ia.nbytes < ib.nbytes;
    });
    std::size_t end = 0;
    const std::string* prev = nullptr;
    for (const auto& name : order_) {
      const auto& ti = infos_.at(name);
      if (ti.offset < end) fail("tensors \"" + *prev + "\" and \"" + name + "\" overlap in the data section");
      if (ti.offset > end)
        fail("tensor \"" + name + "\" begins at byte " + std::to_string(ti.offset) + " of the data section, " +
             (prev ? "but \"" + *prev + "\" ends at " : "not at ") + std::to_string(end) + ": a hole of " +
             std::to_string(ti.offset - end) + " bytes (the tensors must cover the data section exactly)");
      end = ti.offset + ti.nbytes;
      prev = &name;
    }
    if (end != data_size)
      fail(std::to_string(data_size - end) + " bytes after the end of the last tensor" +
           (prev ? " (\"" + *prev + "\")" : std::string(" (the header lists none)")) +
           ": the tensors must cover the data section exactly");
  }

  std::shared_ptr<MappedFile> file_;
  std::byte* data_ = nullptr;
  std::map<std::string, TensorInfo> infos_;
  std::vector<std::string> order_;
  std::map<std::string, std::string> metadata_;
};

/// Collects tensors (any element type) and writes one safetensors file atomically. Tensors are referenced,
/// not copied, until write().
class SafeTensorsWriter {
 public:
  template <class T>
  SafeTensorsWriter& add(const std::string& name, const Tensor<T, Cpu>& t) {
    check(name != "__metadata__" && !name.empty(), "safetensors: invalid tensor name \"", name, "\"");
    check(index_.insert(name).second, "safetensors: tensor \"", name, "\" added twice");
    auto c = t.contiguous();
    entries_.push_back({name, dtype_v<T>, c.shape(), c.owner(), reinterpret_cast<const std::byte*>(c.data()),
                        c.nbytes()});
    return *this;
  }
  /// A stored tensor as it is (any dtype), e.g. from a StateDict.
  SafeTensorsWriter& add(const std::string& name, const TensorRef& ref) {
    check(name != "__metadata__" && !name.empty(), "safetensors: invalid tensor name \"", name, "\"");
    check(index_.insert(name).second, "safetensors: tensor \"", name, "\" added twice");
    entries_.push_back({name, ref.dtype, ref.shape, ref.owner, ref.data, ref.nbytes()});
    return *this;
  }
  /// Every tensor of a StateDict, with `prefix` before each name.
  SafeTensorsWriter& add_all(const StateDict& sd, const std::string& prefix = "") {
    for (const auto& [name, ref] : sd.tensors()) add(prefix + name, ref);
    return *this;
  }
  SafeTensorsWriter& metadata(const std::string& key, const std::string& value) {
    metadata_[key] = value;
    return *this;
  }
  std::size_t size() const noexcept { return entries_.size(); }

  void write(const std::string& path) const {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::size_t offset = 0;
    for (const auto& e : entries_) {
      header[e.name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape.vec()}, {"data_offsets", {offset, offset + e.nbytes}}};
      offset += e.nbytes;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // keep the data section 8-byte aligned
    write_file_atomic_with(path, [&](FILE* f) {
      unsigned char len[8];
      uint64_t n = text.size();
      for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
      bool ok = std::fwrite(len, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
      for (const auto& e : entries_) ok = ok && std::fwrite(e.data, 1, e.nbytes, f) == e.nbytes;
      return ok;
    });
  }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    std::shared_ptr<void> owner;
    const std::byte* data;
    std::size_t nbytes;
  };
  std::vector<Entry> entries_;
  std::set<std::string> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace adabldm::io
