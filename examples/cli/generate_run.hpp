#pragma once
// adabldm generate: many synthetic defect images with pixel-exact masks (the AdaBLDM pipeline), written as
// OUT/images/NNNNNN.png, OUT/masks/NNNNNN.png and one JSON line per sample in OUT/manifest.jsonl.
// Sample i depends only on (--seed, i): shards of a run, or a resumed run, reproduce the single run exactly.
// generate_on<T, Dev> runs the command with the networks in storage type T on device Dev; generate.cpp
// instantiates it for the CPU, cuda_commands.cu for CUDA.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <adabldm/defect/pipeline.hpp>
#include <adabldm/io/image.hpp>

#include "args.hpp"
#include "commands.hpp"
#include "device.hpp"
#include "dataset.hpp"
#include "progress.hpp"

namespace cli {

namespace fs = std::filesystem;

namespace generate_detail {
inline const char* kUsage =
    "usage: adabldm generate --model PATH --ok DIR --ng DIR --masks DIR --object NAME --defect NAME -n N --out DIR\n"
    "                        [options]\n"
    "  --model PATH            base model: a diffusers pipeline folder or a single-file checkpoint\n"
    "  --trimap-encoder PATH   the trained trimap encoder (default: the model's own controlnet/ or control_model.*)\n"
    "  --config JSON           configs for what tensor shapes cannot tell (see docs/cli.md)\n"
    "  --ok DIR                defect-free images\n"
    "  --ng DIR, --masks DIR   real defect images and their masks (same file name, or NAME_mask.EXT)\n"
    "  --object, --defect      names for the prompt\n"
    "  --prompt-template T     default \"a {object} with a {defect}\"\n"
    "  -n N                    number of samples (indices 0 .. N-1)\n"
    "  --out DIR               output folder (images/, masks/, manifest.jsonl; shared by shards)\n"
    "  --seed S                run seed (default 0)\n"
    "  --shard i/n             generate the indices i, i+n, i+2n, ... (0 <= i < n)\n"
    "  --preset P              official (default) | corrected | bld\n"
    "  --steps N               DDIM steps (default 50)\n"
    "  --guidance G            classifier-free guidance (default 9)\n"
    "  --size PX               working size; images and masks are resized to PX x PX (default 256)\n"
    "  --foreground F          all (default: textures) | auto (unsupervised, from the OK images) | DIR of masks\n"
    "                          named like the OK images\n"
    "  --translate-only        place real masks translated only (the official inference); default: also rotate\n"
    "                          by U[0, 360) and scale by U[0.85, 1.15] (the paper)\n"
    "  --no-adapt              decode with the plain decoder\n"
    "  --adapt-steps N         online decoder adaptation steps (default 200)\n"
    "  --resume                skip samples already written completely\n"
    "  --device cpu|cuda       where the networks run (default cpu; cuda needs a build with the CUDA backend)\n"
    "  --dtype f32|f16         storage of the UNet and trimap encoder (cpu: f32; cuda: default f16); the VAE\n"
    "                          and the decoder adaptation run in f32\n"
    "  --tf32                  cuda: allow TF32 tensor cores for f32 matrix products and convolutions\n"
    "  --adapt-dtype f32|bf16  cuda: the decoder adaptation's compute type (bf16: mixed precision with f32 master\n"
    "                          weights and AdamW; default f32)\n"
    "  --quiet                 no progress output\n";

inline std::string index_name(int64_t i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%06lld", static_cast<long long>(i));
  return buf;
}
/// Indices already in the manifest.
inline std::set<int64_t> manifest_indices(const fs::path& manifest) {
  std::set<int64_t> done;
  std::ifstream in(manifest);
  for (std::string line; std::getline(in, line);) {
    try {
      const auto j = nlohmann::json::parse(line);
      if (j.contains("index")) done.insert(j["index"].get<int64_t>());
    } catch (const nlohmann::json::exception&) {
      // a torn last line from a killed run: ignore it, that sample is regenerated
    }
  }
  return done;
}
/// Appends one line with a single write(): lines of concurrent shards never interleave.
inline void append_line(const fs::path& file, const std::string& line) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  adabldm::check<adabldm::IoError>(fd >= 0, file.string(), ": cannot open for appending");
  const std::string l = line + "\n";
  const ssize_t n = ::write(fd, l.data(), l.size());
  ::close(fd);
  adabldm::check<adabldm::IoError>(n == static_cast<ssize_t>(l.size()), file.string(), ": write failed");
}
}  // namespace generate_detail

