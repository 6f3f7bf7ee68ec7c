#pragma once
// Contact sheet for `adabldm generate`: one PNG with a header row of column titles, then one row per sample:
//   OK image | generated defect image | mask overlay (generated image, mask tinted red at 50 %, 1-px red outline)
// each row under a one-line text label. `adabldm foreground` uses another ContactStyle: image | foreground map |
// the mask's outline on the image. Text is drawn with an embedded 5x7 bitmap font (printable ASCII).
//
// Layout, for cells of S x S pixels, N rows, gap G = 4 and font scale k = (S >= 128 ? 2 : 1):
//   strip  = 7k + 2G                     (a text line: G padding, 7k glyph rows, G padding)
//   width  = 3S + 4G                     (G margin, cell, G, cell, G, cell, G margin)
//   height = strip + N (strip + S + G)   (header strip; per row: label strip, cells, G gap)
// Cell (row r, column c) starts at x = G + c (S + G), y = strip + r (strip + S + G) + strip.
// Glyphs advance 6k pixels; text that does not fit its width is cut and ends in "...".
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <adabldm/core/error.hpp>
#include <adabldm/core/tensor.hpp>
#include <adabldm/io/image.hpp>

namespace cli {

/// One row of a contact sheet: ok and image [1, 3, S, S] (or [1, 1, S, S] gray) in [-1, 1], mask [1, 1, S, S]
/// (a pixel is in the mask when >= 0.5), and the text shown above the row.
struct ContactRow {
  adabldm::Tensor<float> ok, image, mask;
  std::string label;
};

/// Column titles and how the third column shows the mask.
struct ContactStyle {
  const char* titles[3] = {"OK image", "generated", "mask"};
  bool overlay_on_first = false;  ///< draw the mask over the first column's image (default: the second's)
  bool outline_only = false;      ///< only the 1-px outline, no tint
};

/// 5x7 glyphs for ASCII 32..126, 7 rows top to bottom, bit 4 = leftmost pixel.
inline constexpr int kFontFirst = 32, kFontLast = 126, kFontWidth = 5, kFontHeight = 7, kFontAdvance = 6;
inline constexpr uint8_t kFont5x7[kFontLast - kFontFirst + 1][kFontHeight] = {
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // space
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04},  // !
    {0x0A, 0x0A, 0x0A, 0x00, 0x00, 0x00, 0x00},  // "
    {0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A},  // #
    {0x04, 0x0F, 0x14, 0x0E, 0x05, 0x1E, 0x04},  // $
    {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03},  // %
    {0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D},  // &
    {0x0C, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00},  // '
    {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02},  // (
    {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08},  // )
    {0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00},  // *
    {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00},  // +
    {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08},  // ,
    {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00},  // -
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C},  // .
    {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00},  // /
    {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E},  // 0
    {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},  // 1
    {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F},  // 2
    {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},  // 3
    {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02},  // 4
    {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},  // 5
    {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E},  // 6
    {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},  // 7
    {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E},  // 8
    {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C},  // 9
    {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00},  // :
    {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x04, 0x08},  // ;
    {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02},  // <
    {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00},  // =
    {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08},  // >
    {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04},  // ?
    {0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E},  // @
    {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11},  // A
    {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E},  // B
    {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E},  // C
    {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C},  // D
    {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F},  // E
    {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10},  // F
    {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F},  // G
    {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11},  // H
    {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E},  // I
    {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C},  // J
    {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11},  // K
    {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F},  // L
    {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11},  // M
    {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11},  // N
    {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E},  // O
    {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10},  // P
    {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D},  // Q
    {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11},  // R
    {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E},  // S
    {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},  // T
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E},  // U
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04},  // V
    {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A},  // W
    {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11},  // X
    {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04},  // Y
    {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F},  // Z
    {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E},  // [
    {0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00},  // backslash
    {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E},  // ]
    {0x04, 0x0A, 0x11, 0x00, 0x00, 0x00, 0x00},  // ^
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F},  // _
    {0x08, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00},  // `
    {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F},  // a
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E},  // b
    {0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E},  // c
    {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F},  // d
    {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E},  // e
    {0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08},  // f
    {0x00, 0x00, 0x0F, 0x11, 0x0F, 0x01, 0x0E},  // g
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11},  // h
    {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E},  // i
    {0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C},  // j
    {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12},  // k
    {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E},  // l
    {0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11},  // m
    {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11},  // n
    {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E},  // o
    {0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10},  // p
    {0x00, 0x00, 0x0F, 0x11, 0x0F, 0x01, 0x01},  // q
    {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10},  // r
    {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E},  // s
    {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06},  // t
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D},  // u
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04},  // v
    {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A},  // w
    {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11},  // x
    {0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E},  // y
    {0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F},  // z
    {0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02},  // {
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},  // |
    {0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08},  // }
    {0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00},  // ~
};

