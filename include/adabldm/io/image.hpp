#pragma once
// Image files in (PNG, JPEG, BMP), PNG out, 8-bit gray or RGB, and their conversion to NCHW float tensors: images
// in [-1, 1], masks in {0, 1}. Every byte of an image file is untrusted (images come from production lines and
// other machines), so:
//  - PNG is decoded by libpng and JPEG by libjpeg-turbo when the build found them (ADABLDM_HAVE_LIBPNG,
//    ADABLDM_HAVE_LIBJPEG, set by the CMake package), both fuzzed continuously upstream; stb_image is the
//    fallback for a format whose library is absent, and decodes 16/24/32-bit BMP after image_bmp.hpp has checked
//    the header (palette BMPs are decoded there, with every index checked against the palette);
//  - the claimed size is checked against kMaxImagePixels (image_codec.hpp) before anything is allocated;
//  - a decoded image has width, height and channels > 0 and exactly that many bytes, all written by the decoder;
//    a truncated or corrupt file is an IoError naming the file, never garbage pixels.
//
// stb is compiled into every translation unit that includes this header, with internal linkage
// (STB_IMAGE_STATIC) and only the formats it decodes here, so a header-only consumer needs no extra library. If
// your program also compiles stb_image itself, include this header first or define ADABLDM_STB_EXTERNAL and link
// your own implementation. ADABLDM_IMAGE_STB_ONLY decodes everything with stb (the fallback's tests).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "adabldm/core/error.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/io/image_codec.hpp"
#include "adabldm/io/mapped_file.hpp"

#if defined(ADABLDM_HAVE_LIBPNG) && !defined(ADABLDM_IMAGE_STB_ONLY)
#define ADABLDM_IMAGE_LIBPNG 1
#include "adabldm/io/image_png.hpp"
#endif
#if defined(ADABLDM_HAVE_LIBJPEG) && !defined(ADABLDM_IMAGE_STB_ONLY)
#define ADABLDM_IMAGE_LIBJPEG 1
#include "adabldm/io/image_jpeg.hpp"
#endif

#include "adabldm/io/image_bmp.hpp"

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
#define STBI_ONLY_BMP
#ifndef ADABLDM_IMAGE_LIBPNG
#define STBI_ONLY_PNG
#endif
#ifndef ADABLDM_IMAGE_LIBJPEG
#define STBI_ONLY_JPEG
#endif
#define STBI_MAX_DIMENSIONS 65535  // = kMaxImageSide
#endif
#include <stb_image.h>
#include <stb_image_write.h>
#ifndef ADABLDM_STB_EXTERNAL
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#endif

namespace adabldm {

namespace io::detail {
inline bool has_prefix(const uint8_t* data, std::size_t size, const char* magic, std::size_t n) {
  return size >= n && std::memcmp(data, magic, n) == 0;
}

/// stb_image (the fallback, and BMP once checked). stb cannot tell a file cut off near its end from a whole one (it fills a
/// JPEG's missing entropy data, and ignores IEND), so a JPEG must end with its EOI marker (FF D9) within the last
/// 32 bytes and a PNG with its IEND chunk.
inline std::string decode_stb(const uint8_t* data, std::size_t size, Image& out, int channels) {
  if (size > static_cast<std::size_t>(INT32_MAX)) return "file too large for an image";
  const int len = static_cast<int>(size);
  int w = 0, h = 0, n = 0;
  auto reason = [] { const char* r = stbi_failure_reason(); return std::string(r ? r : "stb_image: error"); };
  if (!stbi_info_from_memory(data, len, &w, &h, &n)) return reason();
  // stb reports a top-down BMP's height as negative.
  const std::string too_big = image_size_error(static_cast<uint64_t>(std::abs(w)), static_cast<uint64_t>(std::abs(h)));
  if (!too_big.empty()) return too_big;
  if (has_prefix(data, size, "\xFF\xD8\xFF", 3)) {
    bool eoi = false;
    for (std::size_t i = size >= 32 ? size - 32 : 0; i + 1 < size; ++i) eoi = eoi || (data[i] == 0xFF && data[i + 1] == 0xD9);
    if (!eoi) return "truncated JPEG (no end-of-image marker)";
  }
  if (has_prefix(data, size, "\x89PNG\r\n\x1a\n", 8) &&
      (size < 20 || std::memcmp(data + size - 12, "\0\0\0\0IEND\xAE\x42\x60\x82", 12) != 0))
    return "truncated PNG (no IEND chunk at the end)";
  const int want = channels ? channels : (n <= 2 ? 1 : 3);
  stbi_uc* px = stbi_load_from_memory(data, len, &w, &h, &n, want);
  if (!px) return reason();
  out = Image{w, h, want, std::vector<uint8_t>(px, px + static_cast<std::size_t>(w) * h * want)};
  stbi_image_free(px);
  return "";
}

/// Decodes with the decoder for the content (never the file name); "" or the reason it failed.
inline std::string decode_image(const uint8_t* data, std::size_t size, Image& out, int channels) {
#ifdef ADABLDM_IMAGE_LIBPNG
  if (has_prefix(data, size, "\x89PNG\r\n\x1a\n", 8)) return decode_png(data, size, out);
#endif
#ifdef ADABLDM_IMAGE_LIBJPEG
  if (has_prefix(data, size, "\xFF\xD8\xFF", 3)) return decode_jpeg(data, size, out, channels == 1);
#endif
  if (is_bmp(data, size)) {  // checked (and palette images decoded) before stb sees it: image_bmp.hpp
    bool decoded = false;
    std::string why = decode_bmp(data, size, out, decoded);
    if (!why.empty() || decoded) return why;
  }
  return decode_stb(data, size, out, channels);
}
}  // namespace io::detail

/// Decodes an image held in memory; `name` is the file it came from, for the error message.
inline Image decode_image_u8(const uint8_t* data, std::size_t size, const std::string& name, int channels = 0) {
  check(channels == 0 || channels == 1 || channels == 3, "read_image: channels must be 0, 1 or 3");
  if (size == 0) throw IoError(name + ": empty file, not an image");
  Image img;
  const std::string why = io::detail::decode_image(data, size, img, channels);
  if (!why.empty()) throw IoError(name + ": cannot decode image (" + why + ")");
  // Every decoder's promise, checked once here: an image, of exactly the size it says.
  check<IoError>(img.width > 0 && img.height > 0 && img.channels >= 1 && img.channels <= 4 &&
                     img.pixels.size() == static_cast<std::size_t>(img.width) * img.height * img.channels,
                 name, ": decoder returned an inconsistent image");
  const int want = channels ? channels : (img.channels <= 2 ? 1 : 3);
  return io::detail::convert_channels(std::move(img), want);
}

/// Reads an image file. channels: 1 (gray), 3 (RGB; gray is expanded) or 0 (gray stays 1, anything else 3;
/// alpha is dropped). Unreadable or undecodable files throw an IoError naming the file and the reason.
inline Image read_image_u8(const std::string& path, int channels = 0) {
  check(channels == 0 || channels == 1 || channels == 3, "read_image: channels must be 0, 1 or 3");
  auto file = io::MappedFile::open(path);
  return decode_image_u8(reinterpret_cast<const uint8_t*>(file->data()), file->size(), path, channels);
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
