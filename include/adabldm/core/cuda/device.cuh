#pragma once
// Device query, the current device and stream, and the per-(thread, device) library handles.
//
// Streams: every host thread has, per device, one non-blocking stream of its own (created on first use), which
// is "the current stream" for everything this library enqueues from that thread: kernels, cuBLAS / cuDNN calls,
// asynchronous copies and the caching allocator's stream-ordered reuse. `StreamGuard` makes another stream
// current for a scope (e.g. a user's stream, or a second stream to overlap work). Host-visible results
// (`to_host`, `synchronize()`) wait for the current stream only.
#include <array>
#include <atomic>
#include <cstdint>

#include "adabldm/core/cuda/error.cuh"
#include "adabldm/core/device.hpp"

namespace adabldm {

/// Number of CUDA devices visible to this process; 0 when there is no device or no usable driver (never throws).
inline int cuda_device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}
/// Whether at least one CUDA device can be used.
inline bool cuda_available() noexcept { return cuda_device_count() > 0; }

namespace cuda {

inline constexpr int kMaxDevices = 64;

/// The calling thread's current device.
inline int current_device() {
  int d = 0;
  ADABLDM_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}
inline void set_device(int device) { ADABLDM_CUDA_CHECK(cudaSetDevice(device)); }

/// Makes `device` current for a scope, then restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : previous_(current_device()) {
    if (device != previous_) set_device(device);
  }
  ~DeviceGuard() {
    if (current_device_noexcept() != previous_ && cudaSetDevice(previous_) != cudaSuccess)
      (void)cudaGetLastError();  // do not leave a non-sticky error for the next ADABLDM_CUDA_CHECK_LAUNCH()
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  static int current_device_noexcept() noexcept {
    int d = -1;
    if (cudaGetDevice(&d) == cudaSuccess) return d;
    (void)cudaGetLastError();
    return -1;
  }
  int previous_;
};

/// Properties of the current device, queried once per device.
inline const cudaDeviceProp& device_properties(int device = -1) {
  if (device < 0) device = current_device();
  check(device < kMaxDevices, "adabldm: CUDA device ", device, " beyond the supported ", kMaxDevices);
  static std::array<cudaDeviceProp, kMaxDevices> props{};
  static std::array<std::atomic<bool>, kMaxDevices> ready{};
  if (!ready[static_cast<std::size_t>(device)].load(std::memory_order_acquire)) {
    cudaDeviceProp p{};
    ADABLDM_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    props[static_cast<std::size_t>(device)] = p;  // benign race: every writer stores the same value
    ready[static_cast<std::size_t>(device)].store(true, std::memory_order_release);
  }
  return props[static_cast<std::size_t>(device)];
}

// ---- numerics knobs --------------------------------------------------------------------------------------------

namespace detail {
inline std::atomic<bool>& allow_tf32_slot() {
  static std::atomic<bool> allow{false};
  return allow;
}
}  // namespace detail
/// Allows TF32 tensor cores for float32 GEMMs and convolutions (10-bit mantissa products, ~1e-3 relative
/// error). Off by default: float32 then means float32. f16/bf16 always use tensor cores with f32 accumulation.
inline void set_allow_tf32(bool allow) noexcept { detail::allow_tf32_slot().store(allow); }
inline bool allow_tf32() noexcept { return detail::allow_tf32_slot().load(); }

// ---- streams and handles -----------------------------------------------------------------------------------------

