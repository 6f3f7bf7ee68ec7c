// Model and scheduler configs (config.json of every component, --config overrides keyed by single-file prefix,
// a CLIPConfig's text_config). Every reader tries the file on its own; a config one accepts is written back
// with our writer and read again, and must give the same config (what we accept, we can write and reread).
#include "fuzz_common.hpp"

#include "adabldm/models/config_json.hpp"
#include "adabldm/models/loader.hpp"
#include "adabldm/models/taesd.hpp"
#include "adabldm/models/vq_model.hpp"
#include "adabldm/sampling/scheduler.hpp"

using namespace adabldm;
using namespace adabldm::models;

namespace {
template <class Cfg, class Write>
void round_trip(const io::Config& c, Write write) {
  fuzz::run(c.where, [&] {
    const io::Json once = write(Cfg::from_json(c));
    FUZZ_CHECK(write(Cfg::from_json(io::Config{once, c.where})) == once);
  });
}
template <class Cfg>
void read_only(const io::Config& c) {
  fuzz::run(c.where, [&] { (void)Cfg::from_json(c); });
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string path = fuzz::write_temp("config.json", data, size);
  fuzz::run(path, [&] {
    const models::ConfigOverrides overrides{io::read_json(path), path};
    const io::Config c{overrides.json, path};
    round_trip<UNetConfig>(c, [](const UNetConfig& u) { return io::unet_config_json(u); });
    round_trip<ControlNetConfig>(c, [](const ControlNetConfig& u) { return io::controlnet_config_json(u); });
    round_trip<AutoencoderKLConfig>(c, [](const AutoencoderKLConfig& u) { return io::vae_config_json(u); });
    round_trip<ClipTextConfig>(c, [](const ClipTextConfig& u) { return io::clip_text_config_json(u, "float32"); });
    read_only<VQModelConfig>(c);
    read_only<TaesdConfig>(c);
    fuzz::run(path, [&] { sampling::DDIMScheduler s(sampling::SchedulerConfig::from_json(c)); });
    // --config: a component's config under its single-file prefix, or a plain config of its class
    const std::pair<const char*, const char*> components[] = {{io::ldm_prefix::unet, "UNet2DConditionModel"},
                                                              {io::ldm_prefix::vae, "AutoencoderKL"},
                                                              {io::ldm_prefix::controlnet, "ControlNetModel"},
                                                              {"cond_stage_model.transformer.", "CLIPTextModel"}};
    for (const auto& component : components)
      fuzz::run(path, [&] {
        if (const auto found = overrides.find(component.first, {component.second})) {
          round_trip<UNetConfig>(*found, [](const UNetConfig& u) { return io::unet_config_json(u); });
          round_trip<ClipTextConfig>(*found, [](const ClipTextConfig& u) { return io::clip_text_config_json(u, "float32"); });
        }
      });
  });
  return 0;
}
