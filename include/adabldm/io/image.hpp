#pragma once
// Image files through stb_image (PNG, JPEG, BMP, ... in; PNG out), 8-bit gray or RGB, and their conversion to
// NCHW float tensors: images in [-1, 1], masks in {0, 1}.
//
// stb is compiled into every translation unit that includes this header, with internal linkage
// (STB_IMAGE_STATIC), so a header-only consumer needs no extra library. If your program also compiles stb_image
// itself, include this header first or define ADABLDM_STB_EXTERNAL and link your own implementation.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "adabldm/core/error.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/io/mapped_file.hpp"

#ifndef ADABLDM_STB_EXTERNAL
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wtype-limits"
#endif
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#endif
#include <stb_image.h>
#include <stb_image_write.h>
#ifndef ADABLDM_STB_EXTERNAL
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#endif

namespace adabldm {

/// An 8-bit image, rows top to bottom, channels interleaved (HWC); 1 = gray, 3 = RGB.
struct Image {
  int width = 0, height = 0, channels = 0;
  std::vector<uint8_t> pixels;
  uint8_t& at(int y, int x, int c) { return pixels[(static_cast<std::size_t>(y) * width + x) * channels + c]; }
  uint8_t at(int y, int x, int c) const { return pixels[(static_cast<std::size_t>(y) * width + x) * channels + c]; }
};

/// Reads an image file. channels: 1 (gray), 3 (RGB; gray is expanded) or 0 (gray stays 1, anything else 3;
/// alpha is dropped). Unreadable or undecodable files throw an IoError naming the file and the reason.
inline Image read_image_u8(const std::string& path, int channels = 0) {
  check(channels == 0 || channels == 1 || channels == 3, "read_image: channels must be 0, 1 or 3");
  auto file = io::MappedFile::open(path);
  if (file->size() == 0) throw IoError(path + ": empty file, not an image");
  check<IoError>(file->size() <= static_cast<std::size_t>(INT32_MAX), path, ": file too large for an image");
  const auto* bytes = reinterpret_cast<const stbi_uc*>(file->data());
  const int len = static_cast<int>(file->size());
  int w = 0, h = 0, n = 0;
  if (!stbi_info_from_memory(bytes, len, &w, &h, &n))
    throw IoError(path + ": cannot decode image (" + stbi_failure_reason() + ")");
  const int want = channels ? channels : (n <= 2 ? 1 : 3);
  stbi_uc* px = stbi_load_from_memory(bytes, len, &w, &h, &n, want);
  if (!px) throw IoError(path + ": cannot decode image (" + stbi_failure_reason() + ")");
  Image img{w, h, want, std::vector<uint8_t>(px, px + static_cast<std::size_t>(w) * h * want)};
  stbi_image_free(px);
  return img;
}

/// Writes an 8-bit image as PNG (atomically: no partial file on failure).
inline void write_png(const std::string& path, const Image& img) {
  check(img.channels == 1 || img.channels == 3 || img.channels == 4, path, ": PNG needs 1, 3 or 4 channels");
  check<ShapeError>(img.pixels.size() == static_cast<std::size_t>(img.width) * img.height * img.channels, path,
                    ": image buffer does not match ", img.width, "x", img.height, "x", img.channels);
  std::vector<unsigned char> png;
  auto sink = [](void* ctx, void* data, int size) {
    auto* v = static_cast<std::vector<unsigned char>*>(ctx);
    v->insert(v->end(), static_cast<unsigned char*>(data), static_cast<unsigned char*>(data) + size);
  };
  if (!stbi_write_png_to_func(sink, &png, img.width, img.height, img.channels, img.pixels.data(),
                              img.width * img.channels))
    throw IoError(path + ": PNG encoding failed");
  io::write_file_atomic(path, png.data(), png.size());
}

/// Image -> [1, C, H, W] float in [-1, 1] (v / 127.5 - 1).
inline Tensor<float, Cpu> image_to_tensor(const Image& img) {
  auto t = Tensor<float, Cpu>::empty({1, img.channels, img.height, img.width});
  const int64_t plane = static_cast<int64_t>(img.width) * img.height;
  for (int c = 0; c < img.channels; ++c)
    for (int64_t i = 0; i < plane; ++i)
      t.data()[c * plane + i] = static_cast<float>(img.pixels[static_cast<std::size_t>(i * img.channels + c)]) / 127.5f - 1.0f;
  return t;
}

/// [1, C, H, W] (C = 1 or 3) in [-1, 1] -> 8-bit image; values are clamped, then rounded to nearest.
inline Image tensor_to_image(const Tensor<float, Cpu>& t_in) {
  check<ShapeError>(t_in.rank() == 4 && t_in.dim(0) == 1 && (t_in.dim(1) == 1 || t_in.dim(1) == 3),
                    "tensor_to_image: expected [1, 1|3, H, W], got ", t_in.shape().str());
  const auto t = t_in.contiguous();
  Image img{static_cast<int>(t.dim(3)), static_cast<int>(t.dim(2)), static_cast<int>(t.dim(1)), {}};
  const int64_t plane = t.dim(2) * t.dim(3);
  img.pixels.resize(static_cast<std::size_t>(plane * img.channels));
  for (int c = 0; c < img.channels; ++c)
    for (int64_t i = 0; i < plane; ++i) {
      const float v = std::clamp((t.data()[c * plane + i] + 1.0f) * 127.5f, 0.0f, 255.0f);
      img.pixels[static_cast<std::size_t>(i * img.channels + c)] = static_cast<uint8_t>(std::lround(v));
    }
  return img;
}

/// Reads an image as [1, channels, H, W] in [-1, 1]; gray files are expanded to RGB when channels == 3.
inline Tensor<float, Cpu> read_image(const std::string& path, int channels = 3) {
  return image_to_tensor(read_image_u8(path, channels));
}

/// Writes [1, C, H, W] in [-1, 1] as PNG.
inline void write_image(const std::string& path, const Tensor<float, Cpu>& t) { write_png(path, tensor_to_image(t)); }

/// Reads a mask as [1, 1, H, W] with 1 where the gray value is above `threshold` (colour masks: their luma).
inline Tensor<float, Cpu> read_mask(const std::string& path, int threshold = 127) {
  const Image img = read_image_u8(path, 1);
  auto t = Tensor<float, Cpu>::empty({1, 1, img.height, img.width});
  for (std::size_t i = 0; i < img.pixels.size(); ++i) t.data()[i] = img.pixels[i] > threshold ? 1.0f : 0.0f;
  return t;
}

/// Writes a [1, 1, H, W] mask as a gray PNG: 255 where the value is >= 0.5, else 0.
inline void write_mask(const std::string& path, const Tensor<float, Cpu>& m_in) {
  check<ShapeError>(m_in.rank() == 4 && m_in.dim(0) == 1 && m_in.dim(1) == 1, "write_mask: expected [1, 1, H, W], got ",
                    m_in.shape().str());
  const auto m = m_in.contiguous();
  Image img{static_cast<int>(m.dim(3)), static_cast<int>(m.dim(2)), 1, {}};
  img.pixels.resize(static_cast<std::size_t>(m.numel()));
  for (std::size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = m.data()[i] >= 0.5f ? 255 : 0;
  write_png(path, img);
}

}  // namespace adabldm
