#pragma once
// AdamW exactly as torch.optim.AdamW (1.13, single-tensor path, amsgrad off): per parameter with a gradient,
//   step += 1
//   p *= 1 - lr * weight_decay                       (decoupled weight decay, before the Adam update)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   p += -(lr / (1 - beta1^step)) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
// Scalars are formed in double and applied in the parameter's type, in torch's order. Parameters without a
// gradient are skipped (their step does not advance), as torch skips p.grad is None.
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "adabldm/autograd/params.hpp"
#include "adabldm/core/transfer.hpp"
#include "adabldm/io/safetensors.hpp"
#include "adabldm/io/state_dict.hpp"

namespace adabldm::autograd {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
};

/// AdamW over the trainable parameters of a module (found by visit; the module must outlive the optimiser).
/// Updates the parameter values in place (use nn::clone_parameters first to train a copy of shared weights).
template <class T, class Dev = Cpu>
class AdamW {
  // 16-bit parameters cannot absorb lr-sized updates (1e-4 is below half an ulp of 0.5) and a 16-bit second
  // moment flushes (1 - beta2) g^2 to 0 for |g| < 5.5e-3: train a float master copy instead (defect::adapt_decoder
  // does, with its bf16 compute copy).
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "AdamW: float or double parameters (16-bit weights train through a float master copy)");

 public:
  template <class M>
  explicit AdamW(M& module, const AdamWOptions& options = {}) : options_(options) {
    check(options.lr >= 0 && options.eps >= 0 && options.weight_decay >= 0, "AdamW: negative lr, eps or weight_decay");
    check(options.beta1 >= 0 && options.beta1 < 1 && options.beta2 >= 0 && options.beta2 < 1,
          "AdamW: betas must be in [0, 1), got ", options.beta1, ", ", options.beta2);
    module.visit("", [&](const std::string& name, nn::Param<T, Dev>& p) {
      if (p.trainable) entries_.push_back({name, &p, {}, {}, 0});
    });
  }

  AdamWOptions& options() noexcept { return options_; }
  const AdamWOptions& options() const noexcept { return options_; }
  std::size_t size() const noexcept { return entries_.size(); }
  /// The number of updates the named parameter has had (0 if none or unknown).
  int64_t steps(const std::string& name) const {
    for (const auto& e : entries_)
      if (e.name == name) return e.step;
    return 0;
  }

  /// One update of every trainable parameter that has a gradient.
  void step() {
    for (auto& e : entries_) {
      const Tensor<T, Dev> g = grad(e.param->value);
      if (!g.defined()) continue;
      auto& p = e.param->value;
      check(p.is_contiguous(), "AdamW: parameter ", e.name, " is not contiguous");
      check<ShapeError>(g.shape() == p.shape(), "AdamW: gradient ", g.shape().str(), " for parameter ", e.name, " ",
                        p.shape().str());
      ++e.step;
      if constexpr (std::is_same_v<Dev, Cpu>) {
        if (!e.exp_avg.defined()) {
          e.exp_avg = Tensor<T, Dev>::zeros(p.shape());
          e.exp_avg_sq = Tensor<T, Dev>::zeros(p.shape());
        }
        update(p.data(), g.data(), e.exp_avg.data(), e.exp_avg_sq.data(), p.numel(), e.step);
      } else {  // device parameters: the backend's kernels, by argument-dependent lookup (CUDA: autograd/cuda/optim.cuh)
        if (!e.exp_avg.defined()) {
          e.exp_avg = autograd_zeros_like(p);
          e.exp_avg_sq = autograd_zeros_like(p);
        }
        adamw_update(p, g, e.exp_avg, e.exp_avg_sq, options_, e.step);
      }
    }
  }
  /// Drops the gradients of the optimised parameters.
  void zero_grad() {
    for (auto& e : entries_)
      if (e.param->value.requires_grad()) {
        e.param->value.autograd_meta()->grad.reset();
        e.param->value.autograd_meta()->grad_type = nullptr;
      }
  }

  /// The optimiser state as named tensors: exp_avg.<param>, exp_avg_sq.<param> (the parameter's type) and
  /// step.<param> (I64, rank 0), for parameters that have been updated. Shares the moment buffers.
  io::StateDict state_dict() const {
    io::StateDict sd("AdamW state");
    for (const auto& e : entries_) {
      if (e.step == 0) continue;
      sd.add("exp_avg." + e.name, download_as<T>(e.exp_avg));  // (a device's moments are copied to the host)
      sd.add("exp_avg_sq." + e.name, download_as<T>(e.exp_avg_sq));
      sd.add("step." + e.name, Tensor<int64_t, Cpu>::from_vector(std::vector<int64_t>{e.step}, Shape{}));
    }
    return sd;
  }
  /// Restores a state_dict() (copies the moments). Parameters absent from it start afresh; names that match no
  /// parameter and mis-shaped moments are errors.
  void load_state_dict(const io::StateDict& sd) {
    std::size_t used = 0;
    for (auto& e : entries_) {
      e.step = 0;
      e.exp_avg = e.exp_avg_sq = Tensor<T, Dev>{};
      if (!sd.contains("step." + e.name)) continue;
      e.step = sd.get<int64_t>("step." + e.name).data()[0];
      e.exp_avg = upload_as<T, Dev>(sd.get<T>("exp_avg." + e.name).clone());
      e.exp_avg_sq = upload_as<T, Dev>(sd.get<T>("exp_avg_sq." + e.name).clone());
      check<ShapeError>(e.exp_avg.shape() == e.param->shape && e.exp_avg_sq.shape() == e.param->shape, sd.source(),
                        ": AdamW moments of ", e.name, " are ", e.exp_avg.shape().str(), ", the parameter ",
                        e.param->shape.str());
      used += 3;
    }
    check(used == sd.size(), sd.source(), ": ", sd.size() - used, " AdamW state tensors match no trainable parameter");
  }
  /// Writes state_dict() to a safetensors file (atomically); load() reads one back.
  void save(const std::string& path) const {
    io::SafeTensorsWriter w;
    for (const auto& e : entries_) {
      if (e.step == 0) continue;
      w.add("exp_avg." + e.name, download_as<T>(e.exp_avg));
      w.add("exp_avg_sq." + e.name, download_as<T>(e.exp_avg_sq));
      w.add("step." + e.name, Tensor<int64_t, Cpu>::from_vector(std::vector<int64_t>{e.step}, Shape{}));
    }
    w.write(path);
  }
  void load(const std::string& path) { load_state_dict(io::SafeTensors::open(path).state_dict()); }

 private:
  struct Entry {
    std::string name;
    nn::Param<T, Dev>* param;
    Tensor<T, Dev> exp_avg, exp_avg_sq;
    int64_t step;
  };

  void update(T* p, const T* g, T* m, T* v, int64_t n, int64_t step) const {
    const AdamWOptions& o = options_;
    const T decay = static_cast<T>(1.0 - o.lr * o.weight_decay);
    const T b1 = static_cast<T>(o.beta1), one_minus_b1 = static_cast<T>(1.0 - o.beta1);
    const T b2 = static_cast<T>(o.beta2), one_minus_b2 = static_cast<T>(1.0 - o.beta2);
    const double bias_correction1 = 1.0 - std::pow(o.beta1, static_cast<double>(step));
    const double bias_correction2 = 1.0 - std::pow(o.beta2, static_cast<double>(step));
    const T neg_step_size = static_cast<T>(-(o.lr / bias_correction1));
    const T bc2_sqrt = static_cast<T>(std::sqrt(bias_correction2)), eps = static_cast<T>(o.eps);
    parallel_for(n, [&](int64_t i) {
      p[i] = p[i] * decay;
      m[i] = m[i] * b1;
      m[i] = m[i] + one_minus_b1 * g[i];
      v[i] = v[i] * b2;
      v[i] = v[i] + one_minus_b2 * g[i] * g[i];
      const T denom = std::sqrt(v[i]) / bc2_sqrt + eps;
      p[i] = p[i] + neg_step_size * m[i] / denom;
    }, 1 << 14);
  }

  AdamWOptions options_;
  std::vector<Entry> entries_;
};

}  // namespace adabldm::autograd
