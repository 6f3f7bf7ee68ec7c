// plate_reference_masks: reference foreground masks of the MPDD metal plates (docs/foreground.md), made with
// colour and geometry rules only (no model), so that the learned foreground predictor can be scored against them.
//
//   plate_reference_masks OK_DIR OUT_DIR [OVERLAY_DIR]
//
// Per image (RGB, any size), at the image's own resolution:
//   1. paint: the blue paint, b - max(r, g) >= kBlueMargin, or >= kDarkBlueMargin and >= b / 4 on dark navy plates
//      and in shadows (the grey wall and the wire have r ~ g ~ b), or glare: bluish (b - r >= kGlareBlue) or near
//      white (min(r, g, b) >= kGlareWhite), which the wall never is (measured on the border bands of all 30);
//   2. a 3 x 3 closing joins the paint's speckle, and the largest 4-connected region is the plate;
//   3. holes (unpainted regions the plate encloses) smaller than kGlareArea of the image, or bluish on average
//      (mean b - r >= kHoleBlue), are glare or speckle and become plate; the others are grey: the hanging hole,
//      with the wire through it and over the plate, and stay background. Notches are open to the outside, so they
//      are never holes.
// Writes OUT_DIR/<name>.png at 256 x 256 (0/255, nearest of the full-size rule) and, with OVERLAY_DIR, montages of
// six images with the mask outline drawn in red, for checking by eye.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <adabldm/defect/imgproc.hpp>
#include <adabldm/defect/mask_regions.hpp>
#include <adabldm/io/image.hpp>

namespace fs = std::filesystem;
using namespace adabldm;

constexpr int kBlueMargin = 30;       // b - max(r, g) of paint, 8-bit units ...
constexpr int kDarkBlueMargin = 8;    // ... or at least this and a quarter of b (the dark navy plates, shadows)
constexpr int kGlareBlue = 15;        // glare: bluish (b - r >= this; the wall's border band has <= 7) ...
constexpr int kGlareWhite = 228;      // ... or near white (min(r, g, b) >= this; the wall's border band has <= 211)
constexpr double kHoleBlue = 12.0;    // a larger hole is glare when its mean b - r is at least this
constexpr double kGlareArea = 0.004;  // holes below this fraction of the image are glare on the paint
constexpr int kOutSize = 256;

Tensor<float, Cpu> plate_mask(const Image& img) {
  auto paint = Tensor<float, Cpu>::empty({1, 1, img.height, img.width});
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x) {
      const int r = img.at(y, x, 0), g = img.at(y, x, 1), b = img.at(y, x, 2);
      const int margin = b - std::max(r, g);
      const bool blue = margin >= kBlueMargin || (margin >= kDarkBlueMargin && 4 * margin >= b);
      const bool glare = b - r >= kGlareBlue || std::min({r, g, b}) >= kGlareWhite;
      paint.data()[static_cast<int64_t>(y) * img.width + x] = blue || glare ? 1.0f : 0.0f;
    }
  const auto plate = defect::largest_region(defect::morph_close(paint, 3));
  const double glare_px = kGlareArea * img.width * img.height;
  return defect::fill_holes(plate, [&](const defect::MaskRegion& hole) {
    if (hole.pixels.size() < glare_px) return true;
    double blue_minus_red = 0.0;
    for (int64_t i : hole.pixels) blue_minus_red += img.pixels[i * 3 + 2] - img.pixels[i * 3];
    return blue_minus_red / static_cast<double>(hole.pixels.size()) >= kHoleBlue;
  });
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: plate_reference_masks OK_DIR OUT_DIR [OVERLAY_DIR]\n");
    return 2;
  }
  try {
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(argv[1]))
      if (e.path().extension() == ".png") files.push_back(e.path());
    std::sort(files.begin(), files.end());
    check<IoError>(!files.empty(), argv[1], ": no PNG images");
    fs::create_directories(argv[2]);
    const int cell = kOutSize, per = 6;
    Image sheet;
    for (std::size_t i = 0; i < files.size(); ++i) {
      const Image img = read_image_u8(files[i].string(), 3);
      const auto mask = defect::resize_nearest(plate_mask(img), kOutSize, kOutSize);
      write_png((fs::path(argv[2]) / files[i].filename()).string(), defect::mask_to_image(mask));
      if (argc < 4) continue;
      if (i % per == 0) sheet = Image{3 * cell, 2 * cell, 3, std::vector<uint8_t>(3u * cell * 2 * cell * 3, 0)};
      const Image small = defect::resize_image(img, cell, cell);
      const int ox = static_cast<int>(i % per % 3) * cell, oy = static_cast<int>(i % per / 3) * cell;
      auto in = [&](int y, int x) { return y >= 0 && x >= 0 && y < cell && x < cell && mask.data()[y * cell + x] >= 0.5f; };
      for (int y = 0; y < cell; ++y)
        for (int x = 0; x < cell; ++x) {
          const bool edge = in(y, x) != in(y - 1, x) || in(y, x) != in(y, x - 1);
          for (int c = 0; c < 3; ++c) sheet.at(oy + y, ox + x, c) = edge ? (c == 0 ? 255 : 0) : small.at(y, x, c);
        }
      if (i % per == per - 1 || i + 1 == files.size())
        write_png((fs::path(argv[3]) / ("overlay_" + std::to_string(i / per) + ".png")).string(), sheet);
    }
    std::printf("%zu masks written to %s\n", files.size(), argv[2]);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "plate_reference_masks: error: %s\n", e.what());
    return 1;
  }
}
