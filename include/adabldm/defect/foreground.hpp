#pragma once
// The object foreground F (method §2.2): an all-foreground map for textures, foreground masks read from files,
// and the unsupervised per-category predictor of CPR / AdaBLDM re-expressed on generic feature maps.
//
// ForegroundPredictor
//   fit(): 2-means (k-means++ with n_init restarts, Lloyd iterations) on a random subsample of all feature
//   vectors; the majority cluster of a border band is the background; background seeds are the band vectors of
//   that cluster, foreground seeds the vectors of the other cluster in the central square (±20 % of H and W);
//   a two-class Fisher LDA (pooled within-class covariance + a small ridge, solved with Eigen) separates them;
//   its decision values on all training positions, with the lowest and highest 1 % dropped, give the [0, 1]
//   normalisation. predict() maps a feature map to [0, 1] (1 = object); binarise() is the official inference
//   binarisation (x255 to uint8, bilinear resize, Otsu, 5 x 5 closing).
//   Everything random comes from the Rng: the same seed and inputs give the same predictor.
//
//   Degenerate input is an ERROR, not a silent fallback: fit() throws adabldm::Error when all sampled feature
//   vectors are identical, when the central square holds no vector outside the background cluster, or when the
//   LDA decision has no spread. The message suggests all_foreground(), which is what the official code uses for
//   texture categories; the caller decides (the library prints nothing).
//
// Memory: fit() keeps the k-means sample (kmeans_samples x C floats) and one float per training position.
#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "adabldm/core/error.hpp"
#include "adabldm/core/rng.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/defect/imgproc.hpp"
#include "adabldm/io/image.hpp"

namespace adabldm::defect {

/// F = 1 everywhere (texture categories, or when no foreground is known), [1, 1, h, w].
inline Tensor<float, Cpu> all_foreground(int h, int w) {
  check(h > 0 && w > 0, "all_foreground: size must be positive, got ", h, "x", w);
  return Tensor<float, Cpu>::full({1, 1, h, w}, 1.0f);
}

/// What a foreground file holds.
enum class ForegroundFile {
  BinaryMask,    // a mask (0 / 255): bilinear resize, then > 127 (the training-data threshold)
  PredictorMap,  // the predictor's x255 map: bilinear resize, Otsu, 5 x 5 closing (the official inference path)
};

namespace detail {
/// The official binarisation of an 8-bit foreground map at its final size.
inline Tensor<float, Cpu> binarise_u8_map(const Image& gray, int out_h, int out_w, ForegroundFile kind, int closing) {
  const Image resized = resize_image(gray, out_h, out_w);
  if (kind == ForegroundFile::BinaryMask) return image_to_mask(resized, 127);
  const Tensor<float, Cpu> m = image_to_mask(resized, otsu_threshold(resized));
  return closing > 1 ? morph_close(m, closing) : m;
}
}  // namespace detail

/// Reads a foreground file as a [1, 1, h, w] mask in {0, 1} (1 = object), resized to h x w (no aspect
/// preservation, like the images). Colour files are read as their luma.
inline Tensor<float, Cpu> read_foreground_mask(const std::string& path, int h, int w,
                                               ForegroundFile kind = ForegroundFile::BinaryMask) {
  check(h > 0 && w > 0, path, ": foreground size must be positive, got ", h, "x", w);
  return detail::binarise_u8_map(read_image_u8(path, 1), h, w, kind, 5);
}
/// The same at size x size (the --size of the pipeline).
inline Tensor<float, Cpu> read_foreground_mask(const std::string& path, int size,
                                               ForegroundFile kind = ForegroundFile::BinaryMask) {
  return read_foreground_mask(path, size, size, kind);
}

struct ForegroundOptions {
  int kmeans_samples = 50000;  // feature vectors sampled for 2-means (official: 50 000)
  int n_init = 10;             // k-means++ restarts; the lowest inertia wins (official: 10)
  int max_iter = 300;          // Lloyd iterations per restart
  double tol = 1e-4;           // stop when the squared centre shift <= tol * mean feature variance (sklearn)
  int border = 3;              // background band width in feature pixels (official: 3)
  double center_ratio = 0.2;   // foreground seeds: the centre ± ratio * (H, W) (official: 0.2)
  int max_per_class = 15000;   // LDA training vectors per class (official: 15 000)
  double ridge = 1e-4;         // added to the pooled covariance's diagonal, relative to its mean variance
  double trim = 0.01;          // normaliser: fraction of decision values dropped at each end (official: 1 %)
};

class ForegroundPredictor {
 public:
  ForegroundPredictor() = default;
  /// A predictor from saved parameters (direction(), bias(), low(), high() of a fitted one).
  ForegroundPredictor(std::vector<double> direction, double bias, double low, double high)
      : w_(std::move(direction)), b_(bias), lo_(low), hi_(high) {
    check(!w_.empty() && hi_ > lo_, "ForegroundPredictor: need a non-empty direction and high > low");
  }

