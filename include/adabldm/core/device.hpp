#pragma once
// Device tags. A tensor's device is part of its type (Tensor<T, Cpu>, Tensor<T, Cuda>), so every op is an
// overload chosen at compile time; the CUDA side lives in .cuh headers compiled only by nvcc.
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "adabldm/core/error.hpp"

namespace adabldm {

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
    void* p = std::aligned_alloc(align, rounded);
    if (!p) throw Error("out of host memory allocating " + std::to_string(bytes) + " bytes");
#if defined(MADV_HUGEPAGE)
    if (align > kAlignment) ::madvise(p, rounded, MADV_HUGEPAGE);
#endif
    return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
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
