// The manifest.jsonl that `adabldm generate --resume` and the contact sheet read (examples/cli/manifest.hpp).
// Every whole entry is written back as its line and read again: the same entry.
#include "fuzz_common.hpp"

#include "manifest.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string path = fuzz::write_temp("manifest.jsonl", data, size);
  fuzz::run(path, [&] {
    for (const auto& [index, e] : cli::read_manifest(path)) {
      FUZZ_CHECK(index == e.index && index >= 0);
      cli::ManifestEntry back;
      FUZZ_CHECK(cli::parse_manifest_line(cli::manifest_line(e), back));
      FUZZ_CHECK(back.index == e.index && back.ok_source == e.ok_source && back.image == e.image &&
                 back.mask == e.mask && back.prompt == e.prompt);
    }
  });
  return 0;
}
