#pragma once
// Does it help? The same detector, schedule and seeds trained under three conditions and measured on real
// defects (issue 21):
//   real       train/good + the few real defects
//   croppaste  + `extra` crop & paste images (the few real defects pasted onto train/good, eval/crop_paste.hpp)
//   adabldm    + `extra` AdaBLDM images (the output folder of adabldm generate, eval/synthetic.hpp)
// For each condition and seed the detector is trained (or loaded, when OUT/detectors/<condition>_seed<k>.safetensors
// exists: a stopped run resumes there), scores every test image, and is measured (eval/metrics.hpp). Writes
//   OUT/results.json, OUT/results.md            every run's metrics; mean +- std per condition
//   OUT/detectors/<condition>_seed<k>.safetensors
//   OUT/scores/<condition>_seed<k>.safetensors  one float32 [S, S] map per test image, named by its path under ROOT
//                                               without extension, plus the resized binary masks (ground_truth/...)
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "adabldm/eval/crop_paste.hpp"
#include "adabldm/eval/dataset.hpp"
#include "adabldm/eval/detector.hpp"
#include "adabldm/eval/metrics.hpp"
#include "adabldm/eval/synthetic.hpp"
#include "adabldm/eval/train_detector.hpp"
#include "adabldm/io/safetensors.hpp"

namespace adabldm::eval {

inline const std::vector<std::string>& condition_names() {
  static const std::vector<std::string> names{"real", "croppaste", "adabldm"};
  return names;
}

struct EvaluationOptions {
  std::string root, type, out;
  Protocol protocol = Protocol::FewShotFolder;
  std::vector<std::string> conditions{"real", "croppaste", "adabldm"};
  std::string synthetic;   // the generate output folder (condition adabldm)
  int extra = 100;         // extra images per condition (croppaste and adabldm alike)
  bool composite = true;   // composite generated defects into their OK source (eval/synthetic.hpp)
  std::vector<uint64_t> seeds{0, 1, 2};
  int size = 256;
  DetectorConfig detector;
  DetectorTraining training;
  CropPasteOptions crop_paste;
  uint64_t data_seed = 1234;  // the crop & paste draws: the same images for every detector seed

