// `adabldm evaluate` as a user runs it, on a small generated MVTec-layout root: the three conditions with a real
// `adabldm generate` folder, the files it writes, resuming, re-scoring another root (with symbolic links) from saved
// detectors, the anomalydiffusion protocol, and one-line refusals (a generated folder made from test files first).
#include "golden.hpp"
#include "cli_runner.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "adabldm/io/safetensors.hpp"
#include "eval_toy_data.hpp"

using namespace adabldm;
namespace fs = std::filesystem;

namespace {
using cli_test::cli;
using cli_test::Run;
fs::path temp_dir(const std::string& name) { return cli_test::temp_dir("adabldm_eval", name); }
nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}
const char* kSmall = " --size 32 --steps 20 --widths 8,16,32 --crop 0 --seeds 0,1 --quiet";

/// The toy root and a generate folder of 4 samples made from its train/good and fewshot sides (tiny pipeline).
struct Fixture {
  fs::path dir, root, gen;
  Fixture() : dir(temp_dir("fixture")), root(dir / "root"), gen(dir / "gen") {
    toy::write_root(root, 48, 5);
    const Run g = cli("generate --model " + golden::path("tiny_pipeline/diffusers") + " --ok " + (root / "train/good").string() +
                      " --ng " + (root / "fewshot/scratch").string() + " --masks " +
                      (root / "fewshot_ground_truth/scratch").string() +
                      " --object tile --defect scratch --size 64 --steps 4 --no-adapt -n 4 --quiet --out " + gen.string());
    REQUIRE_MESSAGE(g.code == 0, g.err);
  }
};
Fixture& fixture() {
  static Fixture f;
  return f;
}
}  // namespace

