#pragma once
// JPEG decoding through libjpeg-turbo (used by image.hpp when the build defines ADABLDM_HAVE_LIBJPEG): fuzzed
// continuously upstream, and its SIMD decoder is several times faster than stb's. Every warning is an error
// (libjpeg warns, then fills with gray, on a premature end or corrupt entropy data: garbage pixels we refuse);
// the pixel cap is checked on the header, arithmetic coding is refused, and a progressive file may have at most
// kMaxJpegScans scans (each scan costs a pass over the whole image, so a few kilobytes of scans could otherwise
// take minutes).
//
// libjpeg reports errors by longjmp: what lives across the setjmp is in memory (the structs libjpeg points to,
// `out` by reference), and no object with a destructor is alive in this frame when it jumps.
#include <csetjmp>
#include <cstdio>
#include <string>

#include <jpeglib.h>

#include "adabldm/io/image_codec.hpp"

namespace adabldm::io::detail {

struct JpegError {
  jpeg_error_mgr mgr;  // first: libjpeg's err pointer is this struct
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

inline void jpeg_on_error(j_common_ptr c) {
  auto* e = reinterpret_cast<JpegError*>(c->err);
  (*c->err->format_message)(c, e->message);
  std::longjmp(e->jump, 1);
}
inline void jpeg_on_message(j_common_ptr c, int level) {
  if (level < 0) jpeg_on_error(c);  // a warning: corrupt or truncated data
}
inline void jpeg_on_progress(j_common_ptr c) {
  if (!c->is_decompressor || reinterpret_cast<j_decompress_ptr>(c)->input_scan_number <= kMaxJpegScans) return;
  auto* e = reinterpret_cast<JpegError*>(c->err);
  std::snprintf(e->message, sizeof e->message, "more than %d progressive scans", kMaxJpegScans);
  std::longjmp(e->jump, 1);
}
/// What the header must pass before anything is decoded (the string lives in its own scope: no destructor may be
/// skipped by the jump): the pixel cap, and Huffman coding. An arithmetic-coded file is refused (as stb does): its
/// coder spends almost nothing on empty blocks and goes on, without a warning, past the end of its data, so 211
/// bytes decoded to 8192 x 8192 RGB (0.3 s, 200 MB). A Huffman code is at least a bit per block of each component a
/// scan covers: at worst (one 1x1 component scanned, the others 4x4 and never scanned) about 8 K pixels per byte,
/// about what zlib allows a 1-bit PNG.
inline void jpeg_check_header(j_decompress_ptr c) {
  auto* e = reinterpret_cast<JpegError*>(c->err);
  {
    std::string why = image_size_error(c->image_width, c->image_height);
    if (why.empty() && c->arith_code) why = "arithmetic-coded JPEG is not supported (re-save it with Huffman coding)";
    if (why.empty()) return;
    std::snprintf(e->message, sizeof e->message, "%s", why.c_str());
  }
  std::longjmp(e->jump, 1);
}

/// Decodes a JPEG into `out` as 8-bit gray or RGB (CMYK and YCCK are converted to RGB as stb does, for Adobe's
/// inverted CMYK). `gray`: a YCbCr file gives its luma plane (as stb does when asked for one channel).
inline std::string decode_jpeg(const uint8_t* data, std::size_t size, Image& out, bool gray) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  jpeg_progress_mgr progress{};
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_on_error;
  err.mgr.emit_message = jpeg_on_message;
  jpeg_create_decompress(&cinfo);
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return std::string("libjpeg: ") + err.message;
  }
  progress.progress_monitor = jpeg_on_progress;
  cinfo.progress = &progress;
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  jpeg_check_header(&cinfo);
  const J_COLOR_SPACE in = cinfo.jpeg_color_space;
  const bool cmyk = in == JCS_CMYK || in == JCS_YCCK;
  cinfo.out_color_space = cmyk ? JCS_CMYK : in == JCS_GRAYSCALE || (gray && in == JCS_YCbCr) ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  const int c = cinfo.output_components;
  out = Image{static_cast<int>(cinfo.output_width), static_cast<int>(cinfo.output_height), c, {}};
  out.pixels.resize(static_cast<std::size_t>(out.width) * out.height * c);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = out.pixels.data() + static_cast<std::size_t>(cinfo.output_scanline) * out.width * c;
    if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) {
      std::snprintf(err.message, sizeof err.message, "no scanline %u", cinfo.output_scanline);
      std::longjmp(err.jump, 1);
    }
  }
  jpeg_finish_decompress(&cinfo);  // reads to EOI: a cut-off file is an error
  jpeg_destroy_decompress(&cinfo);
  if (cmyk) {  // Adobe's inverted CMYK: r = c k / 255 (stb's rounding), in place to RGB
    const std::size_t n = static_cast<std::size_t>(out.width) * out.height;
    auto mul = [](unsigned x, unsigned k) { const unsigned t = x * k + 128; return static_cast<uint8_t>((t + (t >> 8)) >> 8); };
    for (std::size_t i = 0; i < n; ++i) {
      const uint8_t* s = &out.pixels[i * 4];
      const uint8_t k = s[3], r = mul(s[0], k), g = mul(s[1], k), b = mul(s[2], k);
      out.pixels[i * 3] = r, out.pixels[i * 3 + 1] = g, out.pixels[i * 3 + 2] = b;
    }
    out.pixels.resize(n * 3);
    out.channels = 3;
  }
  return "";
}

}  // namespace adabldm::io::detail
