#pragma once
// `adabldm forward`: what the command file and the per-model runners share -- the named inputs with their shape
// checks, the outputs, and one runner per component.
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <adabldm/io/safetensors.hpp>
#include <adabldm/models/loader.hpp>

namespace cli::forward {

namespace ab = adabldm;

/// The input file's tensors by name, with checks that name the tensor and the shape expected.
class Inputs {
 public:
  explicit Inputs(const std::string& path) : file_(ab::io::SafeTensors::open(path)) {}

  bool has(const std::string& name) const { return file_.contains(name); }
  const ab::Shape& shape(const std::string& name) const { return file_.info(name).shape; }
  const std::string& path() const { return file_.path(); }
  const std::vector<std::string>& names() const { return file_.names(); }

  /// Any numeric dtype, as float32.
  ab::Tensor<float> floats(const std::string& name) const { return file_.get<float>(name); }
  /// Integer dtypes only (a float tensor of token ids is a mistake worth naming).
  ab::Tensor<int64_t> integers(const std::string& name) const {
    const auto dt = file_.info(name).dtype;
    ab::check<ab::ShapeError>(dt == ab::DType::I64 || dt == ab::DType::I32 || dt == ab::DType::U8, path(), ": input \"",
                              name, "\" must be an integer tensor (I64, I32 or U8), it is ", ab::dtype_name(dt));
    return file_.get<int64_t>(name);
  }
  /// Throws unless `name` is present; `why` says what needs it.
  void require(const std::string& name, const std::string& why) const {
    ab::check<ab::ShapeError>(has(name), path(), ": missing input \"", name, "\" (", why, ")");
  }

 private:
  ab::io::SafeTensors file_;
};

/// One dimension of an expected shape: a number, or a letter bound to the first size seen under that letter
/// (so "B" must be the same in every input).
struct Dim {
  int64_t size = -1;
  std::string symbol;
  Dim(int64_t s) : size(s) {}                 // NOLINT: {"B", 4, "h", "w"} reads best
  Dim(const char* s) : symbol(s) {}           // NOLINT
};

class ShapeCheck {
 public:
  explicit ShapeCheck(const Inputs& in) : in_(in) {}

  /// Checks input `name` against `pattern`, binding its letters.
  void operator()(const std::string& name, const std::vector<Dim>& pattern) {
    const ab::Shape& s = in_.shape(name);
    bool ok = s.rank() == static_cast<int64_t>(pattern.size());
    std::map<std::string, int64_t> bound = bound_;
    for (std::size_t i = 0; ok && i < pattern.size(); ++i) {
      const Dim& d = pattern[i];
      const int64_t got = s[static_cast<int64_t>(i)];
      if (d.symbol.empty()) {
        ok = got == d.size;
      } else if (auto it = bound.find(d.symbol); it != bound.end()) {
        ok = got == it->second;
      } else {
        ok = got > 0;
        bound[d.symbol] = got;
      }
    }
    if (!ok) fail(name, pattern);
    bound_ = std::move(bound);
  }
  int64_t operator[](const std::string& symbol) const { return bound_.at(symbol); }

  [[noreturn]] void fail(const std::string& name, const std::vector<Dim>& pattern, const std::string& extra = "") const {
    std::string expected = "[", where;
    for (std::size_t i = 0; i < pattern.size(); ++i) {
      const Dim& d = pattern[i];
      expected += (i ? ", " : "") + (d.symbol.empty() ? std::to_string(d.size) : d.symbol);
      if (!d.symbol.empty() && bound_.count(d.symbol) && where.find(d.symbol + " = ") == std::string::npos)
        where += (where.empty() ? " where " : ", ") + d.symbol + " = " + std::to_string(bound_.at(d.symbol));
    }
    throw ab::ShapeError(in_.path() + ": input \"" + name + "\" has shape " + in_.shape(name).str() + ", expected " +
                         expected + "]" + where + extra);
  }

 private:
  const Inputs& in_;
  std::map<std::string, int64_t> bound_;
};

/// "07".
inline std::string two_digits(std::size_t i) { return (i < 10 ? "0" : "") + std::to_string(i); }

/// Seconds since `t0`.
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Options {
  float scale = 1;  ///< --scale (ControlNet conditioning scale)
};

/// One component: the inputs it accepts (for messages) and its run function, which loads the model, checks the
/// inputs present, computes and adds the outputs. Progress goes to stderr only after the inputs passed.
struct Runner {
  const char* component;
  const char* folder;  ///< its folder inside a diffusers pipeline
  std::vector<std::string> classes;  ///< the config classes it runs
  std::vector<std::string> inputs;
  void (*run)(const ab::models::ModelSource&, const Inputs&, ab::io::SafeTensorsWriter&, const Options&);
};

const std::vector<Runner>& runners();

}  // namespace cli::forward
