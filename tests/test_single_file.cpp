// Original-layout (single-file) checkpoints: name translation, architecture inference and the golden outputs.
#include "golden.hpp"

#include "adabldm/io/safetensors.hpp"
#include "adabldm/models/ldm_unet_keys.hpp"

using namespace adabldm;
using namespace adabldm::models;

namespace {
io::Config component_config(const std::string& prefix) {
  auto all = golden::config("ldm_format/config.json");
  return {all.json.at(prefix).at("diffusers_config"), "ldm_format/config.json[" + prefix + "]"};
}
}  // namespace

TEST_CASE("UNet and ControlNet from the original layout reproduce the golden outputs") {
  const auto file = io::SafeTensors::open(golden::path("ldm_format/model.safetensors")).state_dict();
  const auto io = io::SafeTensors::open(golden::path("ldm_format/io.safetensors"));
  UNet2DConditionModel<float> unet(UNetConfig::from_json(component_config("model.diffusion_model.")));
  nn::load_state_dict(unet, io::unet_from_ldm(file.with_prefix("model.diffusion_model."), unet));
  const auto ts = io.get<float>("unet.timestep").to_vector();
  GOLDEN_CHECK("single-file unet noise_pred", unet(io.get<float>("unet.sample"), ts, io.get<float>("unet.encoder_hidden_states")),
               io.get<float>("unet.noise_pred"));

  ControlNetModel<float> cn(ControlNetConfig::from_json(component_config("control_model.")));
  nn::load_state_dict(cn, io::controlnet_from_ldm(file.with_prefix("control_model."), cn));
  const auto res = cn(io.get<float>("controlnet.sample"), io.get<float>("controlnet.timestep").to_vector(),
                      io.get<float>("controlnet.encoder_hidden_states"), io.get<float>("controlnet.controlnet_cond"));
  for (std::size_t i = 0; i < res.down.size(); ++i) {
    const std::string name = "controlnet.down_block_res_sample_0" + std::to_string(i);
    GOLDEN_CHECK("single-file " + name, res.down[i], io.get<float>(name));
  }
  GOLDEN_CHECK("single-file controlnet.mid_block_res_sample", res.mid, io.get<float>("controlnet.mid_block_res_sample"));
  GOLDEN_CHECK("single-file unet + controlnet",
               unet(io.get<float>("controlnet.sample"), io.get<float>("controlnet.timestep").to_vector(),
                    io.get<float>("controlnet.encoder_hidden_states"), res),
               io.get<float>("controlnet.unet_noise_pred_controlled"));
}

TEST_CASE("original names: the table covers every tensor and round-trips") {
  const auto file = io::SafeTensors::open(golden::path("ldm_format/model.safetensors")).state_dict();
  UNet2DConditionModel<float> unet(UNetConfig::from_json(component_config("model.diffusion_model.")));
  const auto ldm = file.with_prefix("model.diffusion_model.");
  const auto renamed = io::unet_from_ldm(ldm, unet);
  auto report = nn::load_state_dict(unet, renamed);
  CHECK(report.loaded == static_cast<int64_t>(ldm.size()));
  const auto back = io::rename_to_ldm(unet, [&](const std::string& n) { return io::ldm_unet_name(n, unet.config); });
  CHECK(back.names() == ldm.names());
  // spot checks of the layout facts in ../shared/golden/ldm_format/README.md
  CHECK(io::ldm_unet_name("conv_in.weight", unet.config) == "input_blocks.0.0.weight");
  CHECK(io::ldm_unet_name("down_blocks.0.downsamplers.0.conv.weight", unet.config) == "input_blocks.3.0.op.weight");
  CHECK(io::ldm_unet_name("up_blocks.0.upsamplers.0.conv.bias", unet.config) == "output_blocks.2.1.conv.bias");
  CHECK(io::ldm_unet_name("up_blocks.1.attentions.2.proj_in.weight", unet.config) == "output_blocks.5.1.proj_in.weight");
  CHECK(io::ldm_unet_name("mid_block.resnets.1.time_emb_proj.weight", unet.config) == "middle_block.2.emb_layers.1.weight");
}
