#pragma once
// Tensor<T, Cuda>: construction (empty, zeros, full), host <-> device copies through pinned staging buffers,
// contiguous copies of strided views (Tensor::contiguous / clone find copy_to_contiguous by argument-dependent
// lookup) and element-type conversion between float, half and bfloat16 on the device.
//
// Copies are enqueued on the current stream (core/cuda/device.cuh). to_device(host) returns as soon as the data
// has been staged: the caller may free or modify the host tensor immediately. to_host(device) waits for the
// copy (it returns the values). copy_async() between a device tensor and a pinned host tensor (pinned_empty)
// does not wait at all; the caller keeps both alive and synchronises before reading or reusing them.
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "adabldm/core/cuda/allocator.cuh"
#include "adabldm/core/cuda/kernel_utils.cuh"
#include "adabldm/core/tensor.hpp"

namespace adabldm {

namespace cuda::detail {

/// Shape and strides of up to Shape::kMaxRank dimensions, passed to kernels by value.
struct Strided {
  int64_t shape[Shape::kMaxRank];
  int64_t stride[Shape::kMaxRank];
  int rank;
};
inline Strided strided_of(const Shape& shape, const Shape& strides) {
  Strided s{};
  s.rank = shape.rank();
  for (int i = 0; i < s.rank; ++i) {
    s.shape[i] = shape[i];
    s.stride[i] = strides[i];
  }
  return s;
}
/// The element offset (with the strides of s) of the i-th element in row-major order of s's shape.
__device__ __forceinline__ int64_t strided_offset(const Strided& s, int64_t i) {
  int64_t off = 0;
  for (int d = s.rank - 1; d >= 0; --d) {
    const int64_t idx = i % s.shape[d];
    i /= s.shape[d];
    off += idx * s.stride[d];
  }
  return off;
}

template <class T>
__global__ void gather_kernel(const T* __restrict__ src, Strided s, T* __restrict__ dst, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) dst[i] = src[strided_offset(s, i)];
}
template <class T>
__global__ void scatter_kernel(const T* __restrict__ src, Strided s, T* __restrict__ dst, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) dst[strided_offset(s, i)] = src[i];
}
template <class T>
__global__ void fill_kernel(T* __restrict__ p, T value, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) p[i] = value;
}
template <class T>
__global__ void add_kernel(const T* __restrict__ a, const T* __restrict__ b, T* out, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) out[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}
template <class To, class From>
__global__ void convert_kernel(const From* __restrict__ src, To* __restrict__ dst, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) dst[i] = from_f32<To>(to_f32(src[i]));
}

// ---- pinned staging ---------------------------------------------------------------------------------------------

/// Two pinned host buffers per (thread, device) through which pageable host memory is copied in chunks: the
/// host memcpy of one chunk overlaps the DMA of the other. An event per buffer says when its DMA is done.
class Staging {
 public:
  static constexpr std::size_t kChunk = std::size_t{8} << 20;

  static Staging& for_current_device() {
    static thread_local std::vector<std::unique_ptr<Staging>> per_device;
    const int d = current_device();
    if (per_device.size() <= static_cast<std::size_t>(d)) per_device.resize(static_cast<std::size_t>(d) + 1);
    auto& s = per_device[static_cast<std::size_t>(d)];
    if (!s) s.reset(new Staging());
    return *s;
  }
  ~Staging() {
    for (int b = 0; b < 2; ++b) {
      if (event_[b]) (void)cudaEventSynchronize(event_[b]), (void)cudaEventDestroy(event_[b]);
      if (buffer_[b]) (void)cudaFreeHost(buffer_[b]);
    }
    (void)cudaGetLastError();
  }

