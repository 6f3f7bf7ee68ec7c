#pragma once
// adabldm generate: many synthetic defect images with pixel-exact masks (the AdaBLDM pipeline), written as
// OUT/images/NNNNNN.png, OUT/masks/NNNNNN.png and one JSON line per sample in OUT/manifest.jsonl.
// Sample i depends only on (--seed, i): shards of a run, or a resumed run, reproduce the single run exactly.
// generate_on<T, Dev> runs the command with the networks in storage type T on device Dev; generate.cpp
// instantiates it for the CPU, cuda_commands.cu for CUDA.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <adabldm/defect/foreground_fit.hpp>
#include <adabldm/defect/pipeline.hpp>
#include <adabldm/io/image.hpp>

#include "args.hpp"
#include "contact_sheet.hpp"
#include "commands.hpp"
#include "device.hpp"
#include "dataset.hpp"
#include "manifest.hpp"
#include "progress.hpp"
#include "shard.hpp"

namespace cli {

namespace fs = std::filesystem;

namespace generate_detail {
inline const char* kUsage =
    "usage: adabldm generate --model PATH --ok DIR --ng DIR --masks DIR --object NAME --defect NAME -n N --out DIR\n"
    "                        [options]\n"
    "  --model PATH            base model: a diffusers pipeline folder or a single-file checkpoint\n"
    "  --trimap-encoder PATH   the trained trimap encoder (default: the model's own controlnet/ or control_model.*)\n"
    "  --config JSON           configs for what tensor shapes cannot tell (see docs/cli.md)\n"
    "  --allow-non-finite      load weights that hold NaN or Inf values (default: such a checkpoint is refused,\n"
    "                          naming the file and the tensor; the check costs one pass over the weights)\n"
    "  --ok DIR                defect-free images\n"
    "  --ng DIR, --masks DIR   real defect images and their masks (same file name, or NAME_mask.EXT)\n"
    "  --object, --defect      names for the prompt\n"
    "  --prompt-template T     default \"a {object} with a {defect}\"\n"
    "  -n N                    number of samples (indices 0 .. N-1)\n"
    "  --out DIR               output folder (images/, masks/, manifest.jsonl; shared by shards)\n"
    "  --seed S                run seed (default 0)\n"
    "  --shard i/n             generate the indices i, i+n, i+2n, ... (0 <= i < n); auto or auto/n: i (and n)\n"
    "                          from a Kubernetes Indexed Job (JOB_COMPLETION_INDEX, give n) or a Slurm array\n"
    "  --preset P              official (default) | corrected | bld\n"
    "  --steps N               DDIM steps (default 50)\n"
    "  --guidance G            classifier-free guidance (default 9)\n"
    "  --control-scale S       scale of the trimap encoder's residuals (default 1)\n"
    "  --size PX               working size; images and masks are resized to PX x PX (default 256)\n"
    "  --foreground F          all (default: textures) | auto (unsupervised, from the OK images) | DIR of masks\n"
    "                          named like the OK images; auto writes its masks to OUT/foreground/ and refuses\n"
    "                          textures (docs/foreground.md)\n"
    "  --foreground-recipe R   auto: object (default) | official (CPR as published)\n"
    "  --min-fit-scale S       smallest scale a defect that does not fit is shrunk to (default 0.25); below it\n"
    "                          another real mask is used (docs/method.md)\n"
    "  --translate-only        place real masks translated only (the official inference); default: also rotate\n"
    "                          by U[0, 360) and scale by U[0.85, 1.15] (the paper)\n"
    "  --keep-edges            a real defect touching its image's border is placed flush with a border (turned by\n"
    "                          quarter turns only), as breaks and chipped edges occur; default: anywhere (the paper)\n"
    "  --no-adapt              decode with the plain decoder\n"
    "  --adapt-steps N         online decoder adaptation steps (default 200)\n"
    "  --adapt-lr LR           its AdamW learning rate (default 1e-4)\n"
    "  --adapt-last-blocks K   adapt only the decoder's last K up blocks and output layers (default 0: all of it);\n"
    "                          cheaper steps, see docs/performance.md for what each choice costs and keeps\n"
    "  --resume                skip samples already written completely (failed ones are retried)\n"
    "  --device cpu|cuda       where the networks run (default cpu; cuda needs a build with the CUDA backend)\n"
    "  --dtype f32|f16         storage of the UNet and trimap encoder (cpu: f32; cuda: default f16); the VAE\n"
    "                          and the decoder adaptation run in f32\n"
    "  --tf32                  cuda: allow TF32 tensor cores for f32 matrix products and convolutions\n"
    "  --cpu-matmul f32|bf16   cpu: bf16 multiplies the float matrix products' operands in bfloat16 (float32 sums)\n"
    "                          on CPUs with AMX or AVX512-BF16 (1.6-1.8x per SD1.5 UNet step, VAE decode or\n"
    "                          adaptation step with AMX; 8 significant bits); default f32 (or ADABLDM_CPU_MATMUL)\n"
    "  --adapt-dtype f32|bf16  cuda: the decoder adaptation's compute type (bf16: mixed precision with f32 master\n"
    "                          weights and AdamW; default f32)\n"
    "  --contact-sheet         also write OUT/contact_sheet.png: OK image | generated | mask overlay, one row per\n"
    "                          sample (the first --contact-rows, default 16, of this run), labelled #index, seed\n"
    "                          and prompt\n"
    "  --quiet                 no progress output\n";

inline std::string index_name(int64_t i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%06lld", static_cast<long long>(i));
  return buf;
}
/// Indices already in the manifest (whole entries only: see manifest.hpp).
inline std::set<int64_t> manifest_indices(const fs::path& manifest) {
  std::set<int64_t> done;
  for (const auto& [i, e] : read_manifest(manifest)) done.insert(i);
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
/// FNV-1a (64 bit) of a mask's pixels as bytes 0 / 1 in row-major order, 16 hex digits: names the exact
/// foreground a sample was placed in.
inline std::string mask_hash(const adabldm::Tensor<float>& mask_in) {
  const auto mask = mask_in.contiguous();
  uint64_t h = 14695981039346656037ull;
  for (int64_t i = 0; i < mask.numel(); ++i) h = (h ^ (mask.data()[i] >= 0.5f ? 1u : 0u)) * 1099511628211ull;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}
}  // namespace generate_detail

inline Args generate_args(int argc, char** argv) {
  return Args(argc, argv, 2,
              {"model", "trimap-encoder", "config", "ok", "ng", "masks", "object", "defect", "prompt-template", "n",
               "out", "seed", "shard", "preset", "steps", "guidance", "size", "foreground", "adapt-steps", "device",
               "cpu-matmul", "adapt-lr", "adapt-last-blocks",
               "dtype", "adapt-dtype", "min-fit-scale", "contact-rows", "control-scale", "foreground-recipe"},
              {"help", "no-adapt", "resume", "quiet", "translate-only", "tf32", "contact-sheet", "allow-non-finite",
               "keep-edges"});
}

/// A contact-sheet row; samples smaller than 128 px are enlarged (nearest) so that they can be seen.
inline ContactRow contact_row(const adabldm::Tensor<float>& ok, const adabldm::Tensor<float>& image,
                              const adabldm::Tensor<float>& mask, const std::string& label) {
  const int64_t s = image.dim(2), k = (127 + s) / s;
  auto up = [&](const adabldm::Tensor<float>& t) {
    return k > 1 ? adabldm::defect::resize_nearest(t, static_cast<int>(s * k), static_cast<int>(s * k)) : t;
  };
  return {up(ok), up(image), up(mask), label};
}

/// How the sample differs from its OK image (both [1, 3, S, S] in [-1, 1]), inside and outside the defect mask:
/// mean |difference| in [0, 1] units, and the PSNR of the background (the part the method must keep).
inline nlohmann::json change_metrics(const adabldm::Tensor<float>& ok, const adabldm::Tensor<float>& image,
                                     const adabldm::Tensor<float>& mask) {
  const auto o = ok.contiguous(), g = image.contiguous(), m = mask.contiguous();
  const int64_t plane = m.numel();
  double in_abs = 0, out_abs = 0, out_sq = 0;
  int64_t in_n = 0, out_n = 0;
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t i = 0; i < plane; ++i) {
      const double d = 0.5 * (std::clamp(g.data()[c * plane + i], -1.0f, 1.0f) - o.data()[c * plane + i]);  // [0, 1] units
      if (m.data()[i] >= 0.5f) {
        in_abs += std::fabs(d), ++in_n;
      } else {
        out_abs += std::fabs(d), out_sq += d * d, ++out_n;
      }
    }
  const double mse = out_n ? out_sq / static_cast<double>(out_n) : 0.0;
  return {{"defect_mean_abs_change", in_n ? in_abs / static_cast<double>(in_n) : 0.0},
          {"background_mean_abs_change", out_n ? out_abs / static_cast<double>(out_n) : 0.0},
          {"background_psnr_db", mse > 0 ? 10.0 * std::log10(1.0 / mse) : 99.0}};
}

/// No NaN or Inf anywhere in t.
inline bool all_finite(const adabldm::Tensor<float>& t) {
  const auto c = t.contiguous();
  for (int64_t i = 0; i < c.numel(); ++i)
    if (!std::isfinite(c.data()[i])) return false;
  return true;
}

/// Every argument of generate, checked before any file is read or written.
struct GenerateSettings {
  int64_t n = 0;
  uint64_t seed = 0;
  Shard shard;
  adabldm::PipelineOptions pipeline;
  std::string object, defect, out, foreground;
  adabldm::defect::ForegroundRecipe foreground_recipe = adabldm::defect::ForegroundRecipe::Object;
  bool resume = false, quiet = false;
  int contact_rows = 0;  ///< --contact-sheet: the first this many samples of the run in OUT/contact_sheet.png
};

inline GenerateSettings generate_settings(const Args& args) {
  using namespace adabldm;
  GenerateSettings g;
  const std::string adapt_dtype = args.get("adapt-dtype", "f32");
  check(adapt_dtype == "f32" || adapt_dtype == "bf16", "--adapt-dtype ", adapt_dtype, ": expected f32 or bf16");
  check(args.has("n"), "-n must be given (the number of samples)");
  g.n = args.integer_in("n", -1, 1, 1000000000);
  g.seed = static_cast<uint64_t>(args.integer_in("seed", 0, 0, 9007199254740991L));
  if (args.has("shard")) g.shard = parse_shard(args.get("shard"));
  auto& o = g.pipeline;
  o.preset = sampling::parse_preset(args.get("preset", "official"));
  check(o.preset != sampling::Preset::None, "--preset none is not a defect-generation preset (use adabldm sample)");
  o.steps = static_cast<int>(args.integer_in("steps", 50, 2, 1000));
  o.guidance = args.number_in("guidance", 9.0, 0.0, 100.0);
  o.control_scale = static_cast<float>(args.number_in("control-scale", 1.0, 0.0, 100.0));
  o.size = static_cast<int>(args.integer_in("size", 256, 8, 4096));
  check(o.size % 8 == 0, "option --size ", o.size, ": must be a multiple of 8 (the autoencoder's downscale)");
  if (args.has("prompt-template")) o.prompt_template = args.get("prompt-template");
  o.synthesis.rotate_and_scale = !args.flag("translate-only");
  o.synthesis.keep_edges = args.flag("keep-edges");
  o.synthesis.min_fit_scale = args.number_in("min-fit-scale", 0.25, 0.01, 1.0);
  o.adapt = !args.flag("no-adapt");
  o.adapt_in_bf16 = adapt_dtype == "bf16";
  o.adaptation.steps = static_cast<int>(args.integer_in("adapt-steps", 200, 0, 100000));
  o.adaptation.lr = args.number_in("adapt-lr", 1e-4, 0.0, 1.0);
  o.adaptation.last_blocks = static_cast<int>(args.integer_in("adapt-last-blocks", 0, 0, 64));
  g.object = args.require_nonempty("object");
  g.defect = args.require_nonempty("defect");
  g.out = args.require_nonempty("out");
  check<IoError>(!fs::exists(g.out) || fs::is_directory(g.out), "--out ", g.out, ": exists and is not a folder");
  g.foreground = args.get("foreground", "all");
  check<IoError>(g.foreground == "all" || g.foreground == "auto" || fs::is_directory(g.foreground), "--foreground ",
                 g.foreground, ": not all, auto or a folder");
  const std::string recipe = args.get("foreground-recipe", "object");
  check(recipe == "object" || recipe == "official", "--foreground-recipe ", recipe, ": expected object or official");
  g.foreground_recipe = defect::parse_foreground_recipe(recipe);
  g.resume = args.flag("resume");
  g.quiet = args.flag("quiet");
  if (args.flag("contact-sheet")) g.contact_rows = static_cast<int>(args.integer_in("contact-rows", 16, 1, 256));
  return g;
}

template <class T, class Dev>
int generate_on(const Args& args) {
  using namespace adabldm;
  using namespace generate_detail;
  GenerateSettings g = generate_settings(args);
  check(!g.pipeline.adapt_in_bf16 || !std::is_same_v<Dev, Cpu>, "--adapt-dtype bf16 needs --device cuda");
  Progress progress(1, g.quiet);

  // Inputs: every file is read (decoded) before the model is loaded, so bad input fails fast, with no output.
  const auto ok_files = list_images(args.require("ok"), "ok");
  progress.note("checking " + std::to_string(ok_files.size()) + " OK images");
  check_images_decode(ok_files, "ok");
  const auto ng_files = list_images(args.require("ng"), "ng");
  const auto defects = read_defects(ng_files, args.require("masks"));
  const std::string& fg_mode = g.foreground;
  std::vector<fs::path> fg_files;
  if (fg_mode != "all" && fg_mode != "auto") {
    for (const auto& f : ok_files) {
      fs::path p;
      for (const char* ext : {".png", ".bmp", ".jpg"})
        if (fs::exists(fs::path(fg_mode) / (f.stem().string() + ext))) p = fs::path(fg_mode) / (f.stem().string() + ext);
      check<IoError>(!p.empty(), "--foreground ", fg_mode, ": no mask for ", f.filename().string());
      fg_files.push_back(p);
    }
    check_images_decode(fg_files, "foreground");
  }

  const models::LoadOptions opt{models::ConfigOverrides::from_file(args.get("config")), "", args.flag("allow-non-finite")};
  progress.note("loading " + args.require("model"));
  auto pipe = Pipeline<T, Dev>::load(args.get("model"), args.get("trimap-encoder"), opt);
  auto& o = pipe.options();
  o = g.pipeline;
  check(o.size % pipe.vae().downscale() == 0, "option --size ", o.size, ": must be a multiple of ",
        pipe.vae().downscale(), " (this model's autoencoder downscale)");
  const std::size_t up_blocks = pipe.vae().decoder.up_blocks.size();
  check(static_cast<std::size_t>(o.adaptation.last_blocks) <= up_blocks, "option --adapt-last-blocks ",
        o.adaptation.last_blocks, ": this model's decoder has ", up_blocks, " up blocks");

  // Foreground per OK image.
  std::vector<Tensor<float>> foregrounds(ok_files.size());
  if (fg_mode == "auto") {
    progress.note("fitting the foreground predictor on " + std::to_string(ok_files.size()) + " OK images");
    std::vector<Tensor<float>> images;
    for (const auto& f : ok_files) images.push_back(pipe.prepare_image(read_image(f.string())));
    Rng rng(derive_seed(g.seed, 0xF0F0));
    try {
      foregrounds = defect::fit_foregrounds(pipe.vae(), images, rng, defect::foreground_settings(g.foreground_recipe)).masks;
    } catch (const defect::ForegroundIsTexture& e) {
      throw Error(std::string("--foreground auto: ") + e.what() + "; use --foreground all");
    } catch (const Error& e) {
      throw Error(std::string("--foreground auto: ") + e.what());
    }
  } else {
    for (std::size_t i = 0; i < fg_files.size(); ++i) foregrounds[i] = defect::read_foreground_mask(fg_files[i].string(), o.size);
  }

  // Outputs: created only now that everything is checked.
  const std::string& out = g.out;
  try {
    fs::create_directories(fs::path(out) / "images");
    fs::create_directories(fs::path(out) / "masks");
    if (fg_mode == "auto") fs::create_directories(fs::path(out) / "foreground");
  } catch (const fs::filesystem_error& e) {
    throw IoError("--out " + out + ": cannot create the output folders (" + e.code().message() + ")");
  }
  // What the manifest records of each OK image's foreground: the file (auto: written here, at --size) and a hash
  // of the --size x --size mask the defect was placed in.
  std::vector<std::string> fg_record(ok_files.size());
  for (std::size_t i = 0; i < ok_files.size(); ++i) {
    if (fg_mode == "auto") {
      fg_record[i] = "foreground/" + ok_files[i].stem().string() + ".png";
      write_mask((fs::path(out) / fg_record[i]).string(), foregrounds[i]);
    } else if (fg_mode != "all") {
      fg_record[i] = fg_files[i].string();
    }
  }
  std::vector<int64_t> todo;
  const auto manifest = fs::path(out) / "manifest.jsonl";
  const auto failures = fs::path(out) / "failures.jsonl";
  const auto done = g.resume ? manifest_indices(manifest) : std::set<int64_t>{};
  for (int64_t i = g.shard.index; i < g.n; i += g.shard.count) {
    const auto img = fs::path(out) / "images" / (index_name(i) + ".png");
    const auto msk = fs::path(out) / "masks" / (index_name(i) + ".png");
    if (g.resume && done.count(i) && fs::exists(img) && fs::exists(msk)) continue;
    todo.push_back(i);
  }
  const int per_sample = o.steps + (o.adapt ? o.adaptation.steps : 0);
  Progress run(static_cast<int>(todo.size()) * per_sample, g.quiet);
  int64_t finished = 0, failed = 0;
  for (const int64_t i : todo) {
    const uint64_t s = derive_seed(g.seed, static_cast<uint64_t>(i));
    Rng pick(derive_seed(s, 1));
    const auto ok_index = static_cast<std::size_t>(pick.uniform_int(0, static_cast<int64_t>(ok_files.size()) - 1));
    DefectSample sample;
    Tensor<float> job_ok;
    try {
      job_ok = read_image(ok_files[ok_index].string());
      DefectJob job;
      job.ok = job_ok;
      job.defects = defects;
      job.object = g.object;
      job.defect = g.defect;
      job.seed = s;
      job.foreground = foregrounds[ok_index];
      sample = pipe.generate(job, [&](const char* phase, int step, int steps) {
        const int offset = std::string(phase) == "adaptation" ? o.steps : 0;
        run.update(static_cast<double>((finished + failed) * per_sample + offset + step),
                   "sample " + index_name(i) + " " + phase + " " + std::to_string(step) + "/" + std::to_string(steps));
      });
      check(all_finite(sample.image), "the generated image has non-finite values (NaN or Inf): the model diverged");
    } catch (const IoError&) {
      throw;  // the disk or the inputs changed under the run: every later sample would fail the same way
    } catch (const std::exception& e) {
      // One sample, not the run: recorded with its reason, retried by --resume (it is not in the manifest).
      ++failed;
      const nlohmann::json line = {{"index", i}, {"seed", s}, {"ok_source", ok_files[ok_index].string()},
                                   {"reason", e.what()}};
      append_line(failures, line.dump());
      run.warn("sample " + index_name(i) + " failed (" + e.what() + "); recorded in failures.jsonl, continuing");
      continue;
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
                           {"ng_dir", args.require("ng")},
                           {"masks_dir", args.require("masks")},
                           {"placement", {{"y0", p.y0}, {"x0", p.x0}, {"h", p.h}, {"w", p.w}, {"angle_deg", p.angle_deg},
                                          {"scale", p.scale}, {"draws", p.draws}, {"shrunk", p.shrunk},
                                          {"skipped", p.skipped}, {"edge", p.edge}}},
                           {"prompt", sample.prompt},
                           {"preset", sampling::preset_name(o.preset)},
                           {"steps", o.steps},
                           {"guidance", o.guidance},
                           {"size", o.size},
                           {"foreground", fg_mode},
                           {"adapted", sample.adapted},
                           {"adapt_steps", sample.adapted ? o.adaptation.steps : 0},
                           {"adapt_lr", o.adaptation.lr},
                           {"adapt_last_blocks", o.adaptation.last_blocks},
                           {"cpu_matmul", adabldm::ops::detail::use_bf16_gemm() ? "bf16" : "f32"},
                           {"change", change_metrics(pipe.prepare_image(job_ok), sample.image, sample.mask)},
                           {"timings", sample.timings}};
    if (fg_mode != "all") {
      line["foreground_mask"] = fg_record[ok_index];
      line["foreground_hash"] = mask_hash(foregrounds[ok_index]);
      if (fg_mode == "auto") line["foreground_recipe"] = defect::foreground_recipe_name(g.foreground_recipe);
    }
    append_line(manifest, line.dump());
    ++finished;
  }
  if (g.contact_rows > 0) {
    // From what is in OUT (so a resumed or sharded run gets one too): this process's indices, lowest first.
    std::vector<ContactRow> sheet;
    for (const auto& [i, e] : read_manifest(manifest)) {
      if (i >= g.n || (i - g.shard.index) % g.shard.count != 0) continue;
      if (static_cast<int>(sheet.size()) == g.contact_rows) break;
      sheet.push_back(contact_row(pipe.prepare_image(read_image(e.ok_source)),
                                  read_image((fs::path(out) / e.image).string()),
                                  read_mask((fs::path(out) / e.mask).string()),
                                  "#" + std::to_string(i) + " seed " + std::to_string(g.seed) + ": " + e.prompt));
    }
    if (!sheet.empty()) {
      const auto path = fs::path(out) / "contact_sheet.png";
      write_contact_sheet(path.string(), sheet);
      run.note("contact sheet (OK image | generated | mask, " + std::to_string(sheet.size()) + " rows): " + path.string());
    }
  }
  if (failed == 0) {
    run.finish("generated " + std::to_string(finished) + " samples into " + out);
    return 0;
  }
  run.warn("generated " + std::to_string(finished) + " samples into " + out + "; " + std::to_string(failed) + " of " +
           std::to_string(todo.size()) + " failed (see " + failures.string() + "; --resume retries them)");
  return kExitSomeSamplesFailed;
}

}  // namespace cli
