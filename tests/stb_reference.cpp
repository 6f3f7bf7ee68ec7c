// stb_image with every format, in its own translation unit (internal linkage): the reference the image tests
// compare libpng's and libjpeg-turbo's pixels with; and stb's JPEG writer, which makes the tests' JPEG inputs.
// stb_image_write's JPEG bit writer shifts a negative int (UB that UBSan reports); it only makes test inputs, so
// this file alone is compiled without that check (tests/CMakeLists.txt), and the readers under test keep it.
#include <cstdint>
#include <string>
#include <vector>

#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wtype-limits"
#endif
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

/// stb's JPEG encoding of 8-bit interleaved pixels; empty when stb fails.
std::string stb_reference_encode_jpeg(const uint8_t* pixels, int w, int h, int channels, int quality) {
  std::string out;
  auto sink = [](void* ctx, void* data, int size) { static_cast<std::string*>(ctx)->append(static_cast<char*>(data), size); };
  if (!stbi_write_jpg_to_func(sink, &out, w, h, channels, pixels, quality)) out.clear();
  return out;
}

/// stb's decode of an image in memory as `want` channels; empty when stb fails.
std::vector<uint8_t> stb_reference_decode(const uint8_t* data, std::size_t size, int want, int& w, int& h) {
  int n = 0;
  stbi_uc* px = stbi_load_from_memory(data, static_cast<int>(size), &w, &h, &n, want);
  if (!px) return {};
  std::vector<uint8_t> out(px, px + static_cast<std::size_t>(w) * h * want);
  stbi_image_free(px);
  return out;
}
