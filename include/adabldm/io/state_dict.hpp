#pragma once
// StateDict: named tensors read from a checkpoint, still in their stored dtype. Every checkpoint reader
// (safetensors, PyTorch zip) produces one; model loaders convert each tensor to the model's storage type on
// lookup, so f16/bf16 files load into any storage type and f32 data is not copied. count_non_finite /
// check_finite: the NaN and Inf values of stored weights, counted (inspect) or refused (loaders).
#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "adabldm/core/dtype.hpp"
#include "adabldm/core/error.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace adabldm::io {

namespace detail {
/// n f16 values (unaligned bytes) -> floats with the F16C instruction when the build targets it (exact, like
/// the scalar path); returns false when the instruction is not available.
inline bool f16_to_f32_fast(const std::byte* src, float* dst, int64_t n) {
#if defined(__F16C__)
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i))));
  for (; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    dst[i] = half::from_bits(h);
  }
  return true;
#else
  (void)src, (void)dst, (void)n;
  return false;
#endif
}
}  // namespace detail

/// One stored tensor: dtype, shape and contiguous little-endian bytes kept alive by `owner`.
struct TensorRef {
  DType dtype = DType::F32;
  Shape shape;
  std::shared_ptr<void> owner;
  const std::byte* data = nullptr;

  std::size_t nbytes() const noexcept { return static_cast<std::size_t>(shape.numel()) * dtype_size(dtype); }

  /// The tensor as T (any numeric dtype converts). Zero-copy when the dtype is already T and the bytes are
  /// aligned: the result then shares the checkpoint's buffer (a copy-on-write mapping for files).
  template <class T>
  Tensor<T, Cpu> to() const {
    if (dtype == dtype_v<T> && reinterpret_cast<std::uintptr_t>(data) % alignof(T) == 0)
      return Tensor<T, Cpu>::wrap(owner, reinterpret_cast<T*>(const_cast<std::byte*>(data)), shape);
    auto out = Tensor<T, Cpu>::empty(shape);
    prefetch();
    convert_into(out.data());
    return out;
  }

 private:
  /// Asks the kernel to read the (memory-mapped) bytes ahead in one sweep instead of one page fault at a time.
  void prefetch() const {
#if defined(__linux__)
    const auto page = static_cast<std::uintptr_t>(4096);
    const auto begin = reinterpret_cast<std::uintptr_t>(data) & ~(page - 1);
    const auto end = reinterpret_cast<std::uintptr_t>(data) + nbytes();
    if (nbytes() >= (std::size_t{1} << 20)) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_WILLNEED);
#endif
  }

  template <class T>
  void convert_into(T* dst) const {
    const int64_t n = shape.numel();
    // Converted in parallel chunks: a 1.7 GB f16 checkpoint must load at disk speed, not at one core's speed.
    constexpr int64_t kChunk = int64_t{1} << 16;
    auto run = [&](auto tag) {
      using S = decltype(tag);
      parallel_for((n + kChunk - 1) / kChunk, [&](int64_t c) {
        const int64_t b = c * kChunk, e = std::min(n, b + kChunk);
        if constexpr (std::is_same_v<S, half> && std::is_same_v<T, float>) {
          if (detail::f16_to_f32_fast(data + b * 2, reinterpret_cast<float*>(dst) + b, e - b)) return;
        }
        for (int64_t i = b; i < e; ++i) {
          S v;
          std::memcpy(&v, data + static_cast<std::size_t>(i) * sizeof(S), sizeof(S));
          dst[i] = convert_element<T>(v);
        }
      });
    };
    switch (dtype) {
      case DType::F32: run(float{}); break;
      case DType::F16: run(half{}); break;
      case DType::BF16: run(bfloat16{}); break;
      case DType::F64: run(double{}); break;
      case DType::I64: run(int64_t{}); break;
      case DType::I32: run(int32_t{}); break;
      case DType::U8:
      case DType::Bool: run(uint8_t{}); break;
    }
  }
};

/// Named stored tensors plus the file they came from (for error messages).
class StateDict {
 public:
  StateDict() = default;
  explicit StateDict(std::string source) : source_(std::move(source)) {}