  void validate() const {
    check(!root.empty() && !type.empty() && !out.empty(), "evaluate: root, type and out are required");
    check(!conditions.empty(), "evaluate: no condition");
    for (const auto& c : conditions)
      check(std::find(condition_names().begin(), condition_names().end(), c) != condition_names().end(),
            "evaluate: condition \"", c, "\": expected real, croppaste or adabldm");
    check(std::find(conditions.begin(), conditions.end(), "adabldm") == conditions.end() || !synthetic.empty(),
          "evaluate: the adabldm condition needs the generated images (--synthetic DIR)");
    check(extra >= 1 && extra <= 100000, "evaluate: extra images must be in 1..100000, got ", extra);
    check(!seeds.empty(), "evaluate: no seed");
    check(size >= 16 && size <= 4096 && size % detector.stride_multiple() == 0, "evaluate: size ", size,
          " must be in 16..4096 and a multiple of ", detector.stride_multiple());
    detector.validate();
    training.validate();
  }
};

/// What the evaluation reports as it goes: a message, or training progress (steps done of all steps).
struct EvaluationEvent {
  std::string message;
  int64_t steps_done = 0, steps_total = 0;
  bool is_progress = false;
};

struct RunResult {
  std::string condition;
  uint64_t seed = 0;
  Metrics metrics{};
  double train_seconds = 0;
  bool loaded = false;  // an existing detector was reused
};

namespace detail {
/// "N images, fnv1a64 HEX" over the bytes of every image and mask, in order.
inline std::string fingerprint(const std::vector<SegSample>& samples) {
  uint64_t h = 1469598103934665603ull;
  auto add = [&](const Tensor<float, Cpu>& t) {
    const auto c = t.contiguous();
    const auto* b = reinterpret_cast<const unsigned char*>(c.data());
    for (std::size_t i = 0; i < static_cast<std::size_t>(c.numel()) * sizeof(float); ++i) h = (h ^ b[i]) * 1099511628211ull;
  };
  for (const auto& s : samples) add(s.image), add(s.mask);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return std::to_string(samples.size()) + " images, fnv1a64 " + hex;
}

inline nlohmann::json metrics_json(const Metrics& m) {
  return {{"pixel_ap", m.pixel_ap},   {"pixel_auroc", m.pixel_auroc}, {"iap", m.iap},
          {"iap90", m.iap90},         {"pixel_f1_max", m.pixel_f1_max}, {"pro", m.pro},
          {"image_auroc", m.image_auroc}, {"image_ap", m.image_ap}};
}
inline const std::vector<std::pair<std::string, std::string>>& metric_columns() {
  static const std::vector<std::pair<std::string, std::string>> cols{
      {"pixel_ap", "pixel AP"}, {"iap", "IAP"},       {"iap90", "IAP90"},         {"pixel_f1_max", "F1-max"},
      {"pro", "PRO"},           {"pixel_auroc", "pixel AUROC"}, {"image_auroc", "image AUROC"}, {"image_ap", "image AP"}};
  return cols;
}
inline void write_text(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    f << text;
    check<IoError>(f.good(), tmp.string(), ": cannot write");
  }
  fs::rename(tmp, path);
}

/// The test images with their masks, loaded once.
struct TestSet {
  std::vector<LabeledFile> files;
  std::vector<Tensor<float, Cpu>> images, masks;  // [C, S, S], [1, S, S] (zeros for good images)
};
inline TestSet load_test_set(const AdSplit& split, int size, int channels) {
  TestSet t{split.test, {}, {}};
  for (const auto& f : split.test) {
    t.images.push_back(load_detector_image(f.image, size, channels));
    t.masks.push_back(f.defective() ? load_detector_mask(f.mask, size) : Tensor<float, Cpu>::zeros({1, size, size}));
  }
  return t;
}

/// Scores every test image, writes the score file, and measures.
template <class Dev>
Metrics score_and_measure(const SegmentationDetector<float, Dev>& det, const TestSet& test, const fs::path& score_file) {
  std::vector<ScoredImage> scored;
  io::SafeTensorsWriter w;
  std::vector<Tensor<float, Cpu>> keep;  // the writer references its tensors until write()
  for (std::size_t i = 0; i < test.files.size(); ++i) {
    const auto map = score_image(det, test.images[i]);
    ScoredImage s;
    s.h = map.dim(0);
    s.w = map.dim(1);
    s.score.assign(map.data(), map.data() + map.numel());
    s.gt.resize(static_cast<std::size_t>(map.numel()));
    for (int64_t k = 0; k < map.numel(); ++k) s.gt[static_cast<std::size_t>(k)] = test.masks[i].data()[k] >= 0.5f;
    scored.push_back(std::move(s));
    keep.push_back(map);
    w.add(test.files[i].name, map);
    if (test.files[i].defective()) {
      const fs::path m(test.files[i].mask);
      const auto mask2d = test.masks[i].reshape({map.dim(0), map.dim(1)});
      keep.push_back(mask2d);
      // The mask's path under ROOT without extension: ground_truth/TYPE/NAME_mask (for the AnomalyDiffusion
      // protocol's few-shot side the same naming holds).
      const std::string type_dir = m.parent_path().filename().string(), top = m.parent_path().parent_path().filename().string();
      w.add(top + "/" + type_dir + "/" + m.stem().string(), mask2d);
    }
  }
  fs::create_directories(score_file.parent_path());
  w.write(score_file.string());
  return compute_metrics(scored);
}

inline std::string mean_std(const std::vector<double>& v) {
  double mean = 0, var = 0;
  for (double x : v) mean += x;
  mean /= static_cast<double>(v.size());
  for (double x : v) var += (x - mean) * (x - mean);
  const double sd = v.size() > 1 ? std::sqrt(var / static_cast<double>(v.size() - 1)) : 0.0;  // sample std
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f ± %.3f", mean, sd);
  return buf;
}

/// results.json and results.md from every run so far.
inline void write_results(const EvaluationOptions& o, const std::vector<RunResult>& runs, const nlohmann::json& info) {
  nlohmann::json j = info;
  j["runs"] = nlohmann::json::array();
  for (const auto& r : runs)
    j["runs"].push_back({{"condition", r.condition}, {"seed", r.seed}, {"metrics", metrics_json(r.metrics)},
                         {"train_seconds", r.train_seconds}, {"reused_detector", r.loaded}});
  nlohmann::json summary = nlohmann::json::object();
  std::ostringstream md;
  md << "# Detector with and without generated defects: " << o.type << "\n\n"
     << "Root `" << o.root << "`, protocol " << protocol_name(o.protocol) << ", " << o.size << " px, "
     << o.training.steps << " steps, seeds";
  for (auto s : o.seeds) md << " " << s;
  md << ", " << o.extra << " extra images per added condition. Mean ± sample std over seeds.\n\n| condition | runs |";
  for (const auto& [key, title] : metric_columns()) md << " " << title << " |";
  md << "\n|---|---:|";
  for (std::size_t i = 0; i < metric_columns().size(); ++i) md << "---:|";
  md << "\n";
  for (const auto& c : o.conditions) {
    std::vector<const RunResult*> mine;
    for (const auto& r : runs)
      if (r.condition == c) mine.push_back(&r);
    if (mine.empty()) continue;
    md << "| " << c << " | " << mine.size() << " |";
    for (const auto& [key, title] : metric_columns()) {
      std::vector<double> v;
      for (const auto* r : mine) v.push_back(metrics_json(r->metrics)[key].get<double>());
      double mean = 0;
      for (double x : v) mean += x;
      summary[c][key] = {{"mean", mean / static_cast<double>(v.size())}, {"values", v}};
      md << " " << mean_std(v) << " |";
    }
    md << "\n";
  }
  j["summary"] = summary;
  write_text(fs::path(o.out) / "results.json", j.dump(2) + "\n");
  write_text(fs::path(o.out) / "results.md", md.str());
}
}  // namespace detail

