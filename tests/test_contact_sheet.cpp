// cli::make_contact_sheet (examples/cli/contact_sheet.hpp): layout, exact cell contents, the mask overlay, the
// embedded 5x7 font and input checks.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "adabldm/io/image.hpp"
#include "contact_sheet.hpp"

using namespace adabldm;
using Plane = Tensor<float, Cpu>;

namespace {

/// [1, 3, S, S] in [-1, 1]: a different gradient per channel, shifted by `seed`.
Plane gradient(int S, int seed) {
  auto t = Plane::empty({1, 3, S, S});
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < S; ++y)
      for (int x = 0; x < S; ++x) {
        const int v = (x * (c + 1) * 7 + y * (3 - c) * 5 + seed * 37) % 256;
        t.at({0, c, y, x}) = static_cast<float>(v) / 127.5f - 1.0f;
      }
  return t;
}

/// [1, 1, S, S] disc of radius r centred at (cy, cx).
Plane disc(int S, double cy, double cx, double r) {
  auto m = Plane::zeros({1, 1, S, S});
  for (int y = 0; y < S; ++y)
    for (int x = 0; x < S; ++x) m.at({0, 0, y, x}) = (y - cy) * (y - cy) + (x - cx) * (x - cx) <= r * r ? 1.0f : 0.0f;
  return m;
}

cli::ContactRow make_row(int S, int seed, const std::string& label) {
  return {gradient(S, seed), gradient(S, seed + 1), disc(S, S * 0.45, S * 0.55, S * 0.3), label};
}

/// Independent statement of the documented layout.
int expected_width(int S) { return 3 * S + 4 * 4; }
int expected_height(int S, int n) {
  const int k = S >= 128 ? 2 : 1, strip = 7 * k + 8;
  return strip + n * (strip + S + 4);
}

int white_pixels(const Image& img, int x0, int y0, int w, int h) {
  int n = 0;
  for (int y = y0; y < y0 + h; ++y)
    for (int x = x0; x < x0 + w; ++x) n += img.at(y, x, 0) == 255 && img.at(y, x, 1) == 255 && img.at(y, x, 2) == 255;
  return n;
}

}  // namespace

TEST_CASE("contact sheet: size follows the layout formula") {
  for (int S : {16, 64, 127, 128, 256}) {
    for (int n : {1, 3}) {
      std::vector<cli::ContactRow> rows;
      for (int i = 0; i < n; ++i) rows.push_back(make_row(S, i, "row " + std::to_string(i)));
      const Image sheet = cli::make_contact_sheet(rows);
      CAPTURE(S);
      CAPTURE(n);
      CHECK(sheet.channels == 3);
      CHECK(sheet.width == expected_width(S));
      CHECK(sheet.height == expected_height(S, n));
      CHECK(sheet.pixels.size() == static_cast<std::size_t>(sheet.width) * sheet.height * 3);
      const auto L = cli::contact_layout(S, n);
      CHECK(L.scale == (S >= 128 ? 2 : 1));
      CHECK(L.cell_y(n - 1) + S + L.gap == sheet.height);  // last row ends one gap above the bottom edge
      CHECK(L.cell_x(2) + S + L.gap == sheet.width);
    }
  }
}

TEST_CASE("contact sheet: OK and generated cells are the 8-bit images; overlay tints exactly the mask") {
  const int S = 48;
  std::vector<cli::ContactRow> rows = {make_row(S, 0, "first"), make_row(S, 5, "second")};
  rows[1].mask = disc(S, 0, 0, 20);  // touches the image border: the border pixels are outline too
  const Image sheet = cli::make_contact_sheet(rows);
  const auto L = cli::contact_layout(S, 2);
  for (int r = 0; r < 2; ++r) {
    CAPTURE(r);
    const Image ok = tensor_to_image(rows[r].ok), gen = tensor_to_image(rows[r].image);
    const auto& m = rows[r].mask;
    auto in = [&](int y, int x) { return y >= 0 && x >= 0 && y < S && x < S && m.at({0, 0, y, x}) >= 0.5f; };
    int ok_bad = 0, gen_bad = 0, outside_bad = 0, tint_bad = 0, outline_bad = 0, tinted = 0, outlined = 0;
    for (int y = 0; y < S; ++y)
      for (int x = 0; x < S; ++x) {
        const int y0 = L.cell_y(r) + y;
        const bool edge = in(y, x) && (!in(y - 1, x) || !in(y + 1, x) || !in(y, x - 1) || !in(y, x + 1));
        for (int c = 0; c < 3; ++c) {
          ok_bad += sheet.at(y0, L.cell_x(0) + x, c) != ok.at(y, x, c);
          gen_bad += sheet.at(y0, L.cell_x(1) + x, c) != gen.at(y, x, c);
          const int v = sheet.at(y0, L.cell_x(2) + x, c), g = gen.at(y, x, c);
          if (!in(y, x)) {
            outside_bad += v != g;
          } else if (edge) {
            outline_bad += v != (c == 0 ? 255 : 0);
          } else {
            // 50 % red over the generated pixel: red rises, green and blue halve.
            tint_bad += v != (c == 0 ? (g + 256) / 2 : (g + 1) / 2);
          }
        }
        if (in(y, x) && !edge) {
          ++tinted;
          const int r0 = sheet.at(y0, L.cell_x(2) + x, 0), g0 = gen.at(y, x, 0);
          CHECK(r0 >= g0);
        }
        outlined += edge;
      }
    CHECK(ok_bad == 0);
    CHECK(gen_bad == 0);
    CHECK(outside_bad == 0);
    CHECK(tint_bad == 0);
    CHECK(outline_bad == 0);
    CHECK(tinted > 0);
    CHECK(outlined > 0);
  }
}

