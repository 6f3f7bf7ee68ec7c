// adabldm inspect FILE_OR_DIR: the format, the components (single files: by key prefix; folders: from
// model_index.json), their dtypes, tensor and parameter counts, and for every component whose architecture can be
// built (config given or inferable) its class, its config and whether the weights fit it. A config.json alone
// gives the model it describes, built empty (shapes only), with its exact parameter count. NaN and Inf values are
// counted per tensor and reported (per component and in total; per tensor with --tensors), never refused.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <adabldm/io/checkpoint.hpp>
#include <adabldm/models/loader.hpp>

#include "args.hpp"
#include "commands.hpp"
#include <adabldm/models/config_json.hpp>
#include "model_classes.hpp"
#include "sd_parts.hpp"

namespace cli {
using adabldm::io::unet_config_json;
using adabldm::io::controlnet_config_json;
using adabldm::io::vae_config_json;
using adabldm::io::clip_text_config_json;

namespace {
namespace fs = std::filesystem;
using adabldm::io::StateDict;
using adabldm::io::NonFiniteCount;

/// The tensors of a file that hold NaN or Inf values, with their counts (one pass over the data).
using NonFiniteMap = std::map<std::string, NonFiniteCount>;
NonFiniteMap non_finite_map(const StateDict& sd) {
  const auto bad = adabldm::io::non_finite_tensors(sd);
  return NonFiniteMap(bad.begin(), bad.end());
}
/// "finite", or "3 NaN, 1 Inf".
std::string non_finite_text(const NonFiniteCount& c) {
  if (c.total() == 0) return "finite";
  return std::to_string(c.nan) + " NaN, " + std::to_string(c.inf) + " Inf";
}

struct Totals {
  int64_t tensors = 0, parameters = 0;
  std::set<std::string> dtypes;
  int64_t non_finite_tensors = 0;  ///< tensors holding NaN or Inf values
  std::string first_non_finite;    ///< the first of them (name order): "KEY: 3 NaN, 1 Inf"
  /// `where` qualifies the names of another total ("vae/" for a pipeline's component).
  void add(const Totals& o, const std::string& where = "") {
    tensors += o.tensors;
    parameters += o.parameters;
    dtypes.insert(o.dtypes.begin(), o.dtypes.end());
    if (first_non_finite.empty() && !o.first_non_finite.empty()) first_non_finite = where + o.first_non_finite;
    non_finite_tensors += o.non_finite_tensors;
  }
  void add(const std::string& name, const adabldm::io::TensorRef& ref, const NonFiniteMap& bad) {
    ++tensors;
    parameters += ref.shape.numel();
    dtypes.insert(adabldm::dtype_name(ref.dtype));
    if (const auto it = bad.find(name); it != bad.end()) {
      if (non_finite_tensors++ == 0) first_non_finite = name + ": " + non_finite_text(it->second);
    }
  }
  std::string dtype_list() const {
    std::string s;
    for (const auto& d : dtypes) s += (s.empty() ? "" : ", ") + d;
    return s.empty() ? "-" : s;
  }
  /// "none", or "2 tensors (first: KEY: 3 NaN, 1 Inf)".
  std::string non_finite() const {
    if (non_finite_tensors == 0) return "none";
    return std::to_string(non_finite_tensors) + (non_finite_tensors == 1 ? " tensor" : " tensors") + " (first: " +
           first_non_finite + ")";
  }
};

void print_counts(const Totals& t) {
  std::printf("  tensors: %lld\n  parameters: %lld\n  dtypes: %s\n  non-finite values: %s\n",
              static_cast<long long>(t.tensors), static_cast<long long>(t.parameters), t.dtype_list().c_str(),
              t.non_finite().c_str());
}

/// One line per tensor: name, dtype, shape, and "finite" or its NaN and Inf counts.
void print_tensor_list(const StateDict& sd, const NonFiniteMap& bad, const std::string& prefix = "") {
  for (const auto& [name, ref] : sd.tensors())
    if (name.compare(0, prefix.size(), prefix) == 0) {
      const auto it = bad.find(name);
      std::printf("    %s %s %s %s\n", name.c_str(), adabldm::dtype_name(ref.dtype), ref.shape.str().c_str(),
                  non_finite_text(it == bad.end() ? NonFiniteCount{} : it->second).c_str());
    }
}

/// "yes", or what does not fit (up to 12 names of each kind).
void print_fit(const adabldm::nn::LoadReport& r) {
  if (r.ok()) {
    std::printf("  weights fit the architecture: yes\n");
    return;
  }
  std::string m = r.message("");
  m = m.substr(m.find(';') + 2);  // drop ": checkpoint does not match the model"
  std::printf("  weights fit the architecture: no (%s)\n", m.c_str());
}

/// A component's architecture, where its config came from, and its weights under the architecture's names.
struct Built {
  Architecture arch;
  std::string origin;
  std::optional<StateDict> weights;
};

/// Class, config, exact counts and the fit of the weights; a config that cannot be built is reported, not fatal:
/// the rest of the file is still worth seeing.
void print_built(const std::function<Built()>& build) {
  try {
    const Built b = build();
    std::printf("  class: %s (config: %s)\n  config: %s\n", b.arch.class_name.c_str(), b.origin.c_str(),
                b.arch.summary.c_str());
    if (b.weights)
      print_fit(b.arch.fit(*b.weights));
    else
      std::printf("  tensors: %lld\n  parameters: %lld\n", static_cast<long long>(b.arch.tensors),
                  static_cast<long long>(b.arch.parameters));
  } catch (const adabldm::Error& e) {
    std::printf("  architecture: cannot be built: %s\n", e.what());
  }
}

Architecture describe_known(const adabldm::io::Json& json, const std::string& where, const std::string& cls) {
  auto a = describe({json, where}, cls);
  adabldm::check(a.has_value(), where, ": class ", cls, " is not one this library builds");
  return *a;
}

// ---- single files ------------------------------------------------------------------------------------------------
struct Prefix {
  const char* prefix;
  const char* label;
};
const Prefix kPrefixes[] = {
    {adabldm::io::ldm_prefix::unet, "UNet"},
    {adabldm::io::ldm_prefix::vae, "KL autoencoder"},
    {adabldm::io::kLdmSd1ClipPrefix, "CLIP text encoder, SD1.x layout"},
    {adabldm::io::kLdmSd2ClipPrefix, "OpenCLIP text encoder, SD2.x layout"},
    {adabldm::io::ldm_prefix::controlnet, "ControlNet, cldm layout"},
    {"controlnet.", "ControlNet, adabldm training checkpoint"},
    {"model_ema.", "EMA copy of the UNet"},
};

std::string group_of(const std::string& name) {
  for (const auto& p : kPrefixes)
    if (name.rfind(p.prefix, 0) == 0) return p.prefix;
  const auto dot = name.find('.');
  return dot == std::string::npos ? name : name.substr(0, dot + 1);
}

/// How the loaders build the component stored under `prefix`; nullptr for prefixes that hold no model.
std::function<Built()> single_file_build(const adabldm::models::ModelSource& src, const std::string& prefix) {
  namespace pre = adabldm::io::ldm_prefix;
  auto built = [](const auto& part, const adabldm::io::Json& json, const char* cls) {
    return Built{describe_known(json, part.config_origin, cls), part.config_origin, part.weights};
  };
  if (prefix == pre::unet)
    return [&src, built] {
      const auto p = read_unet(src);
      return built(p, unet_config_json(p.config), "UNet2DConditionModel");
    };
  if (prefix == pre::vae)
    return [&src, built] {
      const auto p = read_vae(src);
      return built(p, vae_config_json(p.config), "AutoencoderKL");
    };
  if (prefix == pre::controlnet || prefix == "controlnet.")
    return [&src, built] {
      const auto p = read_controlnet(src);
      return built(p, controlnet_config_json(p.config), "ControlNetModel");
    };
  if (prefix == adabldm::io::kLdmSd1ClipPrefix || prefix == adabldm::io::kLdmSd2ClipPrefix)
    return [&src, built] {
      const auto p = read_text_encoder(src);
      return built(p, clip_text_config_json(p.config, "float32"), "CLIPTextModel");
    };
  return nullptr;
}

void inspect_single_file(const std::string& path, const std::string& config, bool list_tensors) {
  const auto src = open_model(path, config, /*allow_non_finite=*/true);  // reported below, not refused
  const auto& file = src.file();
  const NonFiniteMap bad = non_finite_map(file);
  std::printf("file: %s\nformat: %s (%zu tensors)\n", path.c_str(),
              adabldm::io::checkpoint_format_name(adabldm::io::detect_checkpoint_format(path)), file.size());
  for (const auto& [k, v] : file.metadata()) {
    if (k == kConfigsMetadata)
      std::printf("metadata: %s = (component configs, %zu bytes)\n", k.c_str(), v.size());
    else
      std::printf("metadata: %s = %s\n", k.c_str(), v.c_str());
  }
  std::map<std::string, Totals> groups;
  Totals all;
  for (const auto& [name, ref] : file.tensors()) {
    groups[group_of(name)].add(name, ref, bad);
    all.add(name, ref, bad);
  }
  for (const auto& [prefix, totals] : groups) {
    std::string label;
    for (const auto& p : kPrefixes)
      if (prefix == p.prefix) label = std::string(" (") + p.label + ")";
    std::printf("component %s%s\n", prefix.c_str(), label.c_str());
    print_counts(totals);
    if (auto build = single_file_build(src, prefix)) print_built(build);
    if (list_tensors) print_tensor_list(file, bad, prefix);
  }
  std::printf("total: %lld tensors, %lld parameters\nnon-finite values: %s\n", static_cast<long long>(all.tensors),
              static_cast<long long>(all.parameters), all.non_finite().c_str());
}

// ---- folders -----------------------------------------------------------------------------------------------------
/// A component folder (config.json + weights): counts, class, config, fit. Returns the weights' totals.
Totals inspect_component_folder(const fs::path& dir, const std::string& expected_class, bool list_tensors) {
  const std::string config_path = (dir / "config.json").string();
  const auto json = adabldm::io::read_json(config_path);
  std::string cls = config_class(json);
  if (cls.empty()) cls = expected_class;
  std::optional<StateDict> weights;
  try {
    weights = adabldm::models::read_component_weights(dir.string(), "", /*allow_non_finite=*/true);
  } catch (const adabldm::IoError&) {
    std::printf("  weights: none found\n");
  }
  Totals t;
  NonFiniteMap bad;
  if (weights) {
    bad = non_finite_map(*weights);
    for (const auto& [name, ref] : weights->tensors()) t.add(name, ref, bad);
    print_counts(t);
  }
  print_built([&] {
    auto a = describe({json, config_path}, cls);
    adabldm::check(a.has_value(), config_path, ": class \"", cls, "\" is not one this library builds");
    return Built{*a, "config.json", weights};
  });
  if (list_tensors && weights) print_tensor_list(*weights, bad);
  return t;
}

std::string file_list(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

void inspect_pipeline(const fs::path& dir, bool list_tensors) {
  const auto index = adabldm::io::read_json((dir / "model_index.json").string());
  std::printf("folder: %s\nformat: diffusers pipeline folder (%s)\n", dir.string().c_str(),
              index.value("_class_name", std::string("?")).c_str());
  Totals total;
  for (auto it = index.begin(); it != index.end(); ++it) {
    const auto& v = it.value();
    if (it.key().empty() || it.key()[0] == '_' || !v.is_array() || v.size() != 2 || !v[1].is_string()) continue;
    const std::string library = v[0].is_string() ? v[0].get<std::string>() : "?", cls = v[1].get<std::string>();
    std::printf("component %s (%s %s)\n", it.key().c_str(), library.c_str(), cls.c_str());
    const fs::path sub = dir / it.key();
    if (!fs::is_directory(sub))
      std::printf("  folder: missing\n");
    else if (fs::exists(sub / "config.json"))
      total.add(inspect_component_folder(sub, cls, list_tensors), it.key() + "/");
    else
      std::printf("  files: %s\n", file_list(sub).c_str());
  }
  std::printf("total: %lld tensors, %lld parameters\nnon-finite values: %s\n", static_cast<long long>(total.tensors),
              static_cast<long long>(total.parameters), total.non_finite().c_str());
}

// ---- a config alone ----------------------------------------------------------------------------------------------
void inspect_config(const std::string& path) {
  const auto json = adabldm::io::read_json(path);
  const std::string cls = config_class(json);
  std::string known;
  for (const auto& k : known_classes()) known += (known.empty() ? "" : ", ") + k;
  adabldm::check<adabldm::FormatError>(!cls.empty(), path, ": the config does not name its class (_class_name, "
                                       "architectures or model_type); classes built: ", known);
  const auto a = describe({json, path}, cls);
  adabldm::check<adabldm::FormatError>(a.has_value(), path, ": class \"", cls, "\" is not one this library builds (",
                                       known, ")");
  std::printf("config: %s\nclass: %s\nsummary: %s\ntensors: %lld\nparameters: %lld\n", path.c_str(),
              a->class_name.c_str(), a->summary.c_str(), static_cast<long long>(a->tensors),
              static_cast<long long>(a->parameters));
}

/// A JSON file starts with '{' or '[' after white space; checkpoints never do.
bool looks_like_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char c = 0;
  while (in.get(c))
    if (c != ' ' && c != '\n' && c != '\r' && c != '\t') return c == '{' || c == '[';
  return false;
}
}  // namespace

int cmd_inspect(int argc, char** argv) {
  Args args(argc, argv, 2, {"config"}, {"help", "tensors"});
  if (args.flag("help") || args.positional().size() != 1) {
    std::fprintf(stderr,
                 "usage: adabldm inspect FILE_OR_DIR [--tensors] [--config CONFIG.json]\n"
                 "  FILE_OR_DIR  a single-file checkpoint (.safetensors, PyTorch .ckpt/.pt), a diffusers pipeline\n"
                 "               folder, a component folder, or a config.json alone\n"
                 "  --tensors    also list every tensor: name, dtype, shape, \"finite\" or its NaN and Inf counts\n"
                 "  --config     configs of a single file's components, where shapes cannot tell\n");
    return args.flag("help") ? 0 : 2;
  }
  const std::string path = args.positional()[0];
  const bool list_tensors = args.flag("tensors");
  if (fs::is_directory(path)) {
    if (fs::exists(fs::path(path) / "model_index.json")) {
      inspect_pipeline(path, list_tensors);
    } else {
      adabldm::check<adabldm::IoError>(fs::exists(fs::path(path) / "config.json"), path,
                                       ": a folder without model_index.json or config.json is not a model");
      std::printf("folder: %s\nformat: component folder (config.json + weights)\n", path.c_str());
      const Totals t = inspect_component_folder(path, "", list_tensors);
      if (t.tensors > 0) std::printf("non-finite values: %s\n", t.non_finite().c_str());
    }
    return 0;
  }
  adabldm::check<adabldm::IoError>(fs::exists(path), path, ": no such file or folder");
  if (adabldm::io::detect_checkpoint_format(path) == adabldm::io::CheckpointFormat::Unknown && looks_like_json(path)) {
    inspect_config(path);
    return 0;
  }
  inspect_single_file(path, args.get("config"), list_tensors);
  return 0;
}

}  // namespace cli
