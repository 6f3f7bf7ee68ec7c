#pragma once
// adabldm evaluate: does it help? Trains the same small segmentation detector with and without generated defects
// and measures each on the real test defects (eval/evaluation.hpp); or, with --detectors, re-scores another root
// with saved detectors (on the CPU). evaluate_on<Dev> trains and scores the detectors on device Dev; evaluate.cpp
// instantiates it for the CPU, cuda_commands.cu for CUDA.
#include <algorithm>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include <adabldm/eval/evaluation.hpp>

#include "args.hpp"
#include "commands.hpp"
#include "device.hpp"
#include "progress.hpp"

namespace cli {

namespace evaluate_detail {
using namespace adabldm;

inline const char* kUsage =
    "usage: adabldm evaluate --data ROOT --defect TYPE --out DIR [--synthetic GEN_DIR] [options]\n"
    "       adabldm evaluate --detectors DIR --data ROOT --out DIR      (re-score ROOT with saved detectors)\n"
    "  --data ROOT             an MVTec-AD-layout folder: train/good, test/<type>, ground_truth/<type>, and (protocol\n"
    "                          fewshot) fewshot/<type> + fewshot_ground_truth/<type>\n"
    "  --defect TYPE           the defect type (a folder of test/)\n"
    "  --out DIR               results.json, results.md, detectors/, scores/ (rerunning reuses finished detectors)\n"
    "  --conditions LIST       of real, croppaste, adabldm (default: all three; adabldm needs --synthetic)\n"
    "  --synthetic GEN_DIR     the --out folder of adabldm generate (refused if made from any test/ file)\n"
    "  --extra N               extra defect images per added condition (default 100)\n"
    "  --no-composite          use generated images as they are, not composited into their OK source\n"
    "  --seeds LIST            detector seeds (default 0,1,2)\n"
    "  --protocol P            fewshot (default) | anomalydiffusion (a plain MVTec AD root: the first third of\n"
    "                          test/<type> by name are the few-shot defects, the rest and test/good the test set)\n"
    "  --size PX               detector input size (default 256)\n"
    "  --steps N               training steps per detector (default 500)\n"
    "  --batch B               images per step (default 8, half of them defects)\n"
    "  --crop PX               training crop side (default 128; 0 = whole images)\n"
    "  --lr LR                 AdamW peak learning rate, cosine decay (default 1e-3)\n"
    "  --pos-weight W          BCE weight of defect pixels (default 5)\n"
    "  --dice-weight W         weight of the soft Dice term (default 1; 0 = BCE only)\n"
    "  --widths LIST           detector channels per level (default 16,32,64,128)\n"
    "  --keep-edges            croppaste: a defect touching its image's border is pasted flush with a border\n"
    "  --device cpu|cuda       where the detectors train and score, in f32 (default cpu; cuda needs a build with the\n"
    "                          CUDA backend; the draws and losses stay on the host, so a run differs only in rounding;\n"
    "                          re-scoring with --detectors runs on the CPU)\n"
    "  --tf32                  cuda: allow TF32 tensor cores for the detector's convolutions\n"
    "  --quiet                 no progress output\n";

inline std::vector<std::string> split_list(const std::string& s, const char* what) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    check(!item.empty(), "--", what, " ", s, ": empty item");
    out.push_back(item);
  }
  check(!out.empty(), "--", what, ": empty list");
  return out;
}

