// CLIPTextModel against transformers 4.38 (tests/data/clip_text), the same weights read from an original
// single file (tests/data/ldm_format), SD2 OpenCLIP key conversion, full-size parameter counts and errors.
#include "golden.hpp"

#include <cstring>
#include <iterator>

#include "adabldm/io/safetensors.hpp"
#include "adabldm/models/clip_text.hpp"
#include "adabldm/models/ldm_clip_keys.hpp"

using namespace adabldm;
using namespace adabldm::models;

namespace {
const char* const kOutputs[] = {"hidden_states_00", "hidden_states_01", "hidden_states_02", "hidden_states_03",
                                "last_hidden_state", "penultimate_hidden_state",
                                "penultimate_hidden_state_final_ln", "pooler_output"};

ClipTextConfig golden_config() { return ClipTextConfig::from_json(golden::config("clip_text/config.json")); }

io::StateDict golden_weights() {
  return io::SafeTensors::open(golden::path("clip_text/model.safetensors")).state_dict();
}

ClipTextModel<float> load(const ClipTextConfig& config, const io::StateDict& sd) {
  ClipTextModel<float> model(config);
  load_clip_text(model, sd);
  return model;
}

/// Every golden output of `model` on the reference ids, compared under `prefix` names of `io`.
void check_golden_outputs(const ClipTextModel<float>& model, const io::SafeTensors& io, const std::string& prefix,
                          const std::string& label) {
  const auto ids = io.get<int64_t>(prefix + "input_ids");
  const auto out = model(ids);
  REQUIRE(out.hidden_states.size() == 4);
  const Tensor<float> ours[] = {out.hidden_states[0], out.hidden_states[1], out.hidden_states[2],
                                out.hidden_states[3], out.last_hidden_state, out.hidden_states[2],
                                model.clip_skip_output(out, 1), out.pooler_output};
  for (std::size_t i = 0; i < std::size(kOutputs); ++i)
    GOLDEN_CHECK(label + " " + kOutputs[i], ours[i], io.get<float>(prefix + kOutputs[i]));
  // encode() runs only the layers it needs and gives the same tensors
  CHECK(model.encode(ids).to_vector() == out.last_hidden_state.to_vector());
  CHECK(model.encode(ids, 1).to_vector() == model.clip_skip_output(out, 1).to_vector());
}

bool same_bytes(const io::TensorRef& a, const io::TensorRef& b) {
  return a.dtype == b.dtype && a.shape == b.shape && std::memcmp(a.data, b.data, a.nbytes()) == 0;
}
/// Same names, dtypes, shapes and bytes.
bool identical(const io::StateDict& a, const io::StateDict& b) {
  if (a.names() != b.names()) return false;
  for (const auto& [name, ref] : a.tensors())
    if (!same_bytes(ref, b.at(name))) return false;
  return true;
}

/// An SD2-style OpenCLIP text tower built here, independently of ldm_clip_keys.hpp, from CLIPTextModel weights.
io::StateDict open_clip_from_hf(const io::StateDict& hf, int64_t layers) {
  io::StateDict oc("synthetic OpenCLIP");
  auto f = [&](const std::string& name) { return hf.get<float>(name); };
  oc.add("token_embedding.weight", f("text_model.embeddings.token_embedding.weight"));
  oc.add("positional_embedding", f("text_model.embeddings.position_embedding.weight"));
  oc.add("ln_final.weight", f("text_model.final_layer_norm.weight"));
  oc.add("ln_final.bias", f("text_model.final_layer_norm.bias"));
  for (int64_t i = 0; i < layers; ++i) {
    const std::string h = "text_model.encoder.layers." + std::to_string(i) + ".";
    const std::string o = "transformer.resblocks." + std::to_string(i) + ".";
    for (const char* kind : {"weight", "bias"}) {
      const std::string a = h + "self_attn.";
      oc.add(o + "attn.in_proj_" + kind,
             ops::concat<float>({f(a + "q_proj." + kind), f(a + "k_proj." + kind), f(a + "v_proj." + kind)}, 0));
      oc.add(o + "attn.out_proj." + kind, f(a + "out_proj." + kind));
      oc.add(o + "ln_1." + kind, f(h + "layer_norm1." + kind));
      oc.add(o + "ln_2." + kind, f(h + "layer_norm2." + kind));
      oc.add(o + "mlp.c_fc." + kind, f(h + "mlp.fc1." + kind));
      oc.add(o + "mlp.c_proj." + kind, f(h + "mlp.fc2." + kind));
    }
  }
  return oc;
}
}  // namespace

