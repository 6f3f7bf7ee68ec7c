#pragma once
// A differentiable copy to the host: a network on a device can feed a loss that exists on the host only (the
// segmentation losses of autograd/loss.hpp), and the loss's gradient flows back to the device. The copy is a few
// hundred kilobytes per step for the detector's logits, small beside the network's own work.
#include <type_traits>

#include "adabldm/core/autograd_record.hpp"
#include "adabldm/core/transfer.hpp"

namespace adabldm::autograd {

/// x's values on the host in float; the gradient reaching the result is sent back to x on its device in its
/// storage type. A host float tensor is returned as it is (the identity, no record).
template <class T, class Dev>
Tensor<float, Cpu> on_host(const Tensor<T, Dev>& x) {
  if constexpr (std::is_same_v<Dev, Cpu> && std::is_same_v<T, float>) {
    return x;
  } else {
    auto out = download_as<float>(x).contiguous();
    if (should_record(x))
      record("on_host", out, [s = slot(x)](const Tensor<float, Cpu>& g) { s.add(upload_as<T, Dev>(g)); });
    return out;
  }
}

}  // namespace adabldm::autograd
