// Image I/O: PNG/JPEG/BMP in, PNG out, gray/RGB, conversion to [-1, 1] tensors and masks, clear errors; and the
// decoders on hostile input: every PNG colour type and depth, progressive and CMYK JPEG, truncated files, claimed
// sizes beyond the cap, the same pixels as stb. Built twice: with libpng + libjpeg-turbo when found (test_image)
// and with stb only (test_image_stb).
#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <zlib.h>

#include "adabldm/io/image.hpp"
#ifdef ADABLDM_HAVE_LIBJPEG
#include <jpeglib.h>
#endif

// tests/stb_reference.cpp: stb_image with all its formats, as the reference decoder.
std::vector<uint8_t> stb_reference_decode(const uint8_t* data, std::size_t size, int want, int& w, int& h);
std::string stb_reference_encode_jpeg(const uint8_t* pixels, int w, int h, int channels, int quality);

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

namespace {
// A BMP built field by field: BITMAPINFOHEADER, `bpp` bits per pixel, the given palette (BGRA entries; its
// offset says where the pixels start) and pixel bytes; height < 0 is top-down.
std::string make_bmp(int width, int height, int bpp, const std::vector<uint8_t>& palette, const std::string& pixels,
                     unsigned colors_used = 0, int offset_adjust = 0) {
  std::string b;
  auto u16 = [&](unsigned v) { b += char(v & 255); b += char(v >> 8); };
  auto u32 = [&](unsigned v) { u16(v & 0xffff); u16(v >> 16); };
  const unsigned offset = 54 + static_cast<unsigned>(palette.size()) + offset_adjust;
  b += "BM"; u32(offset + static_cast<unsigned>(pixels.size())); u32(0); u32(offset);
  u32(40); u32(static_cast<unsigned>(width)); u32(static_cast<unsigned>(height)); u16(1); u16(bpp); u32(0);
  u32(static_cast<unsigned>(pixels.size())); u32(2835); u32(2835); u32(colors_used); u32(0);
  for (uint8_t v : palette) b += char(v);
  return b + pixels;
}
Image decode_bmp_bytes(const std::string& bytes) {
  return decode_image_u8(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "test.bmp");
}
}  // namespace