  /// dst (device) <- src (pageable host), `bytes` bytes, enqueued on `stream`.
  void host_to_device(void* dst, const void* src, std::size_t bytes, cudaStream_t stream) {
    for (std::size_t off = 0, chunk = 0; off < bytes; off += kChunk, ++chunk) {
      const int b = static_cast<int>(chunk % 2);
      const std::size_t n = std::min(kChunk, bytes - off);
      ADABLDM_CUDA_CHECK(cudaEventSynchronize(event_[b]));  // the buffer's previous DMA has finished
      std::memcpy(buffer_[b], static_cast<const char*>(src) + off, n);
      ADABLDM_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + off, buffer_[b], n, cudaMemcpyHostToDevice, stream));
      ADABLDM_CUDA_CHECK(cudaEventRecord(event_[b], stream));
    }
  }
  /// dst (pageable host) <- src (device): waits for the copies (and for earlier work on `stream`).
  void device_to_host(void* dst, const void* src, std::size_t bytes, cudaStream_t stream) {
    const std::size_t chunks = (bytes + kChunk - 1) / kChunk;
    auto issue = [&](std::size_t chunk) {
      const int b = static_cast<int>(chunk % 2);
      const std::size_t off = chunk * kChunk, n = std::min(kChunk, bytes - off);
      ADABLDM_CUDA_CHECK(cudaEventSynchronize(event_[b]));  // an upload from this buffer (maybe on another stream)
      ADABLDM_CUDA_CHECK(cudaMemcpyAsync(buffer_[b], static_cast<const char*>(src) + off, n, cudaMemcpyDeviceToHost, stream));
      ADABLDM_CUDA_CHECK(cudaEventRecord(event_[b], stream));
    };
    if (chunks > 0) issue(0);
    for (std::size_t chunk = 0; chunk < chunks; ++chunk) {
      if (chunk + 1 < chunks) issue(chunk + 1);  // its buffer was emptied in the previous iteration
      const int b = static_cast<int>(chunk % 2);
      const std::size_t off = chunk * kChunk, n = std::min(kChunk, bytes - off);
      ADABLDM_CUDA_CHECK(cudaEventSynchronize(event_[b]));
      std::memcpy(static_cast<char*>(dst) + off, buffer_[b], n);
    }
  }

 private:
  Staging() {
    for (int b = 0; b < 2; ++b) {
      ADABLDM_CUDA_CHECK(cudaHostAlloc(&buffer_[b], kChunk, cudaHostAllocPortable));
      ADABLDM_CUDA_CHECK(cudaEventCreateWithFlags(&event_[b], cudaEventDisableTiming));
    }
  }
  void* buffer_[2] = {nullptr, nullptr};
  cudaEvent_t event_[2] = {nullptr, nullptr};
};

/// Whether p points into page-locked host memory (cudaHostAlloc / cudaHostRegister).
inline bool is_pinned(const void* p) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeHost;
}

}  // namespace cuda::detail

/// Contiguous copy of a (possibly strided) device tensor, enqueued on the current stream.
template <class T>
Tensor<T, Cuda> copy_to_contiguous(const Tensor<T, Cuda>& src) {
  auto dst = Tensor<T, Cuda>::empty(src.shape());
  const int64_t n = src.numel();
  if (n == 0) return dst;
  cudaStream_t stream = cuda::current_stream();
  if (src.is_contiguous()) {
    ADABLDM_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), dst.nbytes(), cudaMemcpyDeviceToDevice, stream));
    return dst;
  }
  cuda::detail::gather_kernel<<<cuda::detail::grid_for(n), cuda::detail::kThreads, 0, stream>>>(
      src.data(), cuda::detail::strided_of(src.shape(), src.strides()), dst.data(), n);
  ADABLDM_CUDA_CHECK_LAUNCH();
  return dst;
}