namespace detail {
/// What one host thread owns on each device: its default stream, an optional override, and library handles
/// bound to whatever stream is current when they are used. Created lazily; destroyed when the thread exits.
struct ThreadDeviceState {
  cudaStream_t own_stream = nullptr;     // created on first use
  cudaStream_t override_stream = nullptr;
  bool has_override = false;
  cublasHandle_t cublas = nullptr;
  cublasLtHandle_t cublaslt = nullptr;
  cudnnHandle_t cudnn = nullptr;
};

struct ThreadState {
  std::array<ThreadDeviceState, kMaxDevices> devices{};
  ~ThreadState() {
    // Best effort: the driver may already be shutting down at process exit, so errors are ignored.
    for (std::size_t d = 0; d < devices.size(); ++d) {
      auto& s = devices[d];
      if (!s.own_stream && !s.cublas && !s.cublaslt && !s.cudnn) continue;
      if (cudaSetDevice(static_cast<int>(d)) != cudaSuccess) continue;
      if (s.cudnn) (void)cudnnDestroy(s.cudnn);
      if (s.cublaslt) (void)cublasLtDestroy(s.cublaslt);
      if (s.cublas) (void)cublasDestroy(s.cublas);
      if (s.own_stream) {
        (void)cudaStreamSynchronize(s.own_stream);  // blocks cached for this stream may be reused by another
        (void)cudaStreamDestroy(s.own_stream);
      }
    }
    (void)cudaGetLastError();
  }
};

inline ThreadDeviceState& thread_device_state(int device) {
  check(device >= 0 && device < kMaxDevices, "adabldm: CUDA device ", device, " out of range");
  static thread_local ThreadState state;
  return state.devices[static_cast<std::size_t>(device)];
}
}  // namespace detail

/// The calling thread's current stream on the current device (see the top of this file).
inline cudaStream_t current_stream() {
  auto& s = detail::thread_device_state(current_device());
  if (s.has_override) return s.override_stream;
  if (!s.own_stream) ADABLDM_CUDA_CHECK(cudaStreamCreateWithFlags(&s.own_stream, cudaStreamNonBlocking));
  return s.own_stream;
}

/// Makes `stream` the calling thread's current stream on the current device for a scope.
class StreamGuard {
 public:
  explicit StreamGuard(cudaStream_t stream) : device_(current_device()) {
    auto& s = detail::thread_device_state(device_);
    had_override_ = s.has_override;
    previous_ = s.override_stream;
    s.has_override = true;
    s.override_stream = stream;
  }
  ~StreamGuard() {
    auto& s = detail::thread_device_state(device_);
    s.has_override = had_override_;
    s.override_stream = previous_;
  }
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  int device_;
  bool had_override_ = false;
  cudaStream_t previous_ = nullptr;
};

/// Waits until everything enqueued on the current stream has finished (and reports its errors).
inline void synchronize() { ADABLDM_CUDA_CHECK(cudaStreamSynchronize(current_stream())); }

/// The thread's cuBLAS handle for the current device, bound to the current stream.
inline cublasHandle_t cublas_handle() {
  auto& s = detail::thread_device_state(current_device());
  if (!s.cublas) {
    ADABLDM_CUBLAS_CHECK(cublasCreate(&s.cublas));
    // f16 / bf16 GEMMs: split-K partial sums in float (the compute type), never in the 16-bit output type.
    ADABLDM_CUBLAS_CHECK(cublasSetMathMode(
        s.cublas, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
  }
  ADABLDM_CUBLAS_CHECK(cublasSetStream(s.cublas, current_stream()));
  return s.cublas;
}
/// The thread's cuBLASLt handle for the current device (the stream is an argument of each cuBLASLt call).
inline cublasLtHandle_t cublaslt_handle() {
  auto& s = detail::thread_device_state(current_device());
  if (!s.cublaslt) ADABLDM_CUBLAS_CHECK(cublasLtCreate(&s.cublaslt));
  return s.cublaslt;
}
/// The thread's cuDNN handle for the current device, bound to the current stream.
inline cudnnHandle_t cudnn_handle() {
  auto& s = detail::thread_device_state(current_device());
  if (!s.cudnn) ADABLDM_CUDNN_CHECK(cudnnCreate(&s.cudnn));
  ADABLDM_CUDNN_CHECK(cudnnSetStream(s.cudnn, current_stream()));
  return s.cudnn;
}

}  // namespace cuda
}  // namespace adabldm