TEST_CASE("evaluate: three conditions, its files, and a rerun that reuses the detectors") {
  const auto& f = fixture();
  const auto out = f.dir / "eval";
  const std::string cmd = "evaluate --data " + f.root.string() + " --defect scratch --synthetic " + f.gen.string() +
                          " --extra 4 --out " + out.string() + kSmall;
  const Run r = cli(cmd);
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto j = read_json(out / "results.json");
  REQUIRE(j["runs"].size() == 6);
  for (const auto& run : j["runs"]) {
    const double ap = run["metrics"]["pixel_ap"];
    CHECK(ap >= 0.0);
    CHECK(ap <= 1.0);
  }
  CHECK(j["test"] == 12);
  CHECK(j["channels"] == 1);
  for (const char* c : {"real", "croppaste", "adabldm"}) {
    CHECK(j["summary"].contains(c));
    for (int s : {0, 1}) {
      const std::string tag = std::string(c) + "_seed" + std::to_string(s);
      CHECK(fs::exists(out / "detectors" / (tag + ".safetensors")));
      const auto scores = io::SafeTensors::open((out / "scores" / (tag + ".safetensors")).string());
      CHECK(scores.size() == 12 + 6);  // a map per test image, a mask per defective one
      CHECK(scores.info("test/good/t000").shape == Shape({32, 32}));
      CHECK(scores.info("test/scratch/d005").shape == Shape({32, 32}));
      const auto m = scores.get<float>("ground_truth/scratch/d005_mask");
      double on = 0;
      for (int64_t i = 0; i < m.numel(); ++i) {
        CHECK((m.data()[i] == 0.0f || m.data()[i] == 1.0f));
        on += m.data()[i];
      }
      CHECK(on > 0);
    }
  }
  std::ifstream md(out / "results.md");
  const std::string table((std::istreambuf_iterator<char>(md)), std::istreambuf_iterator<char>());
  CHECK(table.find("| adabldm | 2 |") != std::string::npos);
  CHECK(table.find("IAP90") != std::string::npos);

  // A rerun reuses every detector and measures the same.
  const Run again = cli(cmd.substr(0, cmd.size() - std::string(" --quiet").size()));
  REQUIRE_MESSAGE(again.code == 0, again.err);
  CHECK(again.err.find("real_seed0: reusing") != std::string::npos);
  const auto j2 = read_json(out / "results.json");
  for (std::size_t i = 0; i < 6; ++i) CHECK(j2["runs"][i]["metrics"] == j["runs"][i]["metrics"]);
  // A rerun with other training settings into the same folder is refused, naming the detector and the setting.
  // A rerun into the same folder that would train on other settings or images is refused in one line, naming the
  // detector and what differs.
  const auto refused = [&](const std::string& command, const std::string& message) {
    const Run r = cli(command);
    CHECK(r.code != 0);
    CHECK_MESSAGE(r.err.find(message) != std::string::npos, r.err);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  };
  refused(cmd + " --pos-weight 2", "real_seed0.safetensors: trained with pos_weight 5.0, this run asks for 2.0");
  // Other images: 3 instead of 4 (the real-only detectors are reused first) ...
  std::string fewer = cmd;
  fewer.replace(fewer.find(" --extra 4"), 10, " --extra 3");
  refused(fewer, "croppaste_seed0.safetensors: trained on other croppaste images than this run's");
  // ... and the same count of other content: a generated folder whose images are the first one's, reversed.
  const auto flipped = f.dir / "gen-flipped";
  fs::create_directories(flipped);
  fs::copy(f.gen, flipped, fs::copy_options::recursive);
  for (const auto& e : fs::directory_iterator(flipped / "images")) {
    Image im = read_image_u8(e.path().string());
    std::reverse(im.pixels.begin(), im.pixels.end());
    write_png(e.path().string(), im);
  }
  std::string other_folder = cmd;
  other_folder.replace(other_folder.find(f.gen.string()), f.gen.string().size(), flipped.string());
  refused(other_folder, "adabldm_seed0.safetensors: trained on other adabldm images than this run's");

  // Re-scoring another root whose test/ and ground_truth/ are symbolic links into the first one.
  const auto linked = f.dir / "linked";
  fs::create_directories(linked);
  fs::create_directory_symlink(f.root / "test", linked / "test");
  fs::create_directory_symlink(f.root / "ground_truth", linked / "ground_truth");
  fs::create_directory_symlink(f.root / "train", linked / "train");
  fs::create_directory_symlink(f.root / "fewshot", linked / "fewshot");
  fs::create_directory_symlink(f.root / "fewshot_ground_truth", linked / "fewshot_ground_truth");
  const auto rescored = f.dir / "rescored";
  const Run rs = cli("evaluate --detectors " + (out / "detectors").string() + " --data " + linked.string() + " --out " +
                     rescored.string() + " --quiet");
  REQUIRE_MESSAGE(rs.code == 0, rs.err);
  const auto j3 = read_json(rescored / "results.json");
  REQUIRE(j3["runs"].size() == 6);
  // Same detectors, same test images: the same figures (runs are listed by file name, conditions sorted).
  for (const auto& a : j3["runs"])
    for (const auto& b : j["runs"])
      if (a["condition"] == b["condition"] && a["seed"] == b["seed"]) CHECK(a["metrics"] == b["metrics"]);
}

TEST_CASE("evaluate: --device cuda trains and scores like the CPU, or says in one line why it cannot") {
  const auto& f = fixture();
  const std::string cmd = "evaluate --data " + f.root.string() +
                          " --defect scratch --conditions real --seeds 0 --size 32 --steps 20 --widths 8,16,32 --crop 0 "
                          "--quiet --out ";
  const Run cpu = cli(cmd + (f.dir / "device-cpu").string());
  REQUIRE_MESSAGE(cpu.code == 0, cpu.err);
  const auto device_of = [&](const char* out) {  // recorded in the detector's metadata
    const auto st = io::SafeTensors::open((f.dir / out / "detectors" / "real_seed0.safetensors").string());
    return nlohmann::json::parse(st.metadata().at("adabldm.detector")).value("device", "");
  };
  CHECK(device_of("device-cpu") == "cpu");
  const Run dev = cli(cmd + (f.dir / "device-cuda").string() + " --device cuda");
  if (dev.code != 0) {  // CI: no GPU, or a build without the CUDA backend
    MESSAGE("--device cuda: ", dev.err);
    CHECK(dev.code == 1);
    CHECK((dev.err.find("--device cuda: no CUDA device") != std::string::npos ||
           dev.err.find("--device cuda: this adabldm was built without the CUDA backend") != std::string::npos));
    CHECK(!fs::exists(f.dir / "device-cuda" / "detectors"));
    return;
  }
  CHECK(device_of("device-cuda") == "cuda");
  // The same draws and host losses; only the device's rounding differs over 20 steps.
  const auto a = read_json(f.dir / "device-cpu" / "results.json")["runs"][0]["metrics"];
  const auto b = read_json(f.dir / "device-cuda" / "results.json")["runs"][0]["metrics"];
  for (const char* m : {"pixel_ap", "pixel_auroc", "iap"}) {
    CAPTURE(m);
    CHECK(std::abs(a[m].get<double>() - b[m].get<double>()) < 0.02);
  }
}