/// Runs the evaluation (see the top of this file). `on_event` receives messages and training progress. The
/// detectors train and score on Dev (Cuda: include adabldm/cuda.cuh first); the draws, the losses and the files
/// are the host's, so a device changes only the arithmetic's rounding.
template <class Dev = Cpu>
std::vector<RunResult> run_evaluation(const EvaluationOptions& o,
                                      const std::function<void(const EvaluationEvent&)>& on_event = {}) {
  o.validate();
  auto say = [&](const std::string& m) {
    if (on_event) on_event({m, 0, 0, false});
  };
  const AdSplit split = load_ad_split(o.root, o.type, o.protocol);
  check(!split.fewshot.empty(), o.root, ": no few-shot defects of type ", o.type);
  std::vector<std::string> probe = split.train_good;
  for (const auto& f : split.fewshot) probe.push_back(f.image);
  const int channels = all_grayscale(probe) ? 1 : 3;
  DetectorConfig dc = o.detector;
  dc.in_channels = channels;
  // Everything that can fail on bad input is read before the first detector trains.
  std::vector<SyntheticEntry> synthetic;
  if (std::find(o.conditions.begin(), o.conditions.end(), "adabldm") != o.conditions.end()) {
    synthetic = read_synthetic(o.synthetic, o.root);
    check(static_cast<int>(synthetic.size()) >= o.extra, o.synthetic, ": ", synthetic.size(),
          " generated images, the evaluation adds ", o.extra, " (generate more, or lower --extra)");
    synthetic.resize(static_cast<std::size_t>(o.extra));
  }
  say("reading " + std::to_string(split.train_good.size()) + " good, " + std::to_string(split.fewshot.size()) +
      " few-shot and " + std::to_string(split.test.size()) + " test images at " + std::to_string(o.size) + " px (" +
      std::to_string(channels) + " channel" + (channels > 1 ? "s" : "") + ")");
  std::vector<SegSample> negatives, real;
  std::vector<std::string> real_names;
  for (const auto& f : split.train_good)
    negatives.push_back({load_detector_image(f, o.size, channels), Tensor<float, Cpu>::zeros({1, o.size, o.size})});
  for (const auto& f : split.fewshot) {
    SegSample s{load_detector_image(f.image, o.size, channels), load_detector_mask(f.mask, o.size)};
    int64_t on = 0;
    for (int64_t i = 0; i < s.mask.numel(); ++i) on += s.mask.data()[i] >= 0.5f;
    if (on == 0) {
      say("skipping " + f.image + ": its mask vanishes at " + std::to_string(o.size) + " px");
      continue;
    }
    real.push_back(std::move(s));
    real_names.push_back(f.image);
  }
  check(!real.empty(), o.root, ": every few-shot mask of ", o.type, " vanishes at ", o.size, " px");
  const detail::TestSet test = detail::load_test_set(split, o.size, channels);

  auto extra_for = [&](const std::string& condition) {
    std::vector<SegSample> extra;
    if (condition == "croppaste") {
      Rng rng(o.data_seed);
      const auto fg = Tensor<float, Cpu>::full({1, 1, o.size, o.size}, 1.0f);  // textures: the whole image
      for (int k = 0; k < o.extra; ++k) {
        const auto& good = negatives[static_cast<std::size_t>(rng.uniform_int(0, static_cast<int64_t>(negatives.size()) - 1))];
        const std::size_t j = static_cast<std::size_t>(rng.uniform_int(0, static_cast<int64_t>(real.size()) - 1));
        extra.push_back(crop_paste(good, real[j], fg, rng, o.crop_paste, real_names[j]));
      }
    } else if (condition == "adabldm") {
      for (const auto& e : synthetic) extra.push_back(load_synthetic(e, o.size, channels, o.composite));
    }
    return extra;
  };

  nlohmann::json info = {{"root", o.root}, {"type", o.type}, {"protocol", protocol_name(o.protocol)}, {"size", o.size},
                         {"channels", channels}, {"extra", o.extra}, {"seeds", o.seeds},
                         {"synthetic", o.synthetic}, {"composite", o.composite},
                         {"train_good", split.train_good.size()}, {"fewshot", real.size()}, {"test", split.test.size()},
                         {"detector", {{"widths", dc.widths}, {"groups", dc.groups},
                                       {"parameters", [&] { SegmentationDetector<float> d(dc); return nn::parameter_count(d); }()}}},
                         {"training", {{"steps", o.training.steps}, {"batch", o.training.batch},
                                       {"positives", o.training.positives}, {"crop", o.training.crop},
                                       {"lr", o.training.lr}, {"weight_decay", o.training.weight_decay},
                                       {"pos_weight", o.training.pos_weight}, {"dice_weight", o.training.dice_weight}}}};
  fs::create_directories(fs::path(o.out) / "detectors");
  std::vector<RunResult> runs;
  const int64_t total = static_cast<int64_t>(o.conditions.size() * o.seeds.size()) * o.training.steps;
  int64_t done = 0;
  const std::string negatives_print = detail::fingerprint(negatives);
  for (const auto& condition : o.conditions) {
    std::vector<SegSample> positives = real;
    const auto extra = extra_for(condition);
    positives.insert(positives.end(), extra.begin(), extra.end());
    // The training images' fingerprint (count and FNV-1a of pixels and masks, defects then good images): a saved
    // detector trained on others (another root, fold, generated folder, --extra or placement) is not reused.
    const std::string training_images = detail::fingerprint(positives) + "; " + negatives_print;
    for (const uint64_t seed : o.seeds) {
      const std::string tag = condition + "_seed" + std::to_string(seed);
      const fs::path det_file = fs::path(o.out) / "detectors" / (tag + ".safetensors");
      RunResult r{condition, seed, {}, 0, fs::exists(det_file)};
      SegmentationDetector<float, Dev> det(dc);
      if (r.loaded) {
        auto loaded = load_detector(det_file.string());
        // A detector trained with other settings would silently mix two experiments in one table.
        for (const auto& [key, value] : info["training"].items())
          check(!loaded.meta.contains("training") || loaded.meta["training"].value(key, value) == value, det_file.string(),
                ": trained with ", key, " ", loaded.meta["training"].value(key, value).dump(), ", this run asks for ",
                value.dump(), "; use another --out or delete it");
        check(loaded.meta.value("size", o.size) == o.size && loaded.meta.value("type", o.type) == o.type,
              det_file.string(), ": trained for another --size or --defect; use another --out or delete it");
        check(loaded.meta.contains("training_images"), det_file.string(),
              ": records no fingerprint of its training images (saved by an older version); use another --out or "
              "delete it");
        check(loaded.meta["training_images"] == training_images, det_file.string(), ": trained on other ", condition,
              " images than this run's (another root or fold, --synthetic folder, --extra, --keep-edges or "
              "--no-composite); use another --out or delete it");
        det = nn::convert<float, Dev>(loaded.detector);
        r.train_seconds = loaded.meta.value("train_seconds", 0.0);
        say(tag + ": reusing " + det_file.string());
        done += o.training.steps;
      } else {
        say(tag + ": training on " + std::to_string(positives.size()) + " defect and " +
            std::to_string(negatives.size()) + " good images");
        DetectorTraining t = o.training;
        t.seed = seed;
        const auto t0 = std::chrono::steady_clock::now();
        train_detector(det, positives, negatives, t, [&](const TrainStep& s) {
          ++done;
          if (on_event && (s.step % 10 == 0 || s.step == t.steps)) {
            char buf[96];
            std::snprintf(buf, sizeof buf, "%s step %d/%d loss %.4f", tag.c_str(), s.step, t.steps, s.loss);
            on_event({buf, done, total, true});
          }
          if (s.skipped) say(tag + ": step " + std::to_string(s.step) + " had a non-finite loss and was skipped");
        });
        r.train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        save_detector(det, det_file.string(),
                      {{"condition", condition}, {"seed", seed}, {"type", o.type}, {"size", o.size},
                       {"protocol", protocol_name(o.protocol)}, {"steps", t.steps},
                       {"training", info["training"]}, {"training_images", training_images},
                       {"train_seconds", r.train_seconds}, {"device", Dev::name}});
      }
      r.metrics = detail::score_and_measure(det, test, fs::path(o.out) / "scores" / (tag + ".safetensors"));
      char buf[160];
      std::snprintf(buf, sizeof buf, "%s: pixel AP %.3f  IAP %.3f  IAP90 %.3f  F1-max %.3f  image AUROC %.3f",
                    tag.c_str(), r.metrics.pixel_ap, r.metrics.iap, r.metrics.iap90, r.metrics.pixel_f1_max,
                    r.metrics.image_auroc);
      say(buf);
      runs.push_back(r);
      detail::write_results(o, runs, info);  // after every run, so a stopped evaluation keeps what it measured
    }
  }
  return runs;
}

