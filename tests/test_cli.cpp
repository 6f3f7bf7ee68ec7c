// The adabldm command-line tool, run as a program (ADABLDM_CLI): `forward` against every golden case (component
// folders and the original-layout single file), `inspect`'s exact parameter counts for the full-size configs,
// `tokenize` against the tokenizer cases, `convert` round trips, and errors as one line on stderr. Each command runs
// through std::system with its stdout and stderr captured in a temp folder.
#include "golden.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "adabldm/io/json.hpp"
#include "adabldm/io/safetensors.hpp"
#include "poisoned_checkpoint.hpp"

using namespace adabldm;

namespace {
namespace fs = std::filesystem;

/// This run's temp folder, removed at exit.
const fs::path& work_dir() {
  struct Dir {
    fs::path path = fs::temp_directory_path() / ("adabldm_test_cli_" + std::to_string(::getpid()));
    Dir() {
      fs::remove_all(path);
      fs::create_directories(path);
    }
    ~Dir() {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  };
  static const Dir dir;
  return dir.path;
}
std::string tmp(const std::string& name) { return (work_dir() / name).string(); }

/// A fresh name in the temp folder (output files stay mapped while later commands run).
std::string fresh(const std::string& stem) {
  static int n = 0;
  return tmp(stem + "_" + std::to_string(++n) + ".safetensors");
}

/// Single-quoted for sh.
std::string q(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}
std::string data(const std::string& rel) { return q(golden::path(rel)); }

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

struct Result {
  int code = -1;
  std::string out, err;
};

/// `adabldm ARGS` (ARGS already quoted).
Result run(const std::string& args) {
  const std::string out = tmp("stdout.txt"), err = tmp("stderr.txt");
  const std::string command = q(ADABLDM_CLI) + " " + args + " >" + q(out) + " 2>" + q(err);
  const int status = std::system(command.c_str());
  Result r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_text(out);
  r.err = read_text(err);
  return r;
}
Result run_ok(const std::string& args) {
  Result r = run(args);
  INFO("adabldm ", args, "\nstderr: ", r.err);
  REQUIRE(r.code == 0);
  return r;
}

/// A failure: non-zero exit and exactly one line on stderr, which names the problem.
void check_error(const std::string& args, const std::string& what) {
  const Result r = run(args);
  INFO("adabldm ", args, "\nstderr: ", r.err);
  CHECK(r.code != 0);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  CHECK(r.err.find(what) != std::string::npos);
}

/// A plain-named input file made of golden tensors: {name in the file, name in `golden`}.
std::string make_inputs(const io::SafeTensors& golden, const std::vector<std::pair<std::string, std::string>>& names) {
  io::SafeTensorsWriter w;
  for (const auto& [plain, source] : names) {
    if (golden.info(source).dtype == DType::I64)
      w.add(plain, golden.get<int64_t>(source));
    else
      w.add(plain, golden.get<float>(source));
  }
  const std::string path = fresh("in");
  w.write(path);
  return path;
}

/// Runs `forward` and opens its output.
io::SafeTensors forward(const std::string& model, const std::string& component, const std::string& inputs,
                        const std::string& extra = "") {
  const std::string out = fresh("out_" + component);
  run_ok("forward --model " + q(model) + " --component " + component + " --io " + q(inputs) + " --out " + q(out) +
         " " + extra);
  return io::SafeTensors::open(out);
}

/// Output `name` against reference `ref_name`: floats (F32) within the golden bound, integers (I64) exactly.
void expect_output(const io::SafeTensors& ours, const std::string& name, const io::SafeTensors& ref,
                   const std::string& ref_name, const std::string& what) {
  INFO(what, ": ", name);
  REQUIRE(ours.contains(name));
  if (ref.info(ref_name).dtype == DType::I64) {
    CHECK(ours.info(name).dtype == DType::I64);
    CHECK(ours.info(name).shape == ref.info(ref_name).shape);
    CHECK(ours.get<int64_t>(name).to_vector() == ref.get<int64_t>(ref_name).to_vector());
    std::printf("[golden] %-55s exact (int64)\n", (what + " " + name).c_str());
  } else {
    CHECK(ours.info(name).dtype == DType::F32);
    GOLDEN_CHECK(what + " " + name, ours.get<float>(name), ref.get<float>(ref_name));
  }
}
void expect_outputs(const io::SafeTensors& ours, const io::SafeTensors& ref, const std::vector<std::string>& names,
                    const std::string& what, const std::string& ref_prefix = "") {
  for (const auto& n : names) expect_output(ours, n, ref, ref_prefix + n, what);
}

std::vector<std::string> numbered(const std::string& stem, int count) {
  std::vector<std::string> v;
  for (int i = 0; i < count; ++i) v.push_back(stem + (i < 10 ? "0" : "") + std::to_string(i));
  return v;
}

const std::vector<std::string> kVaeOutputs{"encoder_out", "moments", "posterior_mean", "posterior_logvar",
                                           "latent_scaled", "decoded_z"};
const std::vector<std::string> kClipOutputs{"hidden_states_00", "hidden_states_01", "hidden_states_02",
                                            "hidden_states_03", "last_hidden_state",
                                            "penultimate_hidden_state_final_ln", "pooler_output"};
}  // namespace

TEST_CASE("forward: every component folder against its golden case") {
  SUBCASE("unet") {
    const auto ref = io::SafeTensors::open(golden::path("unet/io.safetensors"));
    const auto out = forward(golden::path("unet"), "unet",
                             make_inputs(ref, {{"sample", "sample"}, {"timestep", "timestep"},
                                               {"encoder_hidden_states", "encoder_hidden_states"}}));
    expect_output(out, "noise_pred", ref, "noise_pred", "unet");
    const auto short_ctx = forward(golden::path("unet"), "unet",
                                   make_inputs(ref, {{"sample", "sample"}, {"timestep", "timestep"},
                                                     {"encoder_hidden_states", "encoder_hidden_states_short"}}));
    expect_output(short_ctx, "noise_pred", ref, "noise_pred_short", "unet (5-token context)");
  }
  SUBCASE("controlnet, and the unet with its residuals") {
    const auto ref = io::SafeTensors::open(golden::path("controlnet/io.safetensors"));
    const std::string in = make_inputs(ref, {{"sample", "sample"}, {"timestep", "timestep"},
                                             {"encoder_hidden_states", "encoder_hidden_states"},
                                             {"controlnet_cond", "controlnet_cond"}});
    const auto out = forward(golden::path("controlnet"), "controlnet", in);
    auto names = numbered("down_block_res_sample_", 6);
    names.push_back("mid_block_res_sample");
    expect_outputs(out, ref, names, "controlnet");
    CHECK(out.size() == names.size());
    // --scale multiplies every residual (by 0.5: exactly)
    const auto half = forward(golden::path("controlnet"), "controlnet", in, "--scale 0.5");
    for (const auto& n : names) {
      auto expected = out.get<float>(n).to_vector();
      for (auto& v : expected) v *= 0.5f;
      CHECK(half.get<float>(n).to_vector() == expected);
    }
    std::vector<std::pair<std::string, std::string>> unet_in{
        {"sample", "sample"}, {"timestep", "timestep"}, {"encoder_hidden_states", "encoder_hidden_states"}};
    for (const auto& n : names) unet_in.emplace_back(n, n);
    const auto controlled = forward(golden::path("unet"), "unet", make_inputs(ref, unet_in));
    expect_output(controlled, "noise_pred", ref, "unet_noise_pred_controlled", "unet + controlnet residuals");
  }
  SUBCASE("vae (AutoencoderKL)") {
    const auto ref = io::SafeTensors::open(golden::path("vae_kl/io.safetensors"));
    const auto out = forward(golden::path("vae_kl"), "vae", make_inputs(ref, {{"image", "image"}, {"z", "z"}}));
    expect_outputs(out, ref, kVaeOutputs, "vae");
    // one input alone gives only its outputs
    const auto decode_only = forward(golden::path("vae_kl"), "vae", make_inputs(ref, {{"z", "z"}}));
    CHECK(decode_only.size() == 1);
    expect_output(decode_only, "decoded_z", ref, "decoded_z", "vae (z only)");
  }
  SUBCASE("vq (VQModel)") {
    const auto ref = io::SafeTensors::open(golden::path("vae_vq/io.safetensors"));
    const auto out = forward(golden::path("vae_vq"), "vq", make_inputs(ref, {{"image", "image"}}));
    expect_outputs(out, ref, {"latent_prequant", "latent_quantized", "codebook_indices", "decoded"}, "vq");
  }
  SUBCASE("taesd") {
    const auto ref = io::SafeTensors::open(golden::path("taesd/io.safetensors"));
    for (const std::string which : {"photo", "synthetic"}) {
      const auto out =
          forward(golden::path("taesd"), "taesd", make_inputs(ref, {{"image01", "image01_" + which}, {"z", "z"}}));
      expect_output(out, "latent", ref, "latent_" + which, "taesd " + which);
      expect_output(out, "recon01", ref, "recon01_" + which, "taesd " + which);
      expect_output(out, "decoded_z01", ref, "decoded_z01", "taesd");
    }
  }
  SUBCASE("clip (CLIPTextModel)") {
    const auto ref = io::SafeTensors::open(golden::path("clip_text/io.safetensors"));
    const auto out = forward(golden::path("clip_text"), "clip", make_inputs(ref, {{"input_ids", "input_ids"}}));
    expect_outputs(out, ref, kClipOutputs, "clip");
  }
}

TEST_CASE("forward: the original-layout single file with --config") {
  const std::string model = golden::path("ldm_format/model.safetensors");
  const std::string config = "--config " + data("ldm_format/config.json");
  const auto ref = io::SafeTensors::open(golden::path("ldm_format/io.safetensors"));
  const auto unet = forward(model, "unet",
                            make_inputs(ref, {{"sample", "unet.sample"}, {"timestep", "unet.timestep"},
                                              {"encoder_hidden_states", "unet.encoder_hidden_states"}}),
                            config);
  expect_output(unet, "noise_pred", ref, "unet.noise_pred", "ldm_format unet");
  const auto cn = forward(model, "controlnet",
                          make_inputs(ref, {{"sample", "controlnet.sample"}, {"timestep", "controlnet.timestep"},
                                            {"encoder_hidden_states", "controlnet.encoder_hidden_states"},
                                            {"controlnet_cond", "controlnet.controlnet_cond"}}),
                          config);
  auto names = numbered("down_block_res_sample_", 6);
  names.push_back("mid_block_res_sample");
  expect_outputs(cn, ref, names, "ldm_format controlnet", "controlnet.");
  const auto vae = forward(model, "vae", make_inputs(ref, {{"image", "vae.image"}, {"z", "vae.z"}}), config);
  expect_outputs(vae, ref, kVaeOutputs, "ldm_format vae", "vae.");
  const auto clip = forward(model, "clip", make_inputs(ref, {{"input_ids", "clip.input_ids"}}), config);
  expect_outputs(clip, ref, kClipOutputs, "ldm_format clip", "clip.");
}

TEST_CASE("forward: a pipeline folder and its single file give the same outputs") {
  const auto ref = io::SafeTensors::open(golden::path("unet/io.safetensors"));
  const std::string in = make_inputs(ref, {{"sample", "sample"}, {"timestep", "timestep"},
                                           {"encoder_hidden_states", "encoder_hidden_states"}});
  const auto folder = forward(golden::path("tiny_pipeline/diffusers"), "unet", in);
  const auto single = forward(golden::path("tiny_pipeline/single_file.safetensors"), "unet", in,
                              "--config " + data("tiny_pipeline/single_file_config.json"));
  CHECK(folder.get<float>("noise_pred").to_vector() == single.get<float>("noise_pred").to_vector());
}

TEST_CASE("inspect: a config.json alone gives the exact parameter count of the full-size models") {
  const auto counts = io::read_json(golden::path("param_counts.json"));
  int checked = 0;
  for (const auto& [key, entry] : counts.items()) {
    if (!entry.is_object() || !entry.contains("config")) continue;
    CAPTURE(key);
    // as the real files say it: diffusers configs by _class_name, transformers configs by architectures
    io::Json config = entry.at("config");
    const std::string cls = entry.at("class");
    if (cls.rfind("CLIP", 0) == 0)
      config["architectures"] = io::Json::array({cls});
    else
      config["_class_name"] = cls;
    fs::create_directories(work_dir() / key);
    const std::string path = tmp(key + "/config.json");
    write_text(path, config.dump(2));
    const Result r = run_ok("inspect " + q(path));
    const auto at = r.out.find("\nparameters: ");
    REQUIRE(at != std::string::npos);
    std::string digits;
    for (std::size_t i = at + 13; i < r.out.size() && r.out[i] != '\n'; ++i)
      if (r.out[i] != ',') digits += r.out[i];
    std::printf("[params] %-28s %s (reference %lld)\n", key.c_str(), digits.c_str(),
                static_cast<long long>(entry.at("total").get<int64_t>()));
    CHECK(digits == std::to_string(entry.at("total").get<int64_t>()));
    ++checked;
  }
  CHECK(checked == 7);
}

TEST_CASE("inspect: folders and single files, with the fit of their weights") {
  for (const std::string folder : {"unet", "controlnet", "vae_kl", "vae_vq", "taesd", "clip_text"}) {
    CAPTURE(folder);
    const Result r = run_ok("inspect " + data(folder));
    CHECK(r.out.find("weights fit the architecture: yes") != std::string::npos);
  }
  const Result pipeline = run_ok("inspect " + data("tiny_pipeline/diffusers"));
  for (const char* cls : {"UNet2DConditionModel", "ControlNetModel", "AutoencoderKL", "CLIPTextModel", "CLIPTokenizer"})
    CHECK(pipeline.out.find(cls) != std::string::npos);
  const Result single = run_ok("inspect " + data("ldm_format/model.safetensors") + " --config " +
                               data("ldm_format/config.json") + " --tensors");
  for (const char* prefix : {"model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.",
                             "control_model."})
    CHECK(single.out.find(std::string("component ") + prefix) != std::string::npos);
  CHECK(single.out.find("weights fit the architecture: no") == std::string::npos);
  CHECK(single.out.find("cannot be built") == std::string::npos);
  CHECK(single.out.find("model.diffusion_model.input_blocks.0.0.weight F32 [32, 4, 3, 3]") != std::string::npos);
  // without the config, shapes cannot tell the tiny UNet's head count: said, not fatal
  const Result inferred = run_ok("inspect " + data("ldm_format/model.safetensors"));
  CHECK(inferred.out.find("number of heads cannot be inferred") != std::string::npos);
}

TEST_CASE("inspect counts NaN and Inf per tensor and in total, never refusing; convert and forward refuse such "
          "weights in one line naming the file and the tensor unless --allow-non-finite (issue 20, item 7)") {
  const std::string key = "first_stage_model.decoder.conv_in.weight";
  const std::string first = "non-finite values: 1 tensor (first: " + key + ": 3 NaN, 1 Inf)\n";
  for (const DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    const std::string label = poisoned::dtype_label(dtype);
    CAPTURE(label);
    const std::string single = tmp("nonfinite_" + label + ".safetensors");
    poisoned::write(golden::path("tiny_pipeline/single_file.safetensors"), single, key, dtype, 3, 1);
    const Result r = run_ok("inspect " + q(single) + " --tensors");
    CHECK(r.out.find("    " + key + " " + dtype_name(dtype) + " [32, 4, 3, 3] 3 NaN, 1 Inf\n") != std::string::npos);
    CHECK(r.out.find("    first_stage_model.decoder.conv_in.bias F16 [32] finite\n") != std::string::npos);
    CHECK(r.out.find("\n  " + first) != std::string::npos);  // its component
    CHECK(r.out.find("\n" + first) != std::string::npos);    // the total
    CHECK(r.out.find("component model.diffusion_model.") != std::string::npos);
    CHECK(r.out.find("  non-finite values: none\n") != std::string::npos);  // the UNet's
    // convert refuses it before writing anything; --allow-non-finite converts it as it is
    const std::string config = " --config " + data("tiny_pipeline/single_file_config.json");
    check_error("convert " + q(single) + " " + q(tmp("converted_" + label)) + config,
                single + ": tensor \"" + key + "\" has 3 NaN and 1 Inf values; refusing to load it "
                         "(--allow-non-finite skips this check)");
    CHECK_FALSE(fs::exists(tmp("converted_" + label)));
    run_ok("convert " + q(single) + " " + q(tmp("converted_" + label)) + config + " --allow-non-finite");
    const Result c = run_ok("inspect " + q(tmp("converted_" + label)));
    CHECK(c.out.find("\nnon-finite values: 1 tensor (first: vae/decoder.conv_in.weight: 3 NaN, 1 Inf)\n") != std::string::npos);
  }
  // A component folder and a pipeline folder: per component and in total, the pipeline's names qualified.
  const fs::path vae = work_dir() / "nonfinite_vae";
  fs::create_directories(vae);
  fs::copy(golden::path("vae_kl/config.json"), vae / "config.json");
  poisoned::write(golden::path("vae_kl/model.safetensors"), (vae / "model.safetensors").string(),
                  "decoder.conv_in.weight", DType::F32, 0, 2);
  const Result folder = run_ok("inspect " + q(vae.string()));
  CHECK(folder.out.find("\n  non-finite values: 1 tensor (first: decoder.conv_in.weight: 0 NaN, 2 Inf)\n") != std::string::npos);
  CHECK(folder.out.find("\nnon-finite values: 1 tensor (first: decoder.conv_in.weight: 0 NaN, 2 Inf)\n") != std::string::npos);
  const fs::path pipe = work_dir() / "nonfinite_pipeline";
  fs::copy(golden::path("tiny_pipeline/diffusers"), pipe, fs::copy_options::recursive);
  for (const char* part : {"unet", "vae"}) {
    const std::string w = (pipe / part / "diffusion_pytorch_model.safetensors").string();
    poisoned::write(w, w + ".poisoned", std::string(part) == "vae" ? "decoder.conv_in.weight" : "conv_in.weight", DType::F32, 1, 0);
    fs::rename(w + ".poisoned", w);
  }
  const Result pipeline = run_ok("inspect " + q(pipe.string()));
  CHECK(pipeline.out.find("\nnon-finite values: 2 tensors (first: unet/conv_in.weight: 1 NaN, 0 Inf)\n") != std::string::npos);
  CHECK(pipeline.out.find("  non-finite values: 1 tensor (first: decoder.conv_in.weight: 1 NaN, 0 Inf)\n") != std::string::npos);
  // forward refuses the folder; with the flag it runs, and the NaN reaches the output
  const auto ref = io::SafeTensors::open(golden::path("vae_kl/io.safetensors"));
  const std::string in = make_inputs(ref, {{"z", "z"}}), out = fresh("nonfinite_forward");
  check_error("forward --model " + q(vae.string()) + " --component vae --io " + q(in) + " --out " + q(out),
              (vae / "model.safetensors").string() + ": tensor \"decoder.conv_in.weight\" has 0 NaN and 2 Inf values");
  CHECK_FALSE(fs::exists(out));
  run_ok("forward --model " + q(vae.string()) + " --component vae --io " + q(in) + " --out " + q(out) + " --allow-non-finite");
  const auto decoded = io::SafeTensors::open(out).get<float>("decoded_z").to_vector();
  CHECK(std::any_of(decoded.begin(), decoded.end(), [](float v) { return !std::isfinite(v); }));
  // clean files: "none" and "finite"
  const Result clean = run_ok("inspect " + data("vae_kl") + " --tensors");
  CHECK(clean.out.find("\nnon-finite values: none\n") != std::string::npos);
  CHECK(clean.out.find("    decoder.conv_in.weight F32 [32, 4, 3, 3] finite\n") != std::string::npos);
}

TEST_CASE("tokenize: every tokenizer case, both paddings") {
  const auto cases = io::read_json(golden::path("tokenizer/tokenizer_cases.json"));
  io::Json texts = io::Json::array();
  for (const auto& c : cases) texts.push_back(c.at("text"));
  const std::string input = tmp("texts.json");
  write_text(input, texts.dump());
  for (const std::string pad : {"eos", "zero"}) {
    CAPTURE(pad);
    const auto ids = io::Json::parse(run_ok("tokenize --pad " + pad + " --input " + q(input)).out);
    REQUIRE(ids.size() == cases.size());
    for (std::size_t i = 0; i < cases.size(); ++i) {
      CAPTURE(cases[i].at("text").get<std::string>());
      CHECK(ids[i] == cases[i].at(pad == "eos" ? "ids_77_eos_pad" : "ids_77_zero_pad"));
    }
  }
  // TEXT arguments come after the --input strings; the default padding is eos; a tokenizer folder gives the same
  write_text(input, io::Json::array({cases[0].at("text"), cases[1].at("text")}).dump());
  const auto ids = io::Json::parse(run_ok("tokenize --input " + q(input) + " " + q(cases[2].at("text")) +
                                          " --vocab " + data("tiny_pipeline/diffusers/tokenizer"))
                                       .out);
  REQUIRE(ids.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) CHECK(ids[i] == cases[i].at("ids_77_eos_pad"));
}

namespace {
/// Every tensor of two weight files: same names, dtypes, shapes and bytes.
void expect_identical_weights(const std::string& a, const std::string& b) {
  INFO(a, " vs ", b);
  const auto fa = io::SafeTensors::open(a), fb = io::SafeTensors::open(b);
  std::vector<std::string> na = fa.names(), nb = fb.names();
  std::sort(na.begin(), na.end());
  std::sort(nb.begin(), nb.end());
  REQUIRE(na == nb);
  int differing = 0;
  for (const auto& n : na) {
    const auto &ia = fa.info(n), &ib = fb.info(n);
    if (ia.dtype != ib.dtype || ia.shape != ib.shape || std::memcmp(fa.raw(n), fb.raw(n), ia.nbytes) != 0) ++differing;
  }
  CHECK(differing == 0);
}

/// The diffusers config fields we write have the source's values.
void expect_config_fields(const std::string& ours_path, const std::string& source_path) {
  INFO(ours_path);
  const auto ours = io::read_json(ours_path), source = io::read_json(source_path);
  int compared = 0;
  for (const auto& [key, value] : ours.items()) {
    if (key == "_diffusers_version" || !source.contains(key)) continue;
    CAPTURE(key);
    CHECK(value == source.at(key));
    ++compared;
  }
  CHECK(compared >= 8);
}

std::size_t data_bytes(const std::string& path) {
  const auto f = io::SafeTensors::open(path);
  std::size_t n = 0;
  for (const auto& name : f.names()) n += f.info(name).nbytes;
  return n;
}

const char* const kWeightFiles[] = {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                                    "text_encoder/model.safetensors", "controlnet/diffusion_pytorch_model.safetensors"};
}  // namespace

TEST_CASE("convert: diffusers -> single -> diffusers is bit-identical; f16 halves the size") {
  const std::string source = golden::path("tiny_pipeline/diffusers");
  const std::string single = tmp("tiny_single.safetensors"), back = tmp("tiny_back");
  run_ok("convert " + q(source) + " " + q(single));  // default --to: the other layout
  const auto file = io::SafeTensors::open(single);
  for (const char* prefix : {"model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.",
                             "control_model."})
    CHECK(file.state_dict().has_prefix(prefix));
  CHECK(file.size() == 208 + 184 + 36 + 128);
  run_ok("convert " + q(single) + " " + q(back));  // no --config: the file carries its configs
  for (const char* weights : kWeightFiles) expect_identical_weights(source + "/" + weights, back + "/" + weights);
  for (const char* sub : {"unet", "vae", "text_encoder", "controlnet"})
    expect_config_fields(back + "/" + sub + "/config.json", source + "/" + sub + "/config.json");
  for (const char* f : {"model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt"})
    CHECK(fs::exists(back + "/" + f));
  CHECK_FALSE(fs::exists(back + ".tmp"));

  // f16: every float tensor halves
  const std::string single16 = tmp("tiny_single_f16.safetensors");
  run_ok("convert " + q(source) + " " + q(single16) + " --to single --dtype f16");
  const auto f16_file = io::SafeTensors::open(single16);
  for (const auto& name : f16_file.names()) CHECK(f16_file.info(name).dtype == DType::F16);
  CHECK(2 * data_bytes(single16) == data_bytes(single));
  CHECK(static_cast<double>(fs::file_size(single16)) < 0.55 * static_cast<double>(fs::file_size(single)));
  // the same models run from the f16 file (weights are f16-exact) and from the folder
  const auto ref = io::SafeTensors::open(golden::path("vae_kl/io.safetensors"));
  const std::string in = make_inputs(ref, {{"z", "z"}});
  CHECK(forward(single16, "vae", in).get<float>("decoded_z").to_vector() ==
        forward(source, "vae", in).get<float>("decoded_z").to_vector());

  // the output folder is never overwritten
  check_error("convert " + q(single) + " " + q(back), "exists");
}

TEST_CASE("convert: the original f16 single file -> diffusers, with the shipped tokenizer") {
  const std::string out = tmp("from_single");
  run_ok("convert " + data("tiny_pipeline/single_file.safetensors") + " " + q(out) + " --dtype f32 --config " +
         data("tiny_pipeline/single_file_config.json"));
  const std::string source = golden::path("tiny_pipeline/diffusers");
  for (const char* weights : {kWeightFiles[0], kWeightFiles[1], kWeightFiles[2]})
    expect_identical_weights(source + "/" + weights, out + "/" + weights);
  CHECK_FALSE(fs::exists(out + "/controlnet"));  // that file holds no ControlNet
  // the tokenizer written from the shipped vocabulary is the pipeline's, byte for byte
  for (const char* f : {"vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"})
    CHECK(read_text(out + "/tokenizer/" + f) == read_text(source + "/tokenizer/" + f));
}

TEST_CASE("convert: an SD2-style text encoder goes to cond_stage_model.model. (OpenCLIP) and back") {
  // A pipeline holding only a text encoder with exact GELU, as SD2's OpenCLIP tower has.
  const fs::path pipe = work_dir() / "sd2_pipe";
  fs::create_directories(pipe / "text_encoder");
  write_text((pipe / "model_index.json").string(),
             R"({"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"]})");
  auto config = io::read_json(golden::path("tiny_pipeline/diffusers/text_encoder/config.json"));
  config["hidden_act"] = "gelu";
  write_text((pipe / "text_encoder/config.json").string(), config.dump());
  fs::copy_file(golden::path("tiny_pipeline/diffusers/text_encoder/model.safetensors"), pipe / "text_encoder/model.safetensors");

  const std::string single = tmp("sd2_single.safetensors"), back = tmp("sd2_back");
  run_ok("convert " + q(pipe.string()) + " " + q(single));
  const auto sd = io::SafeTensors::open(single).state_dict();
  CHECK(sd.contains("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"));
  CHECK(sd.contains("cond_stage_model.model.token_embedding.weight"));
  CHECK_FALSE(sd.has_prefix("cond_stage_model.transformer."));
  run_ok("convert " + q(single) + " " + q(back));
  expect_identical_weights((pipe / "text_encoder/model.safetensors").string(), back + "/text_encoder/model.safetensors");
  CHECK(io::read_json(back + "/tokenizer/special_tokens_map.json").at("pad_token") == "!");
}

TEST_CASE("errors: non-zero exit, one line on stderr naming the problem") {
  const auto ref = io::SafeTensors::open(golden::path("unet/io.safetensors"));
  const std::string good = make_inputs(ref, {{"sample", "sample"}, {"timestep", "timestep"},
                                             {"encoder_hidden_states", "encoder_hidden_states"}});
  const std::string out = " --out " + q(tmp("never.safetensors"));
  const std::string unet = " --model " + data("unet");
  check_error("forward --model " + q(tmp("missing_model")) + " --component unet --io " + q(good) + out,
              "missing_model: no such file or folder");
  check_error("forward" + unet + " --component unet --io " + q(tmp("missing.safetensors")) + out,
              "missing.safetensors: cannot open");
  check_error("forward" + unet + " --component foo --io " + q(good) + out,
              "unknown component \"foo\" (one of unet, controlnet, vae, vq, taesd, clip)");
  check_error("forward --model " + data("vae_kl") + " --component unet --io " + q(good) + out,
              "describes a AutoencoderKL; --component unet runs UNet2DConditionModel");

  // wrong shapes name the tensor and the expected shape
  io::SafeTensorsWriter w;
  w.add("sample", Tensor<float>::zeros({2, 3, 8, 8}));
  w.add("timestep", ref.get<int64_t>("timestep"));
  w.add("encoder_hidden_states", ref.get<float>("encoder_hidden_states"));
  const std::string bad = fresh("bad_shape");
  w.write(bad);
  check_error("forward" + unet + " --component unet --io " + q(bad) + out,
              "input \"sample\" has shape [2, 3, 8, 8], expected [B, 4, h, w]");
  io::SafeTensorsWriter w2;
  w2.add("sample", ref.get<float>("sample"));
  w2.add("timestep", ref.get<int64_t>("timestep"));
  w2.add("encoder_hidden_states", Tensor<float>::zeros({3, 77, 32}));
  const std::string bad_batch = fresh("bad_batch");
  w2.write(bad_batch);
  check_error("forward" + unet + " --component unet --io " + q(bad_batch) + out,
              "input \"encoder_hidden_states\" has shape [3, 77, 32], expected [B, L, 32] where B = 2");
  const std::string no_timestep = make_inputs(ref, {{"sample", "sample"}, {"encoder_hidden_states", "encoder_hidden_states"}});
  check_error("forward" + unet + " --component unet --io " + q(no_timestep) + out, "missing input \"timestep\"");
  check_error("forward --model " + data("vae_kl") + " --component vae --io " + q(good) + out,
              "none of the inputs --component vae takes (image, z)");
  CHECK_FALSE(fs::exists(tmp("never.safetensors")));

  write_text(tmp("bad.json"), "[\"a\", ");
  check_error("tokenize --input " + q(tmp("bad.json")), "invalid JSON");
  write_text(tmp("not_strings.json"), "[\"a\", 3]");
  check_error("tokenize --input " + q(tmp("not_strings.json")), "entry 1 is a number, not a string");
  write_text(tmp("not_list.json"), "{\"a\": \"b\"}");
  check_error("tokenize --input " + q(tmp("not_list.json")), "expected a JSON list of strings");
  check_error("inspect " + q(tmp("nothing_here")), "nothing_here: no such file or folder");
  check_error("convert " + q(tmp("nothing_here")) + " " + q(tmp("x")), "nothing_here: no such file or folder");
  check_error("forward" + unet + " --component unet --io " + q(good) + out + " --bogus 1", "unknown option --bogus");
}
