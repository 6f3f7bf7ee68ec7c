#pragma once
// PNG decoding through libpng (used by image.hpp when the build defines ADABLDM_HAVE_LIBPNG). libpng is fuzzed
// continuously upstream and checks every chunk's CRC and length; on top of it we cap the pixels before the image
// buffer is allocated and require the whole file up to IEND, so a truncated file is an error, never a partial image.
//
// libpng reports errors by longjmp: everything that lives across the setjmp is owned by PngState, whose address
// libpng holds (so it is in memory, not in registers, when the jump returns).
#include <csetjmp>
#include <cstring>
#include <string>
#include <vector>

#include <png.h>

#include "adabldm/io/image_codec.hpp"

namespace adabldm::io::detail {

struct PngState {
  const uint8_t* data;
  std::size_t size, pos = 0;
  Image* out;
  std::vector<png_bytep> rows;
  std::string error;
};

inline void png_on_error(png_structp png, png_const_charp msg) {
  auto* s = static_cast<PngState*>(png_get_error_ptr(png));
  if (s->error.empty()) s->error = msg;
  png_longjmp(png, 1);
}
inline void png_on_warning(png_structp, png_const_charp) {}  // ancillary-chunk problems: the pixels are fine

inline void png_read_bytes(png_structp png, png_bytep out, png_size_t n) {
  auto* s = static_cast<PngState*>(png_get_io_ptr(png));
  if (n > s->size - s->pos) png_error(png, "truncated file");
  std::memcpy(out, s->data + s->pos, n);
  s->pos += n;
}

/// Decodes a PNG into `out` as 8-bit gray, gray + alpha, RGB or RGBA (palettes and low bit depths expanded,
/// 16 bits reduced to their high byte as stb does). Returns "" or libpng's reason.
inline std::string decode_png(const uint8_t* data, std::size_t size, Image& out) {
  PngState s{data, size, 0, &out, {}, {}};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &s, png_on_error, png_on_warning);
  if (!png) return "libpng: out of memory";
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    return "libpng: out of memory";
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    return s.error.empty() ? "libpng: error" : s.error;
  }
  png_set_read_fn(png, &s, png_read_bytes);
  png_set_user_limits(png, kMaxImageSide, kMaxImageSide);
  png_set_chunk_malloc_max(png, 8u << 20);  // one ancillary chunk (text, ICC profile) at most 8 MiB
  png_read_info(png, info);
  const png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  s.error = image_size_error(w, h);
  if (!s.error.empty()) png_longjmp(png, 1);
  png_set_expand(png);    // palette -> RGB, gray < 8 bits -> 8 bits, tRNS -> alpha
  png_set_strip_16(png);  // 16 -> 8 bits: the high byte
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const int channels = png_get_channels(png, info);
  if (channels < 1 || channels > 4 || png_get_rowbytes(png, info) != static_cast<std::size_t>(w) * channels)
    png_error(png, "unexpected pixel layout after expansion");
  *s.out = Image{static_cast<int>(w), static_cast<int>(h), channels, {}};
  s.out->pixels.resize(static_cast<std::size_t>(w) * h * channels);
  s.rows.resize(h);
  for (png_uint_32 y = 0; y < h; ++y) s.rows[y] = s.out->pixels.data() + static_cast<std::size_t>(y) * w * channels;
  png_read_image(png, s.rows.data());
  png_read_end(png, nullptr);  // the rest of the file, up to IEND: a cut-off file is an error
  png_destroy_read_struct(&png, &info, nullptr);
  return "";
}

}  // namespace adabldm::io::detail
