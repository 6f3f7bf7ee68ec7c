#pragma once
// Training the detector (eval/detector.hpp) and scoring images with it.
//
// Each step draws a batch of `positives` defect images and batch - positives defect-free ones (with replacement),
// takes a random square crop of each (a defect crop always contains a defect pixel, not too close to its edge),
// applies one of the 8 flips / quarter turns, and minimises BCE with logits (positive weight 5) + soft Dice with
// AdamW under a cosine learning-rate decay. The network is fully convolutional, so it is trained on crops and scores
// whole images. A step whose loss is not finite is skipped (the weights stay as they were).
// The detector may live on a device (Dev = Cuda): the batches are drawn on the host (the same draws for every
// device), uploaded, and the logits come back to the host for the losses (autograd::on_host), whose gradient
// returns to the device.
#include <chrono>
#include <cmath>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "adabldm/autograd/autograd.hpp"
#include "adabldm/autograd/loss.hpp"
#include "adabldm/autograd/optim.hpp"
#include "adabldm/autograd/params.hpp"
#include "adabldm/autograd/transfer.hpp"
#include "adabldm/core/rng.hpp"
#include "adabldm/eval/detector.hpp"
#include "adabldm/io/safetensors.hpp"

namespace adabldm::eval {

/// A training image and its defect mask: image [C, S, S] in [-1, 1], mask [1, S, S] in {0, 1} (all 0: good).
struct SegSample {
  Tensor<float, Cpu> image, mask;
};

struct DetectorTraining {
  int steps = 500;
  int batch = 8;
  int positives = 4;     // defect images per batch; the rest are defect-free
  int crop = 128;        // training crop side (0: whole images)
  double lr = 1e-3;      // peak learning rate, cosine-decayed to 0
  double weight_decay = 1e-2;
  double pos_weight = 5.0;  // BCE weight of defect pixels
  double dice_weight = 1.0;
  uint64_t seed = 0;

  void validate() const {
    check(steps >= 1, "detector training: steps must be >= 1, got ", steps);
    check(batch >= 2 && batch <= 256, "detector training: batch must be in 2..256, got ", batch);
    check(positives >= 1 && positives < batch, "detector training: positives per batch must be in 1..", batch - 1,
          ", got ", positives);
    check(crop >= 0, "detector training: crop must be >= 0");
    check(lr > 0 && std::isfinite(lr), "detector training: lr must be positive");
    check(weight_decay >= 0 && pos_weight > 0 && dice_weight >= 0, "detector training: negative weight");
  }
};

struct TrainStep {
  int step = 0;  // 1-based
  double loss = 0, seconds = 0;
  bool skipped = false;
};

namespace detail {
constexpr double kPi = 3.14159265358979323846;

/// Output pixel (y, x) of a k x k crop under dihedral transform d (bit 0: transpose, bit 1: flip rows, bit 2:
/// flip columns) -> the crop pixel it reads.
inline std::pair<int, int> dihedral(int d, int y, int x, int k) {
  if (d & 2) y = k - 1 - y;
  if (d & 4) x = k - 1 - x;
  if (d & 1) std::swap(y, x);
  return {y, x};
}
/// Pixel indices where a mask is set (where defect crops are centred).
inline std::vector<int64_t> defect_pixels(const Tensor<float, Cpu>& mask) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < mask.numel(); ++i)
    if (mask.data()[i] >= 0.5f) out.push_back(i);
  return out;
}
/// The top-left of a k-crop in a side-S image that holds pixel p (>= margin from the crop's edges when possible).
inline int crop_origin(Rng& rng, int p, int k, int S) {
  const int margin = k / 8;
  int lo = std::max(0, p - k + 1 + margin), hi = std::min(S - k, p - margin);
  if (lo > hi) lo = hi = std::clamp(p - k / 2, 0, S - k);
  return static_cast<int>(rng.uniform_int(lo, hi));
}
}  // namespace detail

