#pragma once
// adabldm::Error — every failure the library reports. The message always names the thing at fault
// (a file, a tensor key, a shape) so that a CLI can print it as one line.
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace adabldm {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(one_line(what)) {}

  /// The message as one line: names taken from files (zip entries, tensor keys) may hold any byte, so control
  /// characters are written as escapes (\n, \x01).
  static std::string one_line(const std::string& s) {
    std::string out;
    out.reserve(s.size());
    for (const char c : s) {
      const auto u = static_cast<unsigned char>(c);
      if (c == '\n') out += "\\n";
      else if (c == '\r') out += "\\r";
      else if (c == '\t') out += "\\t";
      else if (u < 0x20 || u == 0x7f) out += "\\x" + std::string{"0123456789abcdef"[u >> 4], "0123456789abcdef"[u & 15]};
      else out += c;
    }
    return out;
  }
};

/// A file or stream whose content is not what its format requires (truncated, malformed, inconsistent).
class FormatError : public Error {
 public:
  using Error::Error;
};

/// Tensor shapes or dtypes that do not fit an operation or a model.
class ShapeError : public Error {
 public:
  using Error::Error;
};

/// A file or folder that cannot be opened or written.
class IoError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

/// Throws E with the concatenation of args when cond is false.
template <class E = Error, class... Args>
inline void check(bool cond, Args&&... args) {
  if (!cond) throw E(detail::concat(std::forward<Args>(args)...));
}

}  // namespace adabldm
