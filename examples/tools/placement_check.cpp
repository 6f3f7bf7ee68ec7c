// placement_check: how much of every generated defect lies on the object (docs/foreground.md). Reads an
// `adabldm generate` output folder: per manifest line the defect mask and the foreground it was placed in
// (foreground_mask: relative to OUT, or a path), both at the manifest's size, and prints the fraction of defect
// pixels inside the foreground, the samples with any pixel outside, and how the placements went. With REFERENCE,
// also the fraction inside the reference masks there named like each sample's OK image (an independent check of
// the predicted foreground).
//
//   placement_check OUT [REFERENCE]
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include <adabldm/defect/foreground.hpp>
#include <adabldm/io/image.hpp>

namespace fs = std::filesystem;
using namespace adabldm;

int main(int argc, char** argv) {
  if (argc != 2 && argc != 3) {
    std::fprintf(stderr, "usage: placement_check OUT [REFERENCE] (OUT: an adabldm generate output folder)\n");
    return 2;
  }
  try {
    const fs::path out = argv[1];
    std::ifstream in(out / "manifest.jsonl");
    check<IoError>(static_cast<bool>(in), (out / "manifest.jsonl").string(), ": cannot read");
    int64_t samples = 0, pixels = 0, inside = 0, with_outside = 0, shrunk = 0, other_mask = 0, in_reference = 0;
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      const auto mask = read_mask((out / j.at("mask").get<std::string>()).string());
      const int size = j.at("size").get<int>();
      Tensor<float> fg = defect::all_foreground(size, size);
      if (j.contains("foreground_mask")) {
        fs::path f = j["foreground_mask"].get<std::string>();
        if (f.is_relative() && fs::exists(out / f)) f = out / f;
        fg = defect::read_foreground_mask(f.string(), size);
      }
      Tensor<float> ref = fg;
      if (argc == 3) {
        const auto stem = fs::path(j.at("ok_source").get<std::string>()).stem().string();
        ref = defect::read_foreground_mask((fs::path(argv[2]) / (stem + ".png")).string(), size);
      }
      int64_t p = 0, q = 0;
      for (int64_t i = 0; i < mask.numel(); ++i)
        if (mask.data()[i] >= 0.5f) ++p, q += fg.data()[i] >= 0.5f, in_reference += ref.data()[i] >= 0.5f;
      ++samples, pixels += p, inside += q, with_outside += q < p;
      shrunk += j["placement"].value("shrunk", false);
      other_mask += !j["placement"]["skipped"].empty();
    }
    int64_t failures = 0;
    std::ifstream fin(out / "failures.jsonl");
    for (std::string line; std::getline(fin, line);) ++failures;
    std::printf("%lld samples, %lld defect pixels, %.6f inside the foreground; %lld samples with a pixel outside; "
                "shrunk %lld, another mask %lld; failed (no mask fits) %lld\n",
                static_cast<long long>(samples), static_cast<long long>(pixels),
                pixels ? static_cast<double>(inside) / static_cast<double>(pixels) : 1.0,
                static_cast<long long>(with_outside), static_cast<long long>(shrunk), static_cast<long long>(other_mask),
                static_cast<long long>(failures));
    if (argc == 3)
      std::printf("%.6f of the defect pixels inside the reference masks of %s\n",
                  pixels ? static_cast<double>(in_reference) / static_cast<double>(pixels) : 1.0, argv[2]);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "placement_check: error: %s\n", e.what());
    return 1;
  }
}
