#pragma once
// The sampler: a DDIM loop over a denoiser with a list of stage policies. A stage owns a span of step indices
// and may edit the latent before the model call and/or after the scheduler step; spans may overlap (AdaBLDM's
// step 45 does both a latent and an image edit). AdaBLDM, plain Blended Latent Diffusion and plain
// text-to-image are different stage lists over the same loop.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "adabldm/sampling/guidance.hpp"
#include "adabldm/sampling/scheduler.hpp"

namespace adabldm::sampling {

/// Where the loop is: step i of n at timestep t, stepping to t_prev (< 0 after the last step).
struct StepInfo {
  int index = 0, num_steps = 0;
  int64_t t = 0, t_prev = 0;
  float alpha = 1, alpha_prev = 1;  ///< alphas_cumprod at t and t_prev
};

/// What stages read and edit: the latent (z_t before the model call, z_prev after the step) and, after the
/// step, the model's prediction and the predicted clean latent.
struct SamplerState {
  Tensor<float> latent;
  Tensor<float> model_output;
  Tensor<float> pred_x0;
};

class Stage {
 public:
  Stage(std::string name, int first, int last) : name_(std::move(name)), first_(first), last_(last) {}
  virtual ~Stage() = default;
  const std::string& name() const { return name_; }
  int first() const { return first_; }
  int last() const { return last_; }
  bool active(int i) const { return i >= first_ && i <= last_; }
  /// Edits state.latent (z_t) before the model sees it.
  virtual void before_model(const StepInfo&, SamplerState&, Rng&) {}
  /// Edits state.latent (z_prev) after the scheduler step.
  virtual void after_step(const StepInfo&, SamplerState&, Rng&) {}

 private:
  std::string name_;
  int first_, last_;
};
using StageList = std::vector<std::shared_ptr<Stage>>;

/// Called after every step with the names of the stages that were active (instrumentation, progress).
using StepCallback = std::function<void(const StepInfo&, const SamplerState&, const std::vector<std::string>& stages)>;

/// Runs the DDIM loop from `latent` over the scheduler's timesteps (call set_timesteps first) and returns the
/// final latent. eta > 0 draws the DDIM noise from `rng`.
inline Tensor<float> run_sampler(const DDIMScheduler& scheduler, Tensor<float> latent, const Denoiser& denoise,
                                 const StageList& stages, Rng& rng, double eta = 0.0,
                                 const StepCallback& on_step = {}) {
  const auto& ts = scheduler.timesteps();
  const int n = static_cast<int>(ts.size());
  SamplerState state{std::move(latent), {}, {}};
  for (int i = 0; i < n; ++i) {
    StepInfo info;
    info.index = i;
    info.num_steps = n;
    info.t = ts[static_cast<std::size_t>(i)];
    info.t_prev = scheduler.prev_timestep(info.t);
    info.alpha = scheduler.alpha_cumprod(info.t);
    info.alpha_prev = scheduler.alpha_cumprod(info.t_prev);
    std::vector<std::string> active;
    for (const auto& s : stages)
      if (s->active(i)) {
        active.push_back(s->name());
        s->before_model(info, state, rng);
      }
    state.model_output = denoise(state.latent, info.t);
    auto out = scheduler.step(state.model_output, info.t, state.latent, eta, nullptr, &rng);
    state.latent = std::move(out.prev_sample);
    state.pred_x0 = std::move(out.pred_original_sample);
    for (const auto& s : stages)
      if (s->active(i)) s->after_step(info, state, rng);
    if (on_step) on_step(info, state, active);
  }
  return state.latent;
}

}  // namespace adabldm::sampling
