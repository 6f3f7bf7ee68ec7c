// adabldm convert: a diffusers pipeline folder <-> an original-layout single file (model.diffusion_model.,
// first_stage_model., cond_stage_model.*, control_model.). Tensors keep their stored dtype unless --dtype says
// otherwise, so an f32 round trip is bit-identical. Every component is checked against its architecture (names
// and shapes) before anything is written; outputs appear atomically (a file via temp + rename, a folder written
// as OUT.tmp and renamed).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>

#include <adabldm/io/safetensors.hpp>
#include <adabldm/models/loader.hpp>

#include "args.hpp"
#include "commands.hpp"
#include <adabldm/models/config_json.hpp>
#include "model_classes.hpp"
#include "sd_parts.hpp"
#include "tokenizer_files.hpp"

namespace cli {
using adabldm::io::unet_config_json;
using adabldm::io::controlnet_config_json;
using adabldm::io::vae_config_json;
using adabldm::io::clip_text_config_json;
using adabldm::io::sd_scheduler_config_json;
using adabldm::io::kDiffusersVersion;

namespace {
namespace fs = std::filesystem;
using adabldm::DType;
using adabldm::io::Json;
using adabldm::io::SafeTensorsWriter;
using adabldm::io::StateDict;
using adabldm::io::TensorRef;
using adabldm::io::LdmTextEncoder;
using namespace adabldm::models;

/// --dtype: the type float tensors are stored as; nullopt keeps each tensor's own.
std::optional<DType> parse_dtype_option(const std::string& s) {
  if (s.empty()) return std::nullopt;
  if (s == "f32") return DType::F32;
  if (s == "f16") return DType::F16;
  if (s == "bf16") return DType::BF16;
  throw adabldm::Error("option --dtype: \"" + s + "\" is not f32, f16 or bf16");
}

bool is_float(DType d) { return d == DType::F32 || d == DType::F16 || d == DType::BF16 || d == DType::F64; }

/// Adds `ref` stored as `to` when it is a float tensor and `to` is set; integer tensors are kept as they are.
void add_tensor(SafeTensorsWriter& w, const std::string& name, const TensorRef& ref, std::optional<DType> to) {
  switch (to && is_float(ref.dtype) ? *to : ref.dtype) {
    case DType::F32: w.add(name, ref.to<float>()); break;
    case DType::F16: w.add(name, ref.to<adabldm::half>()); break;
    case DType::BF16: w.add(name, ref.to<adabldm::bfloat16>()); break;
    case DType::F64: w.add(name, ref.to<double>()); break;
    case DType::I64: w.add(name, ref.to<int64_t>()); break;
    case DType::I32: w.add(name, ref.to<int32_t>()); break;
    case DType::U8: w.add(name, ref.to<uint8_t>()); break;
    case DType::Bool: w.add(name, ref.to<bool>()); break;
  }
}

const char* torch_dtype(DType d) {
  switch (d) {
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::F64: return "float64";
    default: return "float32";
  }
}

/// Where the text encoder goes in a single file: the source file's layout, else decided by the activation --
/// exact GELU is OpenCLIP (SD2.x, cond_stage_model.model.), quick_gelu OpenAI CLIP (SD1.x, cond_stage_model.transformer.).
LdmTextEncoder text_layout(const SdParts& p) {
  if (p.text_layout != LdmTextEncoder::None) return p.text_layout;
  return p.text_encoder && p.text_encoder->config.hidden_act == "gelu" ? LdmTextEncoder::OpenClipSd2
                                                                       : LdmTextEncoder::ClipSd1;
}

// ---- single file -------------------------------------------------------------------------------------------------
std::size_t write_single(const SdParts& parts, const std::string& out, std::optional<DType> dtype) {
  namespace pre = adabldm::io::ldm_prefix;
  adabldm::check<adabldm::IoError>(!fs::is_directory(out), out, ": is a folder; --to single writes one .safetensors file");
  SafeTensorsWriter w;
  Json configs = Json::object();  // stored in the metadata so that the file converts back and runs without --config
  if (const auto& p = parts.unet) {
    UNet2DConditionModel<float> model(p->config);
    require_fit(model, p->weights);
    model.visit("", [&](const std::string& name, auto&) {
      add_tensor(w, pre::unet + adabldm::io::ldm_unet_name(name, p->config), p->weights.at(name), dtype);
    });
    configs[pre::unet] = {{"diffusers_config", unet_config_json(p->config)}};
  }
  if (const auto& p = parts.controlnet) {
    ControlNetModel<float> model(p->config);
    require_fit(model, p->weights);
    const std::size_t hint_blocks = model.controlnet_cond_embedding.blocks.size();
    model.visit("", [&](const std::string& name, auto&) {
      add_tensor(w, pre::controlnet + adabldm::io::ldm_unet_name(name, p->config.unet, hint_blocks),
                 p->weights.at(name), dtype);
    });
    configs[pre::controlnet] = {{"diffusers_config", controlnet_config_json(p->config)}};
  }
  if (const auto& p = parts.vae) {
    AutoencoderKL<float> model(p->config);
    require_fit(model, p->weights);
    const StateDict ldm = adabldm::io::vae_to_ldm(p->weights);
    for (const auto& [name, ref] : ldm.tensors()) add_tensor(w, pre::vae + name, ref, dtype);
    configs[pre::vae] = {{"diffusers_config", vae_config_json(p->config)}};
  }
  if (const auto& p = parts.text_encoder) {
    ClipTextModel<float> model(p->config);
    require_fit(model, p->weights);
    // SD2.x: OpenCLIP's text_projection and logit_scale are not part of CLIPTextModel, so they cannot be written.
    const bool sd2 = text_layout(parts) == LdmTextEncoder::OpenClipSd2;
    const std::string prefix = sd2 ? adabldm::io::kLdmSd2ClipPrefix : adabldm::io::kLdmSd1ClipPrefix;
    const StateDict ldm = sd2 ? adabldm::io::clip_to_ldm_sd2(p->weights) : adabldm::io::clip_to_ldm_sd1(p->weights);
    for (const auto& [name, ref] : ldm.tensors()) add_tensor(w, prefix + name, ref, dtype);
    const DType stored = p->weights.at("text_model.embeddings.token_embedding.weight").dtype;
    configs[prefix] = {{"transformers_config", clip_text_config_json(p->config, torch_dtype(dtype.value_or(stored)))}};
  }
  w.metadata("format", "pt");
  w.metadata(kConfigsMetadata, configs.dump());
  w.write(out);
  return w.size();
}

// ---- diffusers folder --------------------------------------------------------------------------------------------
void write_json(const fs::path& p, const Json& j) {
  const std::string text = j.dump(2) + "\n";
  adabldm::io::write_file_atomic(p.string(), text.data(), text.size());
}

/// <dir>/config.json and <dir>/<weights_file>, the tensors in name order.
std::size_t write_component(const fs::path& dir, const Json& config, const char* weights_file, const StateDict& weights,
                            std::optional<DType> dtype) {
  fs::create_directories(dir);
  write_json(dir / "config.json", config);
  SafeTensorsWriter w;
  for (const auto& [name, ref] : weights.tensors()) add_tensor(w, name, ref, dtype);
  w.metadata("format", "pt");
  w.write((dir / weights_file).string());
  return w.size();
}

std::size_t write_pipeline(const SdParts& parts, const fs::path& dir, std::optional<DType> dtype) {
  const char* diffusers_weights = "diffusion_pytorch_model.safetensors";
  auto entry = [](const char* library, const std::string& cls) { return Json::array({library, cls}); };
  Json index{{"_class_name", parts.controlnet ? "StableDiffusionControlNetPipeline" : "StableDiffusionPipeline"},
             {"_diffusers_version", kDiffusersVersion},
             {"feature_extractor", Json::array({nullptr, nullptr})},
             {"image_encoder", Json::array({nullptr, nullptr})},
             {"requires_safety_checker", false},
             {"safety_checker", Json::array({nullptr, nullptr})}};
  std::size_t tensors = 0;
  if (const auto& p = parts.unet) {
    UNet2DConditionModel<float> model(p->config);
    require_fit(model, p->weights);
    tensors += write_component(dir / "unet", unet_config_json(p->config), diffusers_weights, p->weights, dtype);
    index["unet"] = entry("diffusers", "UNet2DConditionModel");
  }
  if (const auto& p = parts.controlnet) {
    ControlNetModel<float> model(p->config);
    require_fit(model, p->weights);
    tensors += write_component(dir / "controlnet", controlnet_config_json(p->config), diffusers_weights, p->weights, dtype);
    index["controlnet"] = entry("diffusers", "ControlNetModel");
  }
  if (const auto& p = parts.vae) {
    AutoencoderKL<float> model(p->config);
    require_fit(model, p->weights);
    tensors += write_component(dir / "vae", vae_config_json(p->config), diffusers_weights, p->weights, dtype);
    index["vae"] = entry("diffusers", "AutoencoderKL");
  }
  if (const auto& p = parts.text_encoder) {
    ClipTextModel<float> model(p->config);
    require_fit(model, p->weights);
    const DType stored = p->weights.at("text_model.embeddings.token_embedding.weight").dtype;
    tensors += write_component(dir / "text_encoder", clip_text_config_json(p->config, torch_dtype(dtype.value_or(stored))),
                               "model.safetensors", p->weights, dtype);
    index["text_encoder"] = entry("transformers", "CLIPTextModel");
    // The source's own tokenizer when it has one; else the shipped vocabulary (the one every SD model uses).
    if (!parts.tokenizer_dir.empty())
      fs::copy(parts.tokenizer_dir, dir / "tokenizer", fs::copy_options::recursive);
    else
      write_default_tokenizer(dir / "tokenizer", text_layout(parts) == LdmTextEncoder::OpenClipSd2 ? "!" : "<|endoftext|>");
    index["tokenizer"] = entry("transformers", "CLIPTokenizer");
  }
  if (parts.unet) {
    const Json scheduler = parts.scheduler_config.empty() ? sd_scheduler_config_json()
                                                          : adabldm::io::read_json(parts.scheduler_config);
    fs::create_directories(dir / "scheduler");
    write_json(dir / "scheduler" / "scheduler_config.json", scheduler);
    index["scheduler"] = entry("diffusers", scheduler.value("_class_name", std::string("DDIMScheduler")));
  }
  write_json(dir / "model_index.json", index);
  return tensors;
}

/// Writes into OUT.tmp, renamed to OUT when complete; OUT.tmp is removed on failure.
std::size_t write_pipeline_atomically(const SdParts& parts, const std::string& out, std::optional<DType> dtype) {
  adabldm::check<adabldm::IoError>(!fs::exists(out), out, ": exists; convert does not overwrite folders (remove it or choose "
                          "another name)");
  const fs::path tmp = out + ".tmp";
  adabldm::check<adabldm::IoError>(!fs::exists(tmp), tmp.string(), ": exists (left by an interrupted convert?); remove it");
  try {
    fs::create_directories(tmp);
    const std::size_t n = write_pipeline(parts, tmp, dtype);
    fs::rename(tmp, out);
    return n;
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
}
}  // namespace

int cmd_convert(int argc, char** argv) {
  Args args(argc, argv, 2, {"to", "dtype", "config"}, {"help", "allow-non-finite"});
  if (args.flag("help") || args.positional().size() != 2) {
    std::fprintf(stderr,
                 "usage: adabldm convert IN OUT [--to diffusers|single] [--dtype f32|f16|bf16] [--config CONFIG.json]\n"
                 "                       [--allow-non-finite]\n"
                 "  IN        a diffusers pipeline folder or a single-file checkpoint (.safetensors or .ckpt)\n"
                 "  --to      single: one .safetensors in the original layout; diffusers: a pipeline folder\n"
                 "            (default: the other layout)\n"
                 "  --dtype   store float tensors as f32, f16 or bf16 (default: keep)\n"
                 "  --config  configs of a single file's components (keyed by prefix), where shapes cannot tell\n"
                 "  --allow-non-finite  convert weights that hold NaN or Inf values (default: refused, naming the\n"
                 "            file and the tensor)\n");
    return args.flag("help") ? 0 : 2;
  }
  const auto t0 = std::chrono::steady_clock::now();
  const std::string in = args.positional()[0], out = args.positional()[1];
  const auto dtype = parse_dtype_option(args.get("dtype"));
  const auto src = open_model(in, args.get("config"), args.flag("allow-non-finite"));
  const bool from_single = src.kind() == SourceKind::SingleFile;
  const std::string to = args.get("to", from_single ? "diffusers" : "single");
  adabldm::check(to == "diffusers" || to == "single", "option --to: \"", to, "\" is not diffusers or single");
  adabldm::check<adabldm::IoError>(to == "single" || !fs::exists(out), out,
                                   ": exists; convert does not overwrite folders (remove it or choose another name)");
  const SdParts parts = read_sd_parts(src);
  for (const auto& s : parts.skipped) std::fprintf(stderr, "convert: not converted: %s\n", s.c_str());
  std::size_t tensors = 0;
  try {
    tensors = to == "single" ? write_single(parts, out, dtype) : write_pipeline_atomically(parts, out, dtype);
  } catch (const fs::filesystem_error& e) {
    throw adabldm::IoError(e.what());
  }
  std::fprintf(stderr, "convert: wrote %s (%s, %zu tensors) in %.2f s\n", out.c_str(),
               to == "single" ? "single file" : "diffusers pipeline folder", tensors,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return 0;
}

}  // namespace cli
