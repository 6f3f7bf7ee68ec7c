// stb_image with every format, in its own translation unit (internal linkage): the reference the image tests
// compare libpng's and libjpeg-turbo's pixels with.
#include <cstdint>
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

/// stb's decode of an image in memory as `want` channels; empty when stb fails.
std::vector<uint8_t> stb_reference_decode(const uint8_t* data, std::size_t size, int want, int& w, int& h) {
  int n = 0;
  stbi_uc* px = stbi_load_from_memory(data, static_cast<int>(size), &w, &h, &n, want);
  if (!px) return {};
  std::vector<uint8_t> out(px, px + static_cast<std::size_t>(w) * h * want);
  stbi_image_free(px);
  return out;
}