/// Trains `det` (initialised here when it has no weights). on_step(TrainStep) is called after every step.
template <class Dev, class OnStep>
void train_detector(SegmentationDetector<float, Dev>& det, const std::vector<SegSample>& positives,
                    const std::vector<SegSample>& negatives, const DetectorTraining& o, OnStep&& on_step) {
  o.validate();
  check(!positives.empty(), "detector training: no defect images");
  check(!negatives.empty(), "detector training: no defect-free images");
  const auto& ref = positives.front().image;
  const int C = static_cast<int>(ref.dim(0)), S = static_cast<int>(ref.dim(1));
  for (const auto* set : {&positives, &negatives})
    for (const auto& s : *set)
      check<ShapeError>(s.image.shape() == ref.shape() && s.mask.shape() == Shape({1, S, S}),
                        "detector training: every image must be ", ref.shape().str(), " with a [1, ", S, ", ", S,
                        "] mask, got ", s.image.shape().str(), " / ", s.mask.shape().str());
  check<ShapeError>(C == det.config.in_channels, "detector training: images have ", C, " channels, the detector ",
                    det.config.in_channels);
  const int k = o.crop > 0 ? std::min(o.crop, S) : S;
  check(k % det.config.stride_multiple() == 0, "detector training: crop ", k, " must be a multiple of ",
        det.config.stride_multiple());
  std::vector<std::vector<int64_t>> defect_px;
  for (const auto& s : positives) {
    defect_px.push_back(detail::defect_pixels(s.mask));
    check(!defect_px.back().empty(), "detector training: a defect image has an empty mask");
  }

  Rng rng(o.seed);
  nn::init_missing(det, rng);
  autograd::track(det);
  autograd::AdamW<float, Dev> opt(det, {o.lr, 0.9, 0.999, 1e-8, o.weight_decay});
  const int B = o.batch;
  auto x = Tensor<float, Cpu>::empty({B, C, k, k});
  auto y = Tensor<float, Cpu>::empty({B, 1, k, k});
  for (int step = 1; step <= o.steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int b = 0; b < B; ++b) {
      const bool pos = b < o.positives;
      const std::size_t i = static_cast<std::size_t>(
          rng.uniform_int(0, static_cast<int64_t>((pos ? positives : negatives).size()) - 1));
      const SegSample& s = (pos ? positives : negatives)[i];
      int y0 = 0, x0 = 0;
      if (k < S) {
        if (pos) {
          const auto& px = defect_px[i];
          const int64_t p = px[static_cast<std::size_t>(rng.uniform_int(0, static_cast<int64_t>(px.size()) - 1))];
          y0 = detail::crop_origin(rng, static_cast<int>(p / S), k, S);
          x0 = detail::crop_origin(rng, static_cast<int>(p % S), k, S);
        } else {
          y0 = static_cast<int>(rng.uniform_int(0, S - k));
          x0 = static_cast<int>(rng.uniform_int(0, S - k));
        }
      }
      const int d = static_cast<int>(rng.uniform_int(0, 7));
      for (int yy = 0; yy < k; ++yy)
        for (int xx = 0; xx < k; ++xx) {
          const auto [sy, sx] = detail::dihedral(d, yy, xx, k);
          const int64_t src = static_cast<int64_t>(y0 + sy) * S + x0 + sx, dst = static_cast<int64_t>(yy) * k + xx;
          for (int c = 0; c < C; ++c) x.data()[(static_cast<int64_t>(b) * C + c) * k * k + dst] = s.image.data()[c * S * S + src];
          y.data()[static_cast<int64_t>(b) * k * k + dst] = s.mask.data()[src];
        }
    }
    opt.options().lr = o.lr * 0.5 * (1.0 + std::cos(detail::kPi * (step - 1) / o.steps));
    TrainStep info;
    info.step = step;
    {
      autograd::TrainingScope scope;
      const auto logits = autograd::on_host(det(upload_as<float, Dev>(x)));
      auto loss = autograd::bce_with_logits(logits, y, o.pos_weight);
      if (o.dice_weight > 0) loss = ops::add(loss, ops::scale(autograd::dice_loss(logits, y), static_cast<float>(o.dice_weight)));
      info.loss = loss.data()[0];
      if (std::isfinite(info.loss)) {
        autograd::backward(loss);
        opt.step();
      } else {
        info.skipped = true;
      }
      autograd::zero_grad(det);
    }
    info.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    on_step(info);
  }
  autograd::untrack(det);
}

/// Defect probabilities [S, S] (the logistic of the logits) of one image [C, S, S].
template <class Dev>
Tensor<float, Cpu> score_image(const SegmentationDetector<float, Dev>& det, const Tensor<float, Cpu>& image) {
  check<ShapeError>(image.rank() == 3, "score_image: expected [C, H, W], got ", image.shape().str());
  autograd::NoGradScope inference;
  auto z = download_as<float>(det(upload_as<float, Dev>(image.reshape({1, image.dim(0), image.dim(1), image.dim(2)}))))
               .contiguous();
  auto p = Tensor<float, Cpu>::empty({image.dim(1), image.dim(2)});
  for (int64_t i = 0; i < p.numel(); ++i) p.data()[i] = static_cast<float>(autograd::detail::sigmoid(z.data()[i]));
  return p;
}

/// Saves the detector's weights with its architecture in the metadata ("adabldm.detector").
template <class Dev>
void save_detector(const SegmentationDetector<float, Dev>& det, const std::string& path,
                   const nlohmann::json& extra = nlohmann::json::object()) {
  auto& d = const_cast<SegmentationDetector<float, Dev>&>(det);  // visit() is not const; nothing is modified
  nlohmann::json meta = {{"in_channels", det.config.in_channels}, {"widths", det.config.widths},
                         {"groups", det.config.groups}};
  for (const auto& [key, value] : extra.items()) meta[key] = value;
  io::SafeTensorsWriter w;
  w.add_all(nn::state_dict(d, path)).metadata("adabldm.detector", meta.dump());
  w.write(path);
}

struct LoadedDetector {
  SegmentationDetector<float> detector;
  nlohmann::json meta;  // the architecture and whatever save_detector was given
};

/// Loads a detector written by save_detector; a file without the metadata or with other weights is an error
/// naming it.
inline LoadedDetector load_detector(const std::string& path) {
  const auto st = io::SafeTensors::open(path);
  const auto it = st.metadata().find("adabldm.detector");
  check<FormatError>(it != st.metadata().end(), path, ": not a detector (no \"adabldm.detector\" metadata)");
  nlohmann::json meta = nlohmann::json::parse(it->second, nullptr, false);
  check<FormatError>(meta.is_object() && meta.contains("in_channels") && meta["in_channels"].is_number_integer() &&
                         meta.contains("widths") && meta["widths"].is_array() && meta.contains("groups") &&
                         meta["groups"].is_number_integer(),
                     path, ": malformed \"adabldm.detector\" metadata");
  DetectorConfig c;
  c.in_channels = meta["in_channels"].get<int>();
  c.widths.clear();
  for (const auto& w : meta["widths"]) {
    check<FormatError>(w.is_number_integer(), path, ": detector widths must be integers");
    c.widths.push_back(w.get<int>());
  }
  c.groups = meta["groups"].get<int>();
  LoadedDetector out{SegmentationDetector<float>(c), meta};
  nn::load_state_dict(out.detector, st.state_dict());
  return out;
}

}  // namespace adabldm::eval
