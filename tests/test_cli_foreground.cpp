// `adabldm foreground` and `generate --foreground auto|DIR` (issue 22, docs/foreground.md) on generated plate
// look-alikes (tests/plate_lookalike.hpp) with the embedded model: the files written, their sizes and values, the
// IoU report, the placement on the object and what the manifest records, the texture refusal, and bad input.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "adabldm/defect/foreground.hpp"
#include "adabldm/io/image.hpp"
#include "adabldm/io/json.hpp"
#include "contact_sheet.hpp"
#include "golden.hpp"
#include "plate_lookalike.hpp"

using namespace adabldm;
namespace fs = std::filesystem;

namespace {
struct Run {
  int code;
  std::string out, err;
};
std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
/// Runs the CLI with `args`, capturing stdout and stderr.
Run run_cli(const std::string& args) {
  static int counter = 0;
  const auto base = fs::temp_directory_path() / ("adabldm_fg_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  const std::string cmd = std::string(ADABLDM_CLI) + " " + args + " > " + base.string() + ".out 2> " + base.string() + ".err";
  const int status = std::system(cmd.c_str());
  Run r{WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(base.string() + ".out"), slurp(base.string() + ".err")};
  fs::remove(base.string() + ".out");
  fs::remove(base.string() + ".err");
  return r;
}
fs::path temp_dir(const std::string& name) {
  const auto d = fs::temp_directory_path() / ("adabldm_fg_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}
const std::string kModel = golden::path("../../models/tile-64");
const std::vector<int> kSizes = {96, 128, 128, 160, 112, 144};

/// Look-alikes of different sizes in DIR/ok and their exact foregrounds in DIR/ref.
void write_plates(const fs::path& dir) {
  fs::create_directories(dir / "ok");
  fs::create_directories(dir / "ref");
  for (std::size_t i = 0; i < kSizes.size(); ++i) {
    const auto p = lookalike::make_plate(kSizes[i], 200 + i);
    const std::string name = "plate_" + std::to_string(i) + ".png";
    write_png((dir / "ok" / name).string(), p.image);
    write_mask((dir / "ref" / name).string(), p.mask);
  }
}
}  // namespace

TEST_CASE("foreground: mask and map per image at its own size, 0/255, the contact sheet, the IoU report") {
  const auto dir = temp_dir("outputs");
  write_plates(dir);
  const auto out = dir / "out";
  const auto r = run_cli("foreground --model " + kModel + " --ok " + (dir / "ok").string() + " --out " + out.string() +
                     " --size 128 --reference " + (dir / "ref").string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.out.find("IoU against ") != std::string::npos);
  for (std::size_t i = 0; i < kSizes.size(); ++i) {
    const std::string name = "plate_" + std::to_string(i) + ".png";
    CAPTURE(name);
    const auto mask = read_image_u8((out / name).string());
    CHECK(mask.channels == 1);
    CHECK(mask.width == kSizes[i]);
    CHECK(mask.height == kSizes[i]);
    int64_t on = 0;
    for (auto v : mask.pixels) {
      REQUIRE((v == 0 || v == 255));
      on += v == 255;
    }
    CHECK(on > mask.width * mask.height / 8);   // the plate ...
    CHECK(on < mask.width * mask.height / 2);   // ... not the wall
    const auto map = read_image_u8((out / "maps" / name).string());
    CHECK(map.channels == 1);
    CHECK(map.width == kSizes[i]);
    CHECK(*std::max_element(map.pixels.begin(), map.pixels.end()) > 200);
    CHECK(*std::min_element(map.pixels.begin(), map.pixels.end()) < 50);
  }
  const auto sheet = read_image_u8((out / "contact_sheet.png").string());
  const auto layout = cli::contact_layout(128, static_cast<int>(kSizes.size()));
  CHECK(sheet.width == layout.width);
  CHECK(sheet.height == layout.height);
  // iou.csv: a header and one line per image, each IoU high on these clean look-alikes.
  std::ifstream csv(out / "iou.csv");
  std::string line;
  std::getline(csv, line);
  CHECK(line == "image,iou");
  int rows = 0;
  while (std::getline(csv, line)) {
    ++rows;
    CAPTURE(line);
    CHECK(std::stod(line.substr(line.find(',') + 1)) >= 0.85);
  }
  CHECK(rows == static_cast<int>(kSizes.size()));
  fs::remove_all(dir);
}

TEST_CASE("generate --foreground auto | DIR: every defect on the object; the manifest names the foreground") {
  const auto dir = temp_dir("generate");
  write_plates(dir);
  const std::string common = "generate --model " + kModel + " --trimap-encoder " + kModel + "/trimap-break.safetensors" +
                             " --ok " + (dir / "ok").string() + " --ng " + golden::path("magnetic-tile/ng") +
                             " --masks " + golden::path("magnetic-tile/masks") +
                             " --object plate --defect break --size 64 --steps 2 --no-adapt -n 8 --seed 5 --quiet";
  for (const std::string mode : {"auto", "dir"}) {
    CAPTURE(mode);
    const auto out = dir / ("out_" + mode);
    const std::string fg = mode == "auto" ? "auto" : (dir / "ref").string();
    const auto r = run_cli(common + " --foreground " + fg + " --out " + out.string());
    REQUIRE_MESSAGE(r.code == 0, r.err);
    std::ifstream in(out / "manifest.jsonl");
    int samples = 0;
    for (std::string l; std::getline(in, l);) {
      ++samples;
      const auto j = io::Json::parse(l);
      CHECK(j["foreground"] == fg);
      REQUIRE(j.contains("foreground_mask"));
      CHECK(j["foreground_hash"].get<std::string>().size() == 16);
      fs::path file = j["foreground_mask"].get<std::string>();
      if (mode == "auto") {
        CHECK(j["foreground_recipe"] == "object");
        CHECK(file.parent_path() == "foreground");
        file = out / file;
      }
      const auto fgm = defect::read_foreground_mask(file.string(), 64);
      const auto mask = read_mask((out / j["mask"].get<std::string>()).string());
      int64_t on = 0, outside = 0;
      for (int64_t k = 0; k < mask.numel(); ++k)
        if (mask.data()[k] >= 0.5f) ++on, outside += fgm.data()[k] < 0.5f;
      CHECK(on > 0);
      CHECK(outside == 0);
    }
    CHECK(samples == 8);
  }
  fs::remove_all(dir);
}

TEST_CASE("textures: foreground and generate --foreground auto refuse the magnetic tiles in one line") {
  const auto dir = temp_dir("texture");
  auto r = run_cli("foreground --model " + kModel + " --ok " + golden::path("magnetic-tile/ok") + " --out " + (dir / "out").string());
  CHECK(r.code == 1);
  CHECK_MESSAGE(r.err.find("look like a texture") != std::string::npos, r.err);
  CHECK(r.err.find("use --foreground all") != std::string::npos);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  CHECK(!fs::exists(dir / "out"));
  r = run_cli("generate --model " + kModel + " --trimap-encoder " + kModel + "/trimap-break.safetensors --ok " +
          golden::path("magnetic-tile/ok") + " --ng " + golden::path("magnetic-tile/ng") + " --masks " +
          golden::path("magnetic-tile/masks") + " --object tile --defect break --size 64 --steps 2 --no-adapt -n 1 "
          "--foreground auto --quiet --out " + (dir / "gen").string());
  CHECK(r.code == 1);
  CHECK_MESSAGE(r.err.find("--foreground auto: the predicted foreground covers") != std::string::npos, r.err);
  CHECK(r.err.find("use --foreground all") != std::string::npos);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  CHECK(!fs::exists(dir / "gen"));
  fs::remove_all(dir);
}

TEST_CASE("foreground: every bad option or input is one line naming it, exit 1, nothing written") {
  const auto dir = temp_dir("refusals");
  write_plates(dir);
  fs::remove(dir / "ref" / "plate_3.png");
  std::ofstream(dir / "a_file") << "x";
  const auto out = dir / "out";
  const std::string f = "foreground --model " + kModel + " --ok " + (dir / "ok").string() + " --out " + out.string();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"foreground --out " + out.string(), "--ok"},
      {"foreground --ok " + (dir / "ok").string(), "--out"},
      {f + " --ok /nonexistent", "--ok /nonexistent: no such folder"},
      {f + " --ok " + (dir / "ref").string() + "/../a_file", "no such folder"},
      {f + " --out " + (dir / "a_file").string(), "a_file: exists and is not a folder"},
      {f + " --size 30", "--size 30: must be a multiple of 4"},
      {f + " --size 8", "--size 8: must be in [16, 4096]"},
      {f + " --recipe fancy", "--recipe fancy: expected object or official"},
      {f + " --reference /nonexistent", "--reference /nonexistent: no such folder"},
      {f + " --reference " + (dir / "ref").string(), "no mask plate_3.png for plate_3.png"},
      {f + " --model /nonexistent", "/nonexistent: no such file or folder"},
      {f + " --colour", "unknown option --colour"},
  };
  for (const auto& [args, expect] : cases) {
    CAPTURE(args);
    const auto r = run_cli(args);
    CHECK(r.code == 1);
    CHECK_MESSAGE(r.err.find(expect) != std::string::npos, r.err);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK(!fs::exists(out));
  }
  fs::remove_all(dir);
}

TEST_CASE("foreground: Stable Diffusion VAE layouts load as in generate (diffusers folder; single file + --config)") {
  const auto dir = temp_dir("sd");
  write_plates(dir);
  for (const std::string& model : {golden::path("tiny_pipeline/diffusers"),
                                   golden::path("ldm_format/model.safetensors") + " --config " +
                                       golden::path("ldm_format/config.json")}) {
    CAPTURE(model);
    const auto out = dir / "out";
    fs::remove_all(out);
    const auto r = run_cli("foreground --model " + model + " --ok " + (dir / "ok").string() + " --out " + out.string() +
                           " --size 64 --quiet");
    REQUIRE_MESSAGE(r.code == 0, r.err);  // these tiny VAEs are random: the masks are not scored
    CHECK(read_image_u8((out / "plate_3.png").string()).width == kSizes[3]);
    CHECK(fs::exists(out / "maps" / "plate_3.png"));
    CHECK(fs::exists(out / "contact_sheet.png"));
  }
  fs::remove_all(dir);
}

TEST_CASE("foreground and generate --foreground auto give the same masks for the same --seed and --size") {
  const auto dir = temp_dir("same");
  fs::create_directories(dir / "ok");
  for (int i = 0; i < 4; ++i)  // at the working size, so that foreground writes its masks unresized
    write_png((dir / "ok" / ("plate_" + std::to_string(i) + ".png")).string(), lookalike::make_plate(64, 300 + i).image);
  auto r = run_cli("foreground --model " + kModel + " --ok " + (dir / "ok").string() + " --out " + (dir / "fg").string() +
                   " --size 64 --seed 9 --quiet");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  r = run_cli("generate --model " + kModel + " --trimap-encoder " + kModel + "/trimap-break.safetensors --ok " +
              (dir / "ok").string() + " --ng " + golden::path("magnetic-tile/ng") + " --masks " +
              golden::path("magnetic-tile/masks") + " --object plate --defect break --size 64 --steps 2 --no-adapt -n 1 "
              "--seed 9 --foreground auto --quiet --out " + (dir / "gen").string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  for (int i = 0; i < 4; ++i) {
    const std::string name = "plate_" + std::to_string(i) + ".png";
    CAPTURE(name);
    CHECK(slurp(dir / "fg" / name) == slurp(dir / "gen" / "foreground" / name));
  }
  fs::remove_all(dir);
}
