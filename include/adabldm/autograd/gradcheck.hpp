#pragma once
// Finite-difference gradient checks (for tests and for anyone adding an op). The scalar checked is
// s(x) = <f(x), R> for a fixed random R, so one backward with grad_output = R gives every input's gradient.
// Per input: central differences (s(x + h e_k) - s(x - h e_k)) / 2h at all or at sampled coordinates k, and
// directional derivatives (s(x + h v) - s(x - h v)) / 2h against <grad, v> for random unit vectors v.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "adabldm/autograd/backward.hpp"
#include "adabldm/core/rng.hpp"

namespace adabldm::autograd {

struct GradCheckOptions {
  double step = 1e-6;       ///< h
  int64_t max_coords = 0;   ///< coordinates per input (sampled when the input is larger); <= 0: all
  int directions = 1;       ///< random unit directions per input
  uint64_t seed = 1;
};

struct GradCheckEntry {
  std::string name;
  int64_t coords = 0;         ///< coordinates compared
  double coord_error = 0;     ///< max |analytic - numeric| / max(max |numeric|, max |analytic|) over them
  double direction_error = 0; ///< max |<g, v> - numeric| / max(|g|_2, |numeric|) over the unit directions v
  double grad_scale = 0;      ///< max |analytic| over the compared coordinates (0: the gradient vanished there)
  double error() const { return std::max(coord_error, direction_error); }
};

struct GradCheckResult {
  std::vector<GradCheckEntry> entries;
  double max_error() const {
    double e = 0;
    for (const auto& x : entries) e = std::max(e, x.error());
    return e;
  }
  /// One line per input: "<what> <input>: coords n err e, directions err e, |grad| s".
  std::string summary(const std::string& what) const {
    std::string s;
    char line[256];
    for (const auto& e : entries) {
      std::snprintf(line, sizeof line, "[gradcheck] %-34s %-28s %5lld coords err %.2e | dir err %.2e | max|g| %.2e\n",
                    what.c_str(), e.name.c_str(), static_cast<long long>(e.coords), e.coord_error, e.direction_error,
                    e.grad_scale);
      s += line;
    }
    return s;
  }
};

/// Checks the gradients of f() with respect to `inputs` (leaves that f reads; each must require a gradient).
/// f is called with and without a TrainingScope and must depend on the inputs' data only. The inputs' data is
/// perturbed in place and restored; their gradients are cleared.
template <class F>
GradCheckResult gradcheck(F&& f, const std::vector<std::pair<std::string, Tensor<double, Cpu>>>& inputs,
                          const GradCheckOptions& o = {}) {
  for (const auto& [name, x] : inputs) {
    check(x.requires_grad() && x.is_contiguous(), "gradcheck: input ", name, " must be a contiguous leaf");
    x.autograd_meta()->grad.reset();
  }
  Rng rng(o.seed);
  Tensor<double, Cpu> weights;
  std::vector<Tensor<double, Cpu>> analytic;
  {
    TrainingScope scope;
    const auto out = f();
    weights = rng.normal<double>(out.shape());
    backward(out, weights);
    for (const auto& [name, x] : inputs) {
      auto g = grad(x);
      analytic.push_back(g.defined() ? g : Tensor<double, Cpu>::zeros(x.shape()));
      x.autograd_meta()->grad.reset();
    }
  }
  auto objective = [&] {
    const auto out = f();
    check<ShapeError>(out.shape() == weights.shape(), "gradcheck: f's output shape changed");
    const auto v = out.contiguous();
    long double s = 0;
    for (int64_t i = 0; i < v.numel(); ++i) s += static_cast<long double>(v.data()[i]) * weights.data()[i];
    return static_cast<double>(s);
  };
  // f must be a function of the inputs' data alone (a model that writes into its input, or draws random
  // numbers, would make every difference meaningless).
  const double base = objective();
  check(objective() == base, "gradcheck: f() changed between two calls with the same inputs (does it modify its "
        "inputs in place, or draw random numbers?)");
  const double h = o.step;
  GradCheckResult result;
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    const auto& [name, x] = inputs[k];
    double* xp = const_cast<double*>(x.data());
    const double* ap = analytic[k].data();
    GradCheckEntry e;
    e.name = name;
    // Coordinates.
    std::vector<int64_t> coords;
    const int64_t n = x.numel();
    if (o.max_coords <= 0 || n <= o.max_coords) {
      for (int64_t i = 0; i < n; ++i) coords.push_back(i);
    } else {
      while (static_cast<int64_t>(coords.size()) < o.max_coords) {
        const int64_t c = rng.uniform_int(0, n - 1);
        if (std::find(coords.begin(), coords.end(), c) == coords.end()) coords.push_back(c);
      }
    }
    double max_diff = 0, max_num = 0;
    for (int64_t c : coords) {
      const double saved = xp[c];
      xp[c] = saved + h;
      const double plus = objective();
      xp[c] = saved - h;
      const double minus = objective();
      xp[c] = saved;
      const double numeric = (plus - minus) / (2 * h);
      max_diff = std::max(max_diff, std::abs(numeric - ap[c]));
      max_num = std::max(max_num, std::abs(numeric));
      e.grad_scale = std::max(e.grad_scale, std::abs(ap[c]));
    }
    e.coords = static_cast<int64_t>(coords.size());
    e.coord_error = max_diff / std::max({max_num, e.grad_scale, 1e-300});
    // Directions, relative to |g|_2 = max over unit v of <g, v> (a <g, v> near 0 must not inflate the error).
    double g_norm = 0;
    for (int64_t i = 0; i < n; ++i) g_norm += ap[i] * ap[i];
    g_norm = std::sqrt(g_norm);
    for (int d = 0; d < o.directions; ++d) {
      auto v = rng.normal<double>(x.shape());
      double norm = 0;
      for (int64_t i = 0; i < n; ++i) norm += v.data()[i] * v.data()[i];
      for (int64_t i = 0; i < n; ++i) v.data()[i] /= std::sqrt(norm);
      std::vector<double> saved(xp, xp + n);
      double along = 0;
      for (int64_t i = 0; i < n; ++i) along += ap[i] * v.data()[i];
      for (int64_t i = 0; i < n; ++i) xp[i] = saved[static_cast<std::size_t>(i)] + h * v.data()[i];
      const double plus = objective();
      for (int64_t i = 0; i < n; ++i) xp[i] = saved[static_cast<std::size_t>(i)] - h * v.data()[i];
      const double minus = objective();
      std::copy(saved.begin(), saved.end(), xp);
      const double numeric = (plus - minus) / (2 * h);
      e.direction_error =
          std::max(e.direction_error, std::abs(numeric - along) / std::max({g_norm, std::abs(numeric), 1e-300}));
    }
    result.entries.push_back(e);
  }
  return result;
}

}  // namespace adabldm::autograd
