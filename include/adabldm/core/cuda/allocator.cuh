#pragma once
// The caching device allocator: device memory is requested from cudaMalloc once and then recycled, so a
// steady-state loop (a sampling step, a training iteration) makes no cudaMalloc / cudaFree calls at all.
//
// - Sizes are rounded to a size class: multiples of 512 bytes up to 1 MiB, then four classes per power of two
//   (at most 25% slack). A freed block goes to the free list of (device, stream, size class) and is handed out
//   again only for that exact class on the same stream: reuse is stream-ordered (work that used the old tensor
//   was enqueued earlier on the same stream, so it finishes before the new owner's work starts) and needs no
//   synchronisation. A tensor used on a second stream must be synchronised by its user before it is freed.
// - When cudaMalloc fails, the device's cached blocks are released (cudaFree) and the allocation is retried once.
// - `empty_cache()` returns every cached block to the driver; `stats()` reports bytes in use, bytes cached, the
//   peak and the number of cudaMalloc / cudaFree calls.
// The allocator is a process-wide singleton that is never destroyed (tensors may outlive static destructors).
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "adabldm/core/cuda/device.cuh"

namespace adabldm::cuda {

/// Counters of one device's allocator.
struct AllocatorStats {
  std::size_t bytes_in_use = 0;     ///< held by live tensors (rounded sizes)
  std::size_t bytes_cached = 0;     ///< freed by tensors, kept for reuse
  std::size_t peak_bytes_in_use = 0;
  std::size_t blocks_in_use = 0, blocks_cached = 0;
  std::size_t cuda_malloc_calls = 0, cuda_free_calls = 0;
  std::size_t allocations = 0;      ///< all requests, served from the cache or not
};

class CachingAllocator {
 public:
  static CachingAllocator& instance() {
    static CachingAllocator* a = new CachingAllocator();  // leaked on purpose (see the top of this file)
    return *a;
  }

  /// The size class of a request (what is actually reserved).
  static std::size_t round_size(std::size_t bytes) noexcept {
    constexpr std::size_t kSmall = std::size_t{1} << 20, kQuantum = 512;
    if (bytes == 0) return kQuantum;
    if (bytes <= kSmall) return (bytes + kQuantum - 1) / kQuantum * kQuantum;
    std::size_t p = kSmall;
    while (p * 2 <= bytes) p *= 2;  // p: the largest power of two <= bytes
    const std::size_t step = p / 4;
    return (bytes + step - 1) / step * step;
  }

