// Configs are untrusted text (downloaded, edited by hand): every field of the wrong JSON type, or a number out of
// range for its C++ type, is a one-line FormatError naming the file and the field, never a foreign nlohmann
// exception or a silently truncated value; and every config we accept writes back and reads again unchanged.
#include "golden.hpp"

#include <functional>

#include "adabldm/models/config_json.hpp"
#include "adabldm/models/loader.hpp"
#include "adabldm/models/taesd.hpp"
#include "adabldm/models/vq_model.hpp"
#include "adabldm/sampling/scheduler.hpp"

using namespace adabldm;
using namespace adabldm::models;
using io::Json;

namespace {
/// Reads `j` as a config named "where.json" through `read` and expects a FormatError naming it and `field`.
void expect_field_error(const std::function<void(const io::Config&)>& read, const Json& j, const std::string& field,
                        const std::string& needle = "") {
  CAPTURE(j.dump());
  try {
    read(io::Config{j, "where.json"});
    CHECK_MESSAGE(false, "accepted");
  } catch (const FormatError& e) {
    const std::string msg = e.what();
    CAPTURE(msg);
    CHECK(msg.rfind("where.json", 0) == 0);
    if (!field.empty()) CHECK(msg.find("\"" + field) != std::string::npos);
    CHECK(msg.find(needle) != std::string::npos);
    CHECK(msg.find('\n') == std::string::npos);
  } catch (const std::exception& e) {
    FAIL("foreign exception: " << e.what());
  }
}

/// For every field of `base`: a value of each other JSON type, and 2^63 (beyond int64).
void mutate_every_field(const std::function<void(const io::Config&)>& read, const Json& base,
                        const std::set<std::string>& ignored = {}) {
  const std::set<std::string> not_read = {"_class_name", "_diffusers_version"};  // no reader looks at these
  // Floating-point fields that files write as integers ("freq_shift": 0): any number is valid there.
  const std::set<std::string> floats = {"freq_shift", "mid_block_scale_factor", "latent_magnitude", "latent_shift", "scaling_factor"};
  const Json bad[] = {Json("text"), Json(true), Json(2.5), Json::array({Json::array({1})}), Json::object({{"a", 1}}),
                      Json(9223372036854775808ull)};
  int cases = 0;
  for (auto it = base.begin(); it != base.end(); ++it) {
    if (ignored.count(it.key()) || not_read.count(it.key())) continue;
    for (const Json& b : bad) {
      const Json& orig = it.value();
      const bool valid = orig.type() == b.type() || ((orig.is_number_float() || floats.count(it.key())) && b.is_number());
      if (valid) continue;
      Json j = base;
      j[it.key()] = b;
      CAPTURE(it.key());
      expect_field_error(read, j, it.key());
      ++cases;
    }
  }
  CHECK(cases > 10);
}
}  // namespace

TEST_CASE("every field of every model config: wrong JSON types and out-of-range numbers name the file and field") {
  const auto unet = golden::config("unet/config.json");
  const auto unet_json = io::unet_config_json(UNetConfig::from_json(unet));
  mutate_every_field([](const io::Config& c) { UNetConfig::from_json(c); }, unet_json);
  const auto cn_json = io::controlnet_config_json(ControlNetConfig::from_json(golden::config("controlnet/config.json")));
  mutate_every_field([](const io::Config& c) { ControlNetConfig::from_json(c); }, cn_json);
  const auto vae_json = io::vae_config_json(AutoencoderKLConfig::from_json(golden::config("vae_kl/config.json")));
  mutate_every_field([](const io::Config& c) { AutoencoderKLConfig::from_json(c); }, vae_json);
  const auto clip_json = io::clip_text_config_json(ClipTextConfig::from_json(golden::config("clip_text/config.json")), "float32");
  mutate_every_field([](const io::Config& c) { ClipTextConfig::from_json(c); }, clip_json,
                     {"architectures", "torch_dtype"});  // not read by ClipTextConfig
  // No writer for these: their files as stored, less the keys the readers ignore.
  mutate_every_field([](const io::Config& c) { VQModelConfig::from_json(c); }, golden::config("vae_vq/config.json").json,
                     {"force_upcast"});
  mutate_every_field([](const io::Config& c) { TaesdConfig::from_json(c); }, golden::config("taesd/config.json").json,
                     {"force_upcast", "block_out_channels", "shift_factor"});
  mutate_every_field([](const io::Config& c) { sampling::SchedulerConfig::from_json(c); },
                     golden::config("ddim/config.json").json,
                     {"dynamic_thresholding_ratio", "sample_max_value"});  // used only with thresholding, refused
}

