#pragma once
// What every harness shares. The readers take paths, as users give them, so an input is written to a temporary
// file first. An input may be rejected only properly: an adabldm::Error whose message is one line naming the file.
// Anything else ends the run as a finding: a crash or sanitizer report, a foreign exception (it escapes the
// harness and aborts), a wrong read-back (FUZZ_CHECK), or a message that is not one line naming the file.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include "adabldm/core/error.hpp"

#define FUZZ_CHECK(cond)                                                                     \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      std::fprintf(stderr, "FUZZ_CHECK failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)

namespace fuzz {

/// A file name in this process's own temporary folder (removed at exit).
inline std::string temp_path(const std::string& name) {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("adabldm-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    std::atexit([] { std::error_code ec; std::filesystem::remove_all(std::filesystem::temp_directory_path() / ("adabldm-fuzz-" + std::to_string(::getpid())), ec); });
    return d;
  }();
  return (dir / name).string();
}

inline std::string write_temp(const std::string& name, const uint8_t* data, std::size_t size) {
  const std::string p = temp_path(name);
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return p;
}

/// Runs `read`; an adabldm::Error is a proper rejection if its message is one line that names `file`.
template <class F>
void run(const std::string& file, F&& read) {
  try {
    read();
  } catch (const adabldm::Error& e) {
    const std::string msg = e.what();
    if (msg.find('\n') != std::string::npos || msg.find(file) == std::string::npos) {
      std::fprintf(stderr, "improper error message (one line naming %s expected): %s\n", file.c_str(), msg.c_str());
      std::abort();
    }
  }
}

}  // namespace fuzz