  /// A block of at least `bytes` on the current device, recycled on the current stream; freed (into the
  /// cache) when the last reference goes away.
  std::shared_ptr<void> allocate(std::size_t bytes) {
    const int device = current_device();
    cudaStream_t stream = current_stream();
    const std::size_t size = round_size(bytes);
    void* ptr = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto& st = stats_[static_cast<std::size_t>(device)];
      ++st.allocations;
      auto it = free_.find(Key{device, stream, size});
      if (it != free_.end() && !it->second.empty()) {
        ptr = it->second.back();
        it->second.pop_back();
        st.bytes_cached -= size;
        --st.blocks_cached;
      }
    }
    if (!ptr) ptr = malloc_with_retry(size, device);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_[ptr] = Block{device, stream, size};
      auto& st = stats_[static_cast<std::size_t>(device)];
      st.bytes_in_use += size;
      ++st.blocks_in_use;
      if (st.bytes_in_use > st.peak_bytes_in_use) st.peak_bytes_in_use = st.bytes_in_use;
    }
    return std::shared_ptr<void>(ptr, [](void* p) { CachingAllocator::instance().release(p); });
  }

  /// Counters of `device` (default: the current one).
  AllocatorStats stats(int device = -1) {
    if (device < 0) device = current_device();
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_[static_cast<std::size_t>(device)];
  }
  /// Resets the peak to the current use and the call counters to zero (for measuring one phase).
  void reset_counters(int device = -1) {
    if (device < 0) device = current_device();
    std::lock_guard<std::mutex> lock(mutex_);
    auto& st = stats_[static_cast<std::size_t>(device)];
    st.peak_bytes_in_use = st.bytes_in_use;
    st.cuda_malloc_calls = st.cuda_free_calls = st.allocations = 0;
  }

  /// Returns every cached (free) block of every device to the driver. Blocks in use are untouched.
  void empty_cache() {
    for (int d = 0; d < kMaxDevices; ++d) release_cached(d);
  }

 private:
  struct Block {
    int device;
    cudaStream_t stream;
    std::size_t size;
  };
  using Key = std::tuple<int, cudaStream_t, std::size_t>;

  CachingAllocator() = default;

  void release(void* ptr) noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(ptr);
    if (it == live_.end()) return;  // cannot happen: every pointer handed out is in live_
    const Block b = it->second;
    live_.erase(it);
    auto& st = stats_[static_cast<std::size_t>(b.device)];
    st.bytes_in_use -= b.size;
    --st.blocks_in_use;
    st.bytes_cached += b.size;
    ++st.blocks_cached;
    try {
      free_[Key{b.device, b.stream, b.size}].push_back(ptr);
    } catch (...) {  // out of host memory for the list: give the block back to the driver instead
      st.bytes_cached -= b.size;
      --st.blocks_cached;
      ++st.cuda_free_calls;
      if (cudaFree(ptr) != cudaSuccess) (void)cudaGetLastError();
    }
  }

  /// cudaFree of every cached block of `device` (the blocks' streams may still be using them: cudaFree waits).
  void release_cached(int device) {
    std::vector<void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto& st = stats_[static_cast<std::size_t>(device)];
      for (auto it = free_.begin(); it != free_.end();) {
        if (std::get<0>(it->first) != device) {
          ++it;
          continue;
        }
        for (void* p : it->second) {
          blocks.push_back(p);
          st.bytes_cached -= std::get<2>(it->first);
          --st.blocks_cached;
          ++st.cuda_free_calls;
        }
        it = free_.erase(it);
      }
    }
    if (blocks.empty()) return;
    DeviceGuard guard(device);
    for (void* p : blocks) ADABLDM_CUDA_CHECK(cudaFree(p));
  }

  void* malloc_with_retry(std::size_t size, int device) {
    void* ptr = nullptr;
    cudaError_t e = cudaMalloc(&ptr, size);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      release_cached(device);
      e = cudaMalloc(&ptr, size);
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++stats_[static_cast<std::size_t>(device)].cuda_malloc_calls;
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      const AllocatorStats st = stats(device);
      throw CudaError("CUDA out of memory: cudaMalloc of " + std::to_string(size) + " bytes on device " +
                      std::to_string(device) + " failed (" + cudaGetErrorString(e) + "); in use by tensors " +
                      std::to_string(st.bytes_in_use) + " bytes, cached " + std::to_string(st.bytes_cached));
    }
    return ptr;
  }

  std::mutex mutex_;
  std::unordered_map<void*, Block> live_;
  std::map<Key, std::vector<void*>> free_;
  std::array<AllocatorStats, kMaxDevices> stats_{};
};

/// Counters of the caching allocator for `device` (default: the current one).
inline AllocatorStats allocator_stats(int device = -1) { return CachingAllocator::instance().stats(device); }
/// Returns every cached device block to the driver (cudaFree). Live tensors are untouched.
inline void empty_cache() { CachingAllocator::instance().empty_cache(); }

}  // namespace adabldm::cuda

namespace adabldm {
/// Device buffers for Tensor<T, Cuda>::empty (found by argument-dependent lookup from core/tensor.hpp).
inline std::shared_ptr<void> allocate_bytes(Cuda, std::size_t bytes) {
  return cuda::CachingAllocator::instance().allocate(bytes);
}
}  // namespace adabldm