namespace cuda {

/// An uninitialised device tensor (on the current device).
template <class T>
Tensor<T, Cuda> empty(const Shape& shape) {
  return Tensor<T, Cuda>::empty(shape);
}
/// A device tensor filled with `value`.
template <class T>
Tensor<T, Cuda> full(const Shape& shape, T value) {
  auto t = Tensor<T, Cuda>::empty(shape);
  if (t.numel() > 0) {
    detail::fill_kernel<<<detail::grid_for(t.numel()), detail::kThreads, 0, current_stream()>>>(t.data(), value,
                                                                                                 t.numel());
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  return t;
}
/// A device tensor of zeros (all-zero bits are +0 in float, half and bfloat16).
template <class T>
Tensor<T, Cuda> zeros(const Shape& shape) {
  auto t = Tensor<T, Cuda>::empty(shape);
  if (t.numel() > 0) ADABLDM_CUDA_CHECK(cudaMemsetAsync(t.data(), 0, t.nbytes(), current_stream()));
  return t;
}

/// A host tensor in page-locked memory (the source or target of copy_async).
template <class T>
Tensor<T, Cpu> pinned_empty(const Shape& shape) {
  void* p = nullptr;
  const std::size_t bytes = std::max<std::size_t>(1, static_cast<std::size_t>(shape.numel()) * sizeof(T));
  ADABLDM_CUDA_CHECK(cudaHostAlloc(&p, bytes, cudaHostAllocPortable));
  std::shared_ptr<void> owner(p, [](void* q) { (void)cudaFreeHost(q); });
  return Tensor<T, Cpu>::wrap(std::move(owner), static_cast<T*>(p), shape);
}

/// Copies a host tensor to the current device. Returns once the data has been staged (the host tensor may be
/// modified or freed at once); the device copy completes in stream order.
template <class T>
Tensor<T, Cuda> to_device(const Tensor<T, Cpu>& host) {
  const auto src = host.contiguous();
  auto dst = Tensor<T, Cuda>::empty(src.shape());
  if (dst.nbytes() == 0) return dst;
  cudaStream_t stream = current_stream();
  if (detail::is_pinned(src.data())) {  // one DMA, then wait: the caller may reuse its pinned buffer afterwards
    ADABLDM_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), dst.nbytes(), cudaMemcpyHostToDevice, stream));
    ADABLDM_CUDA_CHECK(cudaStreamSynchronize(stream));
  } else {
    detail::Staging::for_current_device().host_to_device(dst.data(), src.data(), dst.nbytes(), stream);
  }
  return dst;
}

/// Copies a device tensor to a new host tensor (waits for the current stream's work and the copy).
template <class T>
Tensor<T, Cpu> to_host(const Tensor<T, Cuda>& device) {
  const auto src = device.contiguous();
  auto dst = Tensor<T, Cpu>::empty(src.shape());
  if (dst.nbytes() == 0) {
    synchronize();
    return dst;
  }
  detail::Staging::for_current_device().device_to_host(dst.data(), src.data(), dst.nbytes(), current_stream());
  return dst;
}