TEST_CASE("palette BMPs decode exactly, and an index outside the palette or a cut-off file is an error") {
  // 1 bit: 10 x 2, bottom-up; palette 0 = blue (0, 0, 255), 1 = white. Row bytes padded to 4.
  const std::vector<uint8_t> pal1{255, 0, 0, 0, 255, 255, 255, 0};
  const std::string rows1 = std::string("\xA0\x40\0\0", 4) + std::string("\x01\x80\0\0", 4);  // bottom row first
  const Image a = decode_bmp_bytes(make_bmp(10, 2, 1, pal1, rows1));
  REQUIRE(a.width == 10);
  REQUIRE(a.height == 2);
  REQUIRE(a.channels == 3);
  auto white = [](const Image& im, int y, int x) { return im.at(y, x, 0) == 255 && im.at(y, x, 2) == 255; };
  // top row = the second stored row, 0x01 0x80: pixels 7 and 8 are white
  for (int x = 0; x < 10; ++x) CHECK(white(a, 0, x) == (x == 7 || x == 8));
  // bottom row = 0xA0 0x40: pixels 0, 2 and 9 are white
  for (int x = 0; x < 10; ++x) CHECK(white(a, 1, x) == (x == 0 || x == 2 || x == 9));
  CHECK(a.at(0, 0, 0) == 0);  // blue is stored B, G, R = 255, 0, 0
  CHECK(a.at(0, 0, 2) == 255);

  // 4 bits, 3 x 1 top-down, a 3-colour palette (colors_used = 3): indices 2, 1, 0, then index 3 is refused.
  const std::vector<uint8_t> pal4{10, 10, 10, 0, 20, 20, 20, 0, 30, 30, 30, 0};
  const Image g = decode_bmp_bytes(make_bmp(3, -1, 4, pal4, std::string("\x21\x00\0\0", 4), 3));
  CHECK(g.pixels == std::vector<uint8_t>{30, 30, 30, 20, 20, 20, 10, 10, 10});
  CHECK_THROWS_WITH_AS(decode_bmp_bytes(make_bmp(3, -1, 4, pal4, std::string("\x23\x00\0\0", 4), 3)),
                       doctest::Contains("pixel index 3 is outside its 3-colour palette"), IoError);
  // 8 bits with a 2-entry palette: index 2 would read a palette entry the file never held (fuzz finding 10).
  CHECK_THROWS_WITH_AS(decode_bmp_bytes(make_bmp(4, 1, 8, {0, 0, 0, 0, 9, 9, 9, 0}, std::string("\x00\x01\x02\x00", 4))),
                       doctest::Contains("outside its 2-colour palette"), IoError);
  // No room for a palette between the header and the pixels.
  CHECK_THROWS_WITH_AS(decode_bmp_bytes(make_bmp(4, 1, 8, {}, std::string(4, '\0'))), doctest::Contains("has no palette"), IoError);
  // The pixel offset pointing into the header, as in the fuzzed file.
  CHECK_THROWS_WITH_AS(decode_bmp_bytes(make_bmp(4, 1, 8, {}, std::string(4, '\0'), 0, -12)),
                       doctest::Contains("does not lie within"), IoError);
  // Cut off: 10 x 2 at 1 bit needs 4 + 2 bytes; 5 are there. And a 24-bit image missing its last byte.
  CHECK_THROWS_WITH_AS(decode_bmp_bytes(make_bmp(10, 2, 1, pal1, rows1.substr(0, 5))), doctest::Contains("does not lie within"), IoError);
  CHECK_THROWS_WITH_AS(decode_bmp_bytes(make_bmp(2, 1, 24, {}, std::string(5, '\x7f'))), doctest::Contains("does not lie within"), IoError);
  CHECK(decode_bmp_bytes(make_bmp(2, 1, 24, {}, std::string(6, '\x7f'))).pixels == std::vector<uint8_t>(6, 0x7f));
  // Top-down (negative height) at 24 bits goes to stb, which reports the height negative: rows in file order.
  const Image td = decode_bmp_bytes(make_bmp(1, -2, 24, {}, std::string("\x01\x02\x03\0\x04\x05\x06", 7)));
  CHECK(td.pixels == std::vector<uint8_t>{3, 2, 1, 6, 5, 4});
  // More palette entries than the indices reach: accepted, the extra ones unused.
  CHECK(decode_bmp_bytes(make_bmp(2, 1, 1, {1, 1, 1, 0, 2, 2, 2, 0, 3, 3, 3, 0}, std::string("\x40\0\0\0", 4), 3)).pixels ==
        std::vector<uint8_t>{1, 1, 1, 2, 2, 2});
  // The fuzzed file itself (pixels starting inside its header, a compression field of 0xFFFFFF00): an error.
  const std::string f = std::string(ADABLDM_TEST_DATA) + "/fuzz-regressions/image/bmp-1bpp-palette-inside-header.bmp";
  CHECK_THROWS_WITH_AS(read_image_u8(f, 1), doctest::Contains("cannot decode image (BMP"), IoError);
  // Header fields: planes, bits per pixel, RLE.
  std::string bad = make_bmp(2, 1, 24, {}, std::string(8, '\0'));
  bad[26] = 2;
  CHECK_THROWS_WITH_AS(decode_bmp_bytes(bad), doctest::Contains("2 planes"), IoError);
  bad = make_bmp(2, 1, 24, {}, std::string(8, '\0'));
  bad[28] = 7;
  CHECK_THROWS_WITH_AS(decode_bmp_bytes(bad), doctest::Contains("7 bits per pixel"), IoError);
  bad = make_bmp(2, 1, 8, {0, 0, 0, 0}, std::string(4, '\0'));
  bad[30] = 1;
  CHECK_THROWS_WITH_AS(decode_bmp_bytes(bad), doctest::Contains("run-length"), IoError);
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

// ---- hostile input ------------------------------------------------------------------------------------------------
namespace {
std::string be32(uint32_t v) {
  return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
}
std::string png_chunk(const char* type, const std::string& data) {
  std::string c = be32(static_cast<uint32_t>(data.size())) + type + data;
  const uLong crc = crc32(0, reinterpret_cast<const Bytef*>(c.data()) + 4, static_cast<uInt>(c.size() - 4));
  return c + be32(static_cast<uint32_t>(crc));
}
/// A PNG written field by field: `rows` are the packed scanlines without filter bytes (filter 0 is added).
std::string make_png(uint32_t w, uint32_t h, int depth, int color, const std::vector<std::string>& rows,
                     const std::string& extra_chunks = "") {
  std::string raw;
  for (const auto& r : rows) raw += '\0' + r;
  std::string z(compressBound(static_cast<uLong>(raw.size())), '\0');
  uLongf zn = static_cast<uLongf>(z.size());
  compress2(reinterpret_cast<Bytef*>(&z[0]), &zn, reinterpret_cast<const Bytef*>(raw.data()), static_cast<uLong>(raw.size()), 9);
  z.resize(zn);
  const std::string ihdr = be32(w) + be32(h) + char(depth) + char(color) + std::string(3, '\0');
  return std::string("\x89PNG\r\n\x1a\n", 8) + png_chunk("IHDR", ihdr) + extra_chunks + png_chunk("IDAT", z) +
         png_chunk("IEND", "");
}
Image decode(const std::string& bytes, int channels = 0, const std::string& name = "mem.img") {
  return decode_image_u8(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), name, channels);
}
std::string jpeg_bytes(const Image& img, int quality) {
  std::string out = stb_reference_encode_jpeg(img.pixels.data(), img.width, img.height, img.channels, quality);
  REQUIRE(!out.empty());
  return out;
}
std::string png_bytes(const Image& img) {
  const std::string p = tmp_path("enc.png");
  write_png(p, img);
  std::ifstream in(p, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::remove(p.c_str());
  return s;
}
std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
void expect_error(const std::string& bytes, const std::string& needle, int channels = 0) {
  try {
    decode(bytes, channels, "hostile.img");
    FAIL("decoded without error");
  } catch (const IoError& e) {
    const std::string msg = e.what();
    CAPTURE(msg);
    CHECK(msg.find("hostile.img") == 0);
    CHECK(msg.find(needle) != std::string::npos);
    CHECK(msg.find('\n') == std::string::npos);
  }
}
int max_diff(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  REQUIRE(a.size() == b.size());
  int worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(int(a[i]) - int(b[i])));
  return worst;
}
}  // namespace