  /// Fits on feature maps of OK images, each [1, C, h, w] (same C; h, w may differ).
  static ForegroundPredictor fit(const std::vector<Tensor<float, Cpu>>& feature_maps, Rng& rng,
                                 const ForegroundOptions& options = {});

  /// The raw LDA decision value per position, [1, 1, h, w] (> 0 leans to the object).
  Tensor<float, Cpu> decision(const Tensor<float, Cpu>& feature_map) const {
    const auto f = checked_map(feature_map, "ForegroundPredictor::decision");
    const int64_t plane = f.dim(2) * f.dim(3);
    auto out = Tensor<float, Cpu>::empty({1, 1, f.dim(2), f.dim(3)});
    for (int64_t p = 0; p < plane; ++p) {
      double v = b_;
      for (std::size_t c = 0; c < w_.size(); ++c) v += w_[c] * f.data()[static_cast<int64_t>(c) * plane + p];
      out.data()[p] = static_cast<float>(v);
    }
    return out;
  }

  /// The foreground probability-like map, [1, 1, h, w] in [0, 1] (1 = object).
  Tensor<float, Cpu> predict(const Tensor<float, Cpu>& feature_map) const {
    auto d = decision(feature_map);
    for (int64_t i = 0; i < d.numel(); ++i)
      d.data()[i] = static_cast<float>(std::clamp((d.data()[i] - lo_) / (hi_ - lo_), 0.0, 1.0));
    return d;
  }

  /// The official inference binarisation of a predicted map: x255 truncated to uint8 (numpy astype), bilinear
  /// resize to out_h x out_w, Otsu threshold, closing with a closing x closing square. [1, 1, out_h, out_w] in {0, 1}.
  static Tensor<float, Cpu> binarise(const Tensor<float, Cpu>& map_in, int out_h, int out_w, int closing = 5) {
    const auto map = detail::mask_arg(map_in, "ForegroundPredictor::binarise");
    check(out_h > 0 && out_w > 0, "ForegroundPredictor::binarise: output size must be positive");
    Image gray{static_cast<int>(map.dim(3)), static_cast<int>(map.dim(2)), 1,
               std::vector<uint8_t>(static_cast<std::size_t>(map.numel()))};
    for (int64_t i = 0; i < map.numel(); ++i)
      gray.pixels[static_cast<std::size_t>(i)] = static_cast<uint8_t>(std::clamp(map.data()[i], 0.0f, 1.0f) * 255.0f);
    return detail::binarise_u8_map(gray, out_h, out_w, ForegroundFile::PredictorMap, closing);
  }

  bool fitted() const noexcept { return !w_.empty(); }
  int channels() const noexcept { return static_cast<int>(w_.size()); }
  const std::vector<double>& direction() const noexcept { return w_; }
  double bias() const noexcept { return b_; }
  double low() const noexcept { return lo_; }
  double high() const noexcept { return hi_; }

 private:
  Tensor<float, Cpu> checked_map(const Tensor<float, Cpu>& f, const char* what) const {
    check(fitted(), what, ": the predictor is not fitted");
    check<ShapeError>(f.rank() == 4 && f.dim(0) == 1 && f.dim(1) == channels(), what, ": expected [1, ", channels(),
                      ", h, w] features, got ", f.shape().str());
    return f.contiguous();
  }

