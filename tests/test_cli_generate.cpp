// `adabldm sample` against the diffusers reference run, and `adabldm generate`: determinism, shards equal to
// the single run byte for byte, --resume, and clear errors with no partial files.
#include "golden.hpp"
#include "cli_runner.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "adabldm/defect/imgproc.hpp"
#include "adabldm/io/image.hpp"
#include "adabldm/io/safetensors.hpp"
#include "adabldm/ops/gemm_bf16.hpp"
#include "poisoned_checkpoint.hpp"

using namespace adabldm;
namespace fs = std::filesystem;

namespace {
using cli_test::cli;
using cli_test::Run;
fs::path temp_dir(const std::string& name) { return cli_test::temp_dir("adabldm_gen", name); }
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
  CHECK(first["adapt_lr"] == 1e-4);
  CHECK(first["adapt_last_blocks"] == 0);
  CHECK(first["placement"]["edge"] == "");  // no --keep-edges: placed anywhere
  // --contact-sheet: OK | generated | mask per sample, the 64 px cells enlarged to 128 (examples/cli/contact_sheet.hpp).
  r = cli(gen_args(sharded) + " -n 2 --contact-sheet --resume");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto sheet = read_image_u8((sharded / "contact_sheet.png").string());
  CHECK(sheet.width == 3 * 128 + 4 * 4);
  CHECK(sheet.height == 22 + 2 * (22 + 128 + 4));
  fs::remove(sharded / "contact_sheet.png");
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
  r = cli(gen_args(out) + " -n 1 --cpu-matmul fp8");
  CHECK(r.code != 0);
  CHECK(r.err.find("--cpu-matmul fp8: expected f32 or bf16") != std::string::npos);
  r = cli(gen_args(out) + " -n 1 --cpu-matmul bf16 --device cuda");
  CHECK(r.code != 0);
  CHECK(r.err.find("--cpu-matmul applies to --device cpu only") != std::string::npos);
  // bfloat16 products: a sample, recorded in the manifest, on a CPU with AMX or AVX512-BF16; elsewhere one line.
  r = cli(gen_args(out) + " -n 1 --cpu-matmul bf16");
  if (adabldm::ops::detail::bf16_kernel() == adabldm::ops::detail::Bf16Kernel::none) {
    CHECK(r.code != 0);
    CHECK(r.err.find("--cpu-matmul bf16: this CPU has neither AMX nor AVX512-BF16") != std::string::npos);
  } else {
    CHECK(r.code == 0);
    CHECK(fs::exists(out / "images" / "000000.png"));
    const auto manifest = lines(out / "manifest.jsonl");
    REQUIRE(manifest.size() == 1);
    CHECK(manifest[0].find("\"cpu_matmul\":\"bf16\"") != std::string::npos);
  }
  fs::remove_all(out);
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

// ---- issue 11: a long run never dies on one draw; bad input is refused up front --------------------------------

namespace {
/// No regular file under dir (a refused run leaves nothing behind).
bool no_files_under(const fs::path& dir) {
  if (!fs::exists(dir)) return true;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) return false;
  return true;
}
/// The crack set of issue 11: four long real cracks (two folders of tests/data) and 256 x 256 centre crops of the
/// real OK tiles, in one dataset folder.
fs::path crack_dataset() {
  const auto d = temp_dir("cracks");
  fs::create_directories(d / "ok");
  fs::create_directories(d / "ng");
  fs::create_directories(d / "masks");
  for (const char* f : {"free_000.png", "free_001.png"}) {
    const auto img = read_image(golden::path("magnetic-tile/ok/") + f, 1);
    const int64_t y0 = (img.dim(2) - 256) / 2, x0 = (img.dim(3) - 256) / 2;
    write_image((d / "ok" / f).string(), img.narrow(2, y0, 256).narrow(3, x0, 256).contiguous());
  }
  for (const char* c : {"crack_001", "crack_004", "crack_007"}) {
    fs::copy(golden::path("magnetic-tile-cracks/ng/") + c + ".png", d / "ng" / (std::string(c) + ".png"));
    fs::copy(golden::path("magnetic-tile-cracks/masks/") + c + ".png", d / "masks" / (std::string(c) + ".png"));
  }
  fs::copy(golden::path("magnetic-tile/ng/crack_000.png"), d / "ng" / "crack_000.png");
  fs::copy(golden::path("magnetic-tile/masks/crack_000.png"), d / "masks" / "crack_000.png");
  return d;
}
}  // namespace