TEST_CASE("PNG: every colour type and bit depth decodes to 8-bit gray or RGB") {
  // 16-bit gray: the high byte
  std::vector<std::string> rows;
  std::vector<uint8_t> want;
  for (int y = 0; y < 2; ++y) {
    std::string r;
    for (int x = 0; x < 3; ++x) {
      const unsigned v = 77 + x * 1000 + y * 20000;
      r += char(v >> 8), r += char(v & 255);
      want.push_back(static_cast<uint8_t>(v >> 8));
    }
    rows.push_back(r);
  }
  Image g16 = decode(make_png(3, 2, 16, 0, rows));
  CHECK(g16.channels == 1);
  CHECK(g16.pixels == want);
  // 16-bit RGB
  rows.assign(1, ""), want.clear();
  for (int x = 0; x < 2; ++x)
    for (int k = 0; k < 3; ++k) {
      const unsigned v = 300 + x * 9000 + k * 17000;
      rows[0] += char(v >> 8), rows[0] += char(v & 255);
      want.push_back(static_cast<uint8_t>(v >> 8));
    }
  Image rgb16 = decode(make_png(2, 1, 16, 2, rows));
  CHECK(rgb16.channels == 3);
  CHECK(rgb16.pixels == want);
  // gray + alpha: the alpha is dropped
  Image ga = decode(make_png(2, 1, 8, 4, {std::string("\x10\xff\xf0\x00", 4)}));
  CHECK(ga.channels == 1);
  CHECK(ga.pixels == std::vector<uint8_t>{0x10, 0xf0});
  // RGBA, also asked for one channel: stb's luma (77 r + 150 g + 29 b) >> 8
  const std::string rgba = make_png(1, 1, 8, 6, {std::string("\xc8\x64\x32\x80", 4)});
  CHECK(decode(rgba).pixels == std::vector<uint8_t>{200, 100, 50});
  CHECK(decode(rgba, 1).pixels == std::vector<uint8_t>{static_cast<uint8_t>((200 * 77 + 100 * 150 + 50 * 29) >> 8)});
  // palette, 8-bit with transparency, and 2-bit packed
  const std::string plte = png_chunk("PLTE", std::string("\x01\x02\x03\x40\x50\x60\xff\x00\x80\x09\x08\x07", 12));
  const std::string trns = png_chunk("tRNS", std::string("\x00\xff", 2));
  Image p8 = decode(make_png(3, 1, 8, 3, {std::string("\x02\x00\x03", 3)}, plte + trns));
  CHECK(p8.channels == 3);
  CHECK(p8.pixels == std::vector<uint8_t>{0xff, 0x00, 0x80, 0x01, 0x02, 0x03, 0x09, 0x08, 0x07});
  Image p2 = decode(make_png(5, 1, 2, 3, {std::string("\x1b\x80", 2)}, plte));  // indices 0 1 2 3 | 2
  CHECK(p2.pixels == std::vector<uint8_t>{1, 2, 3, 0x40, 0x50, 0x60, 0xff, 0, 0x80, 9, 8, 7, 0xff, 0, 0x80});
  // 1-bit gray: 0 and 255
  Image g1 = decode(make_png(10, 1, 1, 0, {std::string("\xa5\x40", 2)}));
  CHECK(g1.pixels == std::vector<uint8_t>{255, 0, 255, 0, 0, 255, 0, 255, 0, 255});
  // gray expands to RGB on request
  CHECK(decode(make_png(1, 1, 8, 0, {"\x42"}), 3).pixels == std::vector<uint8_t>{0x42, 0x42, 0x42});
}

