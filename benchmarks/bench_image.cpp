// Image decode time on the magnetic-tile images of tests/data (the evaluation reads thousands of such tiles):
// each tile encoded once as JPEG (quality 90, 4:4:4 as stb writes it at that quality; and 75, 4:2:0) in memory,
// then decoded by read_image's decoder (libjpeg-turbo when the build found it) and by stb_image (the fallback,
// and the decoder before issue 20). Also the PNG tiles as stored, libpng against stb.
//   bench_image [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <fstream>
#include <iterator>
#include <map>

#include "adabldm/io/image.hpp"

// tests/stb_reference.cpp: stb_image with all its formats.
std::vector<uint8_t> stb_reference_decode(const uint8_t* data, std::size_t size, int want, int& w, int& h);

using namespace adabldm;

namespace {
const char* kTiles[] = {"magnetic-tile/ok/free_000.png", "magnetic-tile/ok/free_001.png",
                        "magnetic-tile/ng/blowhole_001.png", "magnetic-tile/ng/crack_000.png"};

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

/// The four tiles as stored (PNG) or encoded as JPEG at `quality` (0 = PNG).
const std::vector<std::string>& tiles(int quality) {
  static std::map<int, std::vector<std::string>> cache;
  auto& files = cache[quality];
  if (files.empty())
    for (const char* t : kTiles) {
      const std::string png = read_all(std::string(ADABLDM_TEST_DATA) + "/" + t);
      if (quality == 0) {
        files.push_back(png);
        continue;
      }
      const Image img = decode_image_u8(reinterpret_cast<const uint8_t*>(png.data()), png.size(), t, 3);
      std::string jpg;
      auto sink = [](void* ctx, void* d, int n) { static_cast<std::string*>(ctx)->append(static_cast<char*>(d), n); };
      stbi_write_jpg_to_func(sink, &jpg, img.width, img.height, 3, img.pixels.data(), quality);
      files.push_back(jpg);
    }
  return files;
}

void run(benchmark::State& st, int quality, bool stb) {
  const auto& files = tiles(quality);
  std::size_t pixels = 0;
  for (auto _ : st)
    for (const auto& f : files) {
      const auto* d = reinterpret_cast<const uint8_t*>(f.data());
      int w = 0, h = 0;
      if (stb) {
        auto px = stb_reference_decode(d, f.size(), 3, w, h);
        benchmark::DoNotOptimize(px.data());
      } else {
        const Image img = decode_image_u8(d, f.size(), "tile", 3);
        w = img.width, h = img.height;
        benchmark::DoNotOptimize(img.pixels.data());
      }
      pixels += static_cast<std::size_t>(w) * h;
    }
  st.counters["Mpixel/s"] = benchmark::Counter(static_cast<double>(pixels) * 1e-6, benchmark::Counter::kIsRate);
  st.SetLabel(stb ? "stb_image" :
#ifdef ADABLDM_IMAGE_LIBJPEG
              quality ? "libjpeg-turbo" :
#endif
#ifdef ADABLDM_IMAGE_LIBPNG
              !quality ? "libpng" :
#endif
              "stb_image (fallback)");
}
}  // namespace

BENCHMARK_CAPTURE(run, jpeg_q90_read_image, 90, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(run, jpeg_q90_stb, 90, true)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(run, jpeg_q75_read_image, 75, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(run, jpeg_q75_stb, 75, true)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(run, png_read_image, 0, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(run, png_stb, 0, true)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
