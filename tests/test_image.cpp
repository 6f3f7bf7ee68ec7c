// Image I/O: PNG/JPEG/BMP in, PNG out, gray/RGB, conversion to [-1, 1] tensors and masks, clear errors.
#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "adabldm/io/image.hpp"

using namespace adabldm;

namespace {
std::string tmp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("adabldm_img_" + std::to_string(::getpid()) + "_" + name)).string();
}
Image gradient(int w, int h, int c) {
  Image img{w, h, c, std::vector<uint8_t>(static_cast<std::size_t>(w * h * c))};
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int k = 0; k < c; ++k) img.at(y, x, k) = static_cast<uint8_t>((x * 7 + y * 13 + k * 50) % 256);
  return img;
}
}  // namespace

TEST_CASE("PNG round trip, RGB and gray, and tensor conversion") {
  for (int c : {1, 3}) {
    const Image img = gradient(13, 7, c);
    const std::string p = tmp_path("rt" + std::to_string(c) + ".png");
    write_png(p, img);
    const Image back = read_image_u8(p);
    CHECK(back.width == 13);
    CHECK(back.height == 7);
    CHECK(back.channels == c);
    CHECK(back.pixels == img.pixels);
    auto t = read_image(p, 3);  // gray expands to RGB
    REQUIRE(t.shape() == Shape{1, 3, 7, 13});
    CHECK(t.at({0, 2, 6, 12}) == doctest::Approx(img.at(6, 12, c == 3 ? 2 : 0) / 127.5 - 1.0));
    CHECK(t.at({0, 0, 0, 0}) == -1.0f);
    // tensor -> image -> tensor is lossless for 8-bit values
    CHECK(tensor_to_image(image_to_tensor(img)).pixels == img.pixels);
    std::remove(p.c_str());
  }
}

TEST_CASE("tensor_to_image clamps and rounds") {
  auto t = Tensor<float>::from_vector({-2.0f, -1.0f, 0.0f, 1.0f, 5.0f, 0.6f / 127.5f - 1.0f}, {1, 1, 1, 6});
  const Image img = tensor_to_image(t);
  CHECK(img.pixels == std::vector<uint8_t>{0, 0, 128, 255, 255, 1});  // 127.5 rounds half away from zero
}

TEST_CASE("JPEG and BMP decode; masks threshold at 127") {
  // A tiny 24-bit BMP built field by field: 2x1 pixels, light gray then dark gray (stored BGR, rows padded to 4).
  std::string bmp;
  auto u16 = [&](unsigned v) { bmp += char(v & 255); bmp += char(v >> 8); };
  auto u32 = [&](unsigned v) { u16(v & 0xffff); u16(v >> 16); };
  bmp += "BM"; u32(62); u32(0); u32(54);                  // file header
  u32(40); u32(2); u32(1); u16(1); u16(24); u32(0); u32(8); u32(2835); u32(2835); u32(0); u32(0);  // DIB header
  for (int v : {200, 200, 200, 10, 10, 10, 0, 0}) bmp += char(v);
  const std::string pb = tmp_path("m.bmp");
  std::ofstream(pb, std::ios::binary) << bmp;
  const Image b = read_image_u8(pb);
  CHECK(b.width == 2);
  CHECK(b.channels == 3);
  auto m = read_mask(pb);
  REQUIRE(m.shape() == Shape{1, 1, 1, 2});
  CHECK(m.to_vector() == std::vector<float>{1.0f, 0.0f});
  const std::string pm = tmp_path("mask.png");
  write_mask(pm, m);
  CHECK(read_image_u8(pm).pixels == std::vector<uint8_t>{255, 0});
  std::remove(pb.c_str());
  std::remove(pm.c_str());
  // JPEG (tests/data/images/gradient16.jpg, quality 100, of px = x*6 + y*4 + k*40): decodes within a few levels.
  const Image j = read_image_u8(std::string(ADABLDM_TEST_DATA) + "/images/gradient16.jpg");
  REQUIRE(j.width == 16);
  REQUIRE(j.channels == 3);
  int worst = 0;
  for (int y = 0; y < 16; ++y)
    for (int x = 0; x < 16; ++x)
      for (int k = 0; k < 3; ++k) worst = std::max(worst, std::abs(int(j.at(y, x, k)) - (x * 6 + y * 4 + k * 40)));
  CHECK(worst <= 6);
}

TEST_CASE("unreadable images give an IoError naming the file") {
  const std::string p = tmp_path("garbage.png");
  std::ofstream(p, std::ios::binary) << "this is not an image";
  CHECK_THROWS_WITH_AS(read_image_u8(p), doctest::Contains(p.c_str()), IoError);
  CHECK_THROWS_WITH_AS(read_image_u8(tmp_path("missing.png")), doctest::Contains("missing.png"), IoError);
  const std::string e = tmp_path("empty.png");
  std::ofstream(e, std::ios::binary).close();
  CHECK_THROWS_WITH_AS(read_image_u8(e), doctest::Contains("empty file"), IoError);
  std::remove(p.c_str());
  std::remove(e.c_str());
}
