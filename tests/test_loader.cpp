// Loading a whole model set from a diffusers pipeline folder and from single files (tests/data/tiny_pipeline):
// the two layouts give bit-identical weights; configs come from the folder, from a user config keyed by
// prefix, or from tensor shapes; errors name what is missing.
#include "golden.hpp"

#include "adabldm/models/loader.hpp"

using namespace adabldm;
using namespace adabldm::models;

namespace {
const std::string kFolder = golden::path("tiny_pipeline/diffusers");
const std::string kSingle = golden::path("tiny_pipeline/single_file.safetensors");
const std::string kControl = golden::path("tiny_pipeline/controlnet_single_file.safetensors");
LoadOptions with_config() { return {ConfigOverrides::from_file(golden::path("tiny_pipeline/single_file_config.json")), ""}; }

template <class M>
void expect_same_weights(M& a, M& b) {
  const auto sa = nn::state_dict(a), sb = nn::state_dict(b);
  REQUIRE(sa.names() == sb.names());
  for (const auto& n : sa.names()) {
    CAPTURE(n);
    REQUIRE(sa.template get<float>(n).to_vector() == sb.template get<float>(n).to_vector());
  }
}
}  // namespace

TEST_CASE("diffusers folder and single files give identical models") {
  const ModelSource folder(kFolder), single(kSingle, with_config()), control(kControl, with_config());
  CHECK(folder.kind() == SourceKind::DiffusersPipeline);
  CHECK(single.kind() == SourceKind::SingleFile);
  auto u1 = load_unet(folder), u2 = load_unet(single);
  expect_same_weights(u1, u2);
  auto v1 = load_vae(folder), v2 = load_vae(single);
  expect_same_weights(v1, v2);
  auto t1 = load_text_encoder(folder), t2 = load_text_encoder(single);
  expect_same_weights(t1, t2);
  auto c1 = load_controlnet(folder), c2 = load_controlnet(control);
  expect_same_weights(c1, c2);
  // a component folder works too
  auto u3 = load_unet(ModelSource(kFolder + "/unet"));
  expect_same_weights(u1, u3);
}

TEST_CASE("architecture inferred from shapes where shapes can tell") {
  // Without the user config the tiny UNet (cross-attention width 32) cannot be inferred: the error says why.
  const ModelSource single(kSingle);
  CHECK_THROWS_WITH_AS(load_unet(single), doctest::Contains("number of heads cannot be inferred"), FormatError);
  CHECK_THROWS_WITH_AS(load_vae(single), doctest::Contains("not a multiple of 32"), FormatError);
  // What shapes can tell matches the true config.
  const auto truth = UNetConfig::from_json(
      {io::read_json(golden::path("tiny_pipeline/single_file_config.json"))["model.diffusion_model."]["diffusers_config"], "x"});
  const auto inferred = io::infer_unet_config(single.file().with_prefix("model.diffusion_model."), truth.heads);
  CHECK(inferred.block_out_channels == truth.block_out_channels);
  CHECK(inferred.layers_per_block == truth.layers_per_block);
  CHECK(inferred.down_block_types == truth.down_block_types);
  CHECK(inferred.up_block_types == truth.up_block_types);
  CHECK(inferred.cross_attention_dim == truth.cross_attention_dim);
  CHECK(inferred.use_linear_projection == truth.use_linear_projection);
  const auto cn_truth = ControlNetConfig::from_json(
      {io::read_json(golden::path("tiny_pipeline/single_file_config.json"))["control_model."]["diffusers_config"], "x"});
  const auto cn = io::infer_controlnet_config(io::load_checkpoint(kControl).with_prefix("control_model."), truth.heads);
  CHECK(cn.conditioning_channels == cn_truth.conditioning_channels);
  CHECK(cn.conditioning_embedding_out_channels == cn_truth.conditioning_embedding_out_channels);
}

TEST_CASE("SD1.5-shaped single files are inferred without any config") {
  // Build SD1.5's UNet + VAE names and shapes (no values needed to infer) and check the inferred configs.
  const UNetConfig sd15;
  UNet2DConditionModel<float> unet(sd15);
  io::StateDict sd("sd15-shapes");
  unet.visit("", [&](const std::string& name, auto& p) {
    sd.add(io::ldm_unet_name(name, sd15), io::TensorRef{DType::F16, p.shape, nullptr, nullptr});
  });
  const auto c = io::infer_unet_config(sd);
  CHECK(c.block_out_channels == sd15.block_out_channels);
  CHECK(c.heads == sd15.heads);
  CHECK(c.down_block_types == sd15.down_block_types);
  CHECK(c.layers_per_block == 2);
  CHECK(c.cross_attention_dim == 768);
  UNet2DConditionModel<float> rebuilt(c);
  CHECK(nn::parameter_count(rebuilt) == 859520964);
}

TEST_CASE("loader errors name the problem") {
  CHECK_THROWS_WITH_AS(ModelSource(golden::path("nope")), doctest::Contains("no such file"), IoError);
  CHECK_THROWS_WITH_AS(load_controlnet(ModelSource(kSingle, with_config())), doctest::Contains("no trimap encoder"),
                       FormatError);
  CHECK_THROWS_WITH_AS(load_unet(ModelSource(kControl, with_config())), doctest::Contains("no UNet in this file"),
                       FormatError);
}