  std::vector<double> w_;
  double b_ = 0.0, lo_ = 0.0, hi_ = 1.0;
};

namespace detail {

/// All positions of a list of [1, C, h, w] maps, addressed by one global index.
class FeatureSet {
 public:
  explicit FeatureSet(const std::vector<Tensor<float, Cpu>>& maps) {
    check(!maps.empty(), "ForegroundPredictor::fit: no feature maps given");
    for (std::size_t i = 0; i < maps.size(); ++i) {
      const auto& m = maps[i];
      check<ShapeError>(m.rank() == 4 && m.dim(0) == 1 && m.numel() > 0, "ForegroundPredictor::fit: feature map ", i,
                        " must be [1, C, h, w], got ", m.shape().str());
      if (i == 0) channels_ = static_cast<int>(m.dim(1));
      check<ShapeError>(m.dim(1) == channels_, "ForegroundPredictor::fit: feature map ", i, " has ", m.dim(1),
                        " channels, the first has ", channels_);
      maps_.push_back(m.contiguous());
      start_.push_back(total_);
      total_ += m.dim(2) * m.dim(3);
    }
  }
  int channels() const noexcept { return channels_; }
  int64_t total() const noexcept { return total_; }
  std::size_t map_count() const noexcept { return maps_.size(); }
  const Tensor<float, Cpu>& map(std::size_t i) const { return maps_[i]; }
  int64_t start(std::size_t i) const { return start_[i]; }
  /// Copies the feature vector of global position g into out[0..C).
  void vector(int64_t g, float* out) const {
    const std::size_t m = static_cast<std::size_t>(std::upper_bound(start_.begin(), start_.end(), g) - start_.begin()) - 1;
    const auto& t = maps_[m];
    const int64_t plane = t.dim(2) * t.dim(3), p = g - start_[m];
    for (int c = 0; c < channels_; ++c) out[c] = t.data()[c * plane + p];
  }
  /// The vectors of the given positions as a row-major (n x C) array.
  std::vector<float> gather(const std::vector<int64_t>& positions) const {
    std::vector<float> x(positions.size() * static_cast<std::size_t>(channels_));
    for (std::size_t i = 0; i < positions.size(); ++i) vector(positions[i], x.data() + i * static_cast<std::size_t>(channels_));
    return x;
  }