TEST_CASE("truncated PNG and JPEG files are errors at every cut, never partial images") {
  Image img = gradient(40, 30, 3);
  for (int i = 0; i < 40 * 30 * 3; ++i) img.pixels[i] ^= static_cast<uint8_t>((i * 2654435761u) >> 24);  // incompressible
  for (const std::string& whole : {png_bytes(img), jpeg_bytes(img, 90)}) {
    CHECK(decode(whole).pixels.size() == img.pixels.size());
    int cuts = 0;
    for (std::size_t n = 1; n < whole.size(); n += (n < 64 || n + 64 > whole.size()) ? 1 : 37) {
      CAPTURE(n);
      CHECK_THROWS_AS(decode(whole.substr(0, n)), IoError);
      ++cuts;
    }
    CHECK(cuts > 100);
  }
}

TEST_CASE("claimed sizes: zero and beyond the pixel cap are errors before any allocation") {
  // PNG: a 1x1 file whose IHDR is patched to claim other sizes (CRC recomputed)
  const std::string one = make_png(1, 1, 8, 0, {"\x42"});
  auto with_size = [&](uint32_t w, uint32_t h) {
    return std::string("\x89PNG\r\n\x1a\n", 8) + png_chunk("IHDR", be32(w) + be32(h) + std::string("\x08\x00\x00\x00\x00", 5)) +
           one.substr(8 + 25);
  };
  expect_error(with_size(60000, 60000), "cannot decode image");  // 3.6 G pixels
  expect_error(with_size(65535, 2000), "exceeds the cap");
  expect_error(with_size(1u << 20, 1), "cannot decode image");
  expect_error(with_size(0, 5), "cannot decode image");
  expect_error(with_size(5, 0), "cannot decode image");
  // JPEG: the frame header (SOF) of a real file patched
  const std::string jpg = jpeg_bytes(gradient(16, 16, 3), 90);
  const std::size_t sof = jpg.find("\xff\xc0");
  REQUIRE(sof != std::string::npos);
  auto jpeg_with_size = [&](unsigned w, unsigned h) {
    std::string j = jpg;
    j[sof + 5] = char(h >> 8), j[sof + 6] = char(h), j[sof + 7] = char(w >> 8), j[sof + 8] = char(w);
    return j;
  };
  expect_error(jpeg_with_size(65000, 65000), "cannot decode image");
  expect_error(jpeg_with_size(16, 0), "cannot decode image");
  expect_error(jpeg_with_size(0, 16), "cannot decode image");
  // and the 11 bytes of the smallest claims
  expect_error(std::string("\xff\xd8\xff\xc0\x00\x0b\x08\xff\xff\xff\xff", 11), "cannot decode image");
  expect_error(std::string("\x89PNG\r\n\x1a\n", 8), "cannot decode image");
}

