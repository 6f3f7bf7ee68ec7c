#pragma once
// A small command-line parser for the adabldm tool: `--name value`, `--flag`, and positional arguments.
// Unknown options are errors that name the option, so typos never pass silently.
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <adabldm/core/error.hpp>

namespace cli {

class Args {
 public:
  /// valued: options that take a value; flags: options without one.
  Args(int argc, char** argv, int first, std::set<std::string> valued, std::set<std::string> flags)
      : valued_(std::move(valued)), flags_(std::move(flags)) {
    for (int i = first; i < argc; ++i) {
      std::string a = argv[i];
      if (a.size() > 2 && a.rfind("--", 0) == 0) {
        std::string name = a.substr(2), value;
        const auto eq = name.find('=');
        const bool inline_value = eq != std::string::npos;
        if (inline_value) {
          value = name.substr(eq + 1);
          name = name.substr(0, eq);
        }
        if (flags_.count(name)) {
          adabldm::check(!inline_value, "option --", name, " takes no value");
          set_.insert(name);
        } else if (valued_.count(name)) {
          if (!inline_value) {
            adabldm::check(i + 1 < argc, "option --", name, " needs a value");
            value = argv[++i];
          }
          values_[name] = value;
        } else {
          throw adabldm::Error("unknown option --" + name);
        }
      } else if (a == "-n" && valued_.count("n")) {
        adabldm::check(i + 1 < argc, "option -n needs a value");
        values_["n"] = argv[++i];
      } else {
        positional_.push_back(a);
      }
    }
  }
  bool flag(const std::string& name) const { return set_.count(name) != 0; }
  bool has(const std::string& name) const { return values_.count(name) != 0; }
  std::string get(const std::string& name, const std::string& fallback = "") const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }
  std::string require(const std::string& name) const {
    adabldm::check(has(name), "missing required option --", name);
    return values_.at(name);
  }
  /// A finite number (nan and inf are refused: they would pass every range check silently).
  double number(const std::string& name, double fallback) const {
    if (!has(name)) return fallback;
    const std::string& s = values_.at(name);
    std::size_t used = 0;
    double v = 0;
    try {
      v = std::stod(s, &used);
    } catch (...) {
      used = 0;
    }
    adabldm::check(used == s.size() && !s.empty(), "option --", name, ": \"", s, "\" is not a number");
    adabldm::check(std::isfinite(v), "option --", name, ": \"", s, "\" is not a finite number");
    return v;
  }
  long integer(const std::string& name, long fallback) const {
    const double v = number(name, static_cast<double>(fallback));
    adabldm::check(std::fabs(v) < 9e15 && v == std::floor(v), "option --", name, ": \"", get(name), "\" is not an integer");
    return static_cast<long>(v);
  }
  /// number() within [lo, hi]; the message names the option, the value and the range.
  double number_in(const std::string& name, double fallback, double lo, double hi) const {
    const double v = number(name, fallback);
    adabldm::check(v >= lo && v <= hi, "option --", name, " ", get(name), ": must be in [", lo, ", ", hi, "]");
    return v;
  }
  long integer_in(const std::string& name, long fallback, long lo, long hi) const {
    const long v = integer(name, fallback);
    adabldm::check(v >= lo && v <= hi, "option --", name, " ", get(name), ": must be in [", lo, ", ", hi, "]");
    return v;
  }
  /// A non-empty value (names for prompts, paths).
  std::string require_nonempty(const std::string& name) const {
    const std::string v = require(name);
    adabldm::check(!v.empty(), "option --", name, " must not be empty");
    return v;
  }
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::set<std::string> valued_, flags_, set_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

}  // namespace cli