/// Re-scores `root` with every detector in `detectors_dir` (written by run_evaluation), without training: the
/// type, size and protocol come from each detector's metadata unless given. Writes OUT/scores and OUT/results.*.
inline std::vector<RunResult> rescore(const std::string& detectors_dir, const std::string& root, const std::string& out,
                                      Protocol protocol, const std::function<void(const EvaluationEvent&)>& on_event = {}) {
  std::vector<fs::path> files;
  check<IoError>(fs::is_directory(detectors_dir), detectors_dir, ": no such folder");
  for (const auto& e : fs::directory_iterator(detectors_dir))
    if (e.path().extension() == ".safetensors") files.push_back(e.path());
  check<IoError>(!files.empty(), detectors_dir, ": no detectors (*.safetensors)");
  std::sort(files.begin(), files.end());
  std::vector<RunResult> runs;
  EvaluationOptions o;
  o.root = root;
  o.out = out;
  o.protocol = protocol;
  o.conditions.clear();
  o.seeds.clear();
  std::map<std::pair<std::string, int>, detail::TestSet> tests;  // by (type, size)
  for (const auto& f : files) {
    const auto loaded = load_detector(f.string());
    const auto& m = loaded.meta;
    check<FormatError>(m.contains("type") && m["type"].is_string() && m.contains("size") && m["size"].is_number_integer() &&
                           m.contains("condition") && m["condition"].is_string() && m.contains("seed") &&
                           m["seed"].is_number_unsigned(),
                       f.string(), ": the detector does not record its type, size, condition and seed");
    const std::string type = m["type"].get<std::string>(), condition = m["condition"].get<std::string>();
    const int size = m["size"].get<int>();
    check(o.type.empty() || o.type == type, f.string(), ": a detector for ", type, ", the others are for ", o.type);
    o.type = type;
    o.size = size;
    o.training.steps = m.value("steps", o.training.steps);
    auto key = std::make_pair(type, size);
    if (!tests.count(key))
      tests[key] = detail::load_test_set(load_ad_split(root, type, protocol), size, loaded.detector.config.in_channels);
    RunResult r{condition, m["seed"].get<uint64_t>(), {}, 0, true};
    if (std::find(o.conditions.begin(), o.conditions.end(), condition) == o.conditions.end()) o.conditions.push_back(condition);
    if (std::find(o.seeds.begin(), o.seeds.end(), r.seed) == o.seeds.end()) o.seeds.push_back(r.seed);
    r.metrics = detail::score_and_measure(loaded.detector, tests[key], fs::path(out) / "scores" / (f.stem().string() + ".safetensors"));
    if (on_event) on_event({f.filename().string() + ": pixel AP " + std::to_string(r.metrics.pixel_ap), 0, 0, false});
    runs.push_back(r);
  }
  detail::write_results(o, runs, {{"root", root}, {"detectors", detectors_dir}, {"protocol", protocol_name(protocol)},
                                  {"rescored", true}});
  return runs;
}

}  // namespace adabldm::eval
