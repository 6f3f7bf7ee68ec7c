#pragma once
// BMP checks and the palette decoder. stb_image 2.27 decodes BMP, but trusts two things a hostile file controls:
// its palette size comes from the pixel-data offset (which may even lie inside the header, giving no palette at
// all), and a pixel index past the palette's end looks up stack memory never written (fuzz finding 10: one file,
// two different images); a file cut short reads as zeros. So every BMP is checked here first (header fields,
// the pixel data all inside the file), palette images (1, 4 and 8 bits per pixel) are decoded here with each
// index checked against the palette, and only 16/24/32-bit images go on to stb.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "adabldm/io/image_codec.hpp"

namespace adabldm::io::detail {

inline uint32_t bmp_u32(const uint8_t* p) { return p[0] | p[1] << 8 | p[2] << 16 | static_cast<uint32_t>(p[3]) << 24; }
inline uint16_t bmp_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }

inline bool is_bmp(const uint8_t* data, std::size_t size) { return size >= 2 && data[0] == 'B' && data[1] == 'M'; }

/// Checks a BMP (`is_bmp`). Returns "" with `decoded` false when stb may decode it (16/24/32 bits per pixel, its
/// pixel data inside the file), "" with `decoded` true when it was a palette image, now in `out` as RGB, or the
/// reason the file is refused.
inline std::string decode_bmp(const uint8_t* data, std::size_t size, Image& out, bool& decoded) {
  decoded = false;
  if (size < 14 + 12) return "truncated BMP header";
  const uint32_t offset = bmp_u32(data + 10), hsz = bmp_u32(data + 14);
  const bool core = hsz == 12;  // OS/2 BITMAPCOREHEADER: 16-bit sizes, 3-byte palette entries
  if (!core && hsz != 40 && hsz != 52 && hsz != 56 && hsz != 108 && hsz != 124)
    return "BMP info header of " + std::to_string(hsz) + " bytes is not a known version";
  if (size < 14 + hsz) return "truncated BMP header";
  const uint8_t* h = data + 14;
  int64_t width, height;
  uint32_t planes, bpp, compression = 0, colors_used = 0;
  if (core) {
    width = bmp_u16(h + 4), height = bmp_u16(h + 6), planes = bmp_u16(h + 8), bpp = bmp_u16(h + 10);
  } else {
    width = static_cast<int32_t>(bmp_u32(h + 4)), height = static_cast<int32_t>(bmp_u32(h + 8));
    planes = bmp_u16(h + 12), bpp = bmp_u16(h + 14), compression = bmp_u32(h + 16), colors_used = bmp_u32(h + 32);
  }
  const bool top_down = height < 0;
  if (top_down) height = -height;
  if (planes != 1) return "BMP with " + std::to_string(planes) + " planes (must be 1)";
  if (width <= 0) return "BMP width " + std::to_string(width) + " is not positive";
  const std::string too_big = image_size_error(static_cast<uint64_t>(width), static_cast<uint64_t>(height));
  if (!too_big.empty()) return too_big;
  if (bpp != 1 && bpp != 4 && bpp != 8 && bpp != 16 && bpp != 24 && bpp != 32)
    return "BMP with " + std::to_string(bpp) + " bits per pixel";
  if (compression == 1 || compression == 2) return "run-length encoded BMP is not supported";
  if ((hsz == 52 || hsz == 56) && bpp >= 16)  // stb reads these headers' colour masks from the wrong place
    return "BMP info header of " + std::to_string(hsz) + " bytes is not supported for " + std::to_string(bpp) +
           " bits per pixel";
  if (compression != 0 && !(compression == 3 && (bpp == 16 || bpp == 32)))
    return "BMP compression " + std::to_string(compression) + " is not supported for " + std::to_string(bpp) +
           " bits per pixel";
  // The pixel rows, each padded to 4 bytes (the last one's padding may be missing), must all lie in the file.
  const uint64_t stride = (static_cast<uint64_t>(width) * bpp + 31) / 32 * 4;
  const uint64_t last_row = (static_cast<uint64_t>(width) * bpp + 7) / 8;
  const uint64_t pixel_bytes = stride * static_cast<uint64_t>(height - 1) + last_row;
  if (offset < 14 + hsz || offset > size || size - offset < pixel_bytes)
    return "BMP pixel data (" + std::to_string(pixel_bytes) + " bytes at offset " + std::to_string(offset) +
           ") does not lie within the " + std::to_string(size) + "-byte file after its header";
  if (bpp >= 16) return "";

  // The palette sits between the headers and the pixel data; it holds colors_used entries (0: 2^bpp).
  const uint32_t entry = core ? 3 : 4;
  const uint64_t room = (offset - 14 - hsz) / entry;
  // A palette may hold more entries than the indices can reach (other readers accept it): those are unused.
  const uint64_t colors = std::min<uint64_t>({colors_used ? colors_used : (1u << bpp), 1u << bpp, room});
  if (colors == 0) return "BMP with " + std::to_string(bpp) + " bits per pixel has no palette";
  const uint8_t* pal = data + 14 + hsz;
  const std::size_t w = static_cast<std::size_t>(width), rows = static_cast<std::size_t>(height);
  Image img{static_cast<int>(width), static_cast<int>(height), 3, std::vector<uint8_t>(w * rows * 3)};
  const uint32_t per_byte = 8 / bpp, mask = (1u << bpp) - 1;
  for (std::size_t r = 0; r < rows; ++r) {
    const uint8_t* src = data + offset + (top_down ? r : rows - 1 - r) * stride;
    uint8_t* dst = img.pixels.data() + r * w * 3;
    for (std::size_t x = 0; x < w; ++x) {
      const uint32_t shift = 8 - bpp * (1 + x % per_byte);
      const uint32_t index = (src[x / per_byte] >> shift) & mask;
      if (index >= colors)
        return "BMP pixel index " + std::to_string(index) + " is outside its " + std::to_string(colors) + "-colour palette";
      const uint8_t* bgr = pal + index * entry;
      dst[3 * x] = bgr[2], dst[3 * x + 1] = bgr[1], dst[3 * x + 2] = bgr[0];
    }
  }
  out = std::move(img);
  decoded = true;
  return "";
}

}  // namespace adabldm::io::detail
