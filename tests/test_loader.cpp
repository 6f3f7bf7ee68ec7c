// Loading a whole model set from a diffusers pipeline folder and from single files (tests/data/tiny_pipeline):
// the two layouts give bit-identical weights; configs come from the folder, from a user config keyed by
// prefix, or from tensor shapes; errors name what is missing.
#include "golden.hpp"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>

#include "adabldm/models/loader.hpp"
#include "poisoned_checkpoint.hpp"

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

// ---- non-finite weights (issue 20, item 7; docs/reliability.md) ----------------------------------------------------
// A checkpoint holding NaN or Inf values is refused by every loader, in one line naming the file and the tensor;
// LoadOptions::allow_non_finite loads it as it is. Counted in f32, f16 and bf16 (the stored dtypes of real
// checkpoints), across chunk boundaries, and never confused with large finite values.

namespace {
namespace fs = std::filesystem;
fs::path scratch(const std::string& name) {
  const auto d = fs::temp_directory_path() / ("adabldm_loader_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}
/// The message of the FormatError `f` throws ("" if none).
template <class F>
std::string refusal(F&& f) {
  try {
    f();
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}
constexpr DType kFloatTypes[] = {DType::F32, DType::F16, DType::BF16};

/// 200 000 values of a float dtype, all 0 but: +-Inf at 0 and 100 000, three NaNs (quiet, negative, signalling) on
/// both sides of the first 64 K chunk boundary and at the end, and the dtype's finite extremes (+-max, the smallest
/// subnormal, -0) at 10 .. 13, each given as bits.
template <class U>
io::TensorRef bit_tensor(DType dtype, U inf, U nan_quiet, U nan_neg, U nan_sig, U max, U neg_max) {
  auto v = std::make_shared<std::vector<U>>(200000, U{0});
  auto& b = *v;
  b[0] = inf;
  b[100000] = static_cast<U>(inf | (neg_max ^ max));  // -Inf: the sign bit (neg_max ^ max) set
  b[65535] = nan_quiet;
  b[65536] = nan_neg;
  b[199999] = nan_sig;
  b[10] = max;
  b[11] = neg_max;
  b[12] = 1;
  b[13] = static_cast<U>(neg_max ^ max);  // -0
  return {dtype, Shape{200000}, v, reinterpret_cast<const std::byte*>(v->data())};
}
}  // namespace

TEST_CASE("non-finite weights: counted exactly in every float dtype, across chunks; finite extremes are not") {
  io::StateDict sd("memory");
  sd.add("a.f32", bit_tensor<uint32_t>(DType::F32, 0x7f800000u, 0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7f7fffffu, 0xff7fffffu));
  sd.add("b.f16", bit_tensor<uint16_t>(DType::F16, 0x7c00, 0x7e00, 0xfe00, 0x7c01, 0x7bff, 0xfbff));
  sd.add("c.bf16", bit_tensor<uint16_t>(DType::BF16, 0x7f80, 0x7fc0, 0xffc0, 0x7f81, 0x7f7f, 0xff7f));
  sd.add("d.f64", bit_tensor<uint64_t>(DType::F64, 0x7ff0000000000000ull, 0x7ff8000000000000ull, 0xfff8000000000000ull,
                                       0x7ff0000000000001ull, 0x7fefffffffffffffull, 0xffefffffffffffffull));
  for (const auto& [name, ref] : sd.tensors()) {
    CAPTURE(name);
    const auto c = io::count_non_finite(ref);
    CHECK(c.nan == 3);
    CHECK(c.inf == 2);
    // what the values are, read by the ordinary conversion
    const auto f = ref.to<double>().to_vector();
    CHECK((std::isinf(f[0]) && f[0] > 0));
    CHECK((std::isinf(f[100000]) && f[100000] < 0));
    CHECK((std::isnan(f[65535]) && std::isnan(f[65536]) && std::isnan(f[199999])));
    CHECK((std::isfinite(f[10]) && std::isfinite(f[11]) && f[12] > 0 && f[13] == 0 && std::signbit(f[13])));
  }
  // finite extremes alone, integers and bools: nothing
  sd.add("e.clean", Tensor<float>::from_vector({1.0f, std::numeric_limits<float>::max(), -0.0f,
                                                std::numeric_limits<float>::denorm_min()}, {4}));
  sd.add("f.int", Tensor<int64_t>::from_vector({-1, 0, std::numeric_limits<int64_t>::max()}, {3}));
  CHECK(io::count_non_finite(sd.at("e.clean")).total() == 0);
  CHECK(io::count_non_finite(sd.at("f.int")).total() == 0);
  const auto bad = io::non_finite_tensors(sd);
  REQUIRE(bad.size() == 4);
  CHECK(bad[0].first == "a.f32");
  CHECK(bad[3].first == "d.f64");
  CHECK(bad[1].second.nan == 3);
  CHECK(bad[1].second.inf == 2);
  CHECK(refusal([&] { io::check_finite(sd); }) ==
        "memory: tensor \"a.f32\" has 3 NaN and 2 Inf values (3 more tensors have NaN or Inf); refusing to load it "
        "(--allow-non-finite skips this check)");
  for (const char* name : {"a.f32", "b.f16", "c.bf16", "d.f64"}) sd.erase(name);
  CHECK_NOTHROW(io::check_finite(sd));
}

TEST_CASE("non-finite weights: a component folder, a sharded folder and a single file are refused naming the file "
          "and the tensor; allow_non_finite loads them") {
  const auto dir = scratch("nonfinite");
  const std::string key = "decoder.conv_in.weight";
  const auto clean = load_vae(ModelSource(golden::path("vae_kl")));
  const auto clean_w = clean.decoder.conv_in.weight.value.to_vector();
  for (const DType dtype : kFloatTypes) {
    const std::string label = poisoned::dtype_label(dtype);
    CAPTURE(label);
    // a component folder (the golden VAE, f32), the tensor stored in `dtype`
    const fs::path folder = dir / (std::string("vae_") + poisoned::dtype_label(dtype));
    fs::create_directories(folder);
    fs::copy(golden::path("vae_kl/config.json"), folder / "config.json");
    const std::string weights = (folder / "model.safetensors").string();
    poisoned::write(golden::path("vae_kl/model.safetensors"), weights, key, dtype, 1, 1);
    std::string msg = refusal([&] { load_vae(ModelSource(folder.string())); });
    CHECK(msg == weights + ": tensor \"" + key + "\" has 1 NaN and 1 Inf values; refusing to load it "
                                                 "(--allow-non-finite skips this check)");
    CHECK(msg.find('\n') == std::string::npos);
    LoadOptions allow;
    allow.allow_non_finite = true;
    const auto vae = load_vae(ModelSource(folder.string(), allow));
    const auto w = vae.decoder.conv_in.weight.value.to_vector();
    CHECK(std::isnan(w[0]));
    CHECK((std::isinf(w[1]) && w[1] > 0));
    CHECK(w[2] == doctest::Approx(clean_w[2]).epsilon(1e-2));  // the rest as stored (rounded in f16 / bf16)
    if (dtype == DType::F32) CHECK(std::equal(w.begin() + 2, w.end(), clean_w.begin() + 2));
    // the same through read_component_weights, the reader of folders
    CHECK_THROWS_WITH_AS(read_component_weights(folder.string()), doctest::Contains(key.c_str()), FormatError);
    CHECK(read_component_weights(folder.string(), "", true).contains(key));

    // a single file (the tiny pipeline, f16): refused when the source is opened, whatever component is asked for
    const std::string single = (dir / (std::string("single_") + poisoned::dtype_label(dtype) + ".safetensors")).string();
    poisoned::write(kSingle, single, "first_stage_model." + key, dtype, 2, 3);
    msg = refusal([&] { ModelSource(single, with_config()); });
    CHECK(msg == single + ": tensor \"first_stage_model." + key + "\" has 2 NaN and 3 Inf values; refusing to load it "
                                                                 "(--allow-non-finite skips this check)");
    auto opt = with_config();
    opt.allow_non_finite = true;
    const ModelSource src(single, opt);
    const auto v = load_vae(src);
    CHECK(std::isnan(v.decoder.conv_in.weight.value.data()[1]));
    CHECK(std::isinf(v.decoder.conv_in.weight.value.data()[4]));
    CHECK_NOTHROW(load_unet(src));  // the other components load as before
  }

  // A sharded folder: the shard holding the value is named.
  const fs::path sharded = dir / "sharded";
  fs::create_directories(sharded);
  fs::copy(golden::path("vae_kl/config.json"), sharded / "config.json");
  {
    const auto all = io::SafeTensors::open(golden::path("vae_kl/model.safetensors")).state_dict();
    io::SafeTensorsWriter a, b;
    io::Json map = io::Json::object();
    for (const auto& [name, ref] : all.tensors()) {
      const bool first = name.rfind("decoder.", 0) != 0;
      (first ? a : b).add(name, ref);
      map[name] = first ? "part-1.safetensors" : "part-2.safetensors";
    }
    a.write((sharded / "part-1.safetensors").string());
    b.write((sharded / "part-2.safetensors").string());
    std::ofstream((sharded / "diffusion_pytorch_model.safetensors.index.json").string()) << io::Json{{"weight_map", map}}.dump();
  }
  CHECK_NOTHROW(load_vae(ModelSource(sharded.string())));  // clean shards load as before
  const std::string shard2 = (sharded / "part-2.safetensors").string();
  poisoned::write(shard2, (dir / "p2.safetensors").string(), key, DType::F32, 0, 1);
  fs::rename(dir / "p2.safetensors", shard2);
  CHECK(refusal([&] { load_vae(ModelSource(sharded.string())); }) ==
        shard2 + ": tensor \"" + key + "\" has 0 NaN and 1 Inf values; refusing to load it (--allow-non-finite skips this check)");
  LoadOptions allow;
  allow.allow_non_finite = true;
  CHECK_NOTHROW(load_vae(ModelSource(sharded.string(), allow)));

  // Clean checkpoints load as before, with the check on: the same weights.
  const auto again = load_vae(ModelSource(golden::path("vae_kl")));
  CHECK(again.decoder.conv_in.weight.value.to_vector() == clean_w);
  CHECK_NOTHROW(load_unet(ModelSource(kSingle, with_config())));
  fs::remove_all(dir);
}