TEST_CASE("CLIP text golden: hidden states, last/penultimate states, pooler output") {
  const auto model = load(golden_config(), golden_weights());
  check_golden_outputs(model, io::SafeTensors::open(golden::path("clip_text/io.safetensors")), "", "clip");
}

io::StateDict ldm_file() { return io::SafeTensors::open(golden::path("ldm_format/model.safetensors")).state_dict(); }

TEST_CASE("CLIP text golden through the SD1.x single file (cond_stage_model.transformer.*)") {
  const auto full = ldm_file();
  REQUIRE(io::detect_ldm_text_encoder(full) == io::LdmTextEncoder::ClipSd1);
  const auto cfg_json = io::read_json(golden::path("ldm_format/config.json"));
  const auto config = ClipTextConfig::from_json(
      {cfg_json.at(io::kLdmSd1ClipPrefix).at("transformers_config"), "ldm_format/config.json"});
  const auto clip = io::clip_text_from_ldm(full);
  CHECK(clip.size() == 52);
  const auto model = load(config, clip);
  check_golden_outputs(model, io::SafeTensors::open(golden::path("ldm_format/io.safetensors")), "clip.", "ldm clip");
}

TEST_CASE("SD1.x text encoder names: old layout, position_ids buffer, inverse") {
  const auto full = ldm_file();
  const auto clip = io::clip_text_from_ldm(full);
  // old files: no text_model. level, a position_ids buffer
  io::StateDict stripped("old SD1 file");
  const auto current = full.with_prefix(io::kLdmSd1ClipPrefix);
  for (const auto& [name, ref] : current.tensors())
    stripped.add(name.substr(std::strlen("text_model.")), ref);
  stripped.add("embeddings.position_ids", Tensor<int64_t>::from_vector(std::vector<int64_t>(77, 0), {1, 77}));
  CHECK(identical(io::clip_from_ldm_sd1(stripped), clip));
  // a transformers-named dict with the buffer still loads strictly (load_clip_text drops it)
  auto with_buffer = clip;
  with_buffer.add("text_model.embeddings.position_ids", Tensor<int64_t>::zeros({1, 77}));
  ClipTextModel<float> m(golden_config());
  CHECK(load_clip_text(m, with_buffer).ok());
  CHECK_THROWS_WITH_AS(nn::load_state_dict(m, with_buffer), doctest::Contains("unexpected: text_model.embeddings.position_ids"),
                       Error);
  // the inverse is the identity on CLIPTextModel names (and drops the buffer)
  CHECK(identical(io::clip_to_ldm_sd1(with_buffer), full.with_prefix(io::kLdmSd1ClipPrefix)));
}

namespace {
/// The tower as SD2 checkpoints store it, under its prefix: one layer more than used (a copy of the last one),
/// plus the CLIP head.
io::StateDict synthetic_sd2_file(const io::StateDict& hf) {
  io::StateDict full("synthetic SD2 file");
  const auto tower = open_clip_from_hf(hf, 3), last_layer = tower.with_prefix("transformer.resblocks.2.");
  for (const auto& [name, ref] : tower.tensors()) full.add(io::kLdmSd2ClipPrefix + name, ref);
  for (const auto& [name, ref] : last_layer.tensors())
    full.add(std::string(io::kLdmSd2ClipPrefix) + "transformer.resblocks.3." + name, ref);
  full.add(std::string(io::kLdmSd2ClipPrefix) + "text_projection", Tensor<float>::zeros({32, 32}));
  full.add(std::string(io::kLdmSd2ClipPrefix) + "logit_scale", Tensor<float>::zeros({}));
  return full;
}
}  // namespace

