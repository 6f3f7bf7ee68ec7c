#pragma once
// What every image decoder shares: the 8-bit Image, the pixel cap checked before any decoder allocates, and the
// channel conversions (stb_image's formulas, so that every decoder gives the same pixels).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace adabldm {

/// An 8-bit image, rows top to bottom, channels interleaved (HWC); 1 = gray, 3 = RGB.
struct Image {
  int width = 0, height = 0, channels = 0;
  std::vector<uint8_t> pixels;
  uint8_t& at(int y, int x, int c) { return pixels[(static_cast<std::size_t>(y) * width + x) * channels + c]; }
  uint8_t at(int y, int x, int c) const { return pixels[(static_cast<std::size_t>(y) * width + x) * channels + c]; }
};

// The most pixels (width x height) an image file may claim: checked on the header, before a decoder allocates, so
// a file of a few bytes cannot ask for gigabytes. 2^26 = 8192 x 8192 (192 MiB as RGB, plus the decoder's own
// buffers). A program that reads larger images defines ADABLDM_MAX_IMAGE_PIXELS; the fuzz build sets it lower.
#ifndef ADABLDM_MAX_IMAGE_PIXELS
#define ADABLDM_MAX_IMAGE_PIXELS (1ull << 26)
#endif
inline constexpr uint64_t kMaxImagePixels = ADABLDM_MAX_IMAGE_PIXELS;
/// The longest side: JPEG's own limit (65535), applied to every format.
inline constexpr uint64_t kMaxImageSide = 65535;
/// The most scans a progressive JPEG may have (each scan revisits the whole image; real files have about 10).
inline constexpr int kMaxJpegScans = 256;

namespace io::detail {

/// "" when a w x h header is within the caps, else the reason.
inline std::string image_size_error(uint64_t w, uint64_t h) {
  if (w == 0 || h == 0) return "image of " + std::to_string(w) + "x" + std::to_string(h) + " pixels is empty";
  if (w > kMaxImageSide || h > kMaxImageSide || w * h > kMaxImagePixels)
    return "image of " + std::to_string(w) + "x" + std::to_string(h) + " pixels exceeds the cap of " +
           std::to_string(kMaxImagePixels) + " pixels and " + std::to_string(kMaxImageSide) + " per side";
  return "";
}

/// stb's luma: (77 r + 150 g + 29 b) >> 8.
inline uint8_t luma(uint8_t r, uint8_t g, uint8_t b) { return static_cast<uint8_t>((r * 77 + g * 150 + b * 29) >> 8); }

/// Converts 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels to `want` (1 or 3); alpha is dropped.
inline Image convert_channels(Image src, int want) {
  if (src.channels == want) return src;
  const std::size_t n = static_cast<std::size_t>(src.width) * src.height;
  const int c = src.channels;
  Image out{src.width, src.height, want, std::vector<uint8_t>(n * want)};
  const uint8_t* s = src.pixels.data();
  uint8_t* d = out.pixels.data();
  for (std::size_t i = 0; i < n; ++i, s += c, d += want) {
    if (want == 1) {
      d[0] = c <= 2 ? s[0] : luma(s[0], s[1], s[2]);
    } else if (c <= 2) {
      d[0] = d[1] = d[2] = s[0];
    } else {
      d[0] = s[0], d[1] = s[1], d[2] = s[2];
    }
  }
  return out;
}

}  // namespace io::detail
}  // namespace adabldm
