#pragma once
// Running maxima of errors that cannot hide a NaN: std::max(worst, NaN) returns worst, so a comparison loop built
// on it passes an output full of NaN. Every test's error loop uses worse() instead.
#include <algorithm>
#include <cmath>
#include <limits>

/// The larger of the running maximum `worst` and `d`; a NaN d counts as infinite (and stays so).
inline double worse(double worst, double d) {
  return std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(worst, d);
}
