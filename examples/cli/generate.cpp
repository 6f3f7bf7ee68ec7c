// adabldm generate on the CPU, or handed to the CUDA build (cuda_commands.cu). See generate_run.hpp.
#include <cstdlib>
#include <filesystem>

#include "embedded_model.hpp"
#include "generate_run.hpp"

namespace cli {
namespace {

/// With none of --model, --ok, --ng, --masks: the embedded demo (docs/demo.md) — the small magnetic-tile model of
/// models/, its trimap encoder for --defect (break by default; crack is faint, docs/demo.md) and the shipped
/// sample images, 8 samples with a contact sheet into ./adabldm-demo. An option the user gives replaces its default.
std::vector<std::string> with_embedded_defaults(int argc, char** argv, const Args& given) {
  namespace fs = std::filesystem;
  std::vector<std::string> out(argv, argv + 2);
  if (given.has("model") || given.has("ok") || given.has("ng") || given.has("masks")) {
    out.assign(argv, argv + argc);
    return out;
  }
  const fs::path models = models_dir();
  const std::string defect = given.get("defect", "break");
  const fs::path model = models / "tile-64", samples = models / "samples";
  const fs::path trimap = model / ("trimap-" + defect + ".safetensors");
  adabldm::check<adabldm::IoError>(fs::is_directory(model), "no --model given and the embedded model ", model.string(),
                                   " is missing; give --model (and --ok, --ng, --masks)");
  adabldm::check<adabldm::IoError>(fs::exists(trimap), "no --model given: the embedded model has no trimap encoder for "
                                   "--defect ", defect, " (", trimap.string(), "); use crack or break, or give --model");
  const std::vector<std::pair<std::string, std::string>> defaults = {
      {"model", model.string()}, {"trimap-encoder", trimap.string()}, {"ok", (samples / "ok").string()},
      {"ng", (samples / defect / "ng").string()}, {"masks", (samples / defect / "masks").string()},
      {"object", "tile"}, {"defect", defect}, {"n", "8"}, {"size", "64"}, {"out", "adabldm-demo"}};
  for (const auto& [name, value] : defaults) {
    if (given.has(name)) continue;  // the user's value, below
    out.push_back(name == "n" ? "-n" : "--" + name);
    out.push_back(value);
  }
  if (!given.flag("contact-sheet")) out.push_back("--contact-sheet");
  for (int i = 2; i < argc; ++i) out.push_back(argv[i]);
  return out;
}

}  // namespace

int cmd_generate(int argc, char** argv) {
  const Args given = generate_args(argc, argv);
  if (given.flag("help")) {
    std::fputs(generate_detail::kUsage, stdout);
    return 0;
  }
  auto words = with_embedded_defaults(argc, argv, given);
  std::vector<char*> ptrs;
  for (auto& w : words) ptrs.push_back(w.data());
  const Args args = generate_args(static_cast<int>(ptrs.size()), ptrs.data());
  if (static_cast<int>(words.size()) != argc && !args.flag("quiet")) {
    std::string line = "adabldm generate: no --model: the embedded demo model and samples (docs/demo.md):\n ";
    for (std::size_t i = 0; i < words.size(); ++i) line += " " + words[i];
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  adabldm::check(args.positional().empty(), "unexpected argument \"", args.positional().empty() ? "" : args.positional()[0], "\"");
  const auto where = parse_device(args, {"f16", "f32"});
  if (where.cuda) return generate_cuda(args, where);
  return generate_on<float, adabldm::Cpu>(args);
}

}  // namespace cli
