#pragma once
// The CLIP text encoder of Stable Diffusion: transformers' CLIPTextModel (SD1.x: OpenAI ViT-L/14, quick_gelu;
// SD2.x: OpenCLIP ViT-H/14 converted to the same names, exact GELU). Parameter names are exactly those of
// CLIPTextModel's state_dict ("text_model.embeddings.token_embedding.weight", ...).
//
// Which hidden state conditions the UNet is the caller's choice: the forward pass returns every hidden state;
// `clip_skip_output(out, k)` = final_layer_norm(hidden_states[-1-k]) is what diffusers pipelines use with
// clip_skip = k (k = 0: last_hidden_state). SD2 pipelines use the penultimate layer of OpenCLIP's 24: either
// build the model with 23 layers (diffusers' stable-diffusion-2 text_encoder, `clip_from_ldm_sd2(sd, 23)`)
// and take k = 0, or keep all 24 layers and take k = 1 -- both give the same tensor.
#include <cmath>
#include <string>
#include <vector>

#include "adabldm/io/json.hpp"
#include "adabldm/nn/attention.hpp"
#include "adabldm/nn/layers.hpp"

namespace adabldm::models {

/// transformers' CLIPTextConfig (the fields that shape the model; dropout and init options do not matter here).
struct ClipTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 8;
  int64_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;
  int64_t projection_dim = 512;  ///< only CLIPTextModelWithProjection uses it; kept for round trips
  int64_t bos_token_id = 49406, eos_token_id = 49407, pad_token_id = 1;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }

  /// hidden_act as an activation: "quick_gelu" (x*sigmoid(1.702x)), "gelu" (exact erf), or the tanh
  /// approximation under transformers' names "gelu_new" / "gelu_pytorch_tanh".
  ops::Activation activation() const {
    if (hidden_act == "quick_gelu") return ops::Activation::QuickGelu;
    if (hidden_act == "gelu") return ops::Activation::GeluErf;
    if (hidden_act == "gelu_new" || hidden_act == "gelu_pytorch_tanh") return ops::Activation::GeluTanh;
    throw FormatError("CLIP text config: hidden_act \"" + hidden_act +
                      "\" is not supported (quick_gelu, gelu, gelu_new, gelu_pytorch_tanh)");
  }

  /// SD1.x: openai/clip-vit-large-patch14's text tower (as in runwayml/stable-diffusion-v1-5/text_encoder).
  static ClipTextConfig sd1_vit_l14() {
    ClipTextConfig c;
    c.hidden_size = 768;
    c.intermediate_size = 3072;
    c.num_hidden_layers = 12;
    c.num_attention_heads = 12;
    c.projection_dim = 768;
    c.bos_token_id = 0, c.eos_token_id = 2, c.pad_token_id = 1;  // as that config.json says (legacy pooling)
    return c;
  }
  /// SD2.x: OpenCLIP ViT-H/14's text tower. diffusers' stable-diffusion-2 text_encoder keeps 23 of its 24
  /// layers (the pipelines condition on the penultimate one); pass 24 to keep the whole tower.
  static ClipTextConfig sd2_open_clip_vit_h14(int64_t layers = 23) {
    ClipTextConfig c;
    c.hidden_size = 1024;
    c.intermediate_size = 4096;
    c.num_hidden_layers = layers;
    c.num_attention_heads = 16;
    c.hidden_act = "gelu";
    c.bos_token_id = 0, c.eos_token_id = 2, c.pad_token_id = 1;
    return c;
  }

  /// Reads a CLIPTextConfig config.json, or a full CLIPConfig (its "text_config" entry, overlaid with the
  /// legacy "text_config_dict" as transformers does).
  static ClipTextConfig from_json(const io::Config& c) {
    const bool full_clip = c.has("text_config") || c.has("text_config_dict") ||
                           c.get<std::string>("model_type", "") == "clip";
    if (full_clip) {
      io::Config text{io::Json::object(), c.where + " text_config"};
      for (const char* key : {"text_config", "text_config_dict"})
        check<FormatError>(!c.has(key) || c.json[key].is_object(), c.where, ": \"", key, "\" is not an object");
      if (c.has("text_config")) text.json = c.json["text_config"];
      if (c.has("text_config_dict")) text.json.update(c.json["text_config_dict"]);
      return from_json(text);
    }
    c.expect_default("model_type", "clip_text_model");
    ClipTextConfig t;
    t.vocab_size = c.get<int64_t>("vocab_size", t.vocab_size);
    t.hidden_size = c.get<int64_t>("hidden_size", t.hidden_size);
    t.intermediate_size = c.get<int64_t>("intermediate_size", t.intermediate_size);
    t.num_hidden_layers = c.get<int64_t>("num_hidden_layers", t.num_hidden_layers);
    t.num_attention_heads = c.get<int64_t>("num_attention_heads", t.num_attention_heads);
    t.max_position_embeddings = c.get<int64_t>("max_position_embeddings", t.max_position_embeddings);
    t.hidden_act = c.get<std::string>("hidden_act", t.hidden_act);
    t.layer_norm_eps = c.get<double>("layer_norm_eps", t.layer_norm_eps);
    t.projection_dim = c.get<int64_t>("projection_dim", t.projection_dim);
    t.bos_token_id = c.get<int64_t>("bos_token_id", t.bos_token_id);
    t.eos_token_id = c.get<int64_t>("eos_token_id", t.eos_token_id);
    t.pad_token_id = c.get<int64_t>("pad_token_id", t.pad_token_id);
    t.validate(c.where);
    return t;
  }

  void validate(const std::string& where) const {
    check<FormatError>(vocab_size > 0 && hidden_size > 0 && intermediate_size > 0 && num_hidden_layers >= 0 &&
                           max_position_embeddings > 0 && layer_norm_eps > 0,
                       where, ": CLIP text config has a non-positive size");
    check<FormatError>(num_attention_heads > 0 && hidden_size % num_attention_heads == 0, where, ": hidden_size ",
                       hidden_size, " does not split into ", num_attention_heads, " heads");
    try {
      (void)activation();
    } catch (const FormatError& e) {
      throw FormatError(where + ": " + e.what());
    }
  }
};

