#pragma once
// A small generated anomaly-detection dataset for the evaluation tests: grayscale textures (smooth noise plus a
// gradient, different per image) with dark elongated "scratches" as defects, written in MVTec AD's layout.
#include <cmath>
#include <filesystem>
#include <string>

#include "adabldm/core/rng.hpp"
#include "adabldm/io/image.hpp"

namespace toy {
namespace fs = std::filesystem;
using adabldm::Image;
using adabldm::Rng;

/// One image and (when `defect`) its mask, size x size, 8-bit gray.
inline std::pair<Image, Image> make_sample(Rng& rng, int size, bool defect) {
  Image img{size, size, 1, std::vector<uint8_t>(static_cast<std::size_t>(size) * size)};
  Image mask{size, size, 1, std::vector<uint8_t>(img.pixels.size(), 0)};
  const double gx = rng.uniform(-30, 30), gy = rng.uniform(-30, 30), fx = rng.uniform(0.1, 0.4), fy = rng.uniform(0.1, 0.4);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      const double v = 140 + gx * x / size + gy * y / size + 10 * std::sin(fx * x) * std::cos(fy * y) + rng.uniform(-12, 12);
      img.pixels[static_cast<std::size_t>(y) * size + x] = static_cast<uint8_t>(std::clamp(v, 0.0, 255.0));
    }
  if (defect) {  // a dark ellipse, 2-4 px thick and 8-20 px long, at a random angle
    const double cy = rng.uniform(0.2, 0.8) * size, cx = rng.uniform(0.2, 0.8) * size, a = rng.uniform(0, 3.14159);
    const double len = rng.uniform(8, 20) * size / 64.0, thick = rng.uniform(1.5, 3) * size / 64.0;
    for (int y = 0; y < size; ++y)
      for (int x = 0; x < size; ++x) {
        const double u = (x - cx) * std::cos(a) + (y - cy) * std::sin(a), w = -(x - cx) * std::sin(a) + (y - cy) * std::cos(a);
        if ((u * u) / (len * len) + (w * w) / (thick * thick) <= 1.0) {
          const std::size_t i = static_cast<std::size_t>(y) * size + x;
          img.pixels[i] = static_cast<uint8_t>(img.pixels[i] / 3);
          mask.pixels[i] = 255;
        }
      }
  }
  return {img, mask};
}

struct Counts {
  int train_good = 16, fewshot = 6, test_good = 6, test_defect = 6;
};

/// Writes ROOT in MVTec AD's layout with defect type "scratch"; `plain_mvtec`: no fewshot/ folders (the defects
/// all under test/, as in MVTec AD itself).
inline void write_root(const fs::path& root, int size, uint64_t seed, Counts n = {}, bool plain_mvtec = false) {
  Rng rng(seed);
  auto put = [&](const std::string& dir, const std::string& mask_dir, int count, bool defect, const std::string& prefix) {
    fs::create_directories(root / dir);
    if (defect) fs::create_directories(root / mask_dir);
    for (int i = 0; i < count; ++i) {
      const auto [img, mask] = make_sample(rng, size, defect);
      char name[32];
      std::snprintf(name, sizeof name, "%s%03d", prefix.c_str(), i);
      adabldm::write_png((root / dir / (std::string(name) + ".png")).string(), img);
      if (defect) adabldm::write_png((root / mask_dir / (std::string(name) + "_mask.png")).string(), mask);
    }
  };
  put("train/good", "", n.train_good, false, "g");
  put("test/good", "", n.test_good, false, "t");
  put("test/scratch", "ground_truth/scratch", n.test_defect + (plain_mvtec ? n.fewshot : 0), true, "d");
  if (!plain_mvtec) put("fewshot/scratch", "fewshot_ground_truth/scratch", n.fewshot, true, "f");
}

}  // namespace toy