TEST_CASE("SD2 OpenCLIP text tower: conversion reproduces the outputs and round-trips bit for bit") {
  const auto hf = golden_weights();
  const auto io = io::SafeTensors::open(golden::path("clip_text/io.safetensors"));
  const auto ids = io.get<int64_t>("input_ids");
  const auto full = synthetic_sd2_file(hf);
  REQUIRE(io::detect_ldm_text_encoder(full) == io::LdmTextEncoder::OpenClipSd2);

  // keep 3 of 4 layers (as diffusers keeps 23 of 24): exactly the golden model
  std::vector<std::string> skipped;
  const auto converted = io::clip_text_from_ldm(full, 3, &skipped);
  CHECK(identical(converted, hf));
  CHECK(skipped.size() == 2 + 12);  // text_projection, logit_scale, resblocks.3.*
  const auto config = golden_config();
  CHECK(config.hidden_act == "quick_gelu");  // the golden weights' activation (SD2 itself uses "gelu")
  const auto model = load(config, converted);
  const auto out = model(ids);
  GOLDEN_CHECK("sd2-converted last_hidden_state", out.last_hidden_state, io.get<float>("last_hidden_state"));
  GOLDEN_CHECK("sd2-converted pooler_output", out.pooler_output, io.get<float>("pooler_output"));

  // keep all 4: the penultimate state (clip skip 1) is the 3-layer model's last state
  auto config4 = config;
  config4.num_hidden_layers = 4;
  const auto model4 = load(config4, io::clip_text_from_ldm(full));
  CHECK(model4.encode(ids, 1).to_vector() == out.last_hidden_state.to_vector());

  // inverse: the fused tensors equal the ones built independently in this test; both round trips are exact
  const auto oc = open_clip_from_hf(hf, 3);
  const auto back = io::clip_to_ldm_sd2(converted);
  CHECK(identical(back, oc));
  CHECK(identical(io::clip_from_ldm_sd2(back), converted));
  CHECK(identical(io::clip_to_ldm_sd2(io::clip_from_ldm_sd2(oc)), oc));
}

TEST_CASE("SD2 OpenCLIP names keep the stored dtype (f16 in, f16 out)") {
  io::StateDict half_hf("f16");
  const auto hf = golden_weights();
  for (const auto& [name, ref] : hf.tensors()) half_hf.add(name, ref.to<half>());
  const auto half_oc = io::clip_to_ldm_sd2(half_hf);
  CHECK(half_oc.at("transformer.resblocks.0.attn.in_proj_weight").dtype == DType::F16);
  CHECK(half_oc.at("transformer.resblocks.0.attn.in_proj_weight").shape == Shape{96, 32});
  CHECK(identical(io::clip_from_ldm_sd2(half_oc), half_hf));
}

TEST_CASE("SD2 OpenCLIP conversion errors name the tensor") {
  const auto hf = golden_weights();
  auto no_k = hf;
  no_k.erase("text_model.encoder.layers.1.self_attn.k_proj.bias");
  CHECK_THROWS_WITH_AS(io::clip_to_ldm_sd2(no_k), doctest::Contains("text_model.encoder.layers.1.self_attn.k_proj.bias"),
                       FormatError);
  auto extra = hf;
  extra.add("text_projection.weight", Tensor<float>::zeros({32, 32}));
  CHECK_THROWS_WITH_AS(io::clip_to_ldm_sd2(extra), doctest::Contains("\"text_projection.weight\" has no OpenCLIP"),
                       FormatError);
  auto odd = open_clip_from_hf(hf, 3);
  odd.erase("transformer.resblocks.0.attn.in_proj_bias");
  odd.add("transformer.resblocks.0.attn.in_proj_bias", Tensor<float>::zeros({95}));
  CHECK_THROWS_WITH_AS(io::clip_from_ldm_sd2(odd), doctest::Contains("resblocks.0.attn.in_proj_bias: shape [95]"),
                       FormatError);
  // an unknown OpenCLIP key is passed through and reported by the loader
  auto unknown = open_clip_from_hf(hf, 3);
  unknown.add("transformer.resblocks.0.attn.extra", Tensor<float>::zeros({1}));
  ClipTextModel<float> m(golden_config());
  CHECK_THROWS_WITH_AS(load_clip_text(m, io::clip_from_ldm_sd2(unknown)),
                       doctest::Contains("unexpected: transformer.resblocks.0.attn.extra"), Error);
  // a file without a text encoder
  CHECK_THROWS_WITH_AS(io::clip_text_from_ldm(hf), doctest::Contains("no text encoder"), FormatError);
}