  const std::string& source() const noexcept { return source_; }
  std::size_t size() const noexcept { return tensors_.size(); }
  bool empty() const noexcept { return tensors_.empty(); }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  const std::map<std::string, TensorRef>& tensors() const noexcept { return tensors_; }
  std::map<std::string, std::string>& metadata() noexcept { return metadata_; }
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

  void add(const std::string& name, TensorRef ref) {
    check<FormatError>(tensors_.emplace(name, std::move(ref)).second, source_, ": duplicate tensor name \"", name,
                       "\"");
  }
  template <class T>
  void add(const std::string& name, const Tensor<T, Cpu>& t) {
    auto c = t.contiguous();
    add(name, TensorRef{dtype_v<T>, c.shape(), c.owner(), reinterpret_cast<const std::byte*>(c.data())});
  }
  void erase(const std::string& name) { tensors_.erase(name); }

  const TensorRef& at(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw Error(source_ + ": no tensor named \"" + name + "\"");
    return it->second;
  }
  template <class T>
  Tensor<T, Cpu> get(const std::string& name) const {
    return at(name).to<T>();
  }

  /// The tensors whose names start with `prefix`, with the prefix removed (a component of a single file).
  StateDict with_prefix(const std::string& prefix) const {
    StateDict out(source_);
    for (const auto& [k, v] : tensors_)
      if (k.compare(0, prefix.size(), prefix) == 0) out.tensors_.emplace(k.substr(prefix.size()), v);
    out.metadata_ = metadata_;
    return out;
  }
  /// Whether any name starts with `prefix`.
  bool has_prefix(const std::string& prefix) const {
    auto it = tensors_.lower_bound(prefix);
    return it != tensors_.end() && it->first.compare(0, prefix.size(), prefix) == 0;
  }
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const auto& kv : tensors_) n.push_back(kv.first);
    return n;
  }
  int64_t parameter_count() const {
    int64_t n = 0;
    for (const auto& kv : tensors_) n += kv.second.shape.numel();
    return n;
  }

 private:
  std::string source_;
  std::map<std::string, TensorRef> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// How many NaN and infinite values a stored tensor holds (integer and bool tensors: none).
struct NonFiniteCount {
  int64_t nan = 0, inf = 0;
  int64_t total() const noexcept { return nan + inf; }
  NonFiniteCount& operator+=(const NonFiniteCount& o) noexcept {
    nan += o.nan;
    inf += o.inf;
    return *this;
  }
};

namespace detail {
/// NaN and Inf among n IEEE values of U's width at p (any alignment): with the sign bit cleared, a value above the
/// all-ones exponent `inf_bits` is a NaN, equal to it an infinity. One max-reduction over the bits (vectorised);
/// only a range that holds a non-finite value is counted in a second pass.
template <class U>
NonFiniteCount count_non_finite_bits(const std::byte* p, int64_t n, U abs_mask, U inf_bits) {
  U worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    U u;
    std::memcpy(&u, p + i * static_cast<int64_t>(sizeof(U)), sizeof(U));
    u &= abs_mask;
    worst = u > worst ? u : worst;
  }
  NonFiniteCount c;
  if (worst < inf_bits) return c;
  for (int64_t i = 0; i < n; ++i) {
    U u;
    std::memcpy(&u, p + i * static_cast<int64_t>(sizeof(U)), sizeof(U));
    u &= abs_mask;
    c.nan += u > inf_bits;
    c.inf += u == inf_bits;
  }
  return c;
}

/// Elements [b, e) of a stored tensor.
inline NonFiniteCount count_non_finite_range(const TensorRef& ref, int64_t b, int64_t e) {
  const std::byte* p = ref.data + b * static_cast<int64_t>(dtype_size(ref.dtype));
  switch (ref.dtype) {
    case DType::F32: return count_non_finite_bits<uint32_t>(p, e - b, 0x7fffffffu, 0x7f800000u);
    case DType::F16: return count_non_finite_bits<uint16_t>(p, e - b, 0x7fff, 0x7c00);
    case DType::BF16: return count_non_finite_bits<uint16_t>(p, e - b, 0x7fff, 0x7f80);
    case DType::F64:
      return count_non_finite_bits<uint64_t>(p, e - b, 0x7fffffffffffffffull, 0x7ff0000000000000ull);
    default: return {};  // integers and bools are always finite
  }
}