/// Token embedding + learned position embedding (positions 0..L-1).
template <class T, class Dev = Cpu>
struct ClipTextEmbeddings {
  nn::Embedding<T, Dev> token_embedding, position_embedding;

  ClipTextEmbeddings() = default;
  explicit ClipTextEmbeddings(const ClipTextConfig& c)
      : token_embedding(c.vocab_size, c.hidden_size), position_embedding(c.max_position_embeddings, c.hidden_size) {}

  /// ids [B, L] (row-major, already range-checked) -> [B, L, D].
  Tensor<T, Dev> operator()(const std::vector<int64_t>& ids, int64_t B, int64_t L) const {
    const int64_t D = token_embedding.weight.shape[1];
    const auto tokens = token_embedding(ids).reshape({B, L, D});
    const auto positions = position_embedding.weight().narrow(0, 0, L).reshape({1, L, D});
    return ops::add(tokens, positions);
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    token_embedding.visit(p + "token_embedding.", f);
    position_embedding.visit(p + "position_embedding.", f);
  }
};

/// fc2(act(fc1(x))).
template <class T, class Dev = Cpu>
struct ClipMlp {
  nn::Linear<T, Dev> fc1, fc2;
  ops::Activation act = ops::Activation::QuickGelu;

  ClipMlp() = default;
  explicit ClipMlp(const ClipTextConfig& c)
      : fc1(c.hidden_size, c.intermediate_size), fc2(c.intermediate_size, c.hidden_size), act(c.activation()) {}

  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x) const {
    auto h = fc1(x);
    return fc2(ops::activate_(h, act));
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    fc1.visit(p + "fc1.", f);
    fc2.visit(p + "fc2.", f);
  }
};

/// Pre-LN encoder layer: x += self_attn(layer_norm1(x)); x += mlp(layer_norm2(x)).
template <class T, class Dev = Cpu>
struct ClipEncoderLayer {
  nn::Attention<T, Dev> self_attn;  // causal, biased q_proj/k_proj/v_proj/out_proj
  nn::LayerNorm<T, Dev> layer_norm1;
  ClipMlp<T, Dev> mlp;
  nn::LayerNorm<T, Dev> layer_norm2;