 private:
  std::vector<Tensor<float, Cpu>> maps_;
  std::vector<int64_t> start_;
  int64_t total_ = 0;
  int channels_ = 0;
};

/// k distinct values of [0, n) drawn uniformly without replacement (Floyd's algorithm), sorted; all of them
/// when k >= n.
inline std::vector<int64_t> sample_without_replacement(int64_t n, int64_t k, Rng& rng) {
  std::vector<int64_t> out;
  if (k >= n) {
    out.resize(static_cast<std::size_t>(n));
    for (int64_t i = 0; i < n; ++i) out[static_cast<std::size_t>(i)] = i;
    return out;
  }
  std::unordered_set<int64_t> chosen;
  chosen.reserve(static_cast<std::size_t>(k) * 2);
  for (int64_t j = n - k; j < n; ++j) {
    const int64_t t = rng.uniform_int(0, j);
    chosen.insert(chosen.count(t) ? j : t);
  }
  out.assign(chosen.begin(), chosen.end());
  std::sort(out.begin(), out.end());  // the set's iteration order is not part of the result
  return out;
}

/// Picks k of the given positions without replacement (all when there are at most k).
inline std::vector<int64_t> subsample(const std::vector<int64_t>& positions, int64_t k, Rng& rng) {
  std::vector<int64_t> out;
  for (int64_t i : sample_without_replacement(static_cast<int64_t>(positions.size()), k, rng))
    out.push_back(positions[static_cast<std::size_t>(i)]);
  return out;
}

struct TwoMeans {
  std::vector<double> centre[2];
  double inertia = 0.0;
};

inline double squared_distance(const float* x, const std::vector<double>& c) {
  double d = 0.0;
  for (std::size_t j = 0; j < c.size(); ++j) {
    const double t = x[j] - c[j];
    d += t * t;
  }
  return d;
}

/// Index (0 or 1) of the nearer centre; ties go to 0.
inline int nearest(const float* x, const TwoMeans& km) {
  return squared_distance(x, km.centre[1]) < squared_distance(x, km.centre[0]) ? 1 : 0;
}

/// 2-means on the rows of x (n x C): k-means++ seeding, Lloyd iterations, n_init restarts, lowest inertia kept.
inline TwoMeans two_means(const std::vector<float>& x, int64_t n, int C, Rng& rng, const ForegroundOptions& o) {
  const std::size_t cs = static_cast<std::size_t>(C);
  auto row = [&](int64_t i) { return x.data() + static_cast<std::size_t>(i) * cs; };
  // sklearn's tolerance is relative to the mean per-feature variance of the data.
  double mean_var = 0.0;
  for (int c = 0; c < C; ++c) {
    double s = 0.0, s2 = 0.0;
    for (int64_t i = 0; i < n; ++i) s += row(i)[c], s2 += static_cast<double>(row(i)[c]) * row(i)[c];
    mean_var += std::max(0.0, s2 / n - (s / n) * (s / n));
  }
  mean_var /= C;
  const double tol = o.tol * mean_var;

  TwoMeans best;
  std::vector<double> d2(static_cast<std::size_t>(n));
  std::vector<int> label(static_cast<std::size_t>(n));
  for (int init = 0; init < o.n_init; ++init) {
    TwoMeans km;
    const int64_t first = rng.uniform_int(0, n - 1);
    km.centre[0].assign(row(first), row(first) + C);
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += d2[static_cast<std::size_t>(i)] = squared_distance(row(i), km.centre[0]);
    check(total > 0.0, "ForegroundPredictor::fit: all ", n,
          " sampled feature vectors are identical, so there is no object to separate from the background; "
          "use all_foreground() for this category");
    const double r = rng.uniform() * total;  // k-means++: the second centre with probability ~ D^2
    int64_t second = n - 1;
    double acc = 0.0;
    for (int64_t i = 0; i < n; ++i)
      if ((acc += d2[static_cast<std::size_t>(i)]) >= r && d2[static_cast<std::size_t>(i)] > 0.0) {
        second = i;
        break;
      }
    while (d2[static_cast<std::size_t>(second)] == 0.0) --second;  // rounding at the end of the scan
    km.centre[1].assign(row(second), row(second) + C);

    for (int it = 0; it < o.max_iter; ++it) {
      std::vector<double> sum[2] = {std::vector<double>(cs, 0.0), std::vector<double>(cs, 0.0)};
      int64_t count[2] = {0, 0};
      for (int64_t i = 0; i < n; ++i) {
        const int k = nearest(row(i), km);
        ++count[k];
        for (std::size_t c = 0; c < cs; ++c) sum[k][c] += row(i)[c];
      }
      double shift = 0.0;
      for (int k = 0; k < 2; ++k) {
        if (count[k] == 0) continue;  // an empty cluster keeps its centre
        for (std::size_t c = 0; c < cs; ++c) {
          const double v = sum[k][c] / static_cast<double>(count[k]);
          shift += (v - km.centre[k][c]) * (v - km.centre[k][c]);
          km.centre[k][c] = v;
        }
      }
      if (shift <= tol) break;
    }
    for (int64_t i = 0; i < n; ++i) km.inertia += squared_distance(row(i), km.centre[nearest(row(i), km)]);
    if (init == 0 || km.inertia < best.inertia) best = km;
  }
  return best;
}

}  // namespace detail

inline ForegroundPredictor ForegroundPredictor::fit(const std::vector<Tensor<float, Cpu>>& feature_maps, Rng& rng,
                                                    const ForegroundOptions& o) {
  check(o.kmeans_samples >= 2 && o.n_init >= 1 && o.max_iter >= 1 && o.max_per_class >= 1 && o.border >= 1 &&
            o.center_ratio > 0.0 && o.center_ratio <= 0.5 && o.trim >= 0.0 && o.trim < 0.5 && o.ridge >= 0.0,
        "ForegroundPredictor::fit: invalid options");
  const detail::FeatureSet fs(feature_maps);
  const int C = fs.channels();
  const std::size_t cs = static_cast<std::size_t>(C);

  // 1. Two clusters of the (subsampled) feature vectors.
  const auto sample = detail::sample_without_replacement(fs.total(), o.kmeans_samples, rng);
  const detail::TwoMeans km = detail::two_means(fs.gather(sample), static_cast<int64_t>(sample.size()), C, rng, o);

  // 2. Seeds: the border band's majority cluster is the background; the other cluster in the centre, the object.
  std::vector<int64_t> band[2], centre_fg[2];  // positions by cluster label
  std::vector<float> v(cs);
  for (std::size_t m = 0; m < fs.map_count(); ++m) {
    const int h = static_cast<int>(fs.map(m).dim(2)), w = static_cast<int>(fs.map(m).dim(3));
    check(2 * o.border < h && 2 * o.border < w, "ForegroundPredictor::fit: feature map ", m, " (", h, "x", w,
          ") is too small for a border band of ", o.border);
    const int cy0 = static_cast<int>(h * (0.5 - o.center_ratio)), cy1 = static_cast<int>(h * (0.5 + o.center_ratio));
    const int cx0 = static_cast<int>(w * (0.5 - o.center_ratio)), cx1 = static_cast<int>(w * (0.5 + o.center_ratio));
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const bool in_band = y < o.border || y >= h - o.border || x < o.border || x >= w - o.border;
        const bool in_centre = y >= cy0 && y < cy1 && x >= cx0 && x < cx1;
        if (!in_band && !in_centre) continue;
        const int64_t g = fs.start(m) + static_cast<int64_t>(y) * w + x;
        fs.vector(g, v.data());
        const int k = detail::nearest(v.data(), km);
        (in_band ? band : centre_fg)[k].push_back(g);
      }
  }
  const int bg = band[1].size() > band[0].size() ? 1 : 0;
  const std::vector<int64_t>& bg_pos = band[bg];
  const std::vector<int64_t>& fg_pos = centre_fg[1 - bg];
  check(!fg_pos.empty(), "ForegroundPredictor::fit: the central square holds only the background cluster, so no "
                         "object was found; use all_foreground() for this category");

