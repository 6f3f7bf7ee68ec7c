// adabldm foreground: fits the unsupervised foreground predictor on the OK images of one category and writes
// what it sees (docs/foreground.md): per image the binary mask OUT/<name>.png and the map OUT/maps/<name>.png at
// the image's own size, and OUT/contact_sheet.png. With --reference, the IoU against reference masks.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <adabldm/defect/foreground_fit.hpp>
#include <adabldm/io/image.hpp>
#include <adabldm/models/loader.hpp>

#include "args.hpp"
#include "commands.hpp"
#include "contact_sheet.hpp"
#include "dataset.hpp"
#include "embedded_model.hpp"

namespace cli {
namespace {

namespace fs = std::filesystem;
using adabldm::Tensor;

const char* kUsage =
    "usage: adabldm foreground --ok DIR --out DIR [options]\n"
    "  --ok DIR          defect-free images of one category (png, jpg, bmp)\n"
    "  --out DIR         writes <name>.png (mask, 0/255, the image's size), maps/<name>.png (the predictor's map,\n"
    "                    0..255) and contact_sheet.png (image | map | mask outline, one row per image)\n"
    "  --model PATH      whose VAE encoder gives the features: a diffusers pipeline or vae folder, or a single-file\n"
    "                    checkpoint (default: the embedded model, models/tile-64)\n"
    "  --config JSON     configs for what tensor shapes cannot tell (see docs/cli.md)\n"
    "  --allow-non-finite  load weights that hold NaN or Inf values (default: refused, naming the file and the\n"
    "                    tensor)\n"
    "  --size PX         working size, as generate's --size (default 256)\n"
    "  --recipe R        object (default) | official (CPR as published; docs/foreground.md)\n"
    "  --seed S          seed of the predictor's sampling (default 0; generate uses its own --seed)\n"
    "  --reference DIR   reference masks named like the images: also writes iou.csv and prints the mean and\n"
    "                    minimum IoU (at the reference masks' size)\n"
    "  --quiet           print only errors\n";

/// [1, 1, h, w] in [0, 1] -> gray [1, 1, H, W] in [-1, 1] (for the contact sheet), bilinear.
Tensor<float> map_as_image(const Tensor<float>& map, int h, int w) {
  auto t = adabldm::defect::resize_bilinear(map, h, w).clone();
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = 2.0f * std::clamp(t.data()[i], 0.0f, 1.0f) - 1.0f;
  return t;
}

/// The map as 8-bit gray at h x w, x255 truncated like ForegroundPredictor::binarise (so that a PredictorMap
/// read of the file gives the official binarisation).
adabldm::Image map_as_u8(const Tensor<float>& map, int h, int w) {
  const auto t = adabldm::defect::resize_bilinear(map, h, w);
  adabldm::Image img{w, h, 1, std::vector<uint8_t>(static_cast<std::size_t>(t.numel()))};
  for (int64_t i = 0; i < t.numel(); ++i)
    img.pixels[static_cast<std::size_t>(i)] = static_cast<uint8_t>(std::clamp(t.data()[i], 0.0f, 1.0f) * 255.0f);
  return img;
}

double iou(const Tensor<float>& a, const Tensor<float>& b) {
  double inter = 0, uni = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const bool x = a.data()[i] >= 0.5f, y = b.data()[i] >= 0.5f;
    inter += x && y, uni += x || y;
  }
  return uni > 0 ? inter / uni : 1.0;
}

}  // namespace