TEST_CASE("issue 11: the reported commands succeed on four long real cracks (generate seed 12, train seed 3)") {
  // The full sweep, seeds 0..50 for both commands, is scripts/seed_sweep.sh (4-5 minutes; docs/roadmap.md has its
  // result); the geometry of every one of those draws is also checked in test_mask_fit.
  const auto data = crack_dataset();
  const std::string inputs = " --model " + kTiny + " --ok " + (data / "ok").string() + " --ng " + (data / "ng").string() +
                             " --masks " + (data / "masks").string() + " --object tile --defect crack --quiet";
  const auto out = data / "gen";
  auto r = cli("generate" + inputs + " --seed 12 -n 4 --no-adapt --steps 5 --size 256 --out " + out.string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto manifest = lines(out / "manifest.jsonl");
  REQUIRE(manifest.size() == 4);
  int redrawn = 0;
  for (const auto& l : manifest) {
    const auto j = io::Json::parse(l);
    redrawn += j["placement"]["draws"].get<int>() > 1;
    CHECK(j["placement"]["scale"].get<double>() >= 0.25);
    const auto mask = read_mask((out / j["mask"].get<std::string>()).string());
    CHECK(defect::count_above(mask, 0.5f) > 0);
  }
  CHECK(redrawn >= 1);  // sample 3 of seed 12 is the draw that used to end the run
  CHECK(!fs::exists(out / "failures.jsonl"));
  r = cli("train" + inputs + " --seed 3 --steps 20 --size 256 --out " + (data / "te.safetensors").string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  fs::remove_all(data);
}

// Run by scripts/seed_sweep.sh with ADABLDM_SHARED_DATA=../shared/data (skipped in CI: the data is not in the
// project, and it takes minutes).
TEST_CASE("issue 11 sweep: generate and train succeed for seeds 0..50 on every real crack" * doctest::skip()) {
  const char* shared = std::getenv("ADABLDM_SHARED_DATA");
  REQUIRE_MESSAGE(shared != nullptr, "set ADABLDM_SHARED_DATA to ../shared/data");
  const fs::path src = fs::path(shared) / "magnetic-tile";
  const auto data = temp_dir("sweep");
  for (const char* d : {"ok", "ng", "masks"}) fs::create_directories(data / d);
  int ok_count = 0, cracks = 0;
  for (const auto& e : fs::directory_iterator(src / "ok")) {
    const auto img = read_image(e.path().string(), 1);
    if (img.dim(2) < 256 || img.dim(3) < 256) continue;
    const int64_t y0 = (img.dim(2) - 256) / 2, x0 = (img.dim(3) - 256) / 2;
    write_image((data / "ok" / e.path().filename()).string(), img.narrow(2, y0, 256).narrow(3, x0, 256).contiguous());
    ++ok_count;
  }
  for (const auto& e : fs::directory_iterator(src / "ng"))
    if (e.path().filename().string().rfind("crack_", 0) == 0) {
      fs::copy(e.path(), data / "ng" / e.path().filename());
      fs::copy(src / "masks" / e.path().filename(), data / "masks" / e.path().filename());
      ++cracks;
    }
  REQUIRE(ok_count > 0);
  REQUIRE(cracks > 0);
  const std::string inputs = " --model " + kTiny + " --ok " + (data / "ok").string() + " --ng " + (data / "ng").string() +
                             " --masks " + (data / "masks").string() + " --object tile --defect crack --quiet";
  int redrawn = 0, shrunk = 0, samples = 0;
  for (int seed = 0; seed <= 50; ++seed) {
    CAPTURE(seed);
    const auto out = data / "gen";
    auto r = cli("generate" + inputs + " --seed " + std::to_string(seed) + " -n 4 --no-adapt --steps 5 --size 256 --out " +
                 out.string());
    REQUIRE_MESSAGE(r.code == 0, r.err);
    const auto manifest = lines(out / "manifest.jsonl");
    REQUIRE(manifest.size() == 4);
    for (const auto& l : manifest) {
      const auto j = io::Json::parse(l);
      redrawn += j["placement"]["draws"].get<int>() > 1;
      shrunk += j["placement"]["shrunk"].get<bool>();
      ++samples;
    }
    REQUIRE(!fs::exists(out / "failures.jsonl"));
    fs::remove_all(out);
    r = cli("train" + inputs + " --seed " + std::to_string(seed) + " --steps 20 --size 256 --out " +
            (data / "te.safetensors").string());
    REQUIRE_MESSAGE(r.code == 0, r.err);
    std::printf("seed %d: generate -n 4 and train --steps 20 succeeded\n", seed);
    std::fflush(stdout);
  }
  MESSAGE("seeds 0..50 on ", ok_count, " OK crops and ", cracks, " real cracks: ", samples, " samples (", redrawn,
          " needed a fresh affine draw, ", shrunk, " were shrunk) and 51 x 20 training steps, no failure");
  fs::remove_all(data);
}

TEST_CASE("generate: a failing sample is recorded in failures.jsonl, the run goes on, exit 4; --resume retries it") {
  const auto dir = temp_dir("failing");
  // A model whose UNet produces NaN: a copy of the tiny pipeline with one NaN in conv_out's bias (loaded with
  // --allow-non-finite: by default such weights are refused before any sample, see the non-finite test below).
  fs::copy(kTiny, dir / "nan_model", fs::copy_options::recursive);
  const auto unet_file = dir / "nan_model" / "unet" / "diffusion_pytorch_model.safetensors";
  {
    const auto st = io::SafeTensors::open(unet_file.string());
    io::SafeTensorsWriter w;
    for (const auto& name : st.names()) {
      auto t = st.get<float>(name).clone();
      if (name == "conv_out.bias") t.data()[0] = std::nanf("");
      w.add(name, t);
    }
    const auto tmp = dir / "unet.safetensors";
    w.write(tmp.string());
    fs::remove(unet_file);
    fs::rename(tmp, unet_file);
  }
  const auto out = dir / "out";
  std::string args = gen_args(out) + " -n 3";
  args.replace(args.find(kTiny), kTiny.size(), (dir / "nan_model").string());
  auto r = cli(args);
  CHECK(r.code == 1);  // refused at load, nothing written
  CHECK(r.err.find("conv_out.bias\" has 1 NaN and 0 Inf values") != std::string::npos);
  CHECK(!fs::exists(out / "failures.jsonl"));
  r = cli(args + " --allow-non-finite");
  CHECK(r.code == 4);
  CHECK(r.err.find("0 samples into") != std::string::npos);
  CHECK(r.err.find("3 of 3 failed") != std::string::npos);  // printed even with --quiet
  const auto failed = lines(out / "failures.jsonl");
  REQUIRE(failed.size() == 3);
  const auto first = io::Json::parse(failed[0]);
  CHECK(first["index"] == 0);
  CHECK(first["reason"].get<std::string>().find("non-finite") != std::string::npos);
  CHECK(first.contains("ok_source"));
  CHECK(!fs::exists(out / "manifest.jsonl"));
  // With a working model, --resume retries exactly the failed samples (none were in the manifest).
  r = cli(gen_args(out) + " -n 3 --resume");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(lines(out / "manifest.jsonl").size() == 3);
  CHECK(fs::exists(out / "images" / "000002.png"));
  fs::remove_all(dir);
}

TEST_CASE("generate / train / sample: weights with NaN or Inf are refused in one line naming the file and the tensor, "
          "before any output; --allow-non-finite loads them (issue 20, item 7)") {
  const auto dir = temp_dir("nonfinite");
  const auto out = dir / "out";
  const std::string config = " --config " + golden::path("tiny_pipeline/single_file_config.json");
  const std::string tail = " has 1 NaN and 1 Inf values; refusing to load it (--allow-non-finite skips this check)\n";
  // A pipeline folder whose VAE holds a NaN and an Inf (f32).
  const auto model = dir / "model";
  fs::copy(kTiny, model, fs::copy_options::recursive);
  const std::string vae = (model / "vae" / "diffusion_pytorch_model.safetensors").string();
  poisoned::write(vae, vae + ".tmp", "decoder.conv_in.weight", DType::F32);
  fs::rename(vae + ".tmp", vae);
  const std::string vae_msg = vae + ": tensor \"decoder.conv_in.weight\"" + tail;
  // Trimap encoders (cldm single file, control_model.*) with a NaN and an Inf stored as f32, f16 and bf16.
  const std::string hint = "control_model.input_hint_block.0.weight";
  std::vector<std::string> trimaps;
  for (const DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    trimaps.push_back((dir / ("trimap_" + std::string(poisoned::dtype_label(dtype)) + ".safetensors")).string());
    poisoned::write(golden::path("tiny_pipeline/controlnet_single_file.safetensors"), trimaps.back(), hint, dtype);
  }
  const std::string data = " --ok " + golden::path("magnetic-tile/ok") + " --ng " + golden::path("magnetic-tile/ng") +
                           " --masks " + golden::path("magnetic-tile/masks") + " --object tile --defect blowhole --size 64 --quiet";
  const std::string te = (out / "te.safetensors").string(), log = (out / "loss.csv").string();
  const std::string train = "train" + data + " --steps 2 --out " + te + " --log " + log;
  // A training checkpoint after one step (weights, AdamW state, step) with a NaN and an Inf, for --resume.
  const std::string ckpt = (dir / "resume.safetensors").string();
  auto r = cli("train" + data + " --model " + kTiny + " --steps 1 --out " + ckpt + ".clean");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  poisoned::write(ckpt + ".clean", ckpt, "controlnet.conv_in.weight", DType::F32);
  std::vector<std::pair<std::string, std::string>> cases = {  // {command, expected stderr}
      {"generate --model " + model.string() + data + " -n 1 --steps 2 --out " + out.string(), vae_msg},
      {"train --model " + model.string() + data + " --steps 2 --out " + te + " --log " + log, vae_msg},
      {train + " --model " + kTiny + " --resume " + ckpt, ckpt + ": tensor \"controlnet.conv_in.weight\"" + tail},
      {"sample --model " + model.string() + " --prompt x --steps 2 --quiet --out " + (out / "x.png").string(), vae_msg},
  };
  for (const auto& t : trimaps) {
    const std::string msg = t + ": tensor \"" + hint + "\"" + tail;
    cases.push_back({gen_args(out) + " -n 1 --no-adapt --trimap-encoder " + t + config, msg});
    cases.push_back({train + " --model " + kTiny + " --init " + t + config, msg});
    cases.push_back({"sample --model " + kTiny + " --prompt x --steps 2 --quiet --trimap-encoder " + t + config +
                         " --out " + (out / "x.png").string(), msg});
  }
  for (const auto& [args, expect] : cases) {
    CAPTURE(args);
    const auto r = cli(args);
    CHECK(r.code == 1);
    CHECK(r.err.find(expect) != std::string::npos);  // the whole line, ending the message
    CHECK(r.err.find(expect) == r.err.size() - expect.size());
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK(no_files_under(out));
  }
  // --allow-non-finite loads them: the NaN then reaches the samples (generate records each as failed, exit 4) and
  // the losses (train skips every step, exit 4) and sample's image.
  r = cli(gen_args(out) + " -n 1 --no-adapt --trimap-encoder " + trimaps[1] + config + " --allow-non-finite");
  CHECK(r.code == 4);
  REQUIRE(lines(out / "failures.jsonl").size() == 1);
  CHECK(io::Json::parse(lines(out / "failures.jsonl")[0])["reason"].get<std::string>().find("non-finite") != std::string::npos);
  r = cli(train + " --model " + kTiny + " --init " + trimaps[2] + config + " --allow-non-finite");
  CHECK(r.code == 4);
  CHECK(r.err.find("2 of them skipped for a non-finite loss") != std::string::npos);
  r = cli("train" + data + " --steps 3 --out " + te + " --model " + kTiny + " --resume " + ckpt + " --allow-non-finite");
  CHECK(r.code == 4);
  CHECK(r.err.find("trained 2 steps, 2 of them skipped for a non-finite loss") != std::string::npos);
  r = cli("sample --model " + model.string() + " --prompt x --steps 2 --quiet --allow-non-finite --out-tensors " +
          (out / "x.safetensors").string() + " --out " + (out / "x.png").string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto image = io::SafeTensors::open((out / "x.safetensors").string()).get<float>("image_decoded").to_vector();
  CHECK(std::any_of(image.begin(), image.end(), [](float v) { return !std::isfinite(v); }));
  // a clean trimap encoder loads as before
  r = cli(gen_args(out / "clean") + " -n 1 --no-adapt --trimap-encoder " +
          golden::path("tiny_pipeline/controlnet_single_file.safetensors") + config);
  CHECK_MESSAGE(r.code == 0, r.err);
  fs::remove_all(dir);
}

TEST_CASE("generate: a foreground no defect can fit is a recorded failure per sample, not a stopped run") {
  const auto dir = temp_dir("tiny_fg");
  fs::create_directories(dir / "fg");
  // free_000's object is one pixel; free_001's is the whole image.
  auto dot = Tensor<float>::zeros({1, 1, 64, 64});
  dot.data()[32 * 64 + 32] = 1.0f;
  write_mask((dir / "fg" / "free_000.png").string(), dot);
  write_mask((dir / "fg" / "free_001.png").string(), Tensor<float>::full({1, 1, 64, 64}, 1.0f));
  // Only the long crack as the real defect: at 64 px it is ~60 pixels long, ~15 at the smallest scale.
  fs::create_directories(dir / "ng");
  fs::copy(golden::path("magnetic-tile/ng/crack_000.png"), dir / "ng" / "crack_000.png");
  std::string args = gen_args(dir / "out") + " -n 8 --no-adapt --foreground " + (dir / "fg").string();
  const std::string ng = " --ng " + golden::path("magnetic-tile/ng");
  args.replace(args.find(ng), ng.size(), " --ng " + (dir / "ng").string());
  auto r = cli(args);
  const auto failed = lines(dir / "out" / "failures.jsonl");
  const auto written = lines(dir / "out" / "manifest.jsonl");
  CHECK(failed.size() + written.size() == 8);
  CHECK(!failed.empty());  // the seed picks free_000 for some of the 8
  CHECK(!written.empty());
  CHECK(r.code == (failed.empty() ? 0 : 4));
  for (const auto& l : failed) {
    const auto j = io::Json::parse(l);
    CHECK(j["ok_source"].get<std::string>().find("free_000") != std::string::npos);
    CHECK(j["reason"].get<std::string>().find("cannot fit inside the foreground") != std::string::npos);
  }
  fs::remove_all(dir);
}

TEST_CASE("generate / train / sample: every bad option or input is one line, exit 1, before any file is written") {
  const auto dir = temp_dir("refusals");
  const auto out = dir / "out";
  // An OK folder with a truncated PNG among good ones.
  fs::create_directories(dir / "ok");
  fs::copy(golden::path("magnetic-tile/ok/free_000.png"), dir / "ok" / "a.png");
  const std::string png = slurp(golden::path("magnetic-tile/ok/free_001.png"));
  std::ofstream(dir / "ok" / "b.png", std::ios::binary) << png.substr(0, png.size() / 2);
  std::ofstream(dir / "a_file") << "x";
  struct Case {
    std::string args, expect;
  };
  const std::string g = gen_args(out) + " -n 2";
  const std::vector<Case> generate = {
      {g + " --guidance nan", "--guidance: \"nan\" is not a finite number"},
      {g + " --guidance inf", "not a finite number"},
      {g + " --guidance -1", "--guidance -1: must be in [0, 100]"},
      {g + " --size 7", "--size 7: must be in [8, 4096]"},
      {g + " --size 36", "--size 36: must be a multiple of 8"},
      {g + " --steps 1", "--steps 1: must be in [2, 1000]"},
      {g + " --steps 2.5", "--steps: \"2.5\" is not an integer"},
      {g + " --adapt-steps -3", "--adapt-steps -3: must be in [0, 100000]"},
      {g + " --adapt-lr -1", "--adapt-lr -1: must be in [0, 1]"},
      {g + " --adapt-last-blocks 9", "--adapt-last-blocks 9: this model's decoder has "},
      {g + " --seed -1", "--seed -1: must be in [0, "},
      {g + " --min-fit-scale 0", "--min-fit-scale 0: must be in [0.01, 1]"},
      {g + " -n 0", "-n 0: must be in [1, "},
      {g + " --shard 2/2", "need 0 <= index < count"},
      {g + " --shard x", "--shard must be i/n, auto or auto/n"},
      {g + " --shard auto", "neither JOB_COMPLETION_INDEX"},
      {"JOB_COMPLETION_INDEX=1 " + std::string(ADABLDM_CLI) + " " + g + " --shard auto", "give it: --shard auto/N"},
      {"SLURM_ARRAY_TASK_ID=3 SLURM_ARRAY_TASK_COUNT=2 " + std::string(ADABLDM_CLI) + " " + g + " --shard auto",
       "index 3 of 2 (from SLURM_ARRAY_TASK_ID)"},
      {g + " --preset fancy", "fancy"},
      {g + " --foreground /nonexistent", "--foreground /nonexistent: not all, auto or a folder"},
      {g + " --object \"\"", "--object must not be empty"},
      {g + " --out " + (dir / "a_file").string(), "a_file: exists and is not a folder"},
      {g + " --ok " + (dir / "ok").string(), "b.png: cannot decode image"},
  };
  // Cases that set variables run the tool themselves; the others through cli().
  auto run = [&](const std::string& args) {
    if (args.rfind("generate", 0) == 0 || args.rfind("train", 0) == 0 || args.rfind("sample", 0) == 0) return cli(args);
    const auto err = dir / "err.txt";
    const int status = std::system((args + " 2> " + err.string()).c_str());
    return Run{WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(err)};
  };
  const std::string t = "train --model " + kTiny + " --ok " + golden::path("magnetic-tile/ok") + " --ng " +
                        golden::path("magnetic-tile/ng") + " --masks " + golden::path("magnetic-tile/masks") +
                        " --object tile --defect crack --size 64 --steps 2 --quiet --out " + (out / "te.safetensors").string();
  const std::vector<Case> train = {
      {t + " --lr nan", "--lr: \"nan\" is not a finite number"},
      {t + " --lr 0", "--lr 0: must be in [1e-12, 1]"},
      {t + " --batch 0", "--batch 0: must be in [1, 1024]"},
      {t + " --accum -1", "--accum -1: must be in [1, 100000]"},
      {t + " --prompt-dropout 1.5", "--prompt-dropout 1.5: must be in [0, 1]"},
      {t + " --size 7", "--size 7: must be in [8, 4096]"},
      {t + " --save-every -2", "--save-every -2: must be in [0, "},
      {t + " --steps 0", "--steps 0: must be in [1, "},
      {t + " --resume /nonexistent.safetensors", "--resume /nonexistent.safetensors: no such file"},
      {t + " --ok " + (dir / "ok").string(), "b.png: cannot decode image"},
      {t + " --out " + dir.string(), ": is a folder; give the checkpoint's file name"},
  };
  const std::string s = "sample --model " + kTiny + " --prompt x --steps 2 --quiet --out " + (out / "x.png").string();
  const std::vector<Case> sample = {
      {s + " --guidance nan", "--guidance: \"nan\" is not a finite number"},
      {s + " --eta 2", "--eta 2: must be in [0, 1]"},
      {s + " --steps 0", "--steps 0: must be in [1, 1000]"},
      {s + " --size 7", "--size 7: must be in [8, 4096]"},
      {s + " --control-scale inf", "not a finite number"},
      {s + " --seed 1.5", "--seed: \"1.5\" is not an integer"},
      {s + " --control /nonexistent.png", "--control /nonexistent.png: no such file"},
      {s + " --out " + dir.string(), ": is a folder; give the image's file name"},
  };
  for (const auto* cases : {&generate, &train, &sample})
    for (const auto& c : *cases) {
      CAPTURE(c.args);
      const auto r = run(c.args);
      CHECK(r.code == 1);
      CHECK_MESSAGE(r.err.find(c.expect) != std::string::npos, r.err);
      CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);  // one line
      CHECK(no_files_under(out));
    }
  fs::remove_all(dir);
}

TEST_CASE("train-base: both stages from scratch, exact resume, and the folder drives train and generate") {
  const auto dir = temp_dir("train_base");
  const std::string ok = " --ok " + golden::path("magnetic-tile/ok") + " --size 32 --batch 2 --quiet --seed 2";
  const auto straight = dir / "straight", resumed = dir / "resumed";
  auto r = cli("train-base --stage vae" + ok + " --steps 4 --out " + straight.string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  r = cli("train-base --stage vae" + ok + " --steps 2 --out " + resumed.string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  r = cli("train-base --stage vae" + ok + " --steps 4 --out " + resumed.string());  // the same command, continued
  REQUIRE_MESSAGE(r.code == 0, r.err);
  auto losses = [](const fs::path& csv) {
    std::vector<std::string> out;
    for (const auto& l : lines(csv)) out.push_back(l.substr(0, l.rfind(',')));  // step,loss (not the seconds)
    return out;
  };
  const auto a = losses(straight / "train_state" / "vae_loss.csv");
  REQUIRE(a.size() == 5);
  CHECK(a == losses(resumed / "train_state" / "vae_loss.csv"));
  CHECK(slurp(straight / "vae" / "diffusion_pytorch_model.safetensors") ==
        slurp(resumed / "vae" / "diffusion_pytorch_model.safetensors"));
  r = cli("train-base --stage unet" + ok + " --steps 3 --out " + straight.string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(lines(straight / "train_state" / "unet_loss.csv").size() == 4);
  // A diffusers folder: the exported weights are float16, the posterior deterministic.
  const auto vae = io::SafeTensors::open((straight / "vae" / "diffusion_pytorch_model.safetensors").string());
  CHECK(vae.info("quant_conv.bias").dtype == DType::F16);
  CHECK(float(vae.get<float>("quant_conv.bias").data()[4]) == -30.0f);
  // It is a --model for train (a factor-4 autoencoder: the trimap encoder's hint block downsamples by 4) and
  // for generate.
  const std::string data = " --ok " + golden::path("magnetic-tile/ok") + " --ng " + golden::path("magnetic-tile/ng") +
                           " --masks " + golden::path("magnetic-tile/masks") + " --object tile --defect crack --quiet";
  r = cli("train --model " + straight.string() + data + " --size 32 --steps 2 --out " + (dir / "te.safetensors").string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  r = cli("generate --model " + straight.string() + " --trimap-encoder " + (dir / "te.safetensors").string() + data +
          " --size 32 --steps 4 --adapt-steps 2 -n 2 --out " + (dir / "gen").string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(read_image_u8((dir / "gen" / "images" / "000001.png").string()).width == 32);
  // Refusals.
  r = cli("train-base --stage unet" + ok + " --steps 2 --out " + (dir / "empty").string());
  CHECK(r.code == 1);
  CHECK(r.err.find("train the autoencoder first") != std::string::npos);
  r = cli("train-base --stage gan" + ok + " --steps 2 --out " + (dir / "x").string());
  CHECK(r.err.find("--stage gan: expected vae or unet") != std::string::npos);
  r = cli("train-base --stage vae" + ok + " --steps 2 --size 40 --out " + (dir / "x").string());
  CHECK(r.err.find("must be a multiple of 16") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("the embedded default model: generate with no --model runs the method end to end (models/tile-64)") {
  const auto dir = temp_dir("embedded");
  // The README's first command, shortened: 2 samples, 10 DDIM steps, 40 adaptation steps.
  auto r = cli("generate -n 2 --steps 10 --adapt-steps 40 --out " + (dir / "demo").string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.err.find("contact sheet") != std::string::npos);  // it says where the output is
  const auto manifest = lines(dir / "demo" / "manifest.jsonl");
  REQUIRE(manifest.size() == 2);
  double inside = 0, outside = 0;
  for (const auto& l : manifest) {
    const auto j = io::Json::parse(l);
    CAPTURE(l);
    CHECK(j["prompt"] == "a tile with a break");
    CHECK(j["adapted"] == true);
    const auto mask = read_image_u8((dir / "demo" / j["mask"].get<std::string>()).string());
    int64_t on = 0;
    for (auto v : mask.pixels) {
      REQUIRE((v == 0 || v == 255));
      on += v == 255;
    }
    CHECK(on > 0);
    const auto& c = j["change"];
    inside += c["defect_mean_abs_change"].get<double>();
    outside += c["background_mean_abs_change"].get<double>();
    CHECK(c["background_psnr_db"].get<double>() > 25.0);  // the adapted decoder keeps the OK background
  }
  // The images differ from their OK sources inside the masks more than outside (on average: with this small model
  // the difference is small, docs/demo.md).
  CHECK(inside > outside);
  const auto sheet = read_image_u8((dir / "demo" / "contact_sheet.png").string());
  CHECK(sheet.width == 3 * 128 + 4 * 4);
  CHECK(sheet.height == 22 + 2 * (22 + 128 + 4));
  // --defect crack uses the other trimap encoder and sample set; an unknown type says which exist.
  r = cli("generate -n 1 --steps 4 --no-adapt --defect crack --quiet --out " + (dir / "crack").string());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  r = cli("generate -n 1 --defect scratch --quiet --out " + (dir / "scratch").string());
  CHECK(r.code == 1);
  CHECK(r.err.find("no trimap encoder for --defect scratch") != std::string::npos);
  fs::remove_all(dir);
}
