// The evaluation (issue 21) as a library: the detector learns an easy generated task, training is reproducible,
// detectors round-trip through their files, crop & paste keeps the label honest, the dataset layouts and protocols
// split as documented, and a generated folder made from test files is refused.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include "adabldm/eval/evaluation.hpp"
#include "eval_samples.hpp"

using namespace adabldm;
namespace fs = std::filesystem;

namespace {
fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("adabldm_test_eval_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}
}  // namespace

TEST_CASE("the detector learns an easy generated task (pixel AP > 0.9 on held-out images)") {
  Rng rng(7);
  const int S = 64;
  std::vector<eval::SegSample> pos, neg;
  for (int i = 0; i < 24; ++i) pos.push_back(toy::seg_sample(toy::make_sample(rng, S, true)));
  for (int i = 0; i < 24; ++i) neg.push_back(toy::seg_sample(toy::make_sample(rng, S, false)));
  eval::SegmentationDetector<float> det(toy::small_detector());
  eval::DetectorTraining t;
  t.steps = 150;
  t.crop = 32;  // crops centred on defects: denser signal, a quarter of the work of whole images
  t.lr = 3e-3;
  double first = 0, last = 0;
  eval::train_detector(det, pos, neg, t, [&](const eval::TrainStep& s) {
    if (s.step <= 10) first += s.loss / 10;
    if (s.step > t.steps - 10) last += s.loss / 10;
    CHECK(!s.skipped);
  });
  MESSAGE("loss: first 10 steps " << first << ", last 10 " << last);
  CHECK(last < 0.8 * first);
  std::vector<eval::ScoredImage> held_out;
  for (int i = 0; i < 16; ++i) {
    const auto s = toy::seg_sample(toy::make_sample(rng, S, i % 2 == 0));
    const auto map = eval::score_image(det, s.image);
    eval::ScoredImage im;
    im.h = im.w = S;
    im.score.assign(map.data(), map.data() + map.numel());
    for (int64_t k = 0; k < s.mask.numel(); ++k) im.gt.push_back(s.mask.data()[k] >= 0.5f);
    held_out.push_back(std::move(im));
  }
  const auto m = eval::compute_metrics(held_out);
  MESSAGE("held-out pixel AP " << m.pixel_ap << ", IAP " << m.iap << ", image AUROC " << m.image_auroc);
  CHECK(m.pixel_ap > 0.9);
  CHECK(m.image_auroc > 0.9);
}

TEST_CASE("detector training is reproducible, and a detector round-trips through its file") {
  Rng rng(3);
  std::vector<eval::SegSample> pos{toy::seg_sample(toy::make_sample(rng, 32, true))}, neg{toy::seg_sample(toy::make_sample(rng, 32, false))};
  eval::DetectorTraining t;
  t.steps = 3;
  t.crop = 16;
  t.batch = 4;
  t.positives = 2;
  eval::SegmentationDetector<float> a(toy::small_detector()), b(toy::small_detector());
  std::vector<double> la, lb;
  eval::train_detector(a, pos, neg, t, [&](const eval::TrainStep& s) { la.push_back(s.loss); });
  eval::train_detector(b, pos, neg, t, [&](const eval::TrainStep& s) { lb.push_back(s.loss); });
  CHECK(la == lb);
  const auto sa = eval::score_image(a, pos[0].image), sb = eval::score_image(b, pos[0].image);
  CHECK(std::equal(sa.data(), sa.data() + sa.numel(), sb.data()));

  const fs::path dir = temp_dir("roundtrip");
  eval::save_detector(a, (dir / "d.safetensors").string(), {{"condition", "real"}, {"seed", 0}});
  const auto loaded = eval::load_detector((dir / "d.safetensors").string());
  CHECK(loaded.detector.config.widths == a.config.widths);
  CHECK(loaded.meta["condition"] == "real");
  const auto sl = eval::score_image(loaded.detector, pos[0].image);
  CHECK(std::equal(sa.data(), sa.data() + sa.numel(), sl.data()));
  // Not a detector: a one-line error naming the file.
  io::SafeTensorsWriter w;
  w.add("x", Tensor<float, Cpu>::zeros({2}));
  w.write((dir / "other.safetensors").string());
  CHECK_THROWS_WITH_AS(eval::load_detector((dir / "other.safetensors").string()), doctest::Contains("not a detector"),
                       FormatError);
  // Bad shapes are errors, not garbage.
  CHECK_THROWS_WITH_AS(eval::score_image(a, Tensor<float, Cpu>::zeros({1, 30, 30})), doctest::Contains("multiples of 4"),
                       ShapeError);
  CHECK_THROWS_AS(eval::score_image(a, Tensor<float, Cpu>::zeros({3, 32, 32})), ShapeError);
  std::vector<eval::SegSample> wrong{{Tensor<float, Cpu>::zeros({1, 32, 32}), Tensor<float, Cpu>::zeros({1, 32, 32})}};
  CHECK_THROWS_WITH(eval::train_detector(a, wrong, neg, t, [](const eval::TrainStep&) {}),
                    doctest::Contains("empty mask"));
}

TEST_CASE("crop & paste: the label is the pasted defect, and nothing outside it changes") {
  Rng rng(11);
  const int S = 64;
  const auto good = toy::seg_sample(toy::make_sample(rng, S, false)), source = toy::seg_sample(toy::make_sample(rng, S, true));
  const auto fg = Tensor<float, Cpu>::full({1, 1, S, S}, 1.0f);
  for (int k = 0; k < 20; ++k) {
    const auto out = eval::crop_paste(good, source, fg, rng);
    int64_t on = 0, changed_outside = 0, changed_inside = 0;
    for (int64_t i = 0; i < S * S; ++i) {
      const bool in = out.mask.data()[i] >= 0.5f;
      on += in;
      const bool changed = out.image.data()[i] != good.image.data()[i];
      (in ? changed_inside : changed_outside) += changed;
    }
    CHECK(on > 0);
    CHECK(changed_outside == 0);
    CHECK(changed_inside > on / 2);
  }
}

TEST_CASE("dataset layouts: the fewshot and anomalydiffusion protocols") {
  const fs::path root = temp_dir("layout");
  toy::write_root(root, 32, 1);
  const auto s = eval::load_ad_split(root.string(), "scratch", eval::Protocol::FewShotFolder);
  CHECK(s.train_good.size() == 16);
  CHECK(s.fewshot.size() == 6);
  REQUIRE(s.test.size() == 12);
  CHECK(s.test.front().name == "test/good/t000");
  CHECK(!s.test.front().defective());
  CHECK(s.test.back().name == "test/scratch/d005");
  CHECK(fs::path(s.test.back().mask).filename() == "d005_mask.png");

  const fs::path plain = temp_dir("plain");
  toy::write_root(plain, 32, 1, {}, true);
  const auto a = eval::load_ad_split(plain.string(), "scratch", eval::Protocol::AnomalyDiffusion);
  CHECK(a.fewshot.size() == 4);  // the first third of 12 by name
  CHECK(a.fewshot.front().name == "test/scratch/d000");
  CHECK(a.test.size() == 6 + 8);
  CHECK(a.test[6].name == "test/scratch/d004");

  CHECK_THROWS_WITH_AS(eval::load_ad_split(root.string(), "dent", eval::Protocol::FewShotFolder),
                       doctest::Contains("test/dent: no such folder"), IoError);
  CHECK_THROWS_WITH_AS(eval::load_ad_split(plain.string(), "scratch", eval::Protocol::FewShotFolder),
                       doctest::Contains("fewshot/scratch: no such folder"), IoError);
  CHECK_THROWS_AS(eval::load_ad_split(root.string(), "../x", eval::Protocol::FewShotFolder), Error);
  fs::remove(root / "ground_truth/scratch/d003_mask.png");
  CHECK_THROWS_WITH_AS(eval::load_ad_split(root.string(), "scratch", eval::Protocol::FewShotFolder),
                       doctest::Contains("d003.png: no mask"), IoError);
}

TEST_CASE("a generated folder made from test files is refused") {
  const fs::path root = temp_dir("refuse");
  toy::write_root(root, 32, 2);
  const fs::path gen = root / "gen";
  fs::create_directories(gen);
  auto write_manifest = [&](const std::string& ok, const std::string& mask_source) {
    std::ofstream(gen / "manifest.jsonl") << nlohmann::json{{"index", 0}, {"image", "images/000000.png"},
                                                            {"mask", "masks/000000.png"}, {"ok_source", ok},
                                                            {"mask_source", mask_source}, {"ng_dir", (root / "fewshot/scratch").string()},
                                                            {"masks_dir", (root / "fewshot_ground_truth/scratch").string()}}.dump()
                                          << "\n";
  };
  write_manifest((root / "train/good/g000.png").string(), "f000_mask.png");
  CHECK(eval::read_synthetic(gen.string(), root.string()).size() == 1);
  write_manifest((root / "test/good/t000.png").string(), "f000_mask.png");
  CHECK_THROWS_WITH(eval::read_synthetic(gen.string(), root.string()), doctest::Contains("on the test side"));
  write_manifest((root / "train/good/../../test/good/t001.png").string(), "f000_mask.png");
  CHECK_THROWS_WITH(eval::read_synthetic(gen.string(), root.string()), doctest::Contains("on the test side"));
  write_manifest((root / "train/good/g000.png").string(), "d001_mask.png");
  CHECK_THROWS_WITH(eval::read_synthetic(gen.string(), root.string()), doctest::Contains("is a test mask"));
  std::ofstream(gen / "manifest.jsonl") << "{\"index\": 0}\n";
  CHECK_THROWS_WITH_AS(eval::read_synthetic(gen.string(), root.string()), doctest::Contains("manifest.jsonl:1"), FormatError);
}