TEST_CASE("decoded pixels equal stb's: exactly for PNG, within 1 for JPEG (another IDCT)") {
  const std::string d = ADABLDM_TEST_DATA;
  for (const char* f : {"/magnetic-tile/ok/free_000.png", "/magnetic-tile/ng/crack_000.png",
                        "/magnetic-tile/masks/break_002.png"}) {
    CAPTURE(f);
    const std::string bytes = read_all(d + f);
    for (int want : {1, 3}) {
      int w = 0, h = 0;
      const auto ref = stb_reference_decode(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), want, w, h);
      const Image img = decode(bytes, want);
      REQUIRE(img.width == w);
      REQUIRE(img.height == h);
      CHECK(img.pixels == ref);
    }
    // the same tile as JPEG: 4:2:0 at quality 85, 4:4:4 at 95
    const Image tile = decode(bytes, 3);
    for (int q : {85, 95}) {
      const std::string jpg = jpeg_bytes(tile, q);
      for (int want : {1, 3}) {
        CAPTURE(q);
        CAPTURE(want);
        int w = 0, h = 0;
        const auto ref = stb_reference_decode(reinterpret_cast<const uint8_t*>(jpg.data()), jpg.size(), want, w, h);
        CHECK(max_diff(decode(jpg, want).pixels, ref) <= 1);
      }
    }
  }
  const std::string g = read_all(d + "/images/gradient16.jpg");
  int w = 0, h = 0;
  const auto ref = stb_reference_decode(reinterpret_cast<const uint8_t*>(g.data()), g.size(), 3, w, h);
  CHECK(max_diff(decode(g, 3).pixels, ref) <= 1);
}

#ifdef ADABLDM_HAVE_LIBJPEG
namespace {
/// Encodes with libjpeg: `components` 3 (RGB) or 4 (CMYK, stored as YCCK with Adobe's marker); an optional scan
/// script makes it progressive.
std::string libjpeg_encode(const Image& img, int quality, bool progressive, const std::vector<jpeg_scan_info>& scans = {},
                           bool arithmetic = false) {
  jpeg_compress_struct c;
  jpeg_error_mgr err;
  c.err = jpeg_std_error(&err);
  jpeg_create_compress(&c);
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&c, &buf, &size);
  c.image_width = img.width, c.image_height = img.height, c.input_components = img.channels;
  c.in_color_space = img.channels == 4 ? JCS_CMYK : JCS_RGB;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, quality, TRUE);
  if (progressive) jpeg_simple_progression(&c);
  c.arith_code = arithmetic ? TRUE : FALSE;
  if (!scans.empty()) c.scan_info = scans.data(), c.num_scans = static_cast<int>(scans.size());
  jpeg_start_compress(&c, TRUE);
  while (c.next_scanline < c.image_height) {
    JSAMPROW row = const_cast<uint8_t*>(img.pixels.data()) + static_cast<std::size_t>(c.next_scanline) * img.width * img.channels;
    jpeg_write_scanlines(&c, &row, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  std::string out(reinterpret_cast<char*>(buf), size);
  free(buf);
  return out;
}
}  // namespace

