#pragma once
// Where the embedded default model and demo samples are (models/README.md): used by the commands that run
// without --model.
#include <cstdlib>
#include <string>

#include <adabldm/core/error.hpp>

namespace cli {

/// The folder of the embedded default model and demo samples: $ADABLDM_MODELS_DIR, else the repository's models/.
inline std::string models_dir() {
  if (const char* env = std::getenv("ADABLDM_MODELS_DIR"); env && *env) return env;
#ifdef ADABLDM_MODELS_DIR
  return ADABLDM_MODELS_DIR;
#else
  throw adabldm::Error("no --model given and no embedded model: set $ADABLDM_MODELS_DIR to adabldm's models/ folder");
#endif
}

}  // namespace cli
