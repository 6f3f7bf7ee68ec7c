#pragma once
// Anomaly-detection metrics (issue 21), defined in docs/evaluation.md ("Metrics"):
//   - pixel AP, pixel AUROC, image AUROC, image AP: scikit-learn's average_precision_score (step-wise, no
//     interpolation) and roc_auc_score (trapezoid over the distinct thresholds, so ties count one half);
//   - pixel F1-max: the best F1 over the points of sklearn's precision_recall_curve;
//   - IAP and IAP90: DeSTSeg's instance average precision (apple/ml-destseg, model/metrics.py, IAPS);
//   - PRO: MVTec AD's normalised area under the per-region-overlap curve up to a false-positive rate of 0.3
//     (mvtec_ad_evaluation: compute_pro and trapezoid);
//   - the image score: DeSTSeg's (eval.py) mean of the 100 highest pixel scores.
// Ground-truth components are 8-connected and labelled per image. Everything is computed in double from float
// scores; each metric sorts all pixels once (O(n log n)), compute_metrics shares one sort between all pixel metrics.
// Failures (empty input, mismatched sizes, labels other than 0/1, NaN or infinite scores, a class missing where
// the metric needs it) throw adabldm::Error naming the metric and the problem.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "adabldm/core/error.hpp"

namespace adabldm::eval {

/// One test image: its score map and its binary ground truth (both h x w, row-major).
struct ScoredImage {
  int64_t h = 0, w = 0;
  std::vector<float> score;
  std::vector<uint8_t> gt;
};

struct InstanceAP {
  double iap = 0, iap90 = 0;
};

/// Every metric of compute_metrics; an image is anomalous when its gt has any 1.
struct Metrics {
  double pixel_ap, pixel_auroc, iap, iap90, pixel_f1_max, pro, image_auroc, image_ap;
};

namespace detail {

/// A pixel in the one global ranking: its score and its flat index.
struct Ranked {
  float score;
  uint32_t index;
};

template <class T>
void check_scores(const T* scores, std::size_t n, const char* what) {
  for (std::size_t i = 0; i < n; ++i)
    if (!std::isfinite(scores[i]))
      throw Error(adabldm::detail::concat(what, ": score ", i, " is ", std::isnan(scores[i]) ? "NaN" : "infinite",
                                          " (scores must be finite)"));
}

inline void check_labels(const uint8_t* labels, std::size_t n, const char* what) {
  for (std::size_t i = 0; i < n; ++i)
    check(labels[i] <= 1, what, ": label ", i, " is ", int(labels[i]), " (labels must be 0 or 1)");
}

/// Indices of the scores, highest score first (ties in index order, so the ranking is deterministic).
inline std::vector<Ranked> rank_descending(const float* scores, std::size_t n) {
  std::vector<Ranked> r(n);
  for (std::size_t i = 0; i < n; ++i) r[i] = {scores[i], static_cast<uint32_t>(i)};
  std::sort(r.begin(), r.end(), [](const Ranked& a, const Ranked& b) {
    return a.score > b.score || (a.score == b.score && a.index < b.index);
  });
  return r;
}

/// AP, AUROC and F1-max of one ranking, walking its distinct thresholds once.
struct Ranking {
  double ap = 0, auroc = 0, f1_max = 0;
  int64_t positives = 0, negatives = 0;
};

/// sorted: scores, highest first; label(k) is the label of the k-th. Each group of equal scores is one threshold
/// (sklearn's _binary_clf_curve), giving the point (tp, fp) with every pixel >= the threshold called positive.
template <class Score, class Label>
Ranking rank_metrics(std::size_t n, Score score_at, Label label_at) {
  Ranking r;
  for (std::size_t k = 0; k < n; ++k) (label_at(k) ? r.positives : r.negatives)++;
  int64_t tp = 0, fp = 0, tp_prev = 0, fp_prev = 0;
  double ap = 0;
  // Twice the ROC area times P * N, in integers: exact up to 2^63 (13 M pixels give at most ~1e14).
  int64_t area2 = 0;
  double f1 = 0;
  const double P = static_cast<double>(r.positives);
  for (std::size_t k = 0; k < n;) {
    const auto s = score_at(k);
    for (; k < n && score_at(k) == s; ++k) (label_at(k) ? tp : fp)++;
    // sklearn: AP = sum (R_k - R_{k-1}) P_k over the thresholds, highest first.
    if (tp > tp_prev) ap += static_cast<double>(tp - tp_prev) / P * static_cast<double>(tp) / static_cast<double>(tp + fp);
    area2 += (fp - fp_prev) * (tp + tp_prev);
    // F1 = 2 P R / (P + R) = 2 tp / (tp + fp + #positives).
    if (tp > 0) f1 = std::max(f1, 2.0 * static_cast<double>(tp) / static_cast<double>(tp + fp + r.positives));
    tp_prev = tp;
    fp_prev = fp;
  }
  r.ap = ap;
  r.f1_max = f1;
  if (r.positives > 0 && r.negatives > 0)
    r.auroc = static_cast<double>(area2) / (2.0 * P * static_cast<double>(r.negatives));
  return r;
}

inline void check_flat(std::size_t n_scores, std::size_t n_labels, const char* what) {
  check(n_scores > 0, what, ": no scores (empty input)");
  check(n_scores == n_labels, what, ": ", n_scores, " scores but ", n_labels, " labels");
  check(n_scores < std::numeric_limits<uint32_t>::max(), what, ": ", n_scores, " pixels, more than 2^32 - 1");
}

/// Checks and ranks flat scores/labels (the flat-array metrics).
inline Ranking flat_ranking(const std::vector<float>& scores, const std::vector<uint8_t>& labels, const char* what) {
  check_flat(scores.size(), labels.size(), what);
  check_scores(scores.data(), scores.size(), what);
  check_labels(labels.data(), labels.size(), what);
  const auto order = rank_descending(scores.data(), scores.size());
  return rank_metrics(
      order.size(), [&](std::size_t k) { return order[k].score; }, [&](std::size_t k) { return labels[order[k].index]; });
}

/// Ranks a few double scores (the image-level metrics: one score per image).
inline Ranking small_ranking(const std::vector<double>& scores, const std::vector<uint8_t>& labels) {
  std::vector<std::size_t> order(scores.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  return rank_metrics(
      order.size(), [&](std::size_t k) { return scores[order[k]]; }, [&](std::size_t k) { return labels[order[k]]; });
}

inline void check_image(const ScoredImage& im, std::size_t i, const char* what) {
  check(im.h > 0 && im.w > 0, what, ": image ", i, " has size ", im.h, " x ", im.w);
  const auto n = static_cast<std::size_t>(im.h * im.w);
  check(im.score.size() == n, what, ": image ", i, " is ", im.h, " x ", im.w, " but has ", im.score.size(), " scores");
  check(im.gt.size() == n, what, ": image ", i, " is ", im.h, " x ", im.w, " but has ", im.gt.size(), " gt values");
  check_scores(im.score.data(), n, what);
  check_labels(im.gt.data(), n, what);
}

/// Checks every image; returns the total number of pixels.
inline std::size_t check_images(const std::vector<ScoredImage>& images, const char* what) {
  check(!images.empty(), what, ": no images (empty input)");
  std::size_t total = 0;
  for (std::size_t i = 0; i < images.size(); ++i) {
    check_image(images[i], i, what);
    total += images[i].score.size();
  }
  check(total < std::numeric_limits<uint32_t>::max(), what, ": ", total, " pixels, more than 2^32 - 1");
  return total;
}

/// All images' pixels as one flat array (image after image) with their global ranking.
struct Pooled {
  std::vector<float> score;
  std::vector<uint8_t> gt;
  std::vector<Ranked> order;  // highest score first
};

inline Pooled pool(const std::vector<ScoredImage>& images, std::size_t total) {
  Pooled p;
  p.score.reserve(total);
  p.gt.reserve(total);
  for (const auto& im : images) {
    p.score.insert(p.score.end(), im.score.begin(), im.score.end());
    p.gt.insert(p.gt.end(), im.gt.begin(), im.gt.end());
  }
  p.order = rank_descending(p.score.data(), total);
  return p;
}

/// 8-connected labelling by flood fill from each unlabelled foreground pixel in raster order, so the labels
/// 1..n follow the order of each component's first pixel (as scipy.ndimage.label and cv2 number them).
inline int connected_components_unchecked(const uint8_t* mask, int64_t h, int64_t w, int32_t* labels) {
  const int64_t n = h * w;
  std::fill(labels, labels + n, 0);
  int count = 0;
  std::vector<int64_t> stack;
  for (int64_t start = 0; start < n; ++start) {
    if (!mask[start] || labels[start]) continue;
    labels[start] = ++count;
    stack.push_back(start);
    while (!stack.empty()) {
      const int64_t q = stack.back();
      stack.pop_back();
      const int64_t y = q / w, x = q % w;
      for (int64_t dy = -1; dy <= 1; ++dy)
        for (int64_t dx = -1; dx <= 1; ++dx) {
          const int64_t yy = y + dy, xx = x + dx;
          if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
          const int64_t r = yy * w + xx;
          if (mask[r] && !labels[r]) {
            labels[r] = count;
            stack.push_back(r);
          }
        }
    }
  }
  return count;
}

/// The ground-truth components of all images, numbered globally from 1 (0 = background); sizes[c] = pixel count.
struct Components {
  std::vector<int32_t> label;  // per pooled pixel
  std::vector<int64_t> size;   // size[0] unused
  int64_t count = 0;
};

inline Components label_components(const std::vector<ScoredImage>& images, std::size_t total) {
  Components c;
  c.label.assign(total, 0);
  std::size_t offset = 0;
  for (const auto& im : images) {
    const int n = connected_components_unchecked(im.gt.data(), im.h, im.w, c.label.data() + offset);
    const auto n_px = static_cast<std::size_t>(im.h * im.w);
    for (std::size_t k = offset; k < offset + n_px; ++k)
      if (c.label[k] > 0) c.label[k] += static_cast<int32_t>(c.count);
    c.count += n;
    offset += n_px;
  }
  c.size.assign(static_cast<std::size_t>(c.count) + 1, 0);
  for (int32_t l : c.label) c.size[static_cast<std::size_t>(l)]++;
  return c;
}

/// DeSTSeg's IAPS.compute on pooled pixels (see instance_ap).
inline InstanceAP instance_ap_pooled(const Pooled& p, const Components& c, const char* what) {
  check(c.count > 0, what, ": no ground-truth component in any image (IAP needs at least one anomalous pixel)");
  // Instance score: the value at index floor(0.5 n) of the component's n scores sorted in descending order.
  std::vector<std::vector<float>> members(static_cast<std::size_t>(c.count) + 1);
  for (std::size_t l = 1; l < members.size(); ++l) members[l].reserve(static_cast<std::size_t>(c.size[l]));
  for (std::size_t k = 0; k < c.label.size(); ++k)
    if (c.label[k] > 0) members[static_cast<std::size_t>(c.label[k])].push_back(p.score[k]);
  std::vector<float> ins;
  ins.reserve(static_cast<std::size_t>(c.count));
  for (std::size_t l = 1; l < members.size(); ++l) {
    auto& m = members[l];
    const auto at = m.begin() + static_cast<std::ptrdiff_t>(m.size() / 2);
    std::nth_element(m.begin(), at, m.end(), std::greater<float>());
    ins.push_back(*at);
  }
  std::sort(ins.begin(), ins.end());
  // Counting pixels >= s by binary search in the ranking (all pixels) and in the ranked positives.
  std::vector<float> all_desc(p.order.size()), pos_desc;
  int64_t negatives = 0;
  for (std::size_t k = 0; k < p.order.size(); ++k) {
    all_desc[k] = p.order[k].score;
    if (p.gt[p.order[k].index]) pos_desc.push_back(p.order[k].score);
    else ++negatives;
  }
  auto count_ge = [](const std::vector<float>& desc, float s) {
    return static_cast<int64_t>(std::upper_bound(desc.begin(), desc.end(), s, std::greater<float>()) - desc.begin());
  };
  const std::size_t n = ins.size();
  std::vector<double> precision(n);
  for (std::size_t i = 0; i < n; ++i) {
    const float s = ins[i];
    // DeSTSeg's tp is #(pred * gt >= s): a gt = 0 pixel counts as 0, so with s <= 0 every negative pixel is a "tp".
    const int64_t tp = count_ge(pos_desc, s) + (s <= 0.0f ? negatives : 0);
    precision[i] = static_cast<double>(tp) / static_cast<double>(count_ge(all_desc, s));
  }
  // Monotone: the precision at an instance threshold is the best at any lower threshold (higher recall).
  for (std::size_t i = 1; i < n; ++i) precision[i] = std::max(precision[i], precision[i - 1]);
  InstanceAP r;
  double sum = 0;
  for (double v : precision) sum += v;
  r.iap = sum / static_cast<double>(n);
  // IAP90: recall_i = 1 - i / n (instances in ascending score, ties by position, as DeSTSeg); the precision at the
  // largest i with recall_i >= 0.9 (DeSTSeg's bisect_left on the reversed recall list).
  std::size_t at = 0;
  for (std::size_t i = 0; i < n; ++i)
    if (1.0 - static_cast<double>(i) / static_cast<double>(n) >= 0.9) at = i;
  r.iap90 = precision[at];
  return r;
}

/// MVTec AD's compute_pro + trapezoid(x_max = fpr_limit) / fpr_limit on pooled pixels (see pro).
inline double pro_pooled(const Pooled& p, const Components& c, double fpr_limit, const char* what) {
  check(fpr_limit > 0.0 && fpr_limit <= 1.0, what, ": the FPR limit ", fpr_limit, " is not in (0, 1]");
  check(c.count > 0, what, ": no ground-truth component in any image (PRO needs at least one anomalous pixel)");
  const int64_t ok_pixels = static_cast<int64_t>(c.label.size()) - [&] {
    int64_t s = 0;
    for (std::size_t l = 1; l < c.size.size(); ++l) s += c.size[l];
    return s;
  }();
  check(ok_pixels > 0, what, ": no anomaly-free pixel (PRO needs a false-positive rate)");
  std::vector<double> inv_size(c.size.size(), 0.0);
  for (std::size_t l = 1; l < c.size.size(); ++l) inv_size[l] = 1.0 / static_cast<double>(c.size[l]);
  const double regions = static_cast<double>(c.count), ok = static_cast<double>(ok_pixels);
  // The curve: (0, 0), one point per distinct score (all pixels >= it called anomalous), (1, 1); each point is
  // clipped at 1 as MVTec does. Integrated by trapezoid, with the point at x = fpr_limit interpolated.
  double x_prev = 0, y_prev = 0, area = 0;
  int64_t fp = 0;
  double overlap_sum = 0;  // sum over regions of the fraction of the region called anomalous
  bool done = false;
  auto add_point = [&](double x, double y) {
    x = std::min(x, 1.0);
    y = std::min(y, 1.0);
    if (x <= fpr_limit) {
      area += 0.5 * (y + y_prev) * (x - x_prev);
      x_prev = x;
      y_prev = y;
    } else {
      if (x_prev != fpr_limit) {
        const double y_at = y_prev + (y - y_prev) * (fpr_limit - x_prev) / (x - x_prev);
        area += 0.5 * (y_at + y_prev) * (fpr_limit - x_prev);
      }
      done = true;
    }
  };
  const auto& order = p.order;
  for (std::size_t k = 0; k < order.size() && !done;) {
    const float s = order[k].score;
    for (; k < order.size() && order[k].score == s; ++k) {
      const int32_t l = c.label[order[k].index];
      if (l == 0) ++fp;
      else overlap_sum += inv_size[static_cast<std::size_t>(l)];
    }
    add_point(static_cast<double>(fp) / ok, overlap_sum / regions);
  }
  if (!done) add_point(1.0, 1.0);
  return area / fpr_limit;
}

inline std::vector<uint8_t> image_labels(const std::vector<ScoredImage>& images) {
  std::vector<uint8_t> y(images.size());
  for (std::size_t i = 0; i < images.size(); ++i)
    y[i] = std::any_of(images[i].gt.begin(), images[i].gt.end(), [](uint8_t v) { return v != 0; }) ? 1 : 0;
  return y;
}

inline double image_score_unchecked(const ScoredImage& im, int top_k) {
  std::vector<float> s = im.score;
  const auto k = std::min(static_cast<std::size_t>(top_k), s.size());
  std::nth_element(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(k - 1), s.end(), std::greater<float>());
  double sum = 0;
  for (std::size_t i = 0; i < k; ++i) sum += s[i];
  return sum / static_cast<double>(k);
}

}  // namespace detail

/// sklearn's average_precision_score: sum over the distinct thresholds (highest first) of
/// (recall_k - recall_{k-1}) * precision_k. Needs a positive label.
inline double average_precision(const std::vector<float>& scores, const std::vector<uint8_t>& labels) {
  const auto r = detail::flat_ranking(scores, labels, "average_precision");
  check(r.positives > 0, "average_precision: no positive label (AP needs at least one)");
  return r.ap;
}

/// sklearn's roc_auc_score: the trapezoid area under the ROC curve over the distinct thresholds (a tie between a
/// positive and a negative counts one half). Needs both labels.
inline double roc_auc(const std::vector<float>& scores, const std::vector<uint8_t>& labels) {
  const auto r = detail::flat_ranking(scores, labels, "roc_auc");
  check(r.positives > 0, "roc_auc: no positive label (AUROC needs both labels)");
  check(r.negatives > 0, "roc_auc: no negative label (AUROC needs both labels)");
  return r.auroc;
}

/// The best F1 = 2 P R / (P + R) over the distinct thresholds (pixels >= threshold are positive). Needs a
/// positive label.
inline double f1_max(const std::vector<float>& scores, const std::vector<uint8_t>& labels) {
  const auto r = detail::flat_ranking(scores, labels, "f1_max");
  check(r.positives > 0, "f1_max: no positive label (F1 needs at least one)");
  return r.f1_max;
}

/// DeSTSeg's image score: the mean of the top_k highest pixel scores (of all of them when the image is smaller).
inline double image_score(const ScoredImage& im, int top_k = 100) {
  check(top_k >= 1, "image_score: top_k is ", top_k, ", must be >= 1");
  check(im.h > 0 && im.w > 0, "image_score: the image has size ", im.h, " x ", im.w);
  check(im.score.size() == static_cast<std::size_t>(im.h * im.w), "image_score: the image is ", im.h, " x ", im.w,
        " but has ", im.score.size(), " scores");
  detail::check_scores(im.score.data(), im.score.size(), "image_score");
  return detail::image_score_unchecked(im, top_k);
}

/// Labels 8-connected components of a binary mask (values 0/1): returns the count, fills labels (0 = background,
/// 1..n numbered in raster order of each component's first pixel).
inline int connected_components(const std::vector<uint8_t>& mask, int64_t h, int64_t w, std::vector<int32_t>& labels) {
  check(h > 0 && w > 0, "connected_components: size ", h, " x ", w);
  check(mask.size() == static_cast<std::size_t>(h * w), "connected_components: ", h, " x ", w, " but the mask has ",
        mask.size(), " values");
  detail::check_labels(mask.data(), mask.size(), "connected_components");
  labels.resize(mask.size());
  return detail::connected_components_unchecked(mask.data(), h, w, labels.data());
}

/// DeSTSeg's IAP and IAP90 over all images' pixels: each 8-connected gt component scores the value at index
/// floor(0.5 n) of its n scores sorted in descending order; at each instance score s, precision =
/// #(pixels with gt = 1 and score >= s) / #(pixels with score >= s) over all images and recall = the fraction of
/// instances (by rank) scoring >= s; precision is made monotone; IAP is its mean over the instances and IAP90 its
/// value at 90 % recall. Needs a gt component.
inline InstanceAP instance_ap(const std::vector<ScoredImage>& images) {
  const auto total = detail::check_images(images, "instance_ap");
  const auto p = detail::pool(images, total);
  const auto c = detail::label_components(images, total);
  return detail::instance_ap_pooled(p, c, "instance_ap");
}

/// MVTec AD's PRO: the area under the curve (false-positive rate over all gt = 0 pixels, mean over all gt
/// components of the fraction of the component's pixels called anomalous) up to fpr_limit, divided by fpr_limit.
/// Needs a gt component and a gt = 0 pixel.
inline double pro(const std::vector<ScoredImage>& images, double fpr_limit = 0.3) {
  const auto total = detail::check_images(images, "pro");
  const auto p = detail::pool(images, total);
  const auto c = detail::label_components(images, total);
  return detail::pro_pooled(p, c, fpr_limit, "pro");
}

/// Every metric at once, sharing one ranking of all pixels. Needs an anomalous and a normal image (image
/// AUROC) and, through those, both pixel labels.
inline Metrics compute_metrics(const std::vector<ScoredImage>& images) {
  const char* what = "compute_metrics";
  const auto total = detail::check_images(images, what);
  const auto y = detail::image_labels(images);
  const auto anomalous = std::count(y.begin(), y.end(), uint8_t{1});
  check(anomalous > 0, what, ": no anomalous image (no gt = 1 pixel; the metrics need one)");
  check(anomalous < static_cast<std::ptrdiff_t>(y.size()), what,
        ": no normal image (every image has gt = 1 pixels; image AUROC needs both)");
  const auto p = detail::pool(images, total);
  const auto px = detail::rank_metrics(
      total, [&](std::size_t k) { return p.order[k].score; }, [&](std::size_t k) { return p.gt[p.order[k].index]; });
  const auto c = detail::label_components(images, total);
  const auto ins = detail::instance_ap_pooled(p, c, what);
  std::vector<double> im_scores(images.size());
  for (std::size_t i = 0; i < images.size(); ++i) im_scores[i] = detail::image_score_unchecked(images[i], 100);
  const auto im = detail::small_ranking(im_scores, y);
  Metrics m{};
  m.pixel_ap = px.ap;
  m.pixel_auroc = px.auroc;
  m.iap = ins.iap;
  m.iap90 = ins.iap90;
  m.pixel_f1_max = px.f1_max;
  m.pro = detail::pro_pooled(p, c, 0.3, what);
  m.image_auroc = im.auroc;
  m.image_ap = im.ap;
  return m;
}

}  // namespace adabldm::eval
