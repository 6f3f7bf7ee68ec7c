#pragma once
// Helpers for the golden tests: the reference files under tests/data (copied from ../shared/golden) and the
// agreed tolerance, max |ours - ref| <= 1e-4 * max(1, max |ref|) in f32.
#include <doctest/doctest.h>

#include "max_error.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "adabldm/core/tensor.hpp"
#include "adabldm/io/json.hpp"
#include "adabldm/io/safetensors.hpp"

namespace golden {

inline std::string path(const std::string& rel) { return std::string(ADABLDM_TEST_DATA) + "/" + rel; }

inline adabldm::io::Config config(const std::string& rel) { return {adabldm::io::read_json(path(rel)), rel}; }

struct Compare {
  double max_abs_err = 0, max_abs_ref = 0;
  double bound() const { return 1e-4 * std::max(1.0, max_abs_ref); }
  bool ok() const { return max_abs_err <= bound(); }
};

/// Compares and reports (printed, so the closing notes can quote every max error).
inline Compare compare(const std::string& what, const adabldm::Tensor<float>& ours, const adabldm::Tensor<float>& ref) {
  REQUIRE_MESSAGE(ours.shape() == ref.shape(), what, ": shape ", ours.shape().str(), " vs reference ", ref.shape().str());
  Compare c;
  const auto a = ours.to_vector(), b = ref.to_vector();
  for (std::size_t i = 0; i < a.size(); ++i) {
    c.max_abs_err = worse(c.max_abs_err, std::abs(double(a[i]) - double(b[i])));
    c.max_abs_ref = std::max(c.max_abs_ref, std::abs(double(b[i])));
  }
  std::printf("[golden] %-55s max|err| %.3e  (max|ref| %.3g, bound %.1e)\n", what.c_str(), c.max_abs_err, c.max_abs_ref,
              c.bound());
  return c;
}

#define GOLDEN_CHECK(what, ours, ref) CHECK(::golden::compare(what, ours, ref).ok())

}  // namespace golden
