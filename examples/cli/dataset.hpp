#pragma once
// Reading the user's image folders for generate and train: OK images, NG images and their masks (same file
// name, or NAME_mask.EXT), with every file checked up front so bad input fails before any model is loaded.
#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include <adabldm/defect/pipeline.hpp>
#include <adabldm/io/image.hpp>

namespace cli {

namespace fs = std::filesystem;

inline bool is_image(const fs::path& p) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return e == ".png" || e == ".jpg" || e == ".jpeg" || e == ".bmp";
}

/// The images of a folder, sorted by name; an error naming the option when there are none.
inline std::vector<fs::path> list_images(const std::string& dir, const char* what) {
  adabldm::check<adabldm::IoError>(fs::is_directory(dir), "--", what, " ", dir, ": no such folder");
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && is_image(e.path())) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  adabldm::check<adabldm::IoError>(!out.empty(), "--", what, " ", dir, ": no images (png, jpg, bmp) in this folder");
  return out;
}

/// Decodes every image once, before any work starts: a truncated or corrupt file is refused up front with one
/// line naming it (never after samples were written). `what` is the option (e.g. "ok").
inline void check_images_decode(const std::vector<fs::path>& files, const char* what) {
  for (const auto& f : files) {
    try {
      const auto img = adabldm::read_image_u8(f.string());
      adabldm::check<adabldm::IoError>(img.width > 0 && img.height > 0, f.string(), ": empty image");
    } catch (const adabldm::Error& e) {
      throw adabldm::IoError(std::string("--") + what + ": " + e.what());
    }
  }
}

/// The mask of NG image `img` in `masks`: the same file name, or the same stem (+ "_mask") with any extension.
inline fs::path find_mask(const fs::path& img, const std::string& masks) {
  const std::string stem = img.stem().string();
  for (const std::string& s : {stem, stem + "_mask"})
    for (const char* ext : {".png", ".bmp", ".jpg", ".jpeg", ".PNG"})
      if (fs::exists(fs::path(masks) / (s + ext))) return fs::path(masks) / (s + ext);
  throw adabldm::IoError("--masks " + masks + ": no mask for " + img.filename().string() + " (looked for " + stem +
                         ".png and " + stem + "_mask.png)");
}

/// Every NG image with its mask, checked: readable, same size, not empty.
inline std::vector<adabldm::DefectSource> read_defects(const std::vector<fs::path>& ng_files, const std::string& masks_dir) {
  using namespace adabldm;
  check<IoError>(fs::is_directory(masks_dir), "--masks ", masks_dir, ": no such folder");
  std::vector<DefectSource> defects;
  for (const auto& ng : ng_files) {
    const auto mpath = find_mask(ng, masks_dir);
    const auto img = read_image_u8(ng.string(), 3);
    auto mask = read_mask(mpath.string());
    check<ShapeError>(mask.dim(2) == img.height && mask.dim(3) == img.width, mpath.string(), ": mask is ", mask.dim(3),
                      "x", mask.dim(2), " but ", ng.string(), " is ", img.width, "x", img.height);
    int64_t on = 0;
    for (int64_t i = 0; i < mask.numel(); ++i) on += mask.data()[i] > 0.5f;
    check(on > 0, mpath.string(), ": the mask is empty (no pixel above 127)");
    defects.push_back({image_to_tensor(img), std::move(mask), mpath.filename().string()});
  }
  return defects;
}

}  // namespace cli
