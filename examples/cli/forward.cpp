// adabldm forward: runs one model component on named inputs from a safetensors file and writes its named outputs
// (float32; integer outputs int64), for checking against a reference implementation tensor by tensor.
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "args.hpp"
#include "commands.hpp"
#include "forward.hpp"
#include "model_classes.hpp"
#include "sd_parts.hpp"

namespace cli {

namespace {
using forward::Runner;

const Runner& find_runner(const std::string& component) {
  std::string names;
  for (const auto& r : forward::runners()) {
    if (component == r.component) return r;
    names += (names.empty() ? "" : ", ") + std::string(r.component);
  }
  throw adabldm::Error("unknown component \"" + component + "\" (one of " + names + ")");
}

/// Whether `name` is one of the accepted input names ("..._NN" stands for two digits).
bool accepts(const Runner& r, const std::string& name) {
  for (const auto& a : r.inputs) {
    if (a == name) return true;
    if (a.size() < 2) continue;
    const std::size_t nn = a.size() - 2;
    if (a.compare(nn, 2, "NN") == 0 && name.size() == a.size() && name.compare(0, nn, a, 0, nn) == 0 &&
        std::isdigit(static_cast<unsigned char>(name[nn])) && std::isdigit(static_cast<unsigned char>(name[nn + 1])))
      return true;
  }
  return false;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

/// A folder's config.json must describe a class the component runs (a VAE folder given for --component unet
/// would otherwise fail deep inside the config reader).
void check_folder_class(const adabldm::models::ModelSource& src, const Runner& r) {
  if (src.kind() == adabldm::models::SourceKind::SingleFile) return;
  const auto config = src.folder_config(r.folder);
  const std::string cls = config_class(config.json);
  for (const auto& c : r.classes)
    if (cls.empty() || cls == c) return;
  throw adabldm::FormatError(config.where + " describes a " + cls + "; --component " + r.component + " runs " +
                             joined(r.classes));
}
}  // namespace

int cmd_forward(int argc, char** argv) {
  Args args(argc, argv, 2, {"model", "config", "component", "io", "out", "scale"}, {"help", "allow-non-finite"});
  if (args.flag("help") || !args.positional().empty() || !args.has("model") || !args.has("component") ||
      !args.has("io") || !args.has("out")) {
    std::string components;
    for (const auto& r : forward::runners())
      components += "    " + std::string(r.component) + ": " + joined(r.inputs) + "\n";
    std::fprintf(stderr,
                 "usage: adabldm forward --model PATH [--config CONFIG.json] --component C --io IN.safetensors "
                 "--out OUT.safetensors [--scale S] [--allow-non-finite]\n"
                 "  PATH   a component folder, a diffusers pipeline folder or a single-file checkpoint\n"
                 "  --config  the component's config, or configs keyed by single-file prefix\n"
                 "  --scale   ControlNet conditioning scale (default 1)\n"
                 "  --allow-non-finite  load weights that hold NaN or Inf values (default: refused, naming the\n"
                 "            file and the tensor)\n"
                 "  components and the inputs they take (absent inputs give no outputs):\n%s"
                 "  see docs/cli.md for the outputs\n",
                 components.c_str());
    return args.flag("help") ? 0 : 2;
  }
  const Runner& runner = find_runner(args.get("component"));
  const forward::Inputs in(args.get("io"));
  std::vector<std::string> used, ignored;
  for (const auto& name : in.names()) (accepts(runner, name) ? used : ignored).push_back(name);
  adabldm::check<adabldm::ShapeError>(!used.empty(), in.path(), ": none of the inputs --component ", runner.component,
                                      " takes (", joined(runner.inputs), "); the file holds: ",
                                      in.names().empty() ? "nothing" : joined(in.names()));
  forward::Options opt;
  opt.scale = static_cast<float>(args.number("scale", 1.0));

  const auto src = open_model(args.get("model"), args.get("config"), args.flag("allow-non-finite"));
  check_folder_class(src, runner);
  adabldm::io::SafeTensorsWriter out;
  runner.run(src, in, out, opt);
  if (!ignored.empty())
    std::fprintf(stderr, "forward: ignored inputs %s does not take: %s\n", runner.component, joined(ignored).c_str());
  out.metadata("component", runner.component);
  out.write(args.get("out"));
  std::fprintf(stderr, "forward: wrote %zu tensor%s to %s\n", out.size(), out.size() == 1 ? "" : "s", args.get("out").c_str());
  return 0;
}

}  // namespace cli
