#pragma once
// Device tags. A tensor's device is part of its type (Tensor<T, Cpu>, Tensor<T, Cuda>), so every op is an
// overload chosen at compile time; the CUDA side lives in .cuh headers compiled only by nvcc.
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "adabldm/core/error.hpp"

namespace adabldm {

namespace detail {
/// Freed host buffers of at least 1 MB, kept for reuse by exact (rounded) size. A training or sampling step
/// allocates the same shapes every step, and a large buffer from the system is a fresh mapping whose pages the
/// kernel zeroes on first touch (12 % of a detector training step); a reused one is already mapped. Bounded: at
/// most limit() bytes are kept (ADABLDM_HOST_CACHE_MB, default 1024; 0 turns it off, as AddressSanitizer builds
/// do), the oldest freed first.
class HostBufferCache {
 public:
  static constexpr std::size_t kMinBytes = std::size_t{1} << 20;
  /// The process's cache; never destroyed, so tensors released during static destruction are safe.
  static HostBufferCache& instance() {
    static HostBufferCache* cache = new HostBufferCache;
    return *cache;
  }
  static std::size_t limit() {
#if defined(__SANITIZE_ADDRESS__)
    return 0;  // under AddressSanitizer every buffer goes back to it, so a use after free is still caught
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    return 0;
#endif
#endif
    static const std::size_t bytes = [] {
      const char* env = std::getenv("ADABLDM_HOST_CACHE_MB");
      char* end = nullptr;
      const long long mb = env && *env ? std::strtoll(env, &end, 10) : 1024;
      return (env && *env && (*end != '\0' || mb < 0)) ? std::size_t{1024} << 20 : static_cast<std::size_t>(mb) << 20;
    }();
    return bytes;
  }
  /// A cached buffer of exactly `bytes`, or nullptr.
  void* take(std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (std::size_t i = free_.size(); i-- > 0;)
      if (free_[i].first == bytes) {
        void* p = free_[i].second;
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
        cached_ -= bytes;
        return p;
      }
    return nullptr;
  }
  /// Keeps p (of `bytes`) for reuse, giving back the oldest buffers beyond the limit.
  void give(void* p, std::size_t bytes) {
    std::vector<void*> release;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      free_.emplace_back(bytes, p);
      cached_ += bytes;
      while (cached_ > limit() && !free_.empty()) {
        cached_ -= free_.front().first;
        release.push_back(free_.front().second);
        free_.erase(free_.begin());
      }
    }
    for (void* q : release) std::free(q);
  }
  /// Gives every cached buffer back to the system.
  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [bytes, p] : free_) std::free(p);
    free_.clear();
    cached_ = 0;
  }
  std::size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

 private:
  std::mutex mutex_;
  std::vector<std::pair<std::size_t, void*>> free_;  // in the order freed
  std::size_t cached_ = 0;
};
}  // namespace detail

struct Cpu {
  static constexpr const char* name = "cpu";
  static constexpr std::size_t kAlignment = 64;  // one cache line, enough for AVX-512 loads

  /// Owning, 64-byte aligned host buffer.
  static std::shared_ptr<void> allocate(std::size_t bytes) {
    if (bytes == 0) bytes = kAlignment;
    // Large buffers are 2 MB aligned and may use transparent huge pages: 512x fewer page faults when a
    // multi-GB model is loaded.
    const std::size_t align = bytes >= (std::size_t{8} << 20) ? (std::size_t{2} << 20) : kAlignment;
    const std::size_t rounded = (bytes + align - 1) / align * align;
    const bool cacheable = rounded >= detail::HostBufferCache::kMinBytes && detail::HostBufferCache::limit() > 0;
    void* p = cacheable ? detail::HostBufferCache::instance().take(rounded) : nullptr;
    if (!p) {
      p = std::aligned_alloc(align, rounded);
      if (!p) throw Error("out of host memory allocating " + std::to_string(bytes) + " bytes");
#if defined(MADV_HUGEPAGE)
      if (align > kAlignment) ::madvise(p, rounded, MADV_HUGEPAGE);
#endif
    }
    if (!cacheable) return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
    return std::shared_ptr<void>(p, [rounded](void* q) { detail::HostBufferCache::instance().give(q, rounded); });
  }
};

/// Host buffers for Tensor<T, Cpu>::empty. Tensor finds a device's allocate_bytes by argument-dependent lookup
/// on the tag, so another device adds its own overload (CUDA: adabldm/core/cuda/allocator.cuh).
inline std::shared_ptr<void> allocate_bytes(Cpu, std::size_t bytes) { return Cpu::allocate(bytes); }

/// Tag of the CUDA backend; its allocator and ops are in adabldm/core/cuda/*.cuh and adabldm/ops/cuda/*.cuh
/// (compiled only by nvcc; see docs/cuda.md).
struct Cuda {
  static constexpr const char* name = "cuda";
};

}  // namespace adabldm