  ClipEncoderLayer() = default;
  explicit ClipEncoderLayer(const ClipTextConfig& c)
      : self_attn(c.hidden_size, c.hidden_size, c.num_attention_heads, c.head_dim(), /*qkv_bias=*/true,
                  nn::kClipAttention, /*causal_mask=*/true),
        layer_norm1(c.hidden_size, c.layer_norm_eps), mlp(c), layer_norm2(c.hidden_size, c.layer_norm_eps) {}

  /// Returns a new tensor (x is left untouched: it is kept as a hidden state).
  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x) const {
    auto h = ops::add(x, self_attn(layer_norm1(x)));
    ops::add_(h, mlp(layer_norm2(h)));
    return h;
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    self_attn.visit(p + "self_attn.", f);
    layer_norm1.visit(p + "layer_norm1.", f);
    mlp.visit(p + "mlp.", f);
    layer_norm2.visit(p + "layer_norm2.", f);
  }
};

/// What one forward pass produces.
template <class T, class Dev = Cpu>
struct ClipTextOutput {
  /// [0] = embeddings, [i] = output of encoder layer i-1 (before the final LayerNorm); num_hidden_layers + 1
  /// entries, each [B, L, D] (transformers' hidden_states).
  std::vector<Tensor<T, Dev>> hidden_states;
  Tensor<T, Dev> last_hidden_state;  ///< final_layer_norm(hidden_states.back()), [B, L, D]
  Tensor<T, Dev> pooler_output;      ///< last_hidden_state at each row's EOS position, [B, D]
  std::vector<int64_t> eos_positions;
};

template <class T, class Dev = Cpu>
struct ClipTextModel {
  ClipTextConfig config;
  ClipTextEmbeddings<T, Dev> embeddings;
  std::vector<ClipEncoderLayer<T, Dev>> layers;
  nn::LayerNorm<T, Dev> final_layer_norm;

  ClipTextModel() = default;
  explicit ClipTextModel(const ClipTextConfig& c)
      : config(c), embeddings(c), final_layer_norm(c.hidden_size, c.layer_norm_eps) {
    c.validate("CLIP text config");
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers.emplace_back(c);
  }

  /// input_ids [B, L] (L <= max_position_embeddings) -> every hidden state, last_hidden_state, pooler_output.
  ClipTextOutput<T, Dev> operator()(const Tensor<int64_t, Cpu>& input_ids) const {
    ClipTextOutput<T, Dev> out;
    out.hidden_states = run(input_ids, config.num_hidden_layers);
    out.last_hidden_state = final_layer_norm(out.hidden_states.back());
    out.eos_positions = eos_positions(input_ids);
    const int64_t B = input_ids.dim(0), D = config.hidden_size;
    std::vector<Tensor<T, Dev>> rows;  // each row's EOS state (views, gathered by concat on any device)
    for (int64_t b = 0; b < B; ++b)
      rows.push_back(out.last_hidden_state.narrow(0, b, 1).narrow(1, out.eos_positions[static_cast<std::size_t>(b)], 1)
                         .contiguous().reshape({1, D}));
    out.pooler_output = ops::concat(rows, 0);
    return out;
  }

  /// The "clip skip" conditioning from a forward pass: final_layer_norm(hidden_states[-1-clip_skip]).
  Tensor<T, Dev> clip_skip_output(const ClipTextOutput<T, Dev>& out, int64_t clip_skip) const {
    const int64_t n = static_cast<int64_t>(out.hidden_states.size());
    check<ShapeError>(clip_skip >= 0 && clip_skip < n, "CLIP text model: clip_skip ", clip_skip,
                      " out of range [0, ", n - 1, "]");
    if (clip_skip == 0 && out.last_hidden_state.defined()) return out.last_hidden_state;
    return final_layer_norm(out.hidden_states[static_cast<std::size_t>(n - 1 - clip_skip)]);
  }

