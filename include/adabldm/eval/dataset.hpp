#pragma once
// An anomaly-detection dataset in MVTec AD's layout, split for one defect type:
//   ROOT/train/good/NAME.ext                                         defect-free training images
//   ROOT/test/good/NAME.ext, ROOT/test/TYPE/NAME.ext                 test images
//   ROOT/ground_truth/TYPE/NAME_mask.png                             their masks
//   ROOT/fewshot/TYPE/NAME.ext, ROOT/fewshot_ground_truth/TYPE/NAME_mask.png   the few real defects to train on
// Protocols: FewShotFolder uses fewshot/ for training and test/ to measure; AnomalyDiffusion (the field's usual
// split of a plain MVTec AD root, which has no fewshot/) takes the first third of test/TYPE sorted by name as the
// few-shot defects and measures on the other two thirds plus test/good.
//
// Images are read and resized to size x size without keeping the aspect ratio (as MVTec AD methods do); masks are
// resized bilinearly and thresholded at 0.5.
#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "adabldm/core/error.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/defect/imgproc.hpp"
#include "adabldm/io/image.hpp"

namespace adabldm::eval {

namespace fs = std::filesystem;

enum class Protocol { FewShotFolder, AnomalyDiffusion };

inline Protocol parse_protocol(const std::string& s) {
  if (s == "fewshot") return Protocol::FewShotFolder;
  if (s == "anomalydiffusion") return Protocol::AnomalyDiffusion;
  throw Error("protocol \"" + s + "\": expected fewshot or anomalydiffusion");
}
inline const char* protocol_name(Protocol p) { return p == Protocol::FewShotFolder ? "fewshot" : "anomalydiffusion"; }

/// One image of the split: its file, its mask file (empty: defect-free) and its name, the path under ROOT without
/// the extension (e.g. "test/crack/exp1_num_86828"), which names its score map.
struct LabeledFile {
  std::string image, mask, name;
  bool defective() const { return !mask.empty(); }
};

struct AdSplit {
  std::string root, type;
  Protocol protocol = Protocol::FewShotFolder;
  std::vector<std::string> train_good;  // image files
  std::vector<LabeledFile> fewshot;     // real defects to train on
  std::vector<LabeledFile> test;        // test/good then test/TYPE (defective ones with masks)
};

/// The image files of a folder (png, jpg, jpeg, bmp), sorted by name; an error names the folder when it is
/// missing or holds none.
inline std::vector<fs::path> image_files(const fs::path& dir) {
  check<IoError>(fs::is_directory(dir), dir.string(), ": no such folder");
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string ext = e.path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if ((ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp") && fs::is_regular_file(e.path()))
      out.push_back(e.path());
  }
  check<IoError>(!out.empty(), dir.string(), ": no images (png, jpg, jpeg, bmp)");
  std::sort(out.begin(), out.end());
  return out;
}

namespace detail {
/// MVTec AD names a mask NAME_mask.png; a plain NAME.png is accepted too.
inline std::string find_mask(const fs::path& mask_dir, const fs::path& image) {
  const std::string stem = image.stem().string();
  for (const std::string& candidate : {stem + "_mask.png", stem + ".png"})
    if (fs::is_regular_file(mask_dir / candidate)) return (mask_dir / candidate).string();
  throw IoError(image.string() + ": no mask " + (mask_dir / (stem + "_mask.png")).string());
}
inline std::vector<LabeledFile> labeled(const fs::path& root, const std::string& image_dir, const std::string& mask_dir) {
  std::vector<LabeledFile> out;
  for (const auto& f : image_files(root / image_dir)) {
    const std::string name = image_dir + "/" + f.stem().string();
    out.push_back({f.string(), mask_dir.empty() ? std::string() : find_mask(root / mask_dir, f), name});
  }
  return out;
}
}  // namespace detail

/// Lists the split of `root` for defect `type` under `protocol` (reads no pixels).
inline AdSplit load_ad_split(const std::string& root, const std::string& type, Protocol protocol) {
  check(!type.empty() && type != "good" && type.find('/') == std::string::npos && type != "." && type != "..",
        "defect type \"", type, "\": a folder name under test/ other than good");
  const fs::path r(root);
  check<IoError>(fs::is_directory(r), root, ": no such folder");
  AdSplit s{root, type, protocol, {}, {}, {}};
  for (const auto& f : image_files(r / "train" / "good")) s.train_good.push_back(f.string());
  auto test_good = detail::labeled(r, "test/good", "");
  auto test_defects = detail::labeled(r, "test/" + type, "ground_truth/" + type);
  if (protocol == Protocol::FewShotFolder) {
    s.fewshot = detail::labeled(r, "fewshot/" + type, "fewshot_ground_truth/" + type);
  } else {
    const std::size_t k = test_defects.size() / 3;
    check(k >= 1, root, "/test/", type, ": ", test_defects.size(), " images; the anomalydiffusion protocol needs at least 3");
    s.fewshot.assign(test_defects.begin(), test_defects.begin() + static_cast<std::ptrdiff_t>(k));
    test_defects.erase(test_defects.begin(), test_defects.begin() + static_cast<std::ptrdiff_t>(k));
  }
  s.test = std::move(test_good);
  s.test.insert(s.test.end(), test_defects.begin(), test_defects.end());
  return s;
}

/// Whether every image of the given files is grayscale (so the detector reads one channel).
inline bool all_grayscale(const std::vector<std::string>& files) {
  for (const auto& f : files)
    if (read_image_u8(f, 0).channels != 1) return false;
  return true;
}

/// An image as the detector sees it: [channels, size, size] in [-1, 1].
inline Tensor<float, Cpu> load_detector_image(const std::string& path, int size, int channels) {
  const Image img = defect::resize_image(read_image_u8(path, channels), size, size);
  return image_to_tensor(img).reshape({channels, size, size});
}
/// A mask as the detector sees it: [1, size, size] in {0, 1} (bilinear resize, > 0.5).
inline Tensor<float, Cpu> load_detector_mask(const std::string& path, int size) {
  return defect::resize_mask(read_mask(path), size, size, 0.5f).reshape({1, size, size});
}

}  // namespace adabldm::eval
