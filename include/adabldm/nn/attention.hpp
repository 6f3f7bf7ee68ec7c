#pragma once
// diffusers' Attention (multi-head, optional cross-attention), the GEGLU FeedForward, BasicTransformerBlock and
// Transformer2DModel (SD1.x conv projections or SD2.x linear projections).
#include <string>
#include <vector>

#include "adabldm/nn/layers.hpp"

namespace adabldm::nn {

/// The checkpoint names of an attention's four projections.
struct AttentionNames {
  const char *q, *k, *v, *out;
};
/// diffusers' Attention (UNet, VAE mid block).
inline constexpr AttentionNames kDiffusersAttention{"to_q.", "to_k.", "to_v.", "to_out.0."};
/// transformers' CLIPAttention.
inline constexpr AttentionNames kClipAttention{"q_proj.", "k_proj.", "v_proj.", "out_proj."};

/// softmax(q k^T / sqrt(head_dim)) v with q = to_q(x), k/v = to_k/to_v(context or x); to_out back to the query
/// width. q/k/v have no bias in the UNet (`qkv_bias`), but do in the VAE's mid-block attention and in CLIP (whose
/// self-attention is also causal and whose projections have other names).
template <class T, class Dev = Cpu>
struct Attention {
  Linear<T, Dev> to_q, to_k, to_v, to_out;
  int64_t heads = 1;
  bool causal = false;
  AttentionNames names = kDiffusersAttention;

  Attention() = default;
  Attention(int64_t query_dim, int64_t context_dim, int64_t num_heads, int64_t head_dim, bool qkv_bias = false,
            AttentionNames checkpoint_names = kDiffusersAttention, bool causal_mask = false)
      : to_q(query_dim, num_heads * head_dim, qkv_bias), to_k(context_dim, num_heads * head_dim, qkv_bias),
        to_v(context_dim, num_heads * head_dim, qkv_bias), to_out(num_heads * head_dim, query_dim), heads(num_heads),
        causal(causal_mask), names(checkpoint_names) {}

  /// x [B, L, query_dim], context [B, Lc, context_dim] (undefined: self-attention).
  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x, const Tensor<T, Dev>& context = {}) const {
    const auto& ctx = context.defined() ? context : x;
    return to_out(ops::attention(to_q(x), to_k(ctx), to_v(ctx), ops::AttentionParams{heads, 0.0, causal}));
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    to_q.visit(p + names.q, f);
    to_k.visit(p + names.k, f);
    to_v.visit(p + names.v, f);
    to_out.visit(p + names.out, f);
  }
};

/// GEGLU feed-forward: net.0.proj (dim -> 2*inner, [h, gate]) -> h * gelu(gate) -> net.2 (inner -> dim).
template <class T, class Dev = Cpu>
struct FeedForward {
  Linear<T, Dev> proj, out;

  FeedForward() = default;
  FeedForward(int64_t dim, int64_t mult = 4) : proj(dim, 2 * mult * dim), out(mult * dim, dim) {}
  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x) const { return out(ops::geglu(proj(x))); }
  template <class F>
  void visit(const std::string& p, F&& f) {
    proj.visit(p + "net.0.proj.", f);
    out.visit(p + "net.2.", f);
  }
};

/// Pre-LayerNorm block: x += attn1(norm1(x)); x += attn2(norm2(x), context); x += ff(norm3(x)).
template <class T, class Dev = Cpu>
struct BasicTransformerBlock {
  LayerNorm<T, Dev> norm1, norm2, norm3;
  Attention<T, Dev> attn1, attn2;
  FeedForward<T, Dev> ff;

  BasicTransformerBlock() = default;
  BasicTransformerBlock(int64_t dim, int64_t heads, int64_t head_dim, int64_t cross_dim)
      : norm1(dim, 1e-5), norm2(dim, 1e-5), norm3(dim, 1e-5), attn1(dim, dim, heads, head_dim),
        attn2(dim, cross_dim, heads, head_dim), ff(dim) {}

  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x_in, const Tensor<T, Dev>& context) const {
    auto x = ops::add(x_in, attn1(norm1(x_in)));  // out of place: the caller's tensor is left as it was
    ops::add_(x, attn2(norm2(x), context));
    ops::add_(x, ff(norm3(x)));
    return x;
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    norm1.visit(p + "norm1.", f);
    attn1.visit(p + "attn1.", f);
    norm2.visit(p + "norm2.", f);
    attn2.visit(p + "attn2.", f);
    norm3.visit(p + "norm3.", f);
    ff.visit(p + "ff.", f);
  }
};

/// GroupNorm (eps 1e-6) -> proj_in -> transformer blocks over the H*W tokens -> proj_out -> + residual.
/// proj_in/proj_out are 1x1 convolutions (SD1.x) or Linear layers (SD2.x, use_linear_projection).
template <class T, class Dev = Cpu>
struct Transformer2DModel {
  GroupNorm<T, Dev> norm;
  Conv2d<T, Dev> proj_in_conv, proj_out_conv;
  Linear<T, Dev> proj_in_linear, proj_out_linear;
  std::vector<BasicTransformerBlock<T, Dev>> transformer_blocks;
  bool linear_projection = false;

  Transformer2DModel() = default;
  Transformer2DModel(int64_t channels, int64_t heads, int64_t cross_dim, int64_t groups, int64_t layers,
                     bool use_linear_projection)
      : norm(groups, channels, 1e-6), linear_projection(use_linear_projection) {
    check<ShapeError>(heads > 0 && channels % heads == 0, "Transformer2DModel: ", channels,
                      " channels do not split into ", heads, " heads");
    if (linear_projection) {
      proj_in_linear = Linear<T, Dev>(channels, channels);
      proj_out_linear = Linear<T, Dev>(channels, channels);
    } else {
      proj_in_conv = Conv2d<T, Dev>(channels, channels, 1);
      proj_out_conv = Conv2d<T, Dev>(channels, channels, 1);
    }
    for (int64_t i = 0; i < layers; ++i)
      transformer_blocks.emplace_back(channels, heads, channels / heads, cross_dim);
  }

  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x, const Tensor<T, Dev>& context) const {
    const int64_t B = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
    auto h = norm(x);
    if (!linear_projection) h = proj_in_conv(h);
    h = h.permute({0, 2, 3, 1}).contiguous().reshape({B, H * W, C});  // tokens in row-major (h, w) order
    if (linear_projection) h = proj_in_linear(h);
    for (const auto& block : transformer_blocks) h = block(h, context);
    if (linear_projection) h = proj_out_linear(h);
    h = h.reshape({B, H, W, C}).permute({0, 3, 1, 2}).contiguous();
    if (!linear_projection) h = proj_out_conv(h);
    return ops::add(h, x);
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    norm.visit(p + "norm.", f);
    if (linear_projection) proj_in_linear.visit(p + "proj_in.", f);
    else proj_in_conv.visit(p + "proj_in.", f);
    visit_list(transformer_blocks, p + "transformer_blocks.", f);
    if (linear_projection) proj_out_linear.visit(p + "proj_out.", f);
    else proj_out_conv.visit(p + "proj_out.", f);
  }
};

}  // namespace adabldm::nn