TEST_CASE("contact sheet: gray OK images are expanded to RGB") {
  const int S = 16;
  auto row = make_row(S, 2, "gray");
  auto gray = Plane::empty({1, 1, S, S});
  for (int i = 0; i < S * S; ++i) gray.data()[i] = static_cast<float>(i % 256) / 127.5f - 1.0f;
  row.ok = gray;
  const Image sheet = cli::make_contact_sheet({row});
  const Image g = tensor_to_image(gray);
  const auto L = cli::contact_layout(S, 1);
  int bad = 0;
  for (int y = 0; y < S; ++y)
    for (int x = 0; x < S; ++x)
      for (int c = 0; c < 3; ++c) bad += sheet.at(L.cell_y(0) + y, L.cell_x(0) + x, c) != g.at(y, x, 0);
  CHECK(bad == 0);
}

TEST_CASE("contact sheet: labels and titles are rendered; a blank label renders nothing") {
  for (int S : {32, 128}) {
    CAPTURE(S);
    const auto L = cli::contact_layout(S, 2);
    const Image sheet = cli::make_contact_sheet({make_row(S, 0, "000003  seed 1234567  a tile with a crack"),
                                                 make_row(S, 1, "          ")});
    CHECK(white_pixels(sheet, 0, 0, sheet.width, L.strip) > 0);                     // column titles
    CHECK(white_pixels(sheet, 0, L.label_y(0), sheet.width, L.strip) > 0);          // row 0 label
    CHECK(white_pixels(sheet, 0, L.label_y(1), sheet.width, L.strip) == 0);         // spaces only
    // Title strip: one block of text per column, nothing in the gaps between columns.
    for (int c = 0; c < 3; ++c) CHECK(white_pixels(sheet, L.cell_x(c), 0, S, L.strip) > 0);
    // Strips are dark gray outside the glyphs.
    CHECK(sheet.at(0, 0, 0) == sheet.at(0, 0, 1));
    CHECK(sheet.at(0, 0, 0) < 128);
  }
}

TEST_CASE("contact sheet: text is truncated with ... to the sheet width") {
  const int S = 16;  // width 64: (64 - 8 + 1) / 6 = 9 glyphs
  const auto L = cli::contact_layout(S, 1);
  CHECK(L.max_chars(L.width - 2 * L.gap) == 9);
  CHECK(cli::fit_text("short", 9) == "short");
  CHECK(cli::fit_text("123456789", 9) == "123456789");
  CHECK(cli::fit_text("1234567890", 9) == "123456...");
  CHECK(cli::fit_text("abcdef", 2) == "..");
  CHECK(cli::fit_text("abcdef", 0).empty());
  // A long label stays inside the margins; the last glyph cell of the strip holds the final '.'.
  const Image sheet = cli::make_contact_sheet({make_row(S, 0, std::string(200, 'W'))});
  const int ty = L.label_y(0) + L.gap;
  CHECK(white_pixels(sheet, L.width - L.gap, L.label_y(0), L.gap, L.strip) == 0);
  Image dots{6 * 3, 7, 3, std::vector<uint8_t>(6 * 3 * 7 * 3, 0)};
  cli::draw_text(dots, 0, 0, "...", 1);
  int diff = 0;
  for (int y = 0; y < 7; ++y)
    for (int x = 0; x < 17; ++x) diff += (dots.at(y, x, 0) == 255) != (sheet.at(ty + y, L.gap + 6 * 6 + x, 0) == 255);
  CHECK(diff == 0);
}

