// UNet2DConditionModel and ControlNetModel against diffusers 0.27.2 (tests/data/{unet,controlnet}).
#include "golden.hpp"

#include "adabldm/io/safetensors.hpp"
#include "adabldm/models/controlnet.hpp"

using namespace adabldm;
using namespace adabldm::models;

namespace {
std::vector<float> timesteps(const io::SafeTensors& io) { return io.get<float>("timestep").to_vector(); }

UNet2DConditionModel<float> load_unet() {
  UNet2DConditionModel<float> unet(UNetConfig::from_json(golden::config("unet/config.json")));
  nn::load_state_dict(unet, io::SafeTensors::open(golden::path("unet/model.safetensors")).state_dict());
  return unet;
}
}  // namespace

TEST_CASE("UNet golden: noise prediction with 77- and 5-token contexts") {
  auto unet = load_unet();
  const auto io = io::SafeTensors::open(golden::path("unet/io.safetensors"));
  const auto sample = io.get<float>("sample");
  GOLDEN_CHECK("unet noise_pred", unet(sample, timesteps(io), io.get<float>("encoder_hidden_states")),
               io.get<float>("noise_pred"));
  GOLDEN_CHECK("unet noise_pred_short", unet(sample, timesteps(io), io.get<float>("encoder_hidden_states_short")),
               io.get<float>("noise_pred_short"));
}

TEST_CASE("ControlNet golden: residuals and the controlled UNet") {
  auto unet = load_unet();
  ControlNetModel<float> cn(ControlNetConfig::from_json(golden::config("controlnet/config.json")));
  nn::load_state_dict(cn, io::SafeTensors::open(golden::path("controlnet/model.safetensors")).state_dict());
  const auto io = io::SafeTensors::open(golden::path("controlnet/io.safetensors"));
  const auto sample = io.get<float>("sample"), ctx = io.get<float>("encoder_hidden_states");
  const auto res = cn(sample, timesteps(io), ctx, io.get<float>("controlnet_cond"));
  REQUIRE(res.down.size() == 6);
  for (std::size_t i = 0; i < res.down.size(); ++i) {
    const std::string name = "down_block_res_sample_0" + std::to_string(i);
    GOLDEN_CHECK("controlnet " + name, res.down[i], io.get<float>(name));
  }
  GOLDEN_CHECK("controlnet mid_block_res_sample", res.mid, io.get<float>("mid_block_res_sample"));
  GOLDEN_CHECK("unet + controlnet residuals", unet(sample, timesteps(io), ctx, res),
               io.get<float>("unet_noise_pred_controlled"));
}

TEST_CASE("ControlNet.from_unet copies the encoder and zeroes the zero convolutions") {
  auto unet = load_unet();
  Rng rng(5);
  auto cn = ControlNetModel<float>::from_unet(unet, 3, {8, 16}, rng);
  CHECK(cn.encoder.conv_in.weight().to_vector() == unet.encoder.conv_in.weight().to_vector());
  CHECK(cn.encoder.mid_block.attentions[0].transformer_blocks[0].attn2.to_k.weight().to_vector() ==
        unet.encoder.mid_block.attentions[0].transformer_blocks[0].attn2.to_k.weight().to_vector());
  for (const auto& d : cn.controlnet_down_blocks) CHECK(d.weight().to_vector() == std::vector<float>(d.weight().numel(), 0.0f));
  // a fresh trimap encoder changes nothing: all residuals are zero
  const auto io = io::SafeTensors::open(golden::path("unet/io.safetensors"));
  const auto sample = io.get<float>("sample");
  auto cond = rng.uniform({2, 3, 16, 16});
  const auto res = cn(sample, timesteps(io), io.get<float>("encoder_hidden_states"), cond);
  for (const auto& r : res.down)
    for (float v : r.to_vector()) REQUIRE(v == 0.0f);
  // the copy is deep: changing the ControlNet leaves the UNet alone
  cn.encoder.conv_in.weight.value.data()[0] += 1.0f;
  CHECK(cn.encoder.conv_in.weight().data()[0] != unet.encoder.conv_in.weight().data()[0]);
}

TEST_CASE("loading reports missing, unexpected and mis-shaped keys by name") {
  UNet2DConditionModel<float> unet(UNetConfig::from_json(golden::config("unet/config.json")));
  auto sd = io::SafeTensors::open(golden::path("unet/model.safetensors")).state_dict();
  sd.erase("conv_in.weight");
  sd.add("extra.weight", Tensor<float>::zeros({2}));
  auto r = nn::load_state_dict(unet, sd, /*strict=*/false);
  CHECK(r.missing == std::vector<std::string>{"conv_in.weight"});
  CHECK(r.unexpected == std::vector<std::string>{"extra.weight"});
  CHECK_THROWS_WITH_AS(nn::load_state_dict(unet, sd), doctest::Contains("missing: conv_in.weight"), Error);
  UNetConfig wrong = unet.config;
  wrong.cross_attention_dim = 16;
  UNet2DConditionModel<float> other(wrong);
  auto full = io::SafeTensors::open(golden::path("unet/model.safetensors")).state_dict();
  CHECK_THROWS_WITH_AS(nn::load_state_dict(other, full), doctest::Contains("attn2.to_k.weight: file [64, 32] vs model [64, 16]"),
                       Error);
}

TEST_CASE("full-size UNet / ControlNet configs give diffusers' exact parameter counts") {
  const auto counts = io::read_json(golden::path("param_counts.json"));
  for (const char* key : {"sd15_unet", "sd21_unet"}) {
    UNet2DConditionModel<float> unet(UNetConfig::from_json({counts.at(key).at("config"), key}));
    CAPTURE(key);
    CHECK(nn::parameter_count(unet) == counts.at(key).at("total").get<int64_t>());
    CHECK(static_cast<int64_t>(nn::parameter_names(unet).size()) == counts.at(key).at("n_tensors").get<int64_t>());
  }
  ControlNetModel<float> cn(ControlNetConfig::from_json({counts.at("sd15_controlnet").at("config"), "sd15_controlnet"}));
  CHECK(nn::parameter_count(cn) == counts.at("sd15_controlnet").at("total").get<int64_t>());
  CHECK(static_cast<int64_t>(nn::parameter_names(cn).size()) == counts.at("sd15_controlnet").at("n_tensors").get<int64_t>());
}