TEST_CASE("CLIP text config inferred from single-file shapes") {
  const auto full = ldm_file();
  const auto clip = io::clip_text_from_ldm(full);
  const auto ref = golden_config();
  const auto c = io::infer_clip_text_config(clip, io::LdmTextEncoder::ClipSd1, 4);
  CHECK(c.vocab_size == ref.vocab_size);
  CHECK(c.hidden_size == ref.hidden_size);
  CHECK(c.intermediate_size == ref.intermediate_size);
  CHECK(c.num_hidden_layers == ref.num_hidden_layers);
  CHECK(c.num_attention_heads == ref.num_attention_heads);
  CHECK(c.max_position_embeddings == ref.max_position_embeddings);
  CHECK(c.hidden_act == "quick_gelu");
  CHECK(c.eos_token_id == ref.eos_token_id);
  CHECK_THROWS_WITH_AS(io::infer_clip_text_config(clip, io::LdmTextEncoder::ClipSd1),
                       doctest::Contains("width 32 is not a standard CLIP width"), FormatError);
  const auto sd2 = io::clip_text_from_ldm(synthetic_sd2_file(golden_weights()));
  const auto c2 = io::infer_clip_text_config(sd2, io::LdmTextEncoder::OpenClipSd2, 4);
  CHECK(c2.num_hidden_layers == 4);
  CHECK(c2.hidden_act == "gelu");
  auto no_tokens = clip;
  no_tokens.erase("text_model.embeddings.token_embedding.weight");
  CHECK_THROWS_WITH_AS(io::infer_clip_text_config(no_tokens, io::LdmTextEncoder::ClipSd1, 4),
                       doctest::Contains("no tensor \"text_model.embeddings.token_embedding.weight\""), FormatError);
}

TEST_CASE("full-size CLIP text configs give transformers' exact parameter counts") {
  const auto counts = io::read_json(golden::path("param_counts.json"));
  int checked = 0;
  for (const auto& [key, entry] : counts.items()) {
    if (!entry.is_object() || entry.value("class", "") != "CLIPTextModel") continue;
    CAPTURE(key);
    ClipTextModel<float> model(ClipTextConfig::from_json({entry.at("config"), key}));
    const int64_t total = nn::parameter_count(model);
    std::printf("[params] %-28s %lld (reference %lld)\n", key.c_str(), static_cast<long long>(total),
                static_cast<long long>(entry.at("total").get<int64_t>()));
    CHECK(total == entry.at("total").get<int64_t>());
    CHECK(static_cast<int64_t>(nn::parameter_names(model).size()) == entry.at("n_tensors").get<int64_t>());
    const auto& parts = entry.at("per_submodule (of .text_model)");
    CHECK(nn::parameter_count(model.embeddings) == parts.at("embeddings").get<int64_t>());
    CHECK(nn::parameter_count(model.final_layer_norm) == parts.at("final_layer_norm").get<int64_t>());
    CHECK(nn::parameter_count(model.layers[0]) == entry.at("per_block").at("encoder.layers.0").get<int64_t>());
    ++checked;
  }
  CHECK(checked == 2);
  // the presets are those architectures
  ClipTextModel<float> sd1(ClipTextConfig::sd1_vit_l14()), sd2(ClipTextConfig::sd2_open_clip_vit_h14());
  CHECK(nn::parameter_count(sd1) == counts.at("clip_vit_l14_text").at("total").get<int64_t>());
  CHECK(nn::parameter_count(sd2) == counts.at("openclip_vit_h14_text_sd2").at("total").get<int64_t>());
}

