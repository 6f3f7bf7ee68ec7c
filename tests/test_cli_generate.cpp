// `adabldm sample` against the diffusers reference run, and `adabldm generate`: determinism, shards equal to
// the single run byte for byte, --resume, and clear errors with no partial files.
#include "golden.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "adabldm/io/image.hpp"
#include "adabldm/io/safetensors.hpp"

using namespace adabldm;
namespace fs = std::filesystem;

namespace {
struct Run {
  int code;
  std::string err;
};
/// Runs the CLI with `args`, capturing stderr.
Run cli(const std::string& args) {
  static int counter = 0;
  const auto err = fs::temp_directory_path() / ("adabldm_cli_err_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  const std::string cmd = std::string(ADABLDM_CLI) + " " + args + " 2> " + err.string();
  const int status = std::system(cmd.c_str());
  std::ifstream in(err);
  std::stringstream ss;
  ss << in.rdbuf();
  fs::remove(err);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, ss.str()};
}
fs::path temp_dir(const std::string& name) {
  const auto d = fs::temp_directory_path() / ("adabldm_gen_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}
std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
std::vector<std::string> lines(const fs::path& p) {
  std::vector<std::string> out;
  std::ifstream in(p);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}
const std::string kTiny = golden::path("tiny_pipeline/diffusers");
std::string gen_args(const fs::path& out) {
  return "generate --model " + kTiny + " --ok " + golden::path("magnetic-tile/ok") + " --ng " + golden::path("magnetic-tile/ng") +
         " --masks " + golden::path("magnetic-tile/masks") + " --object tile --defect blowhole --size 64 --steps 6 --adapt-steps 2 " +
         "--seed 3 --quiet --out " + out.string();
}
}  // namespace

TEST_CASE("sample equals diffusers' ControlNet pipeline (folder, prompt context; single files, empty context)") {
  const auto dir = temp_dir("sample");
  const auto ref = io::SafeTensors::open(golden::path("tiny_pipeline/reference/io.safetensors"));
  io::SafeTensorsWriter().add("latents", ref.get<float>("latents_init")).write((dir / "latents.safetensors").string());
  const std::string common = " --prompt \"a tile with a blowhole\" --steps 10 --guidance 9 --quiet --latents-in " +
                             (dir / "latents.safetensors").string() + " --control " +
                             golden::path("tiny_pipeline/reference/io.safetensors");
  auto r = cli("sample --model " + kTiny + common + " --out " + (dir / "a.png").string() + " --out-tensors " +
               (dir / "a.safetensors").string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  auto got = io::SafeTensors::open((dir / "a.safetensors").string());
  GOLDEN_CHECK("cli sample latents_final", got.get<float>("latents_final"), ref.get<float>("latents_final"));
  GOLDEN_CHECK("cli sample image_decoded", got.get<float>("image_decoded"), ref.get<float>("image_decoded"));
  CHECK(read_image_u8((dir / "a.png").string()).width == 256);
  // The same on the GPU in f32 when there is one (the golden bound); otherwise one line saying why not.
  r = cli("sample --model " + kTiny + common + " --out " + (dir / "c.png").string() + " --out-tensors " +
          (dir / "c.safetensors").string() + " --device cuda --dtype f32");
  if (r.code == 0) {
    auto dev = io::SafeTensors::open((dir / "c.safetensors").string());
    GOLDEN_CHECK("cli sample --device cuda latents_final", dev.get<float>("latents_final"), ref.get<float>("latents_final"));
    GOLDEN_CHECK("cli sample --device cuda image_decoded", dev.get<float>("image_decoded"), ref.get<float>("image_decoded"));
  } else {
    CHECK(r.err.find("--device cuda: ") != std::string::npos);
  }

  const auto ref_e = io::SafeTensors::open(golden::path("tiny_pipeline/reference/io_empty_ctx.safetensors"));
  r = cli("sample --model " + golden::path("tiny_pipeline/single_file.safetensors") + " --config " +
          golden::path("tiny_pipeline/single_file_config.json") + " --trimap-encoder " +
          golden::path("tiny_pipeline/controlnet_single_file.safetensors") + " --control-context empty" + common +
          " --out " + (dir / "b.png").string() + " --out-tensors " + (dir / "b.safetensors").string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  got = io::SafeTensors::open((dir / "b.safetensors").string());
  GOLDEN_CHECK("cli sample single-file latents_final", got.get<float>("latents_final"), ref_e.get<float>("latents_final"));
  GOLDEN_CHECK("cli sample single-file image_decoded", got.get<float>("image_decoded"), ref_e.get<float>("image_decoded"));
  fs::remove_all(dir);
}

TEST_CASE("generate: shards equal the single run byte for byte; resume skips finished samples") {
  const auto full = temp_dir("full"), sharded = temp_dir("sharded");
  auto r = cli(gen_args(full) + " -n 4");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  for (const char* s : {"0/2", "1/2"}) {
    r = cli(gen_args(sharded) + " -n 4 --shard " + s);
    REQUIRE_MESSAGE(r.code == 0, r.err);
  }
  for (int i = 0; i < 4; ++i) {
    const std::string name = "00000" + std::to_string(i) + ".png";
    CAPTURE(name);
    CHECK(slurp(full / "images" / name) == slurp(sharded / "images" / name));
    CHECK(slurp(full / "masks" / name) == slurp(sharded / "masks" / name));
    const auto mask = read_image_u8((full / "masks" / name).string());
    CHECK(mask.width == 64);
    CHECK(mask.channels == 1);
    for (auto v : mask.pixels) REQUIRE((v == 0 || v == 255));
  }
  CHECK(lines(full / "manifest.jsonl").size() == 4);
  CHECK(lines(sharded / "manifest.jsonl").size() == 4);
  const auto first = io::Json::parse(lines(full / "manifest.jsonl")[0]);
  for (const char* key : {"index", "seed", "ok_source", "mask_source", "placement", "prompt", "preset", "timings"})
    CHECK_MESSAGE(first.contains(key), key);
  CHECK(first["prompt"] == "a tile with a blowhole");
  CHECK(first["adapted"] == true);
  CHECK(first["adapt_steps"] == 2);
  // --resume: nothing new; after deleting one image only that one is redone, with the same bytes.
  r = cli(gen_args(full) + " -n 4 --resume");
  REQUIRE(r.code == 0);
  CHECK(lines(full / "manifest.jsonl").size() == 4);
  const std::string before = slurp(full / "images" / "000002.png");
  fs::remove(full / "images" / "000002.png");
  r = cli(gen_args(full) + " -n 4 --resume");
  REQUIRE(r.code == 0);
  CHECK(lines(full / "manifest.jsonl").size() == 5);
  CHECK(slurp(full / "images" / "000002.png") == before);
  for (const auto& e : fs::recursive_directory_iterator(full))
    CHECK_MESSAGE(e.path().string().find(".tmp") == std::string::npos, e.path().string());
  fs::remove_all(full);
  fs::remove_all(sharded);
}

TEST_CASE("generate: bad input is one clear line and a non-zero exit") {
  const auto out = temp_dir("bad");
  auto r = cli(gen_args(out) + " -n 1 --ok /nonexistent");
  CHECK(r.code != 0);
  CHECK(r.err.find("/nonexistent") != std::string::npos);
  // a mask of the wrong size
  const auto ng = temp_dir("ng"), masks = temp_dir("masks");
  fs::copy(golden::path("magnetic-tile/ng/crack_000.png"), ng / "crack_000.png");
  write_mask((masks / "crack_000.png").string(), Tensor<float>::zeros({1, 1, 10, 10}));
  r = cli("generate --model " + kTiny + " --ok " + golden::path("magnetic-tile/ok") + " --ng " + ng.string() +
          " --masks " + masks.string() + " --object t --defect d -n 1 --quiet --out " + out.string());
  CHECK(r.code != 0);
  CHECK(r.err.find("mask is 10x10") != std::string::npos);
  // an empty mask
  write_mask((masks / "crack_000.png").string(), Tensor<float>::zeros({1, 1, 264, 219}));
  r = cli("generate --model " + kTiny + " --ok " + golden::path("magnetic-tile/ok") + " --ng " + ng.string() +
          " --masks " + masks.string() + " --object t --defect d -n 1 --quiet --out " + out.string());
  CHECK(r.code != 0);
  CHECK(r.err.find("the mask is empty") != std::string::npos);
  // an unreadable image
  std::ofstream(ng / "crack_000.png") << "not a png";
  r = cli("generate --model " + kTiny + " --ok " + golden::path("magnetic-tile/ok") + " --ng " + ng.string() +
          " --masks " + masks.string() + " --object t --defect d -n 1 --quiet --out " + out.string());
  CHECK(r.code != 0);
  CHECK(r.err.find("cannot decode image") != std::string::npos);
  // a model without a trimap encoder
  r = cli("generate --model " + golden::path("tiny_pipeline/single_file.safetensors") + " --config " +
          golden::path("tiny_pipeline/single_file_config.json") + " --ok " + golden::path("magnetic-tile/ok") + " --ng " +
          golden::path("magnetic-tile/ng") + " --masks " + golden::path("magnetic-tile/masks") +
          " --object t --defect d -n 1 --quiet --out " + out.string());
  CHECK(r.code != 0);
  CHECK(r.err.find("no trimap encoder") != std::string::npos);
  for (const auto& e : fs::recursive_directory_iterator(out)) CHECK_MESSAGE(!e.is_regular_file(), e.path().string());
  fs::remove_all(out);
  fs::remove_all(ng);
  fs::remove_all(masks);
}

TEST_CASE("generate / train: --device and --dtype are checked; --device cuda runs or says why not") {
  const auto out = temp_dir("device");
  auto r = cli(gen_args(out) + " -n 1 --dtype f16");
  CHECK(r.code != 0);
  CHECK(r.err.find("--dtype f16: the CPU runs in f32") != std::string::npos);
  r = cli(gen_args(out) + " -n 1 --device tpu");
  CHECK(r.code != 0);
  CHECK(r.err.find("--device tpu: expected cpu or cuda") != std::string::npos);
  r = cli(gen_args(out) + " -n 1 --adapt-dtype bf16");
  CHECK(r.code != 0);
  CHECK(r.err.find("--adapt-dtype bf16 needs --device cuda") != std::string::npos);
  r = cli(gen_args(out) + " -n 1 --tf32");
  CHECK(r.code != 0);
  CHECK(r.err.find("--tf32 applies to --device cuda only") != std::string::npos);
  r = cli("train --device cuda --dtype f16 --steps 1 --out x.safetensors");
  CHECK(r.code != 0);
  CHECK(r.err.find("--dtype f16: expected one of f32") != std::string::npos);  // training runs in f32
  // Without a GPU (CI) or without the CUDA backend: one line saying which; with a GPU: a sample like the CPU's.
  r = cli(gen_args(out) + " -n 1 --device cuda --dtype f32");
  if (r.code != 0) {
    MESSAGE("--device cuda: ", r.err);
    CHECK((r.err.find("--device cuda: no CUDA device") != std::string::npos ||
           r.err.find("--device cuda: this adabldm was built without the CUDA backend") != std::string::npos));
  } else {
    CHECK(fs::exists(out / "images" / "000000.png"));
    CHECK(lines(out / "manifest.jsonl").size() == 1);
  }
  fs::remove_all(out);
}

TEST_CASE("train: checkpoint, CSV log, exact resume, and the result as --trimap-encoder") {
  const auto dir = temp_dir("train");
  const std::string data = " --ok " + golden::path("magnetic-tile/ok") + " --ng " + golden::path("magnetic-tile/ng") +
                           " --masks " + golden::path("magnetic-tile/masks") +
                           " --object tile --defect blowhole --size 64 --lr 1e-3 --seed 5 --quiet --model " + kTiny;
  auto r = cli("train" + data + " --steps 4 --out " + (dir / "straight.safetensors").string() + " --log " +
               (dir / "straight.csv").string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  r = cli("train" + data + " --steps 2 --out " + (dir / "resumed.safetensors").string() + " --log " + (dir / "resumed.csv").string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  r = cli("train" + data + " --steps 4 --resume " + (dir / "resumed.safetensors").string() + " --out " +
          (dir / "resumed.safetensors").string() + " --log " + (dir / "resumed.csv").string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto a = lines(dir / "straight.csv"), b = lines(dir / "resumed.csv");
  REQUIRE(a.size() == 5);  // header + 4 steps
  REQUIRE(b.size() == 5);
  for (int i = 0; i < 5; ++i) CHECK(a[i].substr(0, a[i].rfind(',')) == b[i].substr(0, b[i].rfind(',')));  // step,loss
  CHECK(io::SafeTensors::open((dir / "straight.safetensors").string()).metadata().at("step") == "4");
  // the checkpoint drives generation
  r = cli(gen_args(dir / "gen") + " -n 1 --trimap-encoder " + (dir / "straight.safetensors").string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(fs::exists(dir / "gen" / "images" / "000000.png"));
  fs::remove_all(dir);
}
