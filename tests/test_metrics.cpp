// adabldm::eval metrics: hand-computed cases (the arithmetic is in the comments), ties, perfect and inverted
// detectors, errors, and the golden of scripts/gen_metrics_golden.py (scikit-learn, DeSTSeg's IAP, MVTec's PRO).
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "adabldm/eval/metrics.hpp"

using namespace adabldm::eval;
using nlohmann::json;
using Labels = std::vector<uint8_t>;
using Scores = std::vector<float>;

namespace {

const std::string kTestData = ADABLDM_TEST_DATA;

ScoredImage image(int64_t h, int64_t w, Scores score, Labels gt) {
  ScoredImage im;
  im.h = h;
  im.w = w;
  im.score = std::move(score);
  im.gt = std::move(gt);
  return im;
}

json load_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot open ", path);
  return json::parse(in);
}

/// The pixels of all images, image after image (what the flat-array metrics see).
void pool(const std::vector<ScoredImage>& ims, Scores& s, Labels& y) {
  s.clear();
  y.clear();
  for (const auto& im : ims) {
    s.insert(s.end(), im.score.begin(), im.score.end());
    y.insert(y.end(), im.gt.begin(), im.gt.end());
  }
}

}  // namespace

TEST_CASE("AP, AUROC, F1-max on four hand-ranked pixels") {
  // Scores 0.9 0.8 0.7 0.6, labels 1 0 1 0 (P = 2, N = 2).
  //   AP: threshold 0.9 -> tp 1, fp 0: R 1/2, P 1; 0.8 -> R unchanged; 0.7 -> tp 2, fp 1: R 1, P 2/3;
  //       AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
  //   AUROC: positive pairs won: 0.9 beats 0.8 and 0.6 (2), 0.7 beats 0.6 (1): 3 / 4.
  //   F1: at 0.9: 2 * 1 / (1 + 0 + 2) = 2/3; at 0.7: 2 * 2 / (2 + 1 + 2) = 4/5; at 0.6: 4 / 6. Max 0.8.
  const Scores s{0.9f, 0.8f, 0.7f, 0.6f};
  const Labels y{1, 0, 1, 0};
  CHECK(average_precision(s, y) == doctest::Approx(5.0 / 6.0).epsilon(1e-15));
  CHECK(roc_auc(s, y) == doctest::Approx(0.75).epsilon(1e-15));
  CHECK(f1_max(s, y) == doctest::Approx(0.8).epsilon(1e-15));
  // The order of the input does not matter.
  const Scores s2{0.6f, 0.7f, 0.8f, 0.9f};
  const Labels y2{0, 1, 0, 1};
  CHECK(average_precision(s2, y2) == doctest::Approx(5.0 / 6.0).epsilon(1e-15));
  CHECK(roc_auc(s2, y2) == doctest::Approx(0.75).epsilon(1e-15));
}

TEST_CASE("tied scores are one threshold") {
  // 0.5 0.5 0.5 0.1, labels 1 0 1 0: one threshold 0.5 with tp 2, fp 1 (R 1, P 2/3), then 0.1.
  //   AP = 1 * 2/3. AUROC: each positive ties the negative 0.5 (1/2) and beats 0.1 (1): (2 * 1.5) / 4 = 0.75.
  //   F1 at 0.5: 2 * 2 / (2 + 1 + 2) = 0.8.
  CHECK(average_precision({0.5f, 0.5f, 0.5f, 0.1f}, {1, 0, 1, 0}) == doctest::Approx(2.0 / 3.0).epsilon(1e-15));
  CHECK(roc_auc({0.5f, 0.5f, 0.5f, 0.1f}, {1, 0, 1, 0}) == doctest::Approx(0.75).epsilon(1e-15));
  CHECK(f1_max({0.5f, 0.5f, 0.5f, 0.1f}, {1, 0, 1, 0}) == doctest::Approx(0.8).epsilon(1e-15));
  // All equal, labels 1 0 0 1: AP = precision 2/4 at recall 1; AUROC 1/2; F1 = 4 / (2 + 2 + 2) = 2/3.
  CHECK(average_precision({0.3f, 0.3f, 0.3f, 0.3f}, {1, 0, 0, 1}) == doctest::Approx(0.5).epsilon(1e-15));
  CHECK(roc_auc({0.3f, 0.3f, 0.3f, 0.3f}, {1, 0, 0, 1}) == doctest::Approx(0.5).epsilon(1e-15));
  CHECK(f1_max({0.3f, 0.3f, 0.3f, 0.3f}, {1, 0, 0, 1}) == doctest::Approx(2.0 / 3.0).epsilon(1e-15));
}