TEST_CASE("CLIP text config: CLIPConfig's text_config, unsupported options") {
  io::Json full = {{"model_type", "clip"},
                   {"text_config", golden::config("clip_text/config.json").json},
                   {"vision_config", {{"hidden_size", 1024}}}};
  const auto c = ClipTextConfig::from_json({full, "clip/config.json"});
  CHECK(c.hidden_size == 32);
  CHECK(c.num_hidden_layers == 3);
  CHECK(c.activation() == ops::Activation::QuickGelu);
  full["text_config_dict"] = {{"hidden_act", "gelu"}};  // the legacy entry wins, as in transformers
  CHECK(ClipTextConfig::from_json({full, "clip/config.json"}).activation() == ops::Activation::GeluErf);

  io::Json bad = golden::config("clip_text/config.json").json;
  bad["hidden_act"] = "relu";
  CHECK_THROWS_WITH_AS(ClipTextConfig::from_json({bad, "x.json"}), doctest::Contains("hidden_act \"relu\""), FormatError);
  bad = golden::config("clip_text/config.json").json;
  bad["num_attention_heads"] = 5;
  CHECK_THROWS_WITH_AS(ClipTextConfig::from_json({bad, "x.json"}), doctest::Contains("does not split into 5 heads"),
                       FormatError);
  bad = golden::config("clip_text/config.json").json;
  bad["model_type"] = "t5";
  CHECK_THROWS_WITH_AS(ClipTextConfig::from_json({bad, "x.json"}), doctest::Contains("model_type"), FormatError);
}

TEST_CASE("CLIP text pooling position follows transformers 4.38") {
  auto config = golden_config();
  const auto ids = Tensor<int64_t>::from_vector({49406, 320, 49407, 49407, 49406, 49407, 0, 320,  //
                                                 320, 1125, 49406, 0},
                                                {3, 4});
  // legacy eos_token_id == 2: argmax (first maximum)
  CHECK(ClipTextModel<float>(config).eos_positions(ids) == std::vector<int64_t>{2, 1, 2});
  // otherwise: the first eos_token_id (0 when absent)
  config.eos_token_id = 320;
  CHECK(ClipTextModel<float>(config).eos_positions(ids) == std::vector<int64_t>{1, 3, 0});
  config.eos_token_id = 49407;
  CHECK(ClipTextModel<float>(config).eos_positions(ids) == std::vector<int64_t>{2, 1, 0});
}

TEST_CASE("CLIP text errors: ids out of range, too long, a missing layer") {
  const auto sd = golden_weights();
  const auto model = load(golden_config(), sd);
  auto ids = Tensor<int64_t>::full({1, 5}, 320);
  ids.at({0, 3}) = 49408;
  CHECK_THROWS_WITH_AS(model(ids), doctest::Contains("token id 49408 at [0, 3] is outside the vocabulary [0, 49408)"),
                       ShapeError);
  ids.at({0, 3}) = -1;
  CHECK_THROWS_WITH_AS(model.encode(ids), doctest::Contains("token id -1"), ShapeError);
  CHECK_THROWS_WITH_AS(model(Tensor<int64_t>::full({2, 78}, 320)),
                       doctest::Contains("78 tokens exceed max_position_embeddings 77"), ShapeError);
  CHECK_THROWS_AS(model(Tensor<int64_t>::full({5}, 320)), ShapeError);
  CHECK_THROWS_WITH_AS(model.encode(Tensor<int64_t>::full({1, 5}, 320), 4), doctest::Contains("clip_skip 4"),
                       ShapeError);
  CHECK(model.encode(Tensor<int64_t>::full({1, 5}, 320), 3).shape() == Shape{1, 5, 32});  // embeddings, final LN

  auto missing = sd;
  for (const auto& name : sd.names())
    if (name.rfind("text_model.encoder.layers.2.", 0) == 0) missing.erase(name);
  ClipTextModel<float> m(golden_config());
  CHECK_THROWS_WITH_AS(load_clip_text(m, missing), doctest::Contains("text_model.encoder.layers.2.self_attn.k_proj.weight"),
                       Error);
  const auto report = load_clip_text(m, missing, /*strict=*/false);
  CHECK(report.missing.size() == 16);
}