TEST_CASE("contact sheet font: every visible glyph has pixels; letters and digits are distinct") {
  for (int c = 33; c <= 126; ++c) {
    CAPTURE(c);
    const uint8_t* g = cli::font_glyph(static_cast<char>(c));
    int set = 0;
    for (int r = 0; r < cli::kFontHeight; ++r) {
      CHECK((g[r] & ~0x1F) == 0);  // 5 pixels wide
      set += g[r] != 0;
    }
    CHECK(set > 0);
  }
  const uint8_t* space = cli::font_glyph(' ');
  for (int r = 0; r < cli::kFontHeight; ++r) CHECK(space[r] == 0);
  std::string chars;
  for (char c = 'A'; c <= 'Z'; ++c) chars += c;
  for (char c = '0'; c <= '9'; ++c) chars += c;
  std::set<std::string> seen;
  for (char c : chars) seen.insert(std::string(reinterpret_cast<const char*>(cli::font_glyph(c)), cli::kFontHeight));
  CHECK(seen.size() == chars.size());
  // Non-ASCII bytes draw as '?'.
  CHECK(std::memcmp(cli::font_glyph('\xC3'), cli::font_glyph('?'), cli::kFontHeight) == 0);
  CHECK(std::memcmp(cli::font_glyph('\t'), cli::font_glyph('?'), cli::kFontHeight) == 0);
}

TEST_CASE("contact sheet: bad input throws") {
  CHECK_THROWS_AS(cli::make_contact_sheet({}), Error);
  CHECK_THROWS_WITH_AS(cli::make_contact_sheet({make_row(32, 0, "a"), make_row(16, 1, "b")}),
                       doctest::Contains("row 1"), Error);
  auto bad_mask = make_row(16, 0, "m");
  bad_mask.mask = Plane::zeros({1, 3, 16, 16});
  CHECK_THROWS_AS(cli::make_contact_sheet({bad_mask}), Error);
  auto bad_ok = make_row(16, 0, "o");
  bad_ok.ok = gradient(8, 0);
  CHECK_THROWS_AS(cli::make_contact_sheet({bad_ok}), Error);
  auto not_square = make_row(16, 0, "s");
  not_square.image = Plane::zeros({1, 3, 16, 8});
  CHECK_THROWS_AS(cli::make_contact_sheet({not_square}), Error);
  auto rank3 = make_row(16, 0, "r");
  rank3.image = Plane::zeros({3, 16, 16});
  CHECK_THROWS_AS(cli::make_contact_sheet({rank3}), Error);
}

TEST_CASE("contact sheet: written PNG reads back identical") {
  const std::vector<cli::ContactRow> rows = {make_row(24, 0, "000000  seed 1  png"), make_row(24, 3, "000001")};
  const std::string path =
      (std::filesystem::temp_directory_path() / ("adabldm_contact_" + std::to_string(::getpid()) + ".png")).string();
  cli::write_contact_sheet(path, rows);
  const Image back = read_image_u8(path, 3), sheet = cli::make_contact_sheet(rows);
  CHECK(back.width == sheet.width);
  CHECK(back.height == sheet.height);
  CHECK(back.pixels == sheet.pixels);
  std::remove(path.c_str());
}

// Not a check: with ADABLDM_CONTACT_EXAMPLE=PATH set, writes a 3-row example sheet there to look at, with cells
// of ADABLDM_CONTACT_EXAMPLE_SIZE pixels (default 128).
TEST_CASE("contact sheet: example for eyeballing (ADABLDM_CONTACT_EXAMPLE)") {
  const char* path = std::getenv("ADABLDM_CONTACT_EXAMPLE");
  if (!path) return;
  const char* size = std::getenv("ADABLDM_CONTACT_EXAMPLE_SIZE");
  const int S = size ? std::atoi(size) : 128;
  std::vector<cli::ContactRow> rows = {
      make_row(S, 0, "000003  seed 1234567  a tile with a crack"),
      make_row(S, 1, "000004  seed 89  ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
      make_row(S, 2, "000005  seed 42  the quick brown fox jumps over the lazy dog, and keeps running far past the edge")};
  rows[1].mask = disc(S, S * 0.15, S * 0.8, S * 0.25);
  cli::write_contact_sheet(path, rows);
}