TEST_CASE("a perfect and an inverted detector") {
  CHECK(average_precision({0.9f, 0.8f, 0.2f, 0.1f}, {1, 1, 0, 0}) == 1.0);
  CHECK(roc_auc({0.9f, 0.8f, 0.2f, 0.1f}, {1, 1, 0, 0}) == 1.0);
  CHECK(f1_max({0.9f, 0.8f, 0.2f, 0.1f}, {1, 1, 0, 0}) == 1.0);
  // Inverted: 0.9 0.8 negative, 0.2 0.1 positive. AUROC 0.
  //   AP: 0.9, 0.8 add no recall; 0.2 -> tp 1, fp 2: R 1/2, P 1/3; 0.1 -> tp 2, fp 2: R 1, P 1/2;
  //       AP = 1/2 * 1/3 + 1/2 * 1/2 = 5/12. F1: 2 / (1 + 2 + 2) = 0.4, then 4 / (2 + 2 + 2) = 2/3.
  CHECK(roc_auc({0.1f, 0.2f, 0.8f, 0.9f}, {1, 1, 0, 0}) == 0.0);
  CHECK(average_precision({0.1f, 0.2f, 0.8f, 0.9f}, {1, 1, 0, 0}) == doctest::Approx(5.0 / 12.0).epsilon(1e-15));
  CHECK(f1_max({0.1f, 0.2f, 0.8f, 0.9f}, {1, 1, 0, 0}) == doctest::Approx(2.0 / 3.0).epsilon(1e-15));
  // PRO and IAP of a perfect detector (region pixels above every normal pixel) are 1; of an inverted one 0.
  // 1 x 8 image, region = pixels 0..2. Perfect: the curve rises to overlap 1 at FPR 0, so PRO = 1.
  // Inverted: the region is reached only at FPR 1, so the curve is 0 up to 0.3.
  // IAP inverted: instance score 0.1 (median of 0.1 0.1 0.1); precision at 0.1 = 3 / 8 for the only instance.
  const ScoredImage good = image(1, 8, {0.9f, 0.8f, 0.7f, 0.1f, 0.2f, 0.3f, 0.2f, 0.1f}, {1, 1, 1, 0, 0, 0, 0, 0});
  const ScoredImage bad = image(1, 8, {0.1f, 0.1f, 0.1f, 0.5f, 0.6f, 0.7f, 0.6f, 0.5f}, {1, 1, 1, 0, 0, 0, 0, 0});
  CHECK(pro({good}) == doctest::Approx(1.0).epsilon(1e-15));
  CHECK(pro({bad}) == 0.0);
  CHECK(instance_ap({good}).iap == 1.0);
  CHECK(instance_ap({good}).iap90 == 1.0);
  CHECK(instance_ap({bad}).iap == doctest::Approx(3.0 / 8.0).epsilon(1e-15));
}

TEST_CASE("connected_components: 8-connected, numbered in raster order") {
  // Row-major 4 x 4:      labels (8-connected):
  //   1 0 0 1               1 0 0 2
  //   0 1 0 1               0 1 0 2
  //   0 0 0 0               0 0 0 0
  //   1 1 0 1               3 3 0 4
  // (0,0) and (1,1) touch only at a corner: one component with 8-connectivity (five with 4-connectivity).
  const Labels mask{1, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 1, 1, 0, 1};
  std::vector<int32_t> labels;
  CHECK(connected_components(mask, 4, 4, labels) == 4);
  CHECK(labels == std::vector<int32_t>{1, 0, 0, 2, 0, 1, 0, 2, 0, 0, 0, 0, 3, 3, 0, 4});
  // A ring (its hole is background) and an empty mask.
  const Labels ring{1, 1, 1, 1, 0, 1, 1, 1, 1};
  CHECK(connected_components(ring, 3, 3, labels) == 1);
  CHECK(connected_components(Labels(6, 0), 2, 3, labels) == 0);
  CHECK(labels == std::vector<int32_t>(6, 0));
  CHECK_THROWS_WITH_AS(connected_components(mask, 3, 4, labels), doctest::Contains("16 values"), adabldm::Error);
  CHECK_THROWS_WITH_AS(connected_components(Labels{0, 255}, 1, 2, labels), doctest::Contains("must be 0 or 1"),
                       adabldm::Error);
}