TEST_CASE("evaluate: the anomalydiffusion protocol on a plain MVTec AD root") {
  const auto dir = temp_dir("plain");
  toy::write_root(dir / "root", 32, 9, {}, true);
  const Run r = cli("evaluate --data " + (dir / "root").string() + " --defect scratch --protocol anomalydiffusion " +
                    "--conditions real,croppaste --extra 4 --out " + (dir / "out").string() + kSmall);
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto j = read_json(dir / "out" / "results.json");
  CHECK(j["protocol"] == "anomalydiffusion");
  CHECK(j["fewshot"] == 4);
  CHECK(j["test"] == 6 + 8);
  CHECK(j["runs"].size() == 4);
}

TEST_CASE("evaluate: bad input is one line, exit 1, before any training") {
  const auto& f = fixture();
  const auto dir = temp_dir("refuse");
  // A generate folder whose OK images were test images.
  const auto bad = dir / "gen_from_test";
  const Run g = cli("generate --model " + golden::path("tiny_pipeline/diffusers") + " --ok " + (f.root / "test/good").string() +
                    " --ng " + (f.root / "fewshot/scratch").string() + " --masks " +
                    (f.root / "fewshot_ground_truth/scratch").string() +
                    " --object tile --defect scratch --size 64 --steps 2 --no-adapt -n 1 --quiet --out " + bad.string());
  REQUIRE_MESSAGE(g.code == 0, g.err);
  const std::string base = "evaluate --data " + f.root.string() + " --defect scratch --out " + (dir / "o").string() + kSmall;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {base + " --synthetic " + bad.string() + " --extra 1", "on the test side"},
      {base + " --synthetic " + f.gen.string() + " --extra 5", "4 generated images, the evaluation adds 5"},
      {base + " --synthetic " + (dir / "nowhere").string(), "cannot open"},
      {base + " --conditions real,adabldm", "needs the generated images"},
      {base + " --conditions real,fancy", "condition \"fancy\""},
      {base + " --conditions real --synthetic " + f.gen.string(), "--synthetic is given but"},
      {"evaluate --data " + f.root.string() + " --defect dent --out " + (dir / "o").string() + kSmall, "test/dent: no such folder"},
      {"evaluate --data " + (dir / "none").string() + " --defect scratch --out " + (dir / "o").string(), "no such folder"},
      {base + " --extra 0", "--extra"},
      {base + " --seeds 1,,2", "empty item"},
      {base + " --widths 8,x", "not an integer"},
      {base + " --crop 64", "larger than --size"},
      {base + " --protocol mvtec", "expected fewshot or anomalydiffusion"},
      {"evaluate --detectors " + (dir / "nothing").string() + " --data " + f.root.string() + " --out " + (dir / "o").string(),
       "no such folder"},
      {"evaluate --detectors " + (dir / "d").string() + " --defect scratch --data x --out y", "does not apply with --detectors"},
      {"evaluate --detectors " + (dir / "d").string() + " --data x --out y --device cuda", "re-scoring with --detectors runs on the CPU"},
      {base + " --device gpu", "--device gpu: expected cpu or cuda"},
      {base + " --tf32", "--tf32 applies to --device cuda only"},
      {base + " --device cuda --dtype f16", "--dtype f16: expected one of f32"},
  };
  for (const auto& [args, expect] : cases) {
    CAPTURE(args);
    const Run r = cli(args);
    CHECK(r.code == 1);
    CHECK(r.err.find(expect) != std::string::npos);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') <= 2);  // the message (and, for some, a warning line)
    CHECK(!fs::exists(dir / "o" / "detectors"));
  }
}