/// The 7 rows of c's glyph; characters outside 32..126 draw as '?'.
inline const uint8_t* font_glyph(char c) {
  const int code = static_cast<unsigned char>(c);
  return kFont5x7[(code >= kFontFirst && code <= kFontLast ? code : '?') - kFontFirst];
}

/// The geometry of a sheet (see the formula at the top of this file).
struct ContactLayout {
  int cell = 0, rows = 0, gap = 4, scale = 1, strip = 0, width = 0, height = 0;
  int cell_x(int col) const { return gap + col * (cell + gap); }
  int label_y(int row) const { return strip + row * (strip + cell + gap); }  // top of row's label strip
  int cell_y(int row) const { return label_y(row) + strip; }
  /// How many glyphs fit in `pixels` of width (the last glyph needs no trailing space).
  int max_chars(int pixels) const { return std::max(0, (pixels + scale) / (kFontAdvance * scale)); }
};

inline ContactLayout contact_layout(int cell, int rows) {
  adabldm::check(cell > 0 && rows > 0, "contact sheet: need a positive cell size and at least one row");
  ContactLayout l;
  l.cell = cell;
  l.rows = rows;
  l.scale = cell >= 128 ? 2 : 1;
  l.strip = kFontHeight * l.scale + 2 * l.gap;
  l.width = 3 * cell + 4 * l.gap;
  const int64_t height = l.strip + static_cast<int64_t>(rows) * (l.strip + cell + l.gap);
  // stb_image_write indexes the whole image with int: keep the RGB buffer under 2 GiB.
  adabldm::check(height * l.width * 3 < (int64_t{1} << 31), "contact sheet: ", rows, " rows of ", cell,
                 " px cells make an image over 2 GiB; split the sheet");
  l.height = static_cast<int>(height);
  return l;
}

/// text cut to at most max_chars glyphs, ending in "..." when cut.
inline std::string fit_text(const std::string& text, int max_chars) {
  if (max_chars <= 0) return {};
  const auto n = static_cast<std::size_t>(max_chars);
  if (text.size() <= n) return text;
  if (n <= 3) return std::string(n, '.');
  return text.substr(0, n - 3) + "...";
}

/// Draws text with its top-left corner at (x, y), each font pixel a scale x scale block; clipped to the image.
inline void draw_text(adabldm::Image& img, int x, int y, const std::string& text, int scale, uint8_t r = 255,
                      uint8_t g = 255, uint8_t b = 255) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    const uint8_t* glyph = font_glyph(text[i]);
    const int gx = x + static_cast<int>(i) * kFontAdvance * scale;
    for (int row = 0; row < kFontHeight; ++row)
      for (int col = 0; col < kFontWidth; ++col) {
        if (!((glyph[row] >> (kFontWidth - 1 - col)) & 1)) continue;
        for (int dy = 0; dy < scale; ++dy)
          for (int dx = 0; dx < scale; ++dx) {
            const int px = gx + col * scale + dx, py = y + row * scale + dy;
            if (px < 0 || py < 0 || px >= img.width || py >= img.height) continue;
            img.at(py, px, 0) = r;
            img.at(py, px, 1) = g;
            img.at(py, px, 2) = b;
          }
      }
  }
}

namespace contact_detail {

inline void check_image(const adabldm::Tensor<float>& t, int64_t size, std::size_t row, const char* what) {
  adabldm::check<adabldm::ShapeError>(
      t.rank() == 4 && t.dim(0) == 1 && (t.dim(1) == 3 || t.dim(1) == 1) && t.dim(2) == size && t.dim(3) == size,
      "contact sheet row ", row, ": ", what, " must be [1, 3 (or 1), ", size, ", ", size, "] like the first row's image, got ",
      t.shape().str());
}

/// Copies an S x S 8-bit image (gray or RGB) into the sheet at (x0, y0).
inline void blit(adabldm::Image& sheet, const adabldm::Image& cell, int x0, int y0) {
  for (int y = 0; y < cell.height; ++y)
    for (int x = 0; x < cell.width; ++x)
      for (int c = 0; c < 3; ++c) sheet.at(y0 + y, x0 + x, c) = cell.at(y, x, cell.channels == 3 ? c : 0);
}

}  // namespace contact_detail