inline bool is_float_dtype(DType d) noexcept {
  return d == DType::F32 || d == DType::F16 || d == DType::BF16 || d == DType::F64;
}
}  // namespace detail

/// The NaN and Inf values of one stored tensor: one pass over its bytes, in parallel chunks.
inline NonFiniteCount count_non_finite(const TensorRef& ref) {
  const int64_t n = ref.data ? ref.shape.numel() : 0;
  if (n == 0 || !detail::is_float_dtype(ref.dtype)) return {};
  constexpr int64_t kChunk = int64_t{1} << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<NonFiniteCount> part(static_cast<std::size_t>(chunks));
  parallel_for(chunks, [&](int64_t c) {
    part[static_cast<std::size_t>(c)] = detail::count_non_finite_range(ref, c * kChunk, std::min(n, (c + 1) * kChunk));
  });
  NonFiniteCount total;
  for (const auto& c : part) total += c;
  return total;
}

/// Every tensor of `sd` that holds NaN or Inf values, in name order, with its counts. One pass over the data: the
/// tensors are cut into chunks of at most 64 K elements and all chunks of all tensors are scanned in parallel.
inline std::vector<std::pair<std::string, NonFiniteCount>> non_finite_tensors(const StateDict& sd) {
  constexpr int64_t kChunk = int64_t{1} << 16;
  struct Chunk {
    std::size_t tensor;
    int64_t begin, end;
  };
  std::vector<const std::pair<const std::string, TensorRef>*> tensors;
  std::vector<Chunk> chunks;
  for (const auto& entry : sd.tensors()) {
    const TensorRef& ref = entry.second;
    const int64_t n = ref.data ? ref.shape.numel() : 0;
    if (n == 0 || !detail::is_float_dtype(ref.dtype)) continue;
    for (int64_t b = 0; b < n; b += kChunk) chunks.push_back({tensors.size(), b, std::min(n, b + kChunk)});
    tensors.push_back(&entry);
  }
  std::vector<NonFiniteCount> part(chunks.size());
  parallel_for(static_cast<int64_t>(chunks.size()), [&](int64_t i) {
    const Chunk& c = chunks[static_cast<std::size_t>(i)];
    part[static_cast<std::size_t>(i)] = detail::count_non_finite_range(tensors[c.tensor]->second, c.begin, c.end);
  });
  std::vector<NonFiniteCount> per_tensor(tensors.size());
  for (std::size_t i = 0; i < chunks.size(); ++i) per_tensor[chunks[i].tensor] += part[i];
  std::vector<std::pair<std::string, NonFiniteCount>> out;
  for (std::size_t t = 0; t < tensors.size(); ++t)
    if (per_tensor[t].total() > 0) out.emplace_back(tensors[t]->first, per_tensor[t]);
  return out;
}

/// Refuses weights that hold NaN or Inf values (a model loaded from them would spread them into every output):
/// a FormatError of one line naming the file, the first such tensor (in name order) and its counts, and how many
/// other tensors have some. Loaders call it on every file they read unless told not to (LoadOptions).
inline void check_finite(const StateDict& sd) {
  const auto bad = non_finite_tensors(sd);
  if (bad.empty()) return;
  const auto& [name, c] = bad.front();
  std::string more;
  if (bad.size() > 1)
    more = " (" + std::to_string(bad.size() - 1) + " more tensor" + (bad.size() > 2 ? "s have" : " has") + " NaN or Inf)";
  throw FormatError(sd.source() + ": tensor \"" + name + "\" has " + std::to_string(c.nan) + " NaN and " +
                    std::to_string(c.inf) + " Inf values" + more +
                    "; refusing to load it (--allow-non-finite skips this check)");
}

}  // namespace adabldm::io