  // 3. Fisher LDA on up to max_per_class vectors per class.
  const auto x0 = fs.gather(detail::subsample(bg_pos, o.max_per_class, rng));
  const auto x1 = fs.gather(detail::subsample(fg_pos, o.max_per_class, rng));
  const int64_t n0 = static_cast<int64_t>(x0.size() / cs), n1 = static_cast<int64_t>(x1.size() / cs);
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Map<const Mat> X0(x0.data(), n0, C), X1(x1.data(), n1, C);
  const Eigen::VectorXd m0 = X0.cast<double>().colwise().mean().transpose();
  const Eigen::VectorXd m1 = X1.cast<double>().colwise().mean().transpose();
  const Eigen::MatrixXd D0 = X0.cast<double>().rowwise() - m0.transpose();
  const Eigen::MatrixXd D1 = X1.cast<double>().rowwise() - m1.transpose();
  Eigen::MatrixXd S = (D0.transpose() * D0 + D1.transpose() * D1) / static_cast<double>(std::max<int64_t>(1, n0 + n1 - 2));
  const double mean_var = S.trace() / C;
  S.diagonal().array() += o.ridge * mean_var + 1e-12;  // keeps S invertible for constant or collinear features
  const Eigen::VectorXd dir = S.ldlt().solve(m1 - m0);
  check(dir.allFinite() && dir.squaredNorm() > 0.0, "ForegroundPredictor::fit: the discriminant is degenerate "
                                                    "(the object and background seeds have the same mean); use all_foreground()");
  ForegroundPredictor p;
  p.w_.assign(dir.data(), dir.data() + C);
  p.b_ = -dir.dot(0.5 * (m0 + m1)) + std::log(static_cast<double>(n1) / static_cast<double>(n0));  // sklearn's priors

  // 4. Normaliser: trimmed min / max of the decision values of every training position.
  std::vector<float> values;
  values.reserve(static_cast<std::size_t>(fs.total()));
  p.lo_ = 0.0, p.hi_ = 1.0;  // decision() ignores them
  for (std::size_t m = 0; m < fs.map_count(); ++m) {
    const auto d = p.decision(fs.map(m));
    values.insert(values.end(), d.data(), d.data() + d.numel());
  }
  const std::size_t drop = static_cast<std::size_t>(static_cast<double>(values.size()) * o.trim);
  std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(drop), values.end());
  p.lo_ = values[drop];
  const std::size_t top = values.size() - 1 - drop;
  std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(top), values.end());
  p.hi_ = values[top];
  check(p.hi_ > p.lo_, "ForegroundPredictor::fit: the decision values have no spread after trimming; "
                       "use all_foreground()");
  return p;
}

}  // namespace adabldm::defect
