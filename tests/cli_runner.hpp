#pragma once
// Running the adabldm tool from a test: the command line, its exit status and what it wrote to stderr; and a fresh
// scratch folder per test. ADABLDM_CLI (the tool's path) is defined by tests/CMakeLists.txt.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace cli_test {
namespace fs = std::filesystem;

struct Run {
  int code;
  std::string err;
};

/// Runs `adabldm ARGS`, capturing stderr.
inline Run cli(const std::string& args) {
  static int counter = 0;
  const auto err = fs::temp_directory_path() / ("adabldm_cli_err_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  const int status = std::system((std::string(ADABLDM_CLI) + " " + args + " 2> " + err.string()).c_str());
  std::ifstream in(err);
  std::stringstream ss;
  ss << in.rdbuf();
  fs::remove(err);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, ss.str()};
}

/// An empty folder TMP/<prefix>_<pid>_<name>.
inline fs::path temp_dir(const std::string& prefix, const std::string& name) {
  const auto d = fs::temp_directory_path() / (prefix + "_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}
}  // namespace cli_test