inline Args generate_args(int argc, char** argv) {
  return Args(argc, argv, 2,
              {"model", "trimap-encoder", "config", "ok", "ng", "masks", "object", "defect", "prompt-template", "n",
               "out", "seed", "shard", "preset", "steps", "guidance", "size", "foreground", "adapt-steps", "device",
               "dtype", "adapt-dtype"},
              {"help", "no-adapt", "resume", "quiet", "translate-only", "tf32"});
}

template <class T, class Dev>
int generate_on(const Args& args) {
  using namespace adabldm;
  using namespace generate_detail;
  const std::string adapt_dtype = args.get("adapt-dtype", "f32");
  check(adapt_dtype == "f32" || adapt_dtype == "bf16", "--adapt-dtype ", adapt_dtype, ": expected f32 or bf16");
  check(adapt_dtype == "f32" || !std::is_same_v<Dev, Cpu>, "--adapt-dtype bf16 needs --device cuda");
  const int64_t n = args.integer("n", -1);
  check(n >= 1, "-n must be given and >= 1");
  const uint64_t seed = static_cast<uint64_t>(args.integer("seed", 0));
  int64_t shard = 0, shards = 1;
  if (args.has("shard")) {
    const std::string s = args.get("shard");
    const auto slash = s.find('/');
    try {
      check(slash != std::string::npos, "");
      shard = std::stoll(s.substr(0, slash));
      shards = std::stoll(s.substr(slash + 1));
    } catch (...) {
      throw Error("--shard must be i/n, got \"" + s + "\"");
    }
    check(shards >= 1 && shard >= 0 && shard < shards, "--shard ", s, ": need 0 <= i < n");
  }
  const bool quiet = args.flag("quiet");
  Progress progress(1, quiet);

  // Inputs: every file is checked before the model is loaded, so bad input fails fast.
  const auto ok_files = list_images(args.require("ok"), "ok");
  const auto ng_files = list_images(args.require("ng"), "ng");
  const auto defects = read_defects(ng_files, args.require("masks"));
  const std::string out = args.require("out");
  fs::create_directories(fs::path(out) / "images");
  fs::create_directories(fs::path(out) / "masks");

  const models::LoadOptions opt{models::ConfigOverrides::from_file(args.get("config")), ""};
  progress.note("loading " + args.require("model"));
  auto pipe = Pipeline<T, Dev>::load(args.get("model"), args.get("trimap-encoder"), opt);
  auto& o = pipe.options();
  o.preset = sampling::parse_preset(args.get("preset", "official"));
  check(o.preset != sampling::Preset::None, "--preset none is not a defect-generation preset (use adabldm sample)");
  o.steps = static_cast<int>(args.integer("steps", 50));
  o.guidance = args.number("guidance", 9.0);
  o.size = static_cast<int>(args.integer("size", 256));
  check(o.steps >= 2, "--steps must be >= 2");
  if (args.has("prompt-template")) o.prompt_template = args.get("prompt-template");
  o.synthesis.rotate_and_scale = !args.flag("translate-only");
  o.adapt = !args.flag("no-adapt");
  o.adapt_in_bf16 = adapt_dtype == "bf16";
  o.adaptation.steps = static_cast<int>(args.integer("adapt-steps", 200));
  check(o.adaptation.steps >= 0, "--adapt-steps must be >= 0");

  // Foreground per OK image.
  const std::string fg_mode = args.get("foreground", "all");
  std::vector<Tensor<float>> foregrounds(ok_files.size());
  if (fg_mode == "auto") {
    progress.note("fitting the foreground predictor on " + std::to_string(ok_files.size()) + " OK images");
    std::vector<Tensor<float>> feats;
    for (const auto& f : ok_files) feats.push_back(pipe.features(pipe.prepare_image(read_image(f.string()))));
    Rng rng(derive_seed(seed, 0xF0F0));
    const auto predictor = defect::ForegroundPredictor::fit(feats, rng);
    for (std::size_t i = 0; i < ok_files.size(); ++i)
      foregrounds[i] = defect::ForegroundPredictor::binarise(predictor.predict(feats[i]), o.size, o.size);
  } else if (fg_mode != "all") {
    check<IoError>(fs::is_directory(fg_mode), "--foreground ", fg_mode, ": not all, auto or a folder");
    for (std::size_t i = 0; i < ok_files.size(); ++i) {
      const auto stem = ok_files[i].stem().string();
      fs::path p;
      for (const char* ext : {".png", ".bmp", ".jpg"})
        if (fs::exists(fs::path(fg_mode) / (stem + ext))) p = fs::path(fg_mode) / (stem + ext);
      check<IoError>(!p.empty(), "--foreground ", fg_mode, ": no mask for ", ok_files[i].filename().string());
      foregrounds[i] = defect::read_foreground_mask(p.string(), o.size);
    }
  }

  std::vector<int64_t> todo;
  const auto manifest = fs::path(out) / "manifest.jsonl";
  const auto done = args.flag("resume") ? manifest_indices(manifest) : std::set<int64_t>{};
  for (int64_t i = shard; i < n; i += shards) {
    const auto img = fs::path(out) / "images" / (index_name(i) + ".png");
    const auto msk = fs::path(out) / "masks" / (index_name(i) + ".png");
    if (args.flag("resume") && done.count(i) && fs::exists(img) && fs::exists(msk)) continue;
    todo.push_back(i);
  }
  const int per_sample = o.steps + (o.adapt ? o.adaptation.steps : 0);
  Progress run(static_cast<int>(todo.size()) * per_sample, quiet);
  int64_t finished = 0;
  for (const int64_t i : todo) {
    const uint64_t s = derive_seed(seed, static_cast<uint64_t>(i));
    Rng pick(derive_seed(s, 1));
    const auto ok_index = static_cast<std::size_t>(pick.uniform_int(0, static_cast<int64_t>(ok_files.size()) - 1));
    DefectJob job;
    job.ok = read_image(ok_files[ok_index].string());
    job.defects = defects;
    job.object = args.require("object");
    job.defect = args.require("defect");
    job.seed = s;
    job.foreground = foregrounds[ok_index];
    DefectSample sample;
    try {
      sample = pipe.generate(job, [&](const char* phase, int step, int steps) {
        const int offset = std::string(phase) == "adaptation" ? o.steps : 0;
        run.update(static_cast<double>(finished * per_sample + offset + step),
                   "sample " + index_name(i) + " " + phase + " " + std::to_string(step) + "/" + std::to_string(steps));
      });
    } catch (const Error& e) {
      throw Error("sample " + index_name(i) + " (OK image " + ok_files[ok_index].string() + "): " + e.what());
    }
    const std::string img = "images/" + index_name(i) + ".png", msk = "masks/" + index_name(i) + ".png";
    write_image((fs::path(out) / img).string(), sample.image);  // each written to a temporary name, then renamed
    write_mask((fs::path(out) / msk).string(), sample.mask);
    const auto& p = sample.placement;
    nlohmann::json line = {{"index", i},
                           {"seed", s},
                           {"image", img},
                           {"mask", msk},
                           {"ok_source", ok_files[ok_index].string()},
                           {"mask_source", p.mask_source},
                           {"placement", {{"y0", p.y0}, {"x0", p.x0}, {"h", p.h}, {"w", p.w}, {"angle_deg", p.angle_deg}, {"scale", p.scale}}},
                           {"prompt", sample.prompt},
                           {"preset", sampling::preset_name(o.preset)},
                           {"steps", o.steps},
                           {"guidance", o.guidance},
                           {"size", o.size},
                           {"foreground", fg_mode},
                           {"adapted", sample.adapted},
                           {"adapt_steps", sample.adapted ? o.adaptation.steps : 0},
                           {"timings", sample.timings}};
    append_line(manifest, line.dump());
    ++finished;
  }
  run.finish("generated " + std::to_string(todo.size()) + " samples into " + out);
  return 0;
}

}  // namespace cli