int cmd_foreground(int argc, char** argv) {
  using namespace adabldm;
  const Args args(argc, argv, 2, {"ok", "out", "model", "config", "size", "recipe", "seed", "reference"},
                  {"help", "quiet", "allow-non-finite"});
  if (args.flag("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  check(args.positional().empty(), "unexpected argument \"", args.positional().empty() ? "" : args.positional()[0], "\"");
  // Every argument and input checked before the model is loaded or anything is written.
  const auto files = list_images(args.require("ok"), "ok");
  check_images_decode(files, "ok");
  const std::string out = args.require_nonempty("out");
  check<IoError>(!fs::exists(out) || fs::is_directory(out), "--out ", out, ": exists and is not a folder");
  const int size = static_cast<int>(args.integer_in("size", 256, 16, 4096));
  check(size % 4 == 0, "option --size ", size, ": must be a multiple of 4 (the feature grid's stride)");
  const std::string recipe_name = args.get("recipe", "object");
  check(recipe_name == "object" || recipe_name == "official", "--recipe ", recipe_name, ": expected object or official");
  const auto settings = defect::foreground_settings(defect::parse_foreground_recipe(recipe_name));
  const uint64_t seed = static_cast<uint64_t>(args.integer_in("seed", 0, 0, 9007199254740991L));
  std::vector<fs::path> references;
  if (args.has("reference")) {
    const std::string ref = args.get("reference");
    check<IoError>(fs::is_directory(ref), "--reference ", ref, ": no such folder");
    for (const auto& f : files) {
      const auto p = fs::path(ref) / (f.stem().string() + ".png");
      check<IoError>(fs::exists(p), "--reference ", ref, ": no mask ", p.filename().string(), " for ", f.filename().string());
      references.push_back(p);
    }
    check_images_decode(references, "reference");
  }
  const bool quiet = args.flag("quiet");

  const std::string model = args.has("model") ? args.get("model") : (fs::path(models_dir()) / "tile-64").string();
  const models::LoadOptions opt{models::ConfigOverrides::from_file(args.get("config")), "", args.flag("allow-non-finite")};
  const auto vae = models::load_vae<float>(models::ModelSource(model, opt));
  check(size % vae.downscale() == 0, "option --size ", size, ": must be a multiple of ", vae.downscale(),
        " (this model's autoencoder downscale)");

  std::vector<Image> originals;
  std::vector<Tensor<float>> images;
  for (const auto& f : files) {
    originals.push_back(read_image_u8(f.string(), 3));
    images.push_back(defect::resize_bilinear(image_to_tensor(originals.back()), size, size));  // as generate
  }
  Rng rng(derive_seed(seed, 0xF0F0));  // the stream generate's --foreground auto uses for the same seed
  defect::ForegroundFit fit;
  try {
    fit = defect::fit_foregrounds(vae, images, rng, settings);
  } catch (const defect::ForegroundIsTexture& e) {
    throw Error("--ok " + args.get("ok") + ": " + e.what() + "; use --foreground all with generate");
  } catch (const Error& e) {
    throw Error("--ok " + args.get("ok") + ": " + e.what());
  }

  try {
    fs::create_directories(fs::path(out) / "maps");
  } catch (const fs::filesystem_error& e) {
    throw IoError("--out " + out + ": cannot create the output folders (" + e.code().message() + ")");
  }
  constexpr int kCell = 128;
  std::vector<ContactRow> sheet;
  std::vector<double> scores;
  for (std::size_t i = 0; i < files.size(); ++i) {
    const int h = originals[i].height, w = originals[i].width;
    const std::string name = files[i].stem().string() + ".png";
    write_mask((fs::path(out) / name).string(), defect::resize_mask(fit.masks[i], h, w));
    write_png((fs::path(out) / "maps" / name).string(), map_as_u8(fit.maps[i], h, w));
    std::string label = files[i].filename().string();
    if (!references.empty()) {
      const auto ref = read_mask(references[i].string());
      scores.push_back(iou(defect::resize_mask(fit.masks[i], static_cast<int>(ref.dim(2)), static_cast<int>(ref.dim(3))), ref));
      char buf[32];
      std::snprintf(buf, sizeof buf, "  IoU %.3f", scores.back());
      label += buf;
    }
    sheet.push_back({defect::resize_bilinear(images[i], kCell, kCell), map_as_image(fit.maps[i], kCell, kCell),
                     defect::resize_mask(fit.masks[i], kCell, kCell), label});
  }
  ContactStyle style;
  style.titles[0] = "image", style.titles[1] = "map", style.titles[2] = "mask";
  style.overlay_on_first = style.outline_only = true;
  write_contact_sheet((fs::path(out) / "contact_sheet.png").string(), sheet, style);

  if (!scores.empty()) {
    std::ofstream csv(fs::path(out) / "iou.csv");
    csv << "image,iou\n";
    double sum = 0;
    std::size_t worst = 0;
    for (std::size_t i = 0; i < scores.size(); ++i) {
      csv << files[i].filename().string() << "," << scores[i] << "\n";
      sum += scores[i];
      if (scores[i] < scores[worst]) worst = i;
    }
    check<IoError>(static_cast<bool>(csv), (fs::path(out) / "iou.csv").string(), ": write failed");
    std::printf("IoU against %s: mean %.4f, min %.4f (%s), %zu images\n", args.get("reference").c_str(),
                sum / static_cast<double>(scores.size()), scores[worst], files[worst].filename().string().c_str(),
                scores.size());
  }
  if (!quiet)
    std::fprintf(stderr, "adabldm foreground: %zu masks (recipe %s, %s) in %s\n", files.size(), recipe_name.c_str(),
                 model.c_str(), out.c_str());
  return 0;
}

}  // namespace cli