/// dst (device, contiguous) <- src (pinned host, contiguous, same shape), enqueued without waiting. Both must
/// stay alive and unmodified until the current stream has passed the copy (synchronize()).
template <class T>
void copy_async(Tensor<T, Cuda>& dst, const Tensor<T, Cpu>& src) {
  check<ShapeError>(dst.shape() == src.shape() && dst.is_contiguous() && src.is_contiguous(),
                    "copy_async: needs contiguous tensors of one shape, got ", src.shape().str(), " -> ",
                    dst.shape().str());
  check(detail::is_pinned(src.data()), "copy_async: the host tensor is not in pinned memory (use pinned_empty)");
  if (dst.nbytes())
    ADABLDM_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), dst.nbytes(), cudaMemcpyHostToDevice, current_stream()));
}
/// dst (pinned host, contiguous) <- src (device, contiguous, same shape), enqueued without waiting.
template <class T>
void copy_async(Tensor<T, Cpu>& dst, const Tensor<T, Cuda>& src) {
  check<ShapeError>(dst.shape() == src.shape() && dst.is_contiguous() && src.is_contiguous(),
                    "copy_async: needs contiguous tensors of one shape, got ", src.shape().str(), " -> ",
                    dst.shape().str());
  check(detail::is_pinned(dst.data()), "copy_async: the host tensor is not in pinned memory (use pinned_empty)");
  if (dst.nbytes())
    ADABLDM_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), dst.nbytes(), cudaMemcpyDeviceToHost, current_stream()));
}
/// dst (device, any strides) <- src (device, contiguous, dst's shape): a strided write, e.g. into a narrow() view.
template <class T>
void copy_into(Tensor<T, Cuda> dst, const Tensor<T, Cuda>& src) {
  check<ShapeError>(dst.shape() == src.shape(), "copy_into: ", src.shape().str(), " into ", dst.shape().str());
  const auto s = src.contiguous();
  const int64_t n = dst.numel();
  if (n == 0) return;
  cudaStream_t stream = current_stream();
  if (dst.is_contiguous()) {
    ADABLDM_CUDA_CHECK(cudaMemcpyAsync(dst.data(), s.data(), dst.nbytes(), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  detail::scatter_kernel<<<detail::grid_for(n), detail::kThreads, 0, stream>>>(
      s.data(), detail::strided_of(dst.shape(), dst.strides()), dst.data(), n);
  ADABLDM_CUDA_CHECK_LAUNCH();
}

/// Element-type conversion on the device (float <-> half <-> bfloat16, round to nearest even, exactly as the
/// host's convert_element). A contiguous copy when U == T.
template <class U, class T>
Tensor<U, Cuda> convert(const Tensor<T, Cuda>& x_in) {
  static_assert(is_cuda_float_v<T> && is_cuda_float_v<U>, "convert: float, half or bfloat16 only");
  if constexpr (std::is_same_v<U, T>) {
    return x_in.clone();
  } else {
    const auto x = x_in.contiguous();
    auto y = Tensor<U, Cuda>::empty(x.shape());
    if (x.numel() > 0) {
      detail::convert_kernel<U, T><<<detail::grid_for(x.numel()), detail::kThreads, 0, current_stream()>>>(
          x.data(), y.data(), x.numel());
      ADABLDM_CUDA_CHECK_LAUNCH();
    }
    return y;
  }
}

/// Copies a host tensor of another element type to the device, converting on the device (half the traffic of
/// converting first when a 16-bit checkpoint is loaded into a float model).
template <class U, class T>
Tensor<U, Cuda> to_device_as(const Tensor<T, Cpu>& host) {
  if constexpr (std::is_same_v<U, T>) return to_device(host);
  else return convert<U>(to_device(host));
}

}  // namespace cuda
// ---- autograd hooks (found by argument-dependent lookup from core/autograd_record.hpp and autograd/backward.hpp) ----

/// a + b (same shape, contiguous): summing two gradients of one device tensor.
template <class T>
Tensor<T, Cuda> autograd_add(const Tensor<T, Cuda>& a, const Tensor<T, Cuda>& b) {
  check<ShapeError>(a.shape() == b.shape(), "autograd: gradient of shape ", b.shape().str(), " added to ",
                    a.shape().str());
  const auto ac = a.contiguous(), bc = b.contiguous();
  auto out = Tensor<T, Cuda>::empty(a.shape());
  if (out.numel() > 0) {
    cuda::detail::add_kernel<<<cuda::detail::grid_for(out.numel()), cuda::detail::kThreads, 0, cuda::current_stream()>>>(
        ac.data(), bc.data(), out.data(), out.numel());
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  return out;
}
/// a += b in place (a contiguous and not shared).
template <class T>
void autograd_add_inplace(Tensor<T, Cuda>& a, const Tensor<T, Cuda>& b) {
  check<ShapeError>(a.shape() == b.shape() && a.is_contiguous(), "autograd: gradient of shape ", b.shape().str(),
                    " added to ", a.shape().str());
  const auto bc = b.contiguous();
  if (a.numel() > 0) {
    cuda::detail::add_kernel<<<cuda::detail::grid_for(a.numel()), cuda::detail::kThreads, 0, cuda::current_stream()>>>(
        a.data(), bc.data(), a.data(), a.numel());
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
}
/// The backward of narrow(dim, start, g.shape()[dim]): zeros of `full` with g copied into the range.
template <class T>
Tensor<T, Cuda> autograd_unnarrow(const Tensor<T, Cuda>& g, const Shape& full, int dim, int64_t start) {
  auto out = cuda::zeros<T>(full);
  cuda::copy_into(out.narrow(dim, start, g.shape()[dim]), g);
  return out;
}
/// A host tensor copied to the current device (nn::load_state_dict and init_missing find it by argument-dependent
/// lookup on the device tag to fill the parameters of a model built with Dev = Cuda).
template <class T>
Tensor<T, Cuda> device_upload(const Tensor<T, Cpu>& host, Cuda) {
  return cuda::to_device(host);
}

/// A device tensor copied to a new host tensor (core/transfer.hpp's download_as finds it by argument-dependent
/// lookup).
template <class T>
Tensor<T, Cpu> device_download(const Tensor<T, Cuda>& device) {
  return cuda::to_host(device);
}

/// Element-type conversion on the device (core/transfer.hpp's convert_as finds it by argument-dependent lookup).
template <class T, class U>
Tensor<U, Cuda> device_convert(const Tensor<T, Cuda>& t, U) {
  return cuda::convert<U>(t);
}

/// Ones of t's shape (the seed of backward from a scalar loss).
template <class T>
Tensor<T, Cuda> autograd_ones_like(const Tensor<T, Cuda>& t) {
  return cuda::full<T>(t.shape(), T(1.0f));
}

}  // namespace adabldm
