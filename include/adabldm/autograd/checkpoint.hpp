#pragma once
// Gradient checkpointing: run a block without keeping its activations and recompute them in the backward
// (one more forward of the block for a block's worth of activation memory). checkpoint() does it for one call;
// CheckpointBlocks switches it on for every UNet / ControlNet resnet and transformer block (models/unet_blocks.hpp
// calls maybe_checkpoint). See docs/autograd.md.
#include <array>
#include <tuple>
#include <type_traits>

#include "adabldm/autograd/backward.hpp"

namespace adabldm::autograd {

/// fn(inputs...) -> Tensor, recorded as one node. The forward runs on a throw-away tape (only to learn whether
/// anything inside requires a gradient; its records are dropped at once), the node saves only the inputs, and
/// its backward re-runs fn on a private tape and back-propagates through it: parameters inside fn receive their
/// gradients then, the inputs through the node. fn is stored in the tape until backward, so it must capture
/// modules by reference (they outlive the step) and must be deterministic (same result when re-run).
template <class F, class T, class Dev, class... More>
Tensor<T, Dev> checkpoint(F fn, const Tensor<T, Dev>& first, const More&... more) {
  static_assert((std::is_same_v<More, Tensor<T, Dev>> && ...), "checkpoint: every input must be a Tensor<T, Dev>");
  using Inputs = std::array<Tensor<T, Dev>, 1 + sizeof...(More)>;
  Inputs inputs{first, more...};
  if (!recording()) return std::apply(fn, inputs);
  Tensor<T, Dev> out;
  {
    TrainingScope probe;
    out = std::apply(fn, inputs);
  }
  if (!out.requires_grad()) return out;
  out = out.detach();
  std::array<GradSlot<T, Dev>, 1 + sizeof...(More)> slots;
  Inputs saved;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    slots[i] = GradSlot<T, Dev>(inputs[i]);
    saved[i] = inputs[i].detach();
  }
  record("checkpoint", out, [fn, slots, saved](const Tensor<T, Dev>& g) {
    TrainingScope replay;
    Inputs xs = saved;
    for (std::size_t i = 0; i < xs.size(); ++i)
      if (slots[i]) xs[i] = leaf(xs[i]);
    const Tensor<T, Dev> y = std::apply(fn, xs);
    if (!y.requires_grad()) return;
    backward(y, g);
    for (std::size_t i = 0; i < xs.size(); ++i)
      if (slots[i])
        if (auto gi = grad(xs[i]); gi.defined()) slots[i].add(gi);
  });
  return out;
}

namespace detail {
inline bool& checkpoint_blocks_slot() noexcept {
  static thread_local bool on = false;
  return on;
}
}  // namespace detail

/// While alive (in this thread), the UNet and ControlNet resnet and transformer blocks run under checkpoint()
/// when a tape records. Without it, or outside a TrainingScope, the blocks run directly.
class CheckpointBlocks {
 public:
  explicit CheckpointBlocks(bool on = true) noexcept : previous_(detail::checkpoint_blocks_slot()) {
    detail::checkpoint_blocks_slot() = on;
  }
  ~CheckpointBlocks() { detail::checkpoint_blocks_slot() = previous_; }
  CheckpointBlocks(const CheckpointBlocks&) = delete;
  CheckpointBlocks& operator=(const CheckpointBlocks&) = delete;

 private:
  bool previous_;
};

/// block(inputs...), under checkpoint() when CheckpointBlocks is on and a tape records. The block is captured
/// by reference: it must outlive the backward.
template <class Block, class T, class Dev, class... More>
Tensor<T, Dev> maybe_checkpoint(const Block& block, const Tensor<T, Dev>& first, const More&... more) {
  if (!detail::checkpoint_blocks_slot() || !recording()) return block(first, more...);
  return checkpoint([&block](const auto&... xs) { return block(xs...); }, first, more...);
}

}  // namespace adabldm::autograd
