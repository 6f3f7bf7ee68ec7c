#pragma once
// Moving values between the host and a device, written once for every device: the sampler, the blending and
// the defect geometry work on host float tensors (they are tiny and their numerics are the reference), the
// networks on the model's device in its storage type. For the CPU in float both functions are the identity
// (no copy), so device-generic code costs nothing on the CPU path.
// A device backend provides, found by argument-dependent lookup on its tag or tensor type:
//   device_upload(const Tensor<T, Cpu>&, Dev) -> Tensor<T, Dev>     device_download(const Tensor<T, Dev>&) -> Tensor<T, Cpu>
//   device_convert(const Tensor<T, Dev>&, U) -> Tensor<U, Dev>
// (CUDA: adabldm/core/cuda/tensor.cuh).
#include <type_traits>

#include "adabldm/core/tensor.hpp"

namespace adabldm {

/// A host tensor's values on device Dev in storage type T.
template <class T, class Dev, class U>
Tensor<T, Dev> upload_as(const Tensor<U, Cpu>& host) {
  if constexpr (std::is_same_v<Dev, Cpu>) {
    if constexpr (std::is_same_v<T, U>) return host;
    else return host.template to<T>();
  } else if constexpr (std::is_same_v<T, U>) {
    return device_upload(host, Dev{});
  } else {
    return device_upload(host.template to<T>(), Dev{});
  }
}

/// A tensor's values on the host in storage type U (default float).
template <class U = float, class T, class Dev>
Tensor<U, Cpu> download_as(const Tensor<T, Dev>& t) {
  if constexpr (std::is_same_v<Dev, Cpu>) {
    if constexpr (std::is_same_v<T, U>) return t;
    else return t.template to<U>();
  } else if constexpr (std::is_same_v<T, U>) {
    return device_download(t);
  } else {
    return device_download(t).template to<U>();
  }
}

/// The same values in storage type U on the same device (rounded to nearest even where U is narrower).
template <class U, class T, class Dev>
Tensor<U, Dev> convert_as(const Tensor<T, Dev>& t) {
  if constexpr (std::is_same_v<T, U>) return t;
  else if constexpr (std::is_same_v<Dev, Cpu>) return t.template to<U>();
  else return device_convert(t, U{});  // the backend's, by argument-dependent lookup (the U{} picks the type)
}

/// The value of a one-element tensor as a double (a loss, for logs).
template <class T, class Dev>
double scalar_value(const Tensor<T, Dev>& t) {
  check<ShapeError>(t.numel() == 1, "scalar_value: the tensor must have one element, got ", t.shape().str());
  return static_cast<double>(download_as<float>(t).contiguous().data()[0]);
}

}  // namespace adabldm
