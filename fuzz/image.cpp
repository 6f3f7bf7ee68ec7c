// Image and mask loading with our conversions (PNG through libpng, JPEG through libjpeg-turbo, else stb). A
// decoded image must be non-empty with exactly width x height x channels bytes; it is converted to a tensor and
// back (lossless), written as PNG and read again (identical) if at most 4 KB, and loaded as a mask ({0, 1} of the
// same size).
#include "fuzz_common.hpp"

#include "adabldm/io/image.hpp"

using namespace adabldm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string path = fuzz::write_temp("in.img", data, size);
  fuzz::run(path, [&] {
    for (int channels : {0, 1, 3}) {
      const Image img = read_image_u8(path, channels);
      FUZZ_CHECK(img.width > 0 && img.height > 0 && (img.channels == 1 || img.channels == 3));
      FUZZ_CHECK(channels == 0 || img.channels == channels);
      FUZZ_CHECK(img.pixels.size() == static_cast<std::size_t>(img.width) * img.height * img.channels);
      FUZZ_CHECK(static_cast<uint64_t>(img.width) * img.height <= kMaxImagePixels);
      FUZZ_CHECK(tensor_to_image(image_to_tensor(img)).pixels == img.pixels);
      // Our PNG writer, on images of at most 4 KB: instrumented, it took two thirds of the time on images near the
      // earlier 64 KB bound (the fuzzer then ran at under 100 inputs per second).
      if (channels == 0 && img.pixels.size() <= (1u << 12)) {
        const std::string png = fuzz::temp_path("copy.png");
        write_png(png, img);
        const Image back = read_image_u8(png);
        FUZZ_CHECK(back.width == img.width && back.height == img.height && back.pixels == img.pixels);
      }
      if (channels == 1) {
        const auto mask = read_mask(path);
        FUZZ_CHECK(mask.shape() == (Shape{1, 1, img.height, img.width}));
        for (std::size_t i = 0; i < img.pixels.size(); ++i) FUZZ_CHECK(mask.data()[i] == (img.pixels[i] > 127 ? 1.0f : 0.0f));
      }
    }
  });
  return 0;
}
