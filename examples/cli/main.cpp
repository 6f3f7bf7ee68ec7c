// adabldm — the command-line tool. `adabldm COMMAND --help` describes each command.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include <adabldm/core/error.hpp>
#include <adabldm/version.hpp>

#include "commands.hpp"

namespace {
struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* summary;
};
const Command kCommands[] = {
    {"generate", cli::cmd_generate, "generate defect images with pixel-exact masks (the AdaBLDM pipeline)"},
    {"foreground", cli::cmd_foreground, "fit the foreground predictor on OK images; write masks, maps, a contact sheet"},
    {"train", cli::cmd_train, "fine-tune a trimap encoder on a few real defects (the base model frozen)"},
    {"train-base", cli::cmd_train_base, "train from scratch the small base model (autoencoder, UNet) on OK images"},
    {"evaluate", cli::cmd_evaluate, "does it help? train a detector with and without generated defects, measure it"},
    {"sample", cli::cmd_sample, "plain text(+trimap)-to-image sampling, as diffusers' pipelines do it"},
    {"inspect", cli::cmd_inspect, "show the format, components, dtypes and parameter counts of a model or config"},
    {"tokenize", cli::cmd_tokenize, "print the CLIP token ids of strings (77 per string, JSON)"},
    {"forward", cli::cmd_forward, "run one model component on named inputs (safetensors in, safetensors out)"},
    {"convert", cli::cmd_convert, "convert between a diffusers pipeline folder and a single-file checkpoint"},
};

void usage() {
  std::fprintf(stderr, "adabldm %s — industrial defect generation with blended latent diffusion\n\n"
                       "usage: adabldm COMMAND [OPTIONS]\n\ncommands:\n", ADABLDM_VERSION_STRING);
  for (const auto& c : kCommands) std::fprintf(stderr, "  %-11s %s\n", c.name, c.summary);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage();
    return argc < 2 ? 2 : 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::printf("%s\n", ADABLDM_VERSION_STRING);
    return 0;
  }
  for (const auto& c : kCommands) {
    if (std::strcmp(argv[1], c.name) != 0) continue;
    try {
      return c.run(argc, argv);
    } catch (const adabldm::Error& e) {
      std::fprintf(stderr, "adabldm %s: error: %s\n", c.name, e.what());
      return 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "adabldm %s: internal error: %s\n", c.name, e.what());
      return 3;
    }
  }
  std::fprintf(stderr, "adabldm: unknown command \"%s\"\n\n", argv[1]);
  usage();
  return 2;
}
