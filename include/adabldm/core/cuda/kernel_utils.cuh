#pragma once
// Device-side helpers shared by the kernels: loads and stores of the storage types (float, half, bfloat16) with
// float arithmetic, launch geometry, and warp / block reductions.
//
// Conversions: float -> f16 / bf16 round to nearest even in hardware (__float2half_rn, __float2bfloat16_rn),
// which agrees bit for bit with the host conversions of core/dtype.hpp on every non-NaN input (both are IEEE
// RNE with gradual underflow and overflow to infinity). NaNs take the host's exact bit pattern (sign and top
// payload kept, quietened), and 16-bit NaNs widen with their payload, so device and host conversions are identical
// on every input.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "adabldm/core/cuda/device.cuh"
#include "adabldm/core/dtype.hpp"

namespace adabldm::cuda {

/// Storage types the CUDA kernels support (arithmetic is in float for all of them).
template <class T>
inline constexpr bool is_cuda_float_v =
    std::is_same_v<T, float> || std::is_same_v<T, half> || std::is_same_v<T, bfloat16>;

namespace detail {

// ---- element access ----------------------------------------------------------------------------------------------

__device__ __forceinline__ float to_f32(float v) { return v; }
/// Exact widening; a NaN keeps its payload exactly as on the host (whatever the hardware does with NaNs).
__device__ __forceinline__ float to_f32(half v) {
  if ((v.bits & 0x7fffu) > 0x7c00u) return __uint_as_float(adabldm::detail::f16_bits_to_f32_bits(v.bits));
  return __half2float(__ushort_as_half(v.bits));
}
__device__ __forceinline__ float to_f32(bfloat16 v) { return __uint_as_float(static_cast<uint32_t>(v.bits) << 16); }

template <class T>
__device__ __forceinline__ T from_f32(float f);
template <>
__device__ __forceinline__ float from_f32<float>(float f) {
  return f;
}
template <>
__device__ __forceinline__ half from_f32<half>(float f) {
  half h;
  h.bits = f != f ? adabldm::detail::f32_bits_to_f16_bits(__float_as_uint(f)) : __half_as_ushort(__float2half_rn(f));
  return h;
}
template <>
__device__ __forceinline__ bfloat16 from_f32<bfloat16>(float f) {
  bfloat16 h;
  h.bits = f != f ? adabldm::detail::f32_bits_to_bf16_bits(__float_as_uint(f))
                  : __bfloat16_as_ushort(__float2bfloat16_rn(f));
  return h;
}

template <class T>
__device__ __forceinline__ float ld(const T* p, int64_t i) {
  return to_f32(p[i]);
}
template <class T>
__device__ __forceinline__ void st(T* p, int64_t i, float v) {
  p[i] = from_f32<T>(v);
}

// ---- launch geometry ------------------------------------------------------------------------------------------

inline constexpr int kThreads = 256;

/// Blocks for a grid-stride loop over n items: enough to fill the device several times over, never more than n
/// needs.
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t needed = (n + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(device_properties().multiProcessorCount) * 32;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(needed, cap)));
}

#define ADABLDM_GRID_STRIDE(i, n)                                                                      \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);              \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// ---- reductions -------------------------------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result. `scratch` holds
/// 32 floats of shared memory; the function synchronises before returning, so scratch may be reused at once.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  v = warp_sum(v);
  return v;
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  v = warp_max(v);
  return v;
}

/// Welford / Chan running statistics: count, mean and the sum of squared deviations (M2).
struct Moments {
  float n = 0, mean = 0, m2 = 0;
  __device__ __forceinline__ void add(float x) {
    n += 1.0f;
    const float d = x - mean;
    mean += d / n;
    m2 += d * (x - mean);
  }
  __device__ __forceinline__ void merge(const Moments& o) {
    if (o.n == 0) return;
    if (n == 0) {
      *this = o;
      return;
    }
    const float total = n + o.n, d = o.mean - mean;
    mean += d * (o.n / total);
    m2 += o.m2 + d * d * (n * o.n / total);
    n = total;
  }
};

__device__ __forceinline__ Moments shfl_down(const Moments& m, int o) {
  Moments r;
  r.n = __shfl_down_sync(0xffffffffu, m.n, o);
  r.mean = __shfl_down_sync(0xffffffffu, m.mean, o);
  r.m2 = __shfl_down_sync(0xffffffffu, m.m2, o);
  return r;
}
__device__ __forceinline__ Moments shfl_from_lane0(const Moments& m) {
  Moments r;
  r.n = __shfl_sync(0xffffffffu, m.n, 0);
  r.mean = __shfl_sync(0xffffffffu, m.mean, 0);
  r.m2 = __shfl_sync(0xffffffffu, m.m2, 0);
  return r;
}
/// Merges the moments of a warp into lane 0 (a tree in a fixed order) and hands lane 0's result to every lane
/// (merging is not symmetric in rounding, so a butterfly would leave lanes with slightly different values).
__device__ __forceinline__ Moments warp_moments(Moments m) {
  for (int o = 16; o > 0; o >>= 1) m.merge(shfl_down(m, o));
  return shfl_from_lane0(m);
}

/// Merges the moments of the whole block (same contract as block_sum; scratch holds 3 * 32 floats).
__device__ __forceinline__ Moments block_moments(Moments m, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  m = warp_moments(m);
  __syncthreads();
  if (lane == 0) {
    scratch[warp] = m.n;
    scratch[32 + warp] = m.mean;
    scratch[64 + warp] = m.m2;
  }
  __syncthreads();
  Moments r;
  if (lane < warps) {
    r.n = scratch[lane];
    r.mean = scratch[32 + lane];
    r.m2 = scratch[64 + lane];
  }
  return warp_moments(r);
}

/// Lets `kernel` launch with `bytes` of dynamic shared memory beyond the default 48 KB. The attribute is
/// process-wide, so it is always raised to the device's opt-in maximum: a thread launching with fewer bytes
/// cannot lower the limit under another thread's launch (the launch's own size decides what is used).
template <class Kernel>
void allow_dynamic_shared(Kernel kernel, std::size_t bytes) {
  if (bytes > (std::size_t{48} << 10))
    ADABLDM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(device_properties().sharedMemPerBlockOptin)));
}

}  // namespace detail
}  // namespace adabldm::cuda