TEST_CASE("integers: ranges of the C++ type, whole numbers only") {
  const auto unet = golden::config("unet/config.json").json;
  auto read = [](const io::Config& c) { UNetConfig::from_json(c); };
  auto with = [&](const char* key, const Json& v) { Json j = unet; j[key] = v; return j; };
  expect_field_error(read, with("downsample_padding", 4294967296ll), "downsample_padding", "is out of range");  // int
  expect_field_error(read, with("downsample_padding", -2147483649ll), "downsample_padding", "is out of range");
  expect_field_error(read, with("in_channels", 9223372036854775808ull), "in_channels", "is out of range");
  expect_field_error(read, with("in_channels", 4.0), "in_channels", "has the wrong type");  // not silently 4
  expect_field_error(read, with("in_channels", 4.5), "in_channels", "has the wrong type");  // nor truncated
  expect_field_error(read, with("block_out_channels", Json::array({32, "64"})), "block_out_channels[1]");
  expect_field_error(read, with("attention_head_dim", 2.5), "attention_head_dim");
  expect_field_error(read, with("attention_head_dim", Json::array({2, 2.5})), "attention_head_dim[1]");
  expect_field_error(read, with("transformer_layers_per_block", "1"), "transformer_layers_per_block");
  expect_field_error(read, with("flip_sin_to_cos", 1), "flip_sin_to_cos", "must be true or false");
  expect_field_error(read, with("norm_eps", "1e-5"), "norm_eps", "must be a number");
  // a config that is not an object
  expect_field_error(read, Json::array({1, 2}), "", "not a JSON object");
  expect_field_error(read, Json(7), "", "not a JSON object");
}

TEST_CASE("nested configs and overrides: wrong types name the field") {
  auto clip = [](const io::Config& c) { ClipTextConfig::from_json(c); };
  expect_field_error(clip, Json{{"text_config", 5}}, "text_config", "not an object");
  expect_field_error(clip, Json{{"text_config", Json::object()}, {"text_config_dict", Json::array()}}, "text_config_dict");
  expect_field_error(clip, Json{{"text_config", Json{{"hidden_size", "big"}}}}, "hidden_size");
  expect_field_error(clip, Json{{"model_type", 3}}, "model_type", "must be a string");
  // --config overrides: _class_name / architectures of the wrong type
  for (const Json& j : {Json{{"_class_name", 3}}, Json{{"architectures", Json::array({1})}}, Json{{"architectures", "x"}}}) {
    CAPTURE(j.dump());
    const ConfigOverrides o{j, "override.json"};
    CHECK_THROWS_WITH_AS(o.find("model.diffusion_model.", {"UNet2DConditionModel"}), doctest::Contains("override.json"),
                         FormatError);
  }
  CHECK_THROWS_WITH_AS(io::parse_json("{\"a\": ", "meta"), doctest::Contains("meta: invalid JSON"), FormatError);
}

TEST_CASE("every config we accept writes back and reads again to the same config") {
  const auto u1 = io::unet_config_json(UNetConfig::from_json(golden::config("unet/config.json")));
  CHECK(io::unet_config_json(UNetConfig::from_json({u1, "rt"})) == u1);
  // lists derived from the number of levels: a scalar head count and transformer depth, then 3 levels
  Json j = u1;
  j["attention_head_dim"] = 4;
  j["transformer_layers_per_block"] = 2;
  const auto c = UNetConfig::from_json({j, "rt"});
  CHECK(c.heads == std::vector<int64_t>(c.levels(), 4));
  CHECK(io::unet_config_json(UNetConfig::from_json({io::unet_config_json(c), "rt"})) == io::unet_config_json(c));
  const auto cn = io::controlnet_config_json(ControlNetConfig::from_json(golden::config("controlnet/config.json")));
  CHECK(io::controlnet_config_json(ControlNetConfig::from_json({cn, "rt"})) == cn);
  const auto v = io::vae_config_json(AutoencoderKLConfig::from_json(golden::config("vae_kl/config.json")));
  CHECK(io::vae_config_json(AutoencoderKLConfig::from_json({v, "rt"})) == v);
  const auto t = io::clip_text_config_json(ClipTextConfig::from_json(golden::config("clip_text/config.json")), "float32");
  CHECK(io::clip_text_config_json(ClipTextConfig::from_json({t, "rt"}), "float32") == t);
}
