#pragma once
// The latent-diffusion training loss (Rombach et al. 2022, eq. 2; diffusers' train_text_to_image / train_controlnet):
// t ~ U{0, ..., N-1} per batch item, noise ~ N(0, 1), z_t = add_noise(x0, noise, t), and the mean squared error
// between the model's prediction at (z_t, t) and the scheduler's target (the noise for epsilon prediction, the
// velocity for v-prediction, x0 for sample prediction).
// The training objective of the recipe (it needs the noise schedule), so it lives in defect/; its names stay in
// namespace autograd, where they were before the move (docs/architecture.md, "Layers").
#include <cmath>
#include <type_traits>
#include <vector>

#include "adabldm/autograd/loss.hpp"
#include "adabldm/core/rng.hpp"
#include "adabldm/core/transfer.hpp"
#include "adabldm/sampling/scheduler.hpp"

namespace adabldm::autograd {

template <class T, class Dev = Cpu>
struct LdmLoss {
  Tensor<T, Dev> loss;             ///< scalar on the prediction's device; differentiable through the prediction
  std::vector<int64_t> timesteps;  ///< the t drawn for each batch item
  Tensor<T, Cpu> noise;            ///< the noise drawn (x0's shape)
};

namespace detail {
/// sqrt(a_t) * x + sqrt(1 - a_t) * y per batch item (a_t = alphas_cumprod[t_b]); float uses the scheduler's
/// bit-exact float32 kernels, other types the same formula in T.
template <class T>
Tensor<T, Cpu> per_item_mix(const sampling::DDIMScheduler& s, const Tensor<T, Cpu>& x, const Tensor<T, Cpu>& y,
                            const std::vector<int64_t>& t, bool velocity) {
  if constexpr (std::is_same_v<T, float>) {
    return velocity ? s.velocity(x, y, t) : s.add_noise(x, y, t);
  } else {
    const int64_t batch = x.dim(0), per_item = x.numel() / std::max<int64_t>(1, batch);
    auto out = Tensor<T, Cpu>::empty(x.shape());
    for (int64_t b = 0; b < batch; ++b) {
      const T a = static_cast<T>(s.alphas_cumprod().at(static_cast<std::size_t>(t[static_cast<std::size_t>(b)])));
      const T sa = std::sqrt(a), sb = std::sqrt(T(1) - a);
      for (int64_t i = b * per_item; i < (b + 1) * per_item; ++i)
        out.data()[i] = velocity ? sa * y.data()[i] - sb * x.data()[i] : sa * x.data()[i] + sb * y.data()[i];
    }
    return out;
  }
}
}  // namespace detail

/// The LDM loss for one batch of clean latents x0 [B, ...] (host data: no gradient flows into x0).
/// predict(z_t, timesteps) -> prediction of x0's shape on any device, with z_t a host tensor and timesteps a
/// std::vector<float> of one t per item; the target goes to the prediction's device.
/// Draws from rng in this order: B timesteps (Rng::uniform_int), then the noise (Rng::normal<T>(x0's shape)).
template <class T, class Predict>
auto ldm_loss(Predict&& predict, const Tensor<T, Cpu>& x0_in, const sampling::DDIMScheduler& scheduler, Rng& rng) {
  check<ShapeError>(x0_in.rank() >= 1 && x0_in.dim(0) > 0, "ldm_loss: x0 must be [B, ...], got ", x0_in.shape().str());
  const auto x0 = x0_in.detach().contiguous();
  const int64_t B = x0.dim(0), N = scheduler.config().num_train_timesteps;
  std::vector<int64_t> timesteps;
  for (int64_t b = 0; b < B; ++b) timesteps.push_back(rng.uniform_int(0, N - 1));
  auto noise = rng.normal<T>(x0.shape());
  const auto zt = detail::per_item_mix(scheduler, x0, noise, timesteps, /*velocity=*/false);
  Tensor<T, Cpu> target;
  switch (scheduler.config().prediction_type) {
    case sampling::PredictionType::Epsilon: target = noise; break;
    case sampling::PredictionType::VPrediction: target = detail::per_item_mix(scheduler, x0, noise, timesteps, true); break;
    case sampling::PredictionType::Sample: target = x0; break;
  }
  const std::vector<float> t(timesteps.begin(), timesteps.end());  // (float for every T: ops::timestep_embedding)
  const auto prediction = predict(zt, t);
  using Dev = typename std::decay_t<decltype(prediction)>::device_type;
  LdmLoss<T, Dev> r;
  r.loss = mse(prediction, upload_as<T, Dev>(target));
  r.timesteps = std::move(timesteps);
  r.noise = std::move(noise);
  return r;
}

}  // namespace adabldm::autograd
