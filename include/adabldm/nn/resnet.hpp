#pragma once
// diffusers' ResnetBlock2D, Downsample2D, Upsample2D, Timesteps + TimestepEmbedding: the pieces shared by the
// UNet, the ControlNet and the VAE.
#include <string>
#include <vector>

#include "adabldm/nn/layers.hpp"

namespace adabldm::nn {

/// h = conv1(SiLU(norm1(x))) [+ time_emb_proj(SiLU(temb))]; h = conv2(SiLU(norm2(h))); out = shortcut(x) + h.
template <class T, class Dev = Cpu>
struct ResnetBlock2D {
  GroupNorm<T, Dev> norm1, norm2;
  Conv2d<T, Dev> conv1, conv2, conv_shortcut;
  Linear<T, Dev> time_emb_proj;
  bool has_temb = false, has_shortcut = false;
  double output_scale_factor = 1.0;

  ResnetBlock2D() = default;
  /// temb_channels = 0: no time embedding (the VAE's blocks).
  ResnetBlock2D(int64_t in, int64_t out, int64_t temb_channels, int64_t groups, double eps)
      : norm1(groups, in, eps), norm2(groups, out, eps), conv1(in, out, 3, 1, 1), conv2(out, out, 3, 1, 1),
        has_temb(temb_channels > 0), has_shortcut(in != out) {
    if (has_temb) time_emb_proj = Linear<T, Dev>(temb_channels, out);
    if (has_shortcut) conv_shortcut = Conv2d<T, Dev>(in, out, 1);
  }

  /// temb: [B, temb_channels] already passed through nothing (the SiLU is applied here), or undefined.
  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x, const Tensor<T, Dev>& temb = {}) const {
    auto h = conv1(norm1(x, ops::Activation::SiLU));
    if (has_temb) {
      check<ShapeError>(temb.defined(), "ResnetBlock2D: this block needs a time embedding");
      auto t = time_emb_proj(ops::silu(temb));         // [B, out]
      h = ops::add(h, t.reshape({t.dim(0), t.dim(1), 1, 1}));
    }
    h = conv2(norm2(h, ops::Activation::SiLU));
    auto out = has_shortcut ? ops::add(conv_shortcut(x), h) : ops::add(x, h);
    if (output_scale_factor != 1.0) out = ops::scale(out, static_cast<T>(1.0 / output_scale_factor));
    return out;
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    norm1.visit(p + "norm1.", f);
    conv1.visit(p + "conv1.", f);
    if (has_temb) time_emb_proj.visit(p + "time_emb_proj.", f);
    norm2.visit(p + "norm2.", f);
    conv2.visit(p + "conv2.", f);
    if (has_shortcut) conv_shortcut.visit(p + "conv_shortcut.", f);
  }
};

/// 3x3 stride-2 convolution. padding = 1: symmetric (UNet); padding = 0: zero-pad right and bottom by one,
/// then convolve without padding (the VAE encoder, as diffusers and the original LDM code do).
template <class T, class Dev = Cpu>
struct Downsample2D {
  Conv2d<T, Dev> conv;

  Downsample2D() = default;
  Downsample2D(int64_t channels, int padding) : conv(channels, channels, 3, 2, padding) {
    if (padding == 0) conv.params = ops::Conv2dParams{2, 0, 1, 0, 1};
  }
  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x) const { return conv(x); }
  template <class F>
  void visit(const std::string& p, F&& f) {
    conv.visit(p + "conv.", f);
  }
};

/// Nearest-neighbour upsampling (x2, or to an explicit size) followed by a 3x3 convolution.
template <class T, class Dev = Cpu>
struct Upsample2D {
  Conv2d<T, Dev> conv;

  Upsample2D() = default;
  explicit Upsample2D(int64_t channels) : conv(channels, channels, 3, 1, 1) {}
  /// out_h/out_w = 0: twice the input size.
  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x, int64_t out_h = 0, int64_t out_w = 0) const {
    const bool twice = out_h == 0 || (out_h == 2 * x.dim(2) && out_w == 2 * x.dim(3));
    return conv(twice ? ops::upsample_nearest2x(x) : ops::upsample_nearest(x, out_h, out_w));
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    conv.visit(p + "conv.", f);
  }
};

/// Timesteps (sinusoidal projection) + TimestepEmbedding (linear_1 -> SiLU -> linear_2).
template <class T, class Dev = Cpu>
struct TimestepEmbedding {
  Linear<T, Dev> linear_1, linear_2;
  int64_t proj_dim = 0;
  bool flip_sin_to_cos = true;
  double freq_shift = 0;

  TimestepEmbedding() = default;
  TimestepEmbedding(int64_t proj_channels, int64_t embed_dim, bool flip, double shift)
      : linear_1(proj_channels, embed_dim), linear_2(embed_dim, embed_dim), proj_dim(proj_channels),
        flip_sin_to_cos(flip), freq_shift(shift) {}

  /// One timestep per batch item -> [B, embed_dim]. Timesteps are float whatever T is (see ops::timestep_embedding).
  Tensor<T, Dev> operator()(const std::vector<float>& timesteps) const {
    auto emb = ops::timestep_embedding<T, Dev>(timesteps, proj_dim, flip_sin_to_cos, freq_shift);
    auto h = linear_1(emb);
    ops::activate_(h, ops::Activation::SiLU);
    return linear_2(h);
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    linear_1.visit(p + "linear_1.", f);
    linear_2.visit(p + "linear_2.", f);
  }
};

}  // namespace adabldm::nn