/// The sheet as an 8-bit RGB image. Throws adabldm::Error (ShapeError for shapes) for no rows, tensors of the
/// wrong shape, or rows whose sizes differ from the first row's.
inline adabldm::Image make_contact_sheet(const std::vector<ContactRow>& rows, const ContactStyle& style = {}) {
  using adabldm::check;
  check(!rows.empty(), "contact sheet: no rows");
  const auto& first = rows.front().image;
  check<adabldm::ShapeError>(first.rank() == 4 && first.dim(2) == first.dim(3) && first.dim(2) > 0,
                             "contact sheet row 0: image must be [1, 3, S, S], got ", first.shape().str());
  check<adabldm::ShapeError>(first.dim(2) <= (int64_t{1} << 16), "contact sheet: ", first.dim(2),
                             " px cells are too large");
  const int64_t size = first.dim(2);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    contact_detail::check_image(rows[i].ok, size, i, "ok image");
    contact_detail::check_image(rows[i].image, size, i, "generated image");
    const auto& m = rows[i].mask;
    check<adabldm::ShapeError>(m.rank() == 4 && m.dim(0) == 1 && m.dim(1) == 1 && m.dim(2) == size && m.dim(3) == size,
                               "contact sheet row ", i, ": mask must be [1, 1, ", size, ", ", size, "], got ",
                               m.shape().str());
  }
  check(rows.size() <= static_cast<std::size_t>(INT32_MAX), "contact sheet: too many rows");
  const int S = static_cast<int>(size);
  const ContactLayout L = contact_layout(S, static_cast<int>(rows.size()));

  adabldm::Image sheet{L.width, L.height, 3, {}};
  constexpr uint8_t kBackground = 40;
  sheet.pixels.assign(static_cast<std::size_t>(L.width) * L.height * 3, kBackground);

  for (int c = 0; c < 3; ++c)
    draw_text(sheet, L.cell_x(c), L.gap, fit_text(style.titles[c], L.max_chars(S)), L.scale);

  for (std::size_t i = 0; i < rows.size(); ++i) {
    const int r = static_cast<int>(i);
    draw_text(sheet, L.gap, L.label_y(r) + L.gap, fit_text(rows[i].label, L.max_chars(L.width - 2 * L.gap)), L.scale);
    const int y0 = L.cell_y(r);
    const adabldm::Image ok = adabldm::tensor_to_image(rows[i].ok), generated = adabldm::tensor_to_image(rows[i].image);
    contact_detail::blit(sheet, ok, L.cell_x(0), y0);
    contact_detail::blit(sheet, generated, L.cell_x(1), y0);
    contact_detail::blit(sheet, style.overlay_on_first ? ok : generated, L.cell_x(2), y0);

    // Overlay: mask pixels blended 50 % with red, (v + red + 1) / 2; mask pixels with a 4-neighbour outside the
    // mask (or the image) pure red.
    const auto mask = rows[i].mask.contiguous();
    auto in = [&](int y, int x) {
      return y >= 0 && x >= 0 && y < S && x < S && mask.data()[static_cast<std::size_t>(y) * S + x] >= 0.5f;
    };
    const int x0 = L.cell_x(2);
    for (int y = 0; y < S; ++y)
      for (int x = 0; x < S; ++x) {
        if (!in(y, x)) continue;
        const bool edge = !in(y - 1, x) || !in(y + 1, x) || !in(y, x - 1) || !in(y, x + 1);
        uint8_t* px = &sheet.at(y0 + y, x0 + x, 0);
        if (edge) {
          px[0] = 255, px[1] = 0, px[2] = 0;
        } else if (!style.outline_only) {
          px[0] = static_cast<uint8_t>((px[0] + 255 + 1) / 2);
          px[1] = static_cast<uint8_t>((px[1] + 1) / 2);
          px[2] = static_cast<uint8_t>((px[2] + 1) / 2);
        }
      }
  }
  return sheet;
}

/// Writes the sheet as a PNG, atomically (no partial file on failure).
inline void write_contact_sheet(const std::string& path, const std::vector<ContactRow>& rows,
                                const ContactStyle& style = {}) {
  adabldm::write_png(path, make_contact_sheet(rows, style));
}

}  // namespace cli