TEST_CASE("image_score: the mean of the top_k pixel scores") {
  // 4 x 4 with scores k/16, k = 0..15: top 3 = (15 + 14 + 13) / 16 / 3 = 14/16; top_k above 16 = all = 7.5/16.
  Scores s(16);
  for (int k = 0; k < 16; ++k) s[static_cast<std::size_t>(k)] = static_cast<float>(k) / 16.0f;
  std::reverse(s.begin(), s.end());
  std::swap(s[0], s[9]);
  const auto im = image(4, 4, s, Labels(16, 0));
  CHECK(image_score(im, 3) == 14.0 / 16.0);
  CHECK(image_score(im, 1) == 15.0 / 16.0);
  CHECK(image_score(im) == 7.5 / 16.0);
  CHECK_THROWS_WITH_AS(image_score(im, 0), doctest::Contains("top_k"), adabldm::Error);
}

TEST_CASE("instance_ap: two instances, precision over the pixels of all images, made monotone") {
  // Image A (2 x 4), gt and scores:      Image B (2 x 4), normal:
  //   1 1 0 0   0.9 0.5 0.45 0.1            0.95 0.05 0.05 0.05
  //   0 0 0 1   0.2 0.3 0.3  0.7            0.8  0.05 0.05 0.05
  // Instances: {0.9, 0.5} -> descending index floor(0.5 * 2) = 1 -> 0.5; {0.7} -> index 0 -> 0.7. Sorted: 0.5, 0.7.
  //   s = 0.5 (recall 1):   tp = #(gt pixels >= 0.5) = 0.9 0.5 0.7 = 3; all >= 0.5: 0.9 0.5 0.7 0.95 0.8 = 5 -> 3/5
  //   s = 0.7 (recall 1/2): tp = 0.9 0.7 = 2; all >= 0.7: 0.9 0.7 0.95 0.8 = 4 -> 1/2, made monotone -> 3/5.
  // IAP = (3/5 + 3/5) / 2 = 0.6; IAP90 = the precision at the last recall >= 0.9 (recall 1) = 0.6.
  const auto a = image(2, 4, {0.9f, 0.5f, 0.45f, 0.1f, 0.2f, 0.3f, 0.3f, 0.7f}, {1, 1, 0, 0, 0, 0, 0, 1});
  const auto b = image(2, 4, {0.95f, 0.05f, 0.05f, 0.05f, 0.8f, 0.05f, 0.05f, 0.05f}, Labels(8, 0));
  const auto r = instance_ap({a, b});
  CHECK(r.iap == doctest::Approx(0.6).epsilon(1e-15));
  CHECK(r.iap90 == doctest::Approx(0.6).epsilon(1e-15));
}

TEST_CASE("instance_ap: IAP90 with ten instances") {
  // 1 x 20, gt at even x: ten one-pixel instances scoring (j + 1) / 10, j = 0..9; negatives: x = 1 -> 0.95,
  // x = 3 -> 0.15, the other eight 0.05. Instance i (ascending, s = (i + 1) / 10) has recall 1 - i/10, tp = 10 - i,
  // fp = [0.95 >= s] + [0.15 >= s]:
  //   i:    0      1     2     3     4     5     6     7     8     9
  //   P:  10/12  9/10  8/9   7/8   6/7   5/6   4/5   3/4   2/3   1/1
  //   mono: 5/6  0.9   0.9   0.9   0.9   0.9   0.9   0.9   0.9   1
  // IAP = (5/6 + 8 * 0.9 + 1) / 10 = 0.903333...; IAP90 = the precision at recall 0.9 (i = 1) = 0.9.
  Scores s(20, 0.05f);
  Labels gt(20, 0);
  for (int j = 0; j < 10; ++j) {
    gt[static_cast<std::size_t>(2 * j)] = 1;
    s[static_cast<std::size_t>(2 * j)] = static_cast<float>(j + 1) / 10.0f;
  }
  s[1] = 0.95f;
  s[3] = 0.15f;
  const auto r = instance_ap({image(1, 20, s, gt)});
  CHECK(r.iap == doctest::Approx((5.0 / 6.0 + 8 * 0.9 + 1.0) / 10.0).epsilon(1e-15));
  CHECK(r.iap90 == doctest::Approx(0.9).epsilon(1e-15));
}

