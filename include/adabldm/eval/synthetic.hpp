#pragma once
// Generated defects as detector training images: the output folder of `adabldm generate` (images/, masks/,
// manifest.jsonl) read back, checked to use nothing of the test split, and composited into their OK source.
//
// Composite: the generator works at its own size (the embedded model: 64 px) on the OK image squeezed to that
// size, and keeps the background of the OK image (latent and image editing). At the detector's size its pixels
// are upsampled, so a whole generated image would be blurrier than every real one and the detector could learn
// "blurry = defect". The composite keeps the OK image, read at the detector's size, everywhere except the
// generated defect region (the mask grown by one latent cell, with a soft edge), which comes from the generated
// image. The label is the generated mask.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "adabldm/defect/imgproc.hpp"
#include "adabldm/eval/crop_paste.hpp"
#include "adabldm/eval/dataset.hpp"

namespace adabldm::eval {

struct SyntheticEntry {
  int64_t index = 0;
  std::string image, mask, ok_source;  // image and mask: full paths
};

namespace detail {
/// Whether `path` lies inside folder `dir` (both resolved: symbolic links followed, ".." removed).
inline bool inside(const fs::path& path, const fs::path& dir) {
  std::error_code ec;
  const fs::path p = fs::weakly_canonical(path, ec), d = fs::weakly_canonical(dir, ec);
  const auto [a, b] = std::mismatch(d.begin(), d.end(), p.begin(), p.end());
  return a == d.end();
}
}  // namespace detail

/// Reads DIR/manifest.jsonl (sorted by index) and refuses, naming the line, any sample whose OK source, defect
/// folders or defect mask come from the test side of `root` (test/ or ground_truth/): a detector measured on those
/// files must not have been trained on anything made from them.
inline std::vector<SyntheticEntry> read_synthetic(const std::string& dir, const std::string& root) {
  const fs::path manifest = fs::path(dir) / "manifest.jsonl";
  std::ifstream in(manifest);
  check<IoError>(in.good(), manifest.string(), ": cannot open (is ", dir, " the --out folder of adabldm generate?)");
  const fs::path test = fs::path(root) / "test", gt = fs::path(root) / "ground_truth";
  // Mask file names of the test side: generate records a defect's mask by its file name.
  std::map<std::string, std::string> test_masks;
  if (fs::is_directory(gt))
    for (const auto& e : fs::recursive_directory_iterator(gt))
      if (e.is_regular_file()) test_masks[e.path().filename().string()] = e.path().string();
  std::vector<SyntheticEntry> out;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = manifest.string() + ":" + std::to_string(n);
    const auto j = nlohmann::json::parse(line, nullptr, false);
    check<FormatError>(j.is_object() && j.contains("index") && j["index"].is_number_integer() && j.contains("image") &&
                           j["image"].is_string() && j.contains("mask") && j["mask"].is_string() &&
                           j.contains("ok_source") && j["ok_source"].is_string(),
                       where, ": not a generate manifest line (needs index, image, mask, ok_source)");
    SyntheticEntry e{j["index"].get<int64_t>(), (fs::path(dir) / j["image"].get<std::string>()).string(),
                     (fs::path(dir) / j["mask"].get<std::string>()).string(), j["ok_source"].get<std::string>()};
    std::vector<std::string> sources{e.ok_source};
    for (const char* key : {"ng_dir", "masks_dir"})
      if (j.contains(key) && j[key].is_string()) sources.push_back(j[key].get<std::string>());
    for (const auto& s : sources)
      check(!detail::inside(s, test) && !detail::inside(s, gt), where, ": made from ", s,
            ", which is on the test side of ", root, "; generate from train/ and fewshot/ only");
    if (j.contains("mask_source") && j["mask_source"].is_string()) {
      const auto hit = test_masks.find(j["mask_source"].get<std::string>());
      check(hit == test_masks.end(), where, ": its defect mask ", j["mask_source"].get<std::string>(),
            " is a test mask (", hit == test_masks.end() ? "" : hit->second, "); generate from fewshot/ only");
    }
    out.push_back(std::move(e));
  }
  check<FormatError>(!out.empty(), manifest.string(), ": no samples");
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.index < b.index; });
  return out;
}

/// One generated sample at the detector's size (see the composite above). `composite` false: the generated image
/// as it is, resized.
inline SegSample load_synthetic(const SyntheticEntry& e, int size, int channels, bool composite = true) {
  const Image gen = read_image_u8(e.image, channels);  // read once: its width is the generator's size
  SegSample out{image_to_tensor(defect::resize_image(gen, size, size)).reshape({channels, size, size}),
                load_detector_mask(e.mask, size)};
  if (!composite) return out;
  check<IoError>(fs::is_regular_file(e.ok_source), e.image, ": its OK source ", e.ok_source,
                 " is gone (the composite needs it; or pass --no-composite)");
  const Tensor<float, Cpu> ok = load_detector_image(e.ok_source, size, channels);
  // One latent cell of the embedded model (factor 4) at the generator's size, in detector pixels, at least 1.
  const int cell = std::max(1, 4 * size / std::max(1, gen.width));
  const auto region = defect::dilate(out.mask.reshape({1, 1, size, size}), 2 * cell + 1);
  const auto alpha = detail::box_blur(region, std::max(1, cell / 2));
  const int64_t plane = static_cast<int64_t>(size) * size;
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t i = 0; i < plane; ++i) {
      const float a = alpha.data()[i];
      float& v = out.image.data()[c * plane + i];
      v = a * v + (1.0f - a) * ok.data()[c * plane + i];
    }
  return out;
}

}  // namespace adabldm::eval