TEST_CASE("progressive JPEG decodes to the same pixels as baseline; CMYK JPEG to RGB") {
  Image img{61, 37, 3, {}};
  for (int y = 0; y < 37; ++y)
    for (int x = 0; x < 61; ++x)
      for (int k = 0; k < 3; ++k) img.pixels.push_back(static_cast<uint8_t>(x + y * 2 + k * 20));
  const std::string base = libjpeg_encode(img, 92, false), prog = libjpeg_encode(img, 92, true);
  CHECK(prog != base);
  const Image b = decode(base), p = decode(prog);
  CHECK(p.width == 61);
  CHECK(p.pixels == b.pixels);  // the same quantised coefficients, sent in several scans
  CHECK(max_diff(p.pixels, img.pixels) <= 16);
  for (std::size_t n : {prog.size() / 3, prog.size() / 2, prog.size() - 2}) CHECK_THROWS_AS(decode(prog.substr(0, n)), IoError);
  // CMYK (Adobe, inverted): r = c k / 255
  Image cmyk{16, 8, 4, {}};
  for (int i = 0; i < 16 * 8; ++i) cmyk.pixels.insert(cmyk.pixels.end(), {200, 100, 50, 180});
  const Image rgb = decode(libjpeg_encode(cmyk, 100, false));
  REQUIRE(rgb.channels == 3);
  CHECK(max_diff(rgb.pixels, std::vector<uint8_t>(16 * 8 * 3, 0)) > 0);
  for (int i = 0; i < 16 * 8; ++i) {
    CHECK(std::abs(rgb.pixels[i * 3] - 200 * 180 / 255) <= 2);
    CHECK(std::abs(rgb.pixels[i * 3 + 1] - 100 * 180 / 255) <= 2);
    CHECK(std::abs(rgb.pixels[i * 3 + 2] - 50 * 180 / 255) <= 2);
  }
}

#ifdef C_ARITH_CODING_SUPPORTED  // the libjpeg that encodes the test file
TEST_CASE("an arithmetic-coded JPEG is refused: a few hundred bytes would decode to millions of pixels") {
  Image black{2048, 2048, 3, std::vector<uint8_t>(2048 * 2048 * 3, 0)};
  const std::string huffman = libjpeg_encode(black, 90, false, {}, false);
  const std::string arith = libjpeg_encode(black, 90, false, {}, true);
  CHECK(arith.size() < 1000);       // 4 M pixels in a few hundred bytes
  CHECK(huffman.size() > 10000);    // Huffman pays at least a bit per block
  CHECK(decode(huffman).width == 2048);
#ifdef ADABLDM_IMAGE_LIBJPEG
  expect_error(arith, "arithmetic-coded JPEG is not supported");
#else
  expect_error(arith, "cannot decode image");  // stb has no arithmetic decoder
#endif
}
#endif

TEST_CASE("a progressive JPEG of more scans than kMaxJpegScans is refused (each scan is a pass over the image)") {
  // A valid file of 2 + 63 x 3 x 2 = 380 scans: DC in two bit steps, then every AC coefficient of every component
  // alone, in two bit steps.
  std::vector<jpeg_scan_info> scans;
  auto scan = [&](std::vector<int> comps, int ss, int se, int ah, int al) {
    jpeg_scan_info s{};
    s.comps_in_scan = static_cast<int>(comps.size());
    for (std::size_t i = 0; i < comps.size(); ++i) s.component_index[i] = comps[i];
    s.Ss = ss, s.Se = se, s.Ah = ah, s.Al = al;
    scans.push_back(s);
  };
  scan({0, 1, 2}, 0, 0, 0, 1);
  scan({0, 1, 2}, 0, 0, 1, 0);
  for (int ah_al : {0, 1})
    for (int c = 0; c < 3; ++c)
      for (int k = 1; k < 64; ++k) scan({c}, k, k, ah_al, 1 - ah_al);
  const std::string many = libjpeg_encode(gradient(16, 16, 3), 90, false, scans);
#ifdef ADABLDM_IMAGE_LIBJPEG
  expect_error(many, "more than 256 progressive scans");
#else
  CHECK(decode(many).width == 16);  // stb has no such limit (its scans are cheap at this size)
#endif
}
#endif