TEST_CASE("instance_ap: DeSTSeg's pred x gt >= s counts every pixel when s <= 0") {
  // gt 1 0 0, scores 0 0.5 0: the instance scores 0; pred * gt = 0 0 0 >= 0 everywhere, so tp = 3 = #(pred >= 0).
  const auto r = instance_ap({image(1, 3, {0.0f, 0.5f, 0.0f}, {1, 0, 0})});
  CHECK(r.iap == 1.0);
  CHECK(r.iap90 == 1.0);
}

TEST_CASE("pro: the curve by hand, at and between its points") {
  // 1 x 12: a region of two pixels (0.9, 0.5) and ten normal pixels 0.8 0.6 0.4 0.3 and six of 0.1.
  // Curve (FPR, overlap), highest score first: (0, 0) -> 0.9: (0, 1/2) -> 0.8: (0.1, 1/2) -> 0.6: (0.2, 1/2)
  //   -> 0.5: (0.2, 1) -> 0.4: (0.3, 1) -> 0.3: (0.4, 1) -> 0.1: (1, 1).
  // Up to 0.3: 0.1 * 1/2 + 0.1 * 1/2 + 0.1 * 1 = 0.2, / 0.3 = 2/3.
  // Up to 0.25 (interpolated between (0.2, 1) and (0.3, 1)): 0.1 + 0.05 * 1 = 0.15, / 0.25 = 0.6.
  // Up to 0.15 (between (0.1, 1/2) and (0.2, 1/2); the vertical step at 0.2 is not reached): 0.075 / 0.15 = 0.5.
  const auto im = image(1, 12, {0.9f, 0.5f, 0.8f, 0.6f, 0.4f, 0.3f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f},
                        {1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});
  CHECK(pro({im}) == doctest::Approx(2.0 / 3.0).epsilon(1e-14));
  CHECK(pro({im}, 0.25) == doctest::Approx(0.6).epsilon(1e-14));
  CHECK(pro({im}, 0.15) == doctest::Approx(0.5).epsilon(1e-14));
  CHECK(pro({im}, 1.0) == doctest::Approx((0.2 + 0.7) / 1.0).epsilon(1e-14));
  // Two regions in two images, averaged: image 2 is a 1 x 2 with a region of one pixel scoring 0.05 (below every
  // normal pixel, reached at FPR 1 only). The overlap is now half the one above: 1/3.
  const auto im2 = image(1, 2, {0.05f, 0.0f}, {1, 0});
  // Normal pixels: 11 (FPR steps 1/11); region 1 at 0.9 and 0.5, region 2 at 0.05.
  // Curve: (0, 0) (0, 1/4) [0.9] (1/11, 1/4) [0.8] (2/11, 1/4) [0.6] (2/11, 1/2) [0.5] (3/11, 1/2) [0.4]
  //        (4/11, 1/2) [0.3] ... so up to 0.3: 2/11 * 1/4 + 1/11 * 1/2 + (0.3 - 3/11) * 1/2 = 0.195454..., / 0.3.
  const double expected = (2.0 / 11.0 * 0.25 + 1.0 / 11.0 * 0.5 + (0.3 - 3.0 / 11.0) * 0.5) / 0.3;
  CHECK(pro({im, im2}) == doctest::Approx(expected).epsilon(1e-14));
}

TEST_CASE("compute_metrics: image AUROC and AP from the top-100 mean; equals the separate metrics") {
  // Three 1 x 2 images (top 100 = both pixels): normal {0.1, 0.3} -> 0.2; anomalous {0.6, 0.2} -> 0.4;
  // normal {0.5, 0.5} -> 0.5. Image AUROC: 0.4 beats 0.2, loses to 0.5 -> 1/2. Image AP: ranking 0.5 (normal),
  // 0.4 (anomalous): recall 1 at precision 1/2 -> 1/2.
  const std::vector<ScoredImage> ims{image(1, 2, {0.1f, 0.3f}, {0, 0}), image(1, 2, {0.6f, 0.2f}, {1, 0}),
                                     image(1, 2, {0.5f, 0.5f}, {0, 0})};
  const auto m = compute_metrics(ims);
  CHECK(m.image_auroc == 0.5);
  CHECK(m.image_ap == 0.5);
  Scores s;
  Labels y;
  pool(ims, s, y);
  CHECK(m.pixel_ap == average_precision(s, y));
  CHECK(m.pixel_auroc == roc_auc(s, y));
  CHECK(m.pixel_f1_max == f1_max(s, y));
  CHECK(m.pro == pro(ims));
  CHECK(m.iap == instance_ap(ims).iap);
  CHECK(m.iap90 == instance_ap(ims).iap90);
  // The one positive pixel (0.6) is the highest: pixel AP 1, AUROC 1, F1 1.
  CHECK(m.pixel_ap == 1.0);
  CHECK(m.pixel_auroc == 1.0);
}

