#pragma once
// VQModel (diffusers names): the VQ-regularised autoencoder of the LDM paper. Same encoder and decoder as
// AutoencoderKL, but the encoder outputs latent_channels (no mean/logvar split) and the latent is snapped to the
// nearest entry of a learned codebook before decoding.
#include <limits>
#include <string>
#include <type_traits>
#include <utility>

#include "adabldm/core/transfer.hpp"
#include "adabldm/models/autoencoder_kl.hpp"

namespace adabldm::models {

/// The VQModel hyper-parameters (diffusers' config.json fields) this implementation supports.
struct VQModelConfig {
  VaeLayout layout;
  int64_t sample_size = 32;
  int64_t num_vq_embeddings = 256;
  int64_t vq_embed_dim = 3;  ///< codebook vector width; diffusers' null means latent_channels
  double scaling_factor = 0.18215;

  /// Reads a diffusers VQModel config. Only norm_type "group" (the LDM VQ-f4/f8 models) is implemented: the
  /// "spatial" decoder (MoVQ / Kandinsky) is rejected, as is lookup_from_codebook.
  static VQModelConfig from_json(const io::Config& c) {
    VQModelConfig v;
    v.layout = VaeLayout::from_json(c, 3);
    v.sample_size = c.get<int64_t>("sample_size", v.sample_size);
    v.num_vq_embeddings = c.get<int64_t>("num_vq_embeddings", v.num_vq_embeddings);
    v.vq_embed_dim = c.get<int64_t>("vq_embed_dim", v.layout.latent_channels);
    v.scaling_factor = c.get<double>("scaling_factor", v.scaling_factor);
    check<FormatError>(v.num_vq_embeddings > 0 && v.vq_embed_dim > 0, c.where,
                       ": num_vq_embeddings and vq_embed_dim must be positive");
    c.expect_default("norm_type", "group");
    c.expect_default("lookup_from_codebook", false);
    return v;
  }
};

/// The result of quantising a latent: the nearest codebook vectors (NCHW) and their indices [B, h, w].
template <class T, class Dev = Cpu>
struct QuantizedLatent {
  Tensor<T, Dev> quantized;
  Tensor<int64_t, Cpu> indices;
};

/// diffusers' VectorQuantizer (legacy, no remap): nearest codebook entry by euclidean distance.
template <class T, class Dev = Cpu>
struct VectorQuantizer {
  nn::Embedding<T, Dev> embedding;  // weight [num_vq_embeddings, vq_embed_dim]

  VectorQuantizer() = default;
  VectorQuantizer(int64_t num_embeddings, int64_t dim) : embedding(num_embeddings, dim) {}

  /// z [B, D, h, w] -> nearest codebook vectors and their indices (the first minimum on ties). Distances are
  /// summed in double, so only true near-ties could order differently from torch.cdist. On a device the search
  /// runs on the host (a latent and a codebook are small), so every device picks the CPU's codes.
  QuantizedLatent<T, Dev> operator()(const Tensor<T, Dev>& z_in) const {
    if constexpr (std::is_same_v<Dev, Cpu>) {
      return nearest(z_in, embedding.weight());
    } else {
      auto q = nearest(download_as<T>(z_in), download_as<T>(embedding.weight()));
      return {upload_as<T, Dev>(q.quantized), std::move(q.indices)};
    }
  }
  static QuantizedLatent<T, Cpu> nearest(const Tensor<T, Cpu>& z_in, const Tensor<T, Cpu>& codebook) {
    const int64_t N = codebook.dim(0), D = codebook.dim(1);
    check<ShapeError>(z_in.rank() == 4 && z_in.dim(1) == D, "VectorQuantizer: latent must be [B, ", D,
                      ", h, w], got ", z_in.shape().str());
    const auto z = z_in.contiguous();
    const int64_t B = z.dim(0), HW = z.dim(2) * z.dim(3);
    QuantizedLatent<T, Cpu> q{Tensor<T, Cpu>::empty(z.shape()), Tensor<int64_t, Cpu>::empty({B, z.dim(2), z.dim(3)})};
    const T* zp = z.data();
    const T* cb = codebook.data();
    T* out = q.quantized.data();
    int64_t* idx = q.indices.data();
    parallel_for(B * HW, [&](int64_t pos) {
      const int64_t b = pos / HW, s = pos % HW;
      const T* zv = zp + b * D * HW + s;  // channel c at zv[c * HW]
      int64_t best = 0;
      double best_d2 = std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < N; ++j) {
        double d2 = 0;
        for (int64_t c = 0; c < D; ++c) {
          const double diff = static_cast<double>(zv[c * HW]) - static_cast<double>(cb[j * D + c]);
          d2 += diff * diff;
        }
        if (d2 < best_d2) {
          best_d2 = d2;
          best = j;
        }
      }
      idx[pos] = best;
      // z + (z_q - z): the straight-through form diffusers returns, rounded the same way.
      for (int64_t c = 0; c < D; ++c) out[b * D * HW + c * HW + s] = zv[c * HW] + (cb[best * D + c] - zv[c * HW]);
    }, 64);
    return q;
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    embedding.visit(p + "embedding.", f);
  }
};

template <class T, class Dev = Cpu>
struct VQModel {
  VQModelConfig config;
  VaeEncoder<T, Dev> encoder;  // double_z = False: latent_channels outputs
  nn::Conv2d<T, Dev> quant_conv;
  VectorQuantizer<T, Dev> quantize;  // vq.quantize(latent) -> {quantized, indices}
  nn::Conv2d<T, Dev> post_quant_conv;
  VaeDecoder<T, Dev> decoder;

  VQModel() = default;
  explicit VQModel(const VQModelConfig& c)
      : config(c), encoder(c.layout, c.layout.latent_channels),
        quant_conv(c.layout.latent_channels, c.vq_embed_dim, 1), quantize(c.num_vq_embeddings, c.vq_embed_dim),
        post_quant_conv(c.vq_embed_dim, c.layout.latent_channels, 1), decoder(c.layout) {}

  int64_t downscale() const { return config.layout.downscale(); }

  /// vq.encode(image).latents = quant_conv(encoder(image)), before quantisation.
  Tensor<T, Dev> encode(const Tensor<T, Dev>& image) const { return quant_conv(encoder(image)); }
  /// vq.decode(latent): quantises (unless force_not_quantize), then post_quant_conv + decoder.
  Tensor<T, Dev> decode(const Tensor<T, Dev>& latent, bool force_not_quantize = false) const {
    check<ShapeError>(latent.rank() == 4 && latent.dim(1) == config.vq_embed_dim, "VQModel.decode: latent must be [B, ",
                      config.vq_embed_dim, ", h, w], got ", latent.shape().str());
    return decoder(post_quant_conv(force_not_quantize ? latent : quantize(latent).quantized));
  }

  template <class F>
  void visit(const std::string& p, F&& f) {
    encoder.visit(p + "encoder.", f);
    quant_conv.visit(p + "quant_conv.", f);
    quantize.visit(p + "quantize.", f);
    post_quant_conv.visit(p + "post_quant_conv.", f);
    decoder.visit(p + "decoder.", f);
  }
};

}  // namespace adabldm::models
