#pragma once
// The defect detector of the evaluation (issue 21): a compact UNet that maps an image to per-pixel defect logits,
// built from our own nn layers and trained with our autograd. No pretrained backbone exists offline, so it learns
// from scratch on the few images it is given.
//
//   down.0: conv 3x3 (in -> w0), conv 3x3 (w0 -> w0)                      full size
//   down.i: conv 3x3 stride 2 (w(i-1) -> wi), conv 3x3 (wi -> wi)          1 / 2^i
//   up.i:   nearest 2x upsample, concat with down.i, conv 3x3 (w(i+1) + wi -> wi), conv 3x3 (wi -> wi)
//   head:   conv 1x1 (w0 -> 1)                                             the logits
// every 3x3 conv followed by GroupNorm + SiLU (fused). Input sides must be multiples of 2^(levels - 1).
#include <algorithm>
#include <string>
#include <vector>

#include "adabldm/nn/layers.hpp"
#include "adabldm/ops/ops.hpp"

namespace adabldm::eval {

struct DetectorConfig {
  int in_channels = 1;                    // 1 for grayscale data, 3 for colour
  std::vector<int> widths{16, 32, 64, 128};  // channels per level (the reference detector's)
  int groups = 8;                         // GroupNorm groups (fewer when a width is smaller)

  void validate() const {
    check(in_channels == 1 || in_channels == 3, "detector: in_channels must be 1 or 3, got ", in_channels);
    check(widths.size() >= 2 && widths.size() <= 6, "detector: 2 to 6 levels, got ", widths.size());
    for (int w : widths) check(w >= 1 && w <= 1024, "detector: width ", w, " out of range 1..1024");
    check(groups >= 1, "detector: groups must be >= 1");
  }
  int levels() const { return static_cast<int>(widths.size()); }
  /// Input sides must be a multiple of this.
  int stride_multiple() const { return 1 << (levels() - 1); }
};

/// Two 3x3 convolutions, each followed by GroupNorm + SiLU; the first may stride.
template <class T, class Dev = Cpu>
struct ConvBlock {
  nn::Conv2d<T, Dev> conv1, conv2;
  nn::GroupNorm<T, Dev> norm1, norm2;

  ConvBlock() = default;
  ConvBlock(int in, int out, int stride, int groups)
      : conv1(in, out, 3, stride, 1), conv2(out, out, 3, 1, 1),
        norm1(group_count(groups, out), out, 1e-5), norm2(group_count(groups, out), out, 1e-5) {}
  static int group_count(int groups, int channels) {
    int g = std::min(groups, channels);
    while (channels % g != 0) --g;
    return g;
  }
  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x) const {
    const auto h = norm1(conv1(x), ops::Activation::SiLU);
    return norm2(conv2(h), ops::Activation::SiLU);
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    conv1.visit(p + "conv1.", f);
    norm1.visit(p + "norm1.", f);
    conv2.visit(p + "conv2.", f);
    norm2.visit(p + "norm2.", f);
  }
};

/// On the CPU (Dev = Cpu) or a device (Dev = Cuda, with adabldm/cuda.cuh included first); nn::convert moves one.
template <class T, class Dev = Cpu>
struct SegmentationDetector {
  DetectorConfig config;
  std::vector<ConvBlock<T, Dev>> down, up;  // up[i] produces level i (i = 0 .. levels - 2)
  nn::Conv2d<T, Dev> head;

  explicit SegmentationDetector(const DetectorConfig& c = {}) : config(c) {
    config.validate();
    const auto& w = config.widths;
    for (int i = 0; i < config.levels(); ++i)
      down.emplace_back(i == 0 ? config.in_channels : w[i - 1], w[i], i == 0 ? 1 : 2, config.groups);
    for (int i = 0; i + 1 < config.levels(); ++i) up.emplace_back(w[i + 1] + w[i], w[i], 1, config.groups);
    head = nn::Conv2d<T, Dev>(w[0], 1, 1);
  }

  /// x [B, in_channels, H, W] in [-1, 1] -> logits [B, 1, H, W].
  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x) const {
    check<ShapeError>(x.rank() == 4 && x.dim(1) == config.in_channels, "detector: input ", x.shape().str(),
                      " must be [B, ", config.in_channels, ", H, W]");
    const int64_t m = config.stride_multiple();
    check<ShapeError>(x.dim(2) % m == 0 && x.dim(3) % m == 0, "detector: input sides ", x.dim(2), "x", x.dim(3),
                      " must be multiples of ", m);
    std::vector<Tensor<T, Dev>> skips;
    Tensor<T, Dev> h = x;
    for (const auto& block : down) skips.push_back(h = block(h));
    for (int i = config.levels() - 2; i >= 0; --i)
      h = up[static_cast<std::size_t>(i)](ops::concat<T>({ops::upsample_nearest2x(h), skips[static_cast<std::size_t>(i)]}, 1));
    return head(h);
  }

  template <class F>
  void visit(const std::string& p, F&& f) {
    nn::visit_list(down, p + "down.", f);
    nn::visit_list(up, p + "up.", f);
    head.visit(p + "head.", f);
  }
};

}  // namespace adabldm::eval