TEST_CASE("errors name the problem") {
  using adabldm::Error;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH_AS(average_precision({}, {}), doctest::Contains("empty"), Error);
  CHECK_THROWS_WITH_AS(roc_auc({0.1f, 0.2f}, {1}), doctest::Contains("2 scores but 1 labels"), Error);
  CHECK_THROWS_WITH_AS(average_precision({0.1f, 0.2f}, {0, 0}), doctest::Contains("no positive label"), Error);
  CHECK_THROWS_WITH_AS(f1_max({0.1f, 0.2f}, {0, 0}), doctest::Contains("no positive label"), Error);
  CHECK_THROWS_WITH_AS(roc_auc({0.1f, 0.2f}, {1, 1}), doctest::Contains("no negative label"), Error);
  CHECK(average_precision({0.1f, 0.2f}, {1, 1}) == 1.0);  // AP needs no negative
  CHECK_THROWS_WITH_AS(roc_auc({0.1f, nan}, {1, 0}), doctest::Contains("score 1 is NaN"), Error);
  CHECK_THROWS_WITH_AS(roc_auc({0.1f, std::numeric_limits<float>::infinity()}, {1, 0}),
                       doctest::Contains("infinite"), Error);
  CHECK_THROWS_WITH_AS(roc_auc({0.1f, 0.2f}, {1, 2}), doctest::Contains("label 1 is 2"), Error);

  const auto normal = image(1, 2, {0.1f, 0.2f}, {0, 0});
  const auto anomalous = image(1, 2, {0.1f, 0.2f}, {1, 0});
  const auto all_anomalous = image(1, 2, {0.1f, 0.2f}, {1, 1});
  CHECK_THROWS_WITH_AS(compute_metrics({}), doctest::Contains("no images"), Error);
  CHECK_THROWS_WITH_AS(instance_ap({}), doctest::Contains("no images"), Error);
  CHECK_THROWS_WITH_AS(pro({}), doctest::Contains("no images"), Error);
  CHECK_THROWS_WITH_AS(compute_metrics({normal, normal}), doctest::Contains("no anomalous image"), Error);
  CHECK_THROWS_WITH_AS(compute_metrics({anomalous, anomalous}), doctest::Contains("no normal image"), Error);
  CHECK_THROWS_WITH_AS(instance_ap({normal}), doctest::Contains("no ground-truth component"), Error);
  CHECK_THROWS_WITH_AS(pro({normal}), doctest::Contains("no ground-truth component"), Error);
  CHECK_THROWS_WITH_AS(pro({all_anomalous}), doctest::Contains("no anomaly-free pixel"), Error);
  CHECK_THROWS_WITH_AS(pro({anomalous}, 0.0), doctest::Contains("FPR limit"), Error);
  CHECK_THROWS_WITH_AS(pro({image(2, 2, {0.1f, 0.2f}, {1, 0})}), doctest::Contains("image 0 is 2 x 2 but has 2 scores"),
                       Error);
  CHECK_THROWS_WITH_AS(pro({anomalous, image(1, 2, {0.1f, nan}, {1, 0})}), doctest::Contains("score 1 is NaN"), Error);
  CHECK_THROWS_WITH_AS(instance_ap({image(0, 2, {}, {})}), doctest::Contains("image 0 has size 0 x 2"), Error);
}