  /// The UNet's conditioning, running only the layers needed: final_layer_norm(hidden_states[-1-clip_skip]).
  Tensor<T, Dev> encode(const Tensor<int64_t, Cpu>& input_ids, int64_t clip_skip = 0) const {
    check<ShapeError>(clip_skip >= 0 && clip_skip <= config.num_hidden_layers, "CLIP text model: clip_skip ",
                      clip_skip, " out of range [0, ", config.num_hidden_layers, "]");
    return final_layer_norm(run(input_ids, config.num_hidden_layers - clip_skip).back());
  }

  /// Pooling position per row, as transformers 4.38: with the legacy eos_token_id == 2 (configs saved before
  /// the fix) the argmax of the ids (the first maximum; the EOS token 49407 is the largest id); otherwise the
  /// first position equal to eos_token_id (0 when a row has none, as torch's argmax of all-false does).
  std::vector<int64_t> eos_positions(const Tensor<int64_t, Cpu>& input_ids) const {
    check_ids(input_ids);
    const auto ids = input_ids.to_vector();
    const int64_t B = input_ids.dim(0), L = input_ids.dim(1);
    std::vector<int64_t> pos(static_cast<std::size_t>(B), 0);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t* row = ids.data() + b * L;
      int64_t best = 0;
      for (int64_t i = 0; i < L; ++i) {
        if (config.eos_token_id == 2) {
          if (row[i] > row[best]) best = i;
        } else if (row[i] == config.eos_token_id) {
          best = i;
          break;
        }
      }
      pos[static_cast<std::size_t>(b)] = best;
    }
    return pos;
  }

  template <class F>
  void visit(const std::string& p, F&& f) {
    embeddings.visit(p + "text_model.embeddings.", f);
    nn::visit_list(layers, p + "text_model.encoder.layers.", f);
    final_layer_norm.visit(p + "text_model.final_layer_norm.", f);
  }

 private:
  void check_ids(const Tensor<int64_t, Cpu>& input_ids) const {
    check<ShapeError>(input_ids.rank() == 2 && input_ids.dim(0) > 0 && input_ids.dim(1) > 0,
                      "CLIP text model: input_ids must be [B, L] with B, L > 0, got ", input_ids.shape().str());
    check<ShapeError>(input_ids.dim(1) <= config.max_position_embeddings, "CLIP text model: ", input_ids.dim(1),
                      " tokens exceed max_position_embeddings ", config.max_position_embeddings);
  }

  /// hidden_states[0 .. n_layers] for the first n_layers encoder layers.
  std::vector<Tensor<T, Dev>> run(const Tensor<int64_t, Cpu>& input_ids, int64_t n_layers) const {
    check_ids(input_ids);
    const int64_t B = input_ids.dim(0), L = input_ids.dim(1);
    const auto ids = input_ids.to_vector();
    for (std::size_t i = 0; i < ids.size(); ++i)
      check<ShapeError>(ids[i] >= 0 && ids[i] < config.vocab_size, "CLIP text model: token id ", ids[i], " at [",
                        static_cast<int64_t>(i) / L, ", ", static_cast<int64_t>(i) % L,
                        "] is outside the vocabulary [0, ", config.vocab_size, ")");
    std::vector<Tensor<T, Dev>> hidden{embeddings(ids, B, L)};
    for (int64_t i = 0; i < n_layers; ++i) hidden.push_back(layers[static_cast<std::size_t>(i)](hidden.back()));
    return hidden;
  }
};

/// Buffers (not parameters) that transformers checkpoints may carry next to CLIPTextModel's parameters:
/// `position_ids` (an int64 arange(77), persistent in transformers < 4.31). They hold nothing to learn.
inline const std::vector<std::string>& clip_text_buffer_names() {
  static const std::vector<std::string> names{"text_model.embeddings.position_ids"};
  return names;
}

/// `sd` without the known buffers (a cheap copy: tensors are shared).
inline io::StateDict without_clip_text_buffers(io::StateDict sd) {
  for (const auto& name : clip_text_buffer_names()) sd.erase(name);
  return sd;
}

/// nn::load_state_dict after dropping the known buffers, so old checkpoints load strictly.
template <class T, class Dev>
nn::LoadReport load_clip_text(ClipTextModel<T, Dev>& model, const io::StateDict& sd, bool strict = true) {
  return nn::load_state_dict(model, without_clip_text_buffers(sd), strict);
}

}  // namespace adabldm::models