inline long parse_integer(const std::string& s, const char* what, long lo, long hi) {
  std::size_t used = 0;
  long v = 0;
  try {
    v = std::stol(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  check(used == s.size() && used > 0, "--", what, " ", s, ": not an integer");
  check(v >= lo && v <= hi, "--", what, " ", s, ": must be in ", lo, "..", hi);
  return v;
}

}  // namespace evaluate_detail

inline Args evaluate_args(int argc, char** argv) {
  return Args(argc, argv, 2,
              {"data", "defect", "out", "conditions", "synthetic", "extra", "seeds", "protocol", "size", "steps",
               "batch", "crop", "lr", "pos-weight", "dice-weight", "widths", "detectors", "device", "dtype",
               "cpu-matmul"},
              {"help", "quiet", "no-composite", "keep-edges", "tf32"});
}

template <class Dev>
int evaluate_on(const Args& args) {
  using namespace evaluate_detail;
  const bool quiet = args.flag("quiet");
  Progress progress(1, quiet);
  const auto protocol = eval::parse_protocol(args.get("protocol", "fewshot"));
  auto on_event = [&](const eval::EvaluationEvent& e) {
    if (e.is_progress) progress.update(static_cast<double>(e.steps_done) / static_cast<double>(e.steps_total), e.message);
    else progress.note(e.message);
  };

  if (args.has("detectors")) {
    for (const char* o : {"defect", "conditions", "synthetic", "extra", "seeds", "size", "steps", "batch", "crop", "lr",
                         "pos-weight", "dice-weight", "widths", "keep-edges"})
      check(!args.has(o), "--", o, " does not apply with --detectors (the detectors record their settings)");
    const auto runs = eval::rescore(args.require_nonempty("detectors"), args.require_nonempty("data"),
                                    args.require_nonempty("out"), protocol, on_event);
    progress.note("re-scored with " + std::to_string(runs.size()) + " detectors: " + args.get("out") + "/results.md");
    return 0;
  }

  eval::EvaluationOptions o;
  o.root = args.require_nonempty("data");
  o.type = args.require_nonempty("defect");
  o.out = args.require_nonempty("out");
  o.protocol = protocol;
  if (args.has("conditions")) o.conditions = split_list(args.get("conditions"), "conditions");
  o.synthetic = args.get("synthetic");
  const bool wants_synthetic = std::find(o.conditions.begin(), o.conditions.end(), "adabldm") != o.conditions.end();
  if (!args.has("conditions") && o.synthetic.empty()) {
    o.conditions = {"real", "croppaste"};
    progress.warn("no --synthetic folder: measuring real and croppaste only");
  } else {
    check(wants_synthetic || o.synthetic.empty(), "--synthetic is given but --conditions has no adabldm");
  }
  o.extra = static_cast<int>(args.integer_in("extra", o.extra, 1, 100000));
  o.composite = !args.flag("no-composite");
  o.crop_paste.synthesis.keep_edges = args.flag("keep-edges");
  if (args.has("seeds")) {
    o.seeds.clear();
    for (const auto& s : split_list(args.get("seeds"), "seeds"))
      o.seeds.push_back(static_cast<uint64_t>(parse_integer(s, "seeds", 0, 1L << 40)));
  }
  o.size = static_cast<int>(args.integer_in("size", o.size, 16, 4096));
  o.training.steps = static_cast<int>(args.integer_in("steps", o.training.steps, 1, 10000000));
  o.training.batch = static_cast<int>(args.integer_in("batch", o.training.batch, 2, 256));
  o.training.positives = o.training.batch / 2;
  o.training.crop = static_cast<int>(args.integer_in("crop", o.training.crop, 0, 4096));
  o.training.lr = args.number_in("lr", o.training.lr, 1e-8, 1.0);
  o.training.pos_weight = args.number_in("pos-weight", o.training.pos_weight, 1e-3, 1e3);
  o.training.dice_weight = args.number_in("dice-weight", o.training.dice_weight, 0.0, 1e3);
  if (args.has("widths")) {
    o.detector.widths.clear();
    for (const auto& w : split_list(args.get("widths"), "widths"))
      o.detector.widths.push_back(static_cast<int>(parse_integer(w, "widths", 1, 1024)));
  }
  check(o.training.crop == 0 || o.training.crop <= o.size, "--crop ", o.training.crop, " is larger than --size ", o.size);
  o.validate();
  const auto runs = eval::run_evaluation<Dev>(o, on_event);
  progress.finish("evaluated " + std::to_string(runs.size()) + " detectors: " + o.out + "/results.md");
  return 0;
}

}  // namespace cli