TEST_CASE("golden: scikit-learn AP / AUROC / F1-max, DeSTSeg IAP, MVTec PRO on random maps") {
  // tests/data/metrics/*.json from scripts/gen_metrics_golden.py; scores are float(q / 10000).
  double worst_sklearn = 0, worst_iap = 0, worst_pro = 0, worst_pro_f32 = 0;
  for (const char* name : {"uniform", "levels5", "signal", "specks", "wide", "many"}) {
    CAPTURE(name);
    const json doc = load_json(kTestData + "/metrics/" + name + ".json");
    std::vector<ScoredImage> ims;
    for (const auto& j : doc["images"]) {
      ScoredImage im;
      im.h = j["h"].get<int64_t>();
      im.w = j["w"].get<int64_t>();
      for (const auto& q : j["score_q"]) im.score.push_back(static_cast<float>(q.get<int>() / 10000.0));
      for (const auto& row : j["gt"])
        for (char c : row.get<std::string>()) im.gt.push_back(c == '1' ? 1 : 0);
      ims.push_back(std::move(im));
    }
    const json& e = doc["expected"];
    const auto m = compute_metrics(ims);
    auto near = [](double got, double want, double tol, double& worst) {
      worst = std::max(worst, std::abs(got - want));
      CHECK(std::abs(got - want) <= tol);
    };
    near(m.pixel_ap, e["pixel_ap"].get<double>(), 1e-9, worst_sklearn);
    near(m.pixel_auroc, e["pixel_auroc"].get<double>(), 1e-9, worst_sklearn);
    near(m.pixel_f1_max, e["pixel_f1_max"].get<double>(), 1e-9, worst_sklearn);
    near(m.image_auroc, e["image_auroc"].get<double>(), 1e-9, worst_sklearn);
    near(m.image_ap, e["image_ap"].get<double>(), 1e-9, worst_sklearn);
    near(m.iap, e["iap"].get<double>(), 1e-9, worst_iap);
    near(m.iap90, e["iap90"].get<double>(), 1e-9, worst_iap);
    near(m.pro, e["pro"].get<double>(), 1e-6, worst_pro);
    worst_pro_f32 = std::max(worst_pro_f32, std::abs(m.pro - e["pro_mvtec_f32"].get<double>()));
    // The separate functions give the same numbers as compute_metrics.
    Scores s;
    Labels y;
    pool(ims, s, y);
    CHECK(average_precision(s, y) == m.pixel_ap);
    CHECK(roc_auc(s, y) == m.pixel_auroc);
    CHECK(f1_max(s, y) == m.pixel_f1_max);
    CHECK(pro(ims) == m.pro);
    const auto ins = instance_ap(ims);
    CHECK(ins.iap == m.iap);
    CHECK(ins.iap90 == m.iap90);
    for (std::size_t i = 0; i < ims.size(); ++i) {
      CHECK(image_score(ims[i]) == doctest::Approx(e["image_scores"][i].get<double>()).epsilon(1e-12));
      std::vector<int32_t> labels;
      CHECK(connected_components(ims[i].gt, ims[i].h, ims[i].w, labels) == e["components"][i].get<int>());
    }
  }
  MESSAGE("golden, largest |C++ - Python|: sklearn AP/AUROC/F1/image ", worst_sklearn, "; IAP/IAP90 ", worst_iap,
          "; PRO ", worst_pro, " (vs MVTec's float32 FPRs: ", worst_pro_f32, ")");
}

TEST_CASE("compute_metrics on 200 x 64 x 64 random pixels stays fast") {
  // 819 200 pixels (a sixteenth of the 200 x 256 x 256 of a real test set); one ranking for all metrics.
  std::mt19937 rng(21);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<ScoredImage> ims(200);
  for (std::size_t i = 0; i < ims.size(); ++i) {
    auto& im = ims[i];
    im.h = im.w = 64;
    im.score.resize(64 * 64);
    im.gt.assign(64 * 64, 0);
    if (i % 2)
      for (int y = 20; y < 30; ++y)
        for (int x = 10 + static_cast<int>(i % 20); x < 40; ++x) im.gt[static_cast<std::size_t>(y * 64 + x)] = 1;
    for (std::size_t k = 0; k < im.score.size(); ++k) im.score[k] = u(rng) * 0.7f + 0.3f * im.gt[k] * u(rng);
  }
  const auto t0 = std::chrono::steady_clock::now();
  const auto m = compute_metrics(ims);
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("compute_metrics, 819 200 pixels: ", sec, " s; pixel AUROC ", m.pixel_auroc, ", PRO ", m.pro);
  CHECK(m.pixel_auroc > 0.5);
  CHECK(m.image_auroc > 0.5);
  CHECK(sec < 3.0);
}
