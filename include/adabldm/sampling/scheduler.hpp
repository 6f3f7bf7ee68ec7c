#pragma once
// The DDIM noise schedule and sampler step, matching diffusers 0.27.2's DDIMScheduler (and DDPMScheduler's
// add_noise / get_velocity) bit for bit on float32 CPU tensors.
//
// Any diffusers scheduler_config.json is accepted (DDIMScheduler, DDPMScheduler, PNDMScheduler,
// EulerDiscreteScheduler, ...): `_class_name` is only recorded. Stable Diffusion pipelines ship PNDM or Euler
// configs, but this library always samples with DDIM over the same noise schedule, as the official AdaBLDM code
// does. Keys that are absent take DDIMScheduler's defaults (what DDIMScheduler.from_config(file) does); keys that
// only concern other samplers (skip_prk_steps, variance_type, use_karras_sigmas, ...) are ignored; options that
// would change the result and are not implemented (trained_betas, thresholding) are errors naming the option.
//
// Precision: every number is computed the way torch 1.13 computes it on the CPU, so results match diffusers
// exactly rather than approximately:
//  * torch.linspace(float32) is reproduced with the rounding of its AVX2 kernel (8-lane vectors from both ends,
//    multiply-adds fused), and torch.cumprod accumulates float32 inputs in double on the CPU;
//  * each tensor op of DDIMScheduler.step is one float32 rounding here, in the same order. Fusing a product and
//    a sum into one FMA would round once less, so contraction is switched off for this header's functions.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "adabldm/core/error.hpp"
#include "adabldm/core/rng.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/io/json.hpp"

// Keep products rounded to float32 before they are added (see above). GCC contracts across statements by default
// (-ffp-contract=fast), so its switch covers every function defined below; clang's default contracts only within
// one expression and is switched off per function by ADABLDM_NO_FP_CONTRACT (clang's -ffp-contract=fast ignores
// that pragma: results then differ from diffusers by a few float32 ulps).
#if defined(__GNUC__) && !defined(__clang__)
#if defined(__NVCC__)  // nvcc's front end does not know the pragma but hands it on to the host compiler (GCC)
#pragma nv_diag_suppress 1675
#endif
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#if defined(__NVCC__)
#pragma nv_diag_default 1675
#endif
#define ADABLDM_NO_FP_CONTRACT
#elif defined(__clang__)
#define ADABLDM_NO_FP_CONTRACT _Pragma("clang fp contract(off)")
#else
#define ADABLDM_NO_FP_CONTRACT
#endif

namespace adabldm::sampling {

/// How betas run over the training timesteps (diffusers `beta_schedule`).
enum class BetaSchedule {
  Linear,          // "linear": linspace(beta_start, beta_end)
  ScaledLinear,    // "scaled_linear": linspace(sqrt(beta_start), sqrt(beta_end))^2 (Stable Diffusion)
  SquaredCosCapV2  // "squaredcos_cap_v2": the cosine schedule of Nichol & Dhariwal, betas capped at 0.999
};
/// What the denoiser predicts (diffusers `prediction_type`).
enum class PredictionType {
  Epsilon,      // "epsilon": the added noise (SD 1.x)
  VPrediction,  // "v_prediction": v = sqrt(a) * noise - sqrt(1 - a) * x0 (SD 2.x 768)
  Sample        // "sample": x0 itself
};
/// How set_timesteps(n) picks n of the training timesteps (diffusers `timestep_spacing`).
enum class TimestepSpacing { Leading, Trailing, Linspace };

/// A diffusers scheduler config. The defaults are DDIMScheduler's.
struct SchedulerConfig {
  std::string class_name;  // `_class_name` of the file, for information only
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  BetaSchedule beta_schedule = BetaSchedule::Linear;
  bool clip_sample = true;  // clamp the predicted x0 to [-clip_sample_range, clip_sample_range]
  double clip_sample_range = 1.0;
  bool set_alpha_to_one = true;  // alpha_cumprod before timestep 0: 1, else alphas_cumprod[0]
  int64_t steps_offset = 0;      // added to 'leading' timesteps only
  PredictionType prediction_type = PredictionType::Epsilon;
  TimestepSpacing timestep_spacing = TimestepSpacing::Leading;
  bool rescale_betas_zero_snr = false;  // Lin et al. 2023: shift the schedule so the last timestep is pure noise

  /// Reads a scheduler_config.json; `c.where` names the file in errors.
  static SchedulerConfig from_json(const io::Config& c) {
    SchedulerConfig s;
    s.class_name = c.get<std::string>("_class_name", "");
    s.num_train_timesteps = c.get<int64_t>("num_train_timesteps", s.num_train_timesteps);
    s.beta_start = c.get<double>("beta_start", s.beta_start);
    s.beta_end = c.get<double>("beta_end", s.beta_end);
    s.beta_schedule = parse_beta_schedule(c.get<std::string>("beta_schedule", "linear"), c.where);
    check<FormatError>(!c.has("trained_betas"), c.where,
                       ": option \"trained_betas\" (an explicit beta list) is not supported; the schedule must come "
                       "from beta_start, beta_end and beta_schedule");
    s.clip_sample = c.get<bool>("clip_sample", s.clip_sample);
    s.clip_sample_range = c.get<double>("clip_sample_range", s.clip_sample_range);
    s.set_alpha_to_one = c.get<bool>("set_alpha_to_one", s.set_alpha_to_one);
    s.steps_offset = c.get<int64_t>("steps_offset", s.steps_offset);
    if (c.has("prediction_type"))
      s.prediction_type = parse_prediction_type(c.get<std::string>("prediction_type", ""), c.where);
    else if (c.has("predict_epsilon"))  // the pre-0.10 spelling
      s.prediction_type = c.get<bool>("predict_epsilon", true) ? PredictionType::Epsilon : PredictionType::Sample;
    s.timestep_spacing = parse_timestep_spacing(c.get<std::string>("timestep_spacing", "leading"), c.where);
    c.expect_default("thresholding", false);
    s.rescale_betas_zero_snr = c.get<bool>("rescale_betas_zero_snr", s.rescale_betas_zero_snr);
    s.validate(c.where);
    return s;
  }

  /// Throws a FormatError naming `where` and the option for values no schedule can use.
  void validate(const std::string& where) const {
    // The schedule holds a table per training step: bounded, so a config cannot ask for gigabytes (SD: 1000).
    check<FormatError>(num_train_timesteps >= 1 && num_train_timesteps <= 100000, where,
                       ": \"num_train_timesteps\" must be in [1, 100000], got ", num_train_timesteps);
    if (beta_schedule != BetaSchedule::SquaredCosCapV2) {
      check<FormatError>(beta_start >= 0 && beta_start < 1, where, ": \"beta_start\" must be in [0, 1), got ",
                         beta_start);
      check<FormatError>(beta_end >= 0 && beta_end < 1, where, ": \"beta_end\" must be in [0, 1), got ", beta_end);
    }
    check<FormatError>(!clip_sample || clip_sample_range > 0, where, ": \"clip_sample_range\" must be > 0, got ",
                       clip_sample_range);
    check<FormatError>(steps_offset >= 0, where, ": \"steps_offset\" must be >= 0, got ", steps_offset);
  }

  static BetaSchedule parse_beta_schedule(const std::string& v, const std::string& where) {
    if (v == "linear") return BetaSchedule::Linear;
    if (v == "scaled_linear") return BetaSchedule::ScaledLinear;
    if (v == "squaredcos_cap_v2") return BetaSchedule::SquaredCosCapV2;
    throw FormatError(where + ": option \"beta_schedule\" = \"" + v +
                      "\" is not supported (only \"linear\", \"scaled_linear\", \"squaredcos_cap_v2\")");
  }
  static PredictionType parse_prediction_type(const std::string& v, const std::string& where) {
    if (v == "epsilon") return PredictionType::Epsilon;
    if (v == "v_prediction") return PredictionType::VPrediction;
    if (v == "sample") return PredictionType::Sample;
    throw FormatError(where + ": option \"prediction_type\" = \"" + v +
                      "\" is not supported (only \"epsilon\", \"v_prediction\", \"sample\")");
  }
  static TimestepSpacing parse_timestep_spacing(const std::string& v, const std::string& where) {
    if (v == "leading") return TimestepSpacing::Leading;
    if (v == "trailing") return TimestepSpacing::Trailing;
    if (v == "linspace") return TimestepSpacing::Linspace;
    throw FormatError(where + ": option \"timestep_spacing\" = \"" + v +
                      "\" is not supported (only \"leading\", \"trailing\", \"linspace\")");
  }
};

namespace detail {

/// torch.linspace(start, end, n, dtype=torch.float32) as torch 1.13's CPU kernel computes it, so that the betas
/// match bit for bit. The kernel works from both ends (index i < n/2: start + i*step, else end - (n-1-i)*step,
/// step = (end - start) / (n - 1) in float) and, on AVX2, fills 8-lane vectors two at a time: each vector takes
/// the value at its first index from that rule and adds j*step per lane; the < 16 left-over values use the rule
/// directly. That build fuses every multiply-add, hence the explicit fma. (Checked against torch's output for
/// SD's schedule; the plain two-ended rule without fma differs from it in 626 of 1000 alphas_cumprod.)
inline std::vector<float> torch_linspace_f32(double start, double end, int64_t n) {
  ADABLDM_NO_FP_CONTRACT
  std::vector<float> out(static_cast<std::size_t>(n));
  if (n <= 0) return out;
  const float lo = static_cast<float>(start), hi = static_cast<float>(end);
  if (n == 1) {
    out[0] = lo;
    return out;
  }
  const float step = (hi - lo) / static_cast<float>(n - 1);
  const int64_t halfway = n / 2;
  const auto from_nearer_end = [&](int64_t i) {
    return i < halfway ? std::fma(step, static_cast<float>(i), lo)
                       : std::fma(-step, static_cast<float>(n - 1 - i), hi);
  };
  constexpr int64_t kLanes = 8;                                    // Vectorized<float>::size() on AVX2
  const int64_t in_vector_pairs = n / (2 * kLanes) * (2 * kLanes);  // the loop takes two vectors per turn
  int64_t i = 0;
  for (; i < in_vector_pairs; i += kLanes) {
    const float base = from_nearer_end(i);
    out[static_cast<std::size_t>(i)] = base;
    for (int64_t j = 1; j < kLanes; ++j)
      out[static_cast<std::size_t>(i + j)] = std::fma(static_cast<float>(j), step, base);
  }
  for (; i < n; ++i) out[static_cast<std::size_t>(i)] = from_nearer_end(i);
  return out;
}

/// torch.cumprod of a float32 tensor on the CPU: the running product is kept in double, each output rounded.
inline std::vector<float> torch_cumprod_f32(const std::vector<float>& x) {
  std::vector<float> out(x.size());
  double running = 1.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    running *= static_cast<double>(x[i]);
    out[i] = static_cast<float>(running);
  }
  return out;
}

/// 1 - x elementwise in float32 (the `1.0 - betas` of diffusers).
inline std::vector<float> one_minus(const std::vector<float>& x) {
  std::vector<float> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = 1.0f - x[i];
  return out;
}

/// diffusers' betas_for_alpha_bar (cosine): computed in double like the Python original, then stored as float32.
inline std::vector<float> cosine_betas(int64_t n, double max_beta = 0.999) {
  ADABLDM_NO_FP_CONTRACT
  const auto alpha_bar = [](double t) { return std::pow(std::cos((t + 0.008) / 1.008 * M_PI / 2), 2.0); };
  std::vector<float> betas(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const double t1 = static_cast<double>(i) / static_cast<double>(n);
    const double t2 = static_cast<double>(i + 1) / static_cast<double>(n);
    betas[static_cast<std::size_t>(i)] = static_cast<float>(std::min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta));
  }
  return betas;
}

/// diffusers' rescale_zero_terminal_snr, op for op in float32: shifts sqrt(alphas_cumprod) so the last timestep
/// has zero signal and scales it so the first keeps its value, then converts back to betas.
inline std::vector<float> rescale_zero_terminal_snr(const std::vector<float>& betas) {
  ADABLDM_NO_FP_CONTRACT
  std::vector<float> sqrt_bar = torch_cumprod_f32(one_minus(betas));
  for (float& v : sqrt_bar) v = std::sqrt(v);
  const float first = sqrt_bar.front(), last = sqrt_bar.back();
  const float scale = first / (first - last);
  for (float& v : sqrt_bar) v = (v - last) * scale;
  std::vector<float> bar(sqrt_bar.size()), alphas(sqrt_bar.size());
  for (std::size_t i = 0; i < bar.size(); ++i) bar[i] = sqrt_bar[i] * sqrt_bar[i];
  for (std::size_t i = 0; i < bar.size(); ++i) alphas[i] = i == 0 ? bar[0] : bar[i] / bar[i - 1];
  return one_minus(alphas);
}

inline std::vector<float> make_betas(const SchedulerConfig& c) {
  ADABLDM_NO_FP_CONTRACT
  std::vector<float> betas;
  switch (c.beta_schedule) {
    case BetaSchedule::Linear:
      betas = torch_linspace_f32(c.beta_start, c.beta_end, c.num_train_timesteps);
      break;
    case BetaSchedule::ScaledLinear:
      betas = torch_linspace_f32(std::pow(c.beta_start, 0.5), std::pow(c.beta_end, 0.5), c.num_train_timesteps);
      for (float& b : betas) b = b * b;
      break;
    case BetaSchedule::SquaredCosCapV2:
      betas = cosine_betas(c.num_train_timesteps);
      break;
  }
  return c.rescale_betas_zero_snr ? rescale_zero_terminal_snr(betas) : betas;
}

/// out = a * x + b * y in float32, each product rounded (two torch ops and a sum).
inline void weighted_sum(float a, const float* x, float b, const float* y, float* out, int64_t n) {
  ADABLDM_NO_FP_CONTRACT
  for (int64_t i = 0; i < n; ++i) out[i] = a * x[i] + b * y[i];
}

inline void expect_same_shape(const Tensor<float>& a, const Tensor<float>& b, const char* what, const char* a_name,
                              const char* b_name) {
  check<ShapeError>(a.shape() == b.shape(), what, ": ", a_name, " ", a.shape().str(), " and ", b_name, " ",
                    b.shape().str(), " differ");
}

}  // namespace detail

/// What DDIMScheduler::step returns.
struct DDIMStepOutput {
  Tensor<float> prev_sample;           // x_{t_prev}, the next model input
  Tensor<float> pred_original_sample;  // the predicted x0 (clipped when clip_sample is on)
};

/// q(x_t | x_0) at an explicit noise level: sqrt(alpha_cumprod) * x0 + sqrt(1 - alpha_cumprod) * noise in float32.
/// The AdaBLDM sampler re-noises the background to the level of the current step this way.
inline Tensor<float> add_noise(const Tensor<float>& x0, const Tensor<float>& noise, float alpha_cumprod) {
  ADABLDM_NO_FP_CONTRACT
  check(alpha_cumprod >= 0.0f && alpha_cumprod <= 1.0f, "add_noise: alpha_cumprod must be in [0, 1], got ",
        alpha_cumprod);
  detail::expect_same_shape(x0, noise, "add_noise", "x0", "noise");
  const Tensor<float> x = x0.contiguous(), e = noise.contiguous();
  auto out = Tensor<float>::empty(x0.shape());
  detail::weighted_sum(std::sqrt(alpha_cumprod), x.data(), std::sqrt(1.0f - alpha_cumprod), e.data(), out.data(),
                       out.numel());
  return out;
}

/// DDIM (Song et al. 2021) over a diffusers noise schedule; see the top of this file for which configs it takes
/// and how exactly it matches diffusers.
class DDIMScheduler {
 public:
  explicit DDIMScheduler(const SchedulerConfig& config = {}) : config_(config) {
    config_.validate("SchedulerConfig");
    betas_ = detail::make_betas(config_);
    alphas_cumprod_ = detail::torch_cumprod_f32(detail::one_minus(betas_));
    final_alpha_cumprod_ = config_.set_alpha_to_one ? 1.0f : alphas_cumprod_.front();
    timesteps_.resize(static_cast<std::size_t>(config_.num_train_timesteps));
    for (std::size_t i = 0; i < timesteps_.size(); ++i)  // before set_timesteps: every training step, descending
      timesteps_[i] = config_.num_train_timesteps - 1 - static_cast<int64_t>(i);
  }

  const SchedulerConfig& config() const noexcept { return config_; }
  const std::vector<float>& betas() const noexcept { return betas_; }
  /// alphas_cumprod[t] for every training timestep t (float32, as diffusers holds them).
  const std::vector<float>& alphas_cumprod() const noexcept { return alphas_cumprod_; }
  /// The alpha_cumprod "before" timestep 0, used when a step lands below 0.
  float final_alpha_cumprod() const noexcept { return final_alpha_cumprod_; }
  /// alphas_cumprod[t] for 0 <= t < num_train_timesteps, final_alpha_cumprod() for t < 0.
  float alpha_cumprod(int64_t t) const {
    if (t < 0) return final_alpha_cumprod_;
    check(t < config_.num_train_timesteps, "DDIMScheduler: timestep ", t, " out of range [0, ",
          config_.num_train_timesteps, ")");
    return alphas_cumprod_[static_cast<std::size_t>(t)];
  }
  /// The standard deviation of the initial latent (DDIM starts from unit Gaussian noise).
  static constexpr float init_noise_sigma() noexcept { return 1.0f; }

  /// Chooses `n` timesteps (descending), as DDIMScheduler.set_timesteps with the config's timestep_spacing:
  ///  leading:  arange(0, n) * (N // n), reversed, + steps_offset     (N = num_train_timesteps)
  ///  trailing: round(arange(N, 0, -N / n)) - 1, numpy float64 arithmetic, round half to even
  ///  linspace: round(linspace(0, N - 1, n)) reversed, numpy float64 arithmetic, round half to even
  /// For 'trailing' numpy's arange yields one spurious extra value (about 0, i.e. timestep -1) for some n
  /// (61, 103, 121, ... with N = 1000); diffusers keeps it, here the list always has exactly n entries.
  void set_timesteps(int64_t n) {
    ADABLDM_NO_FP_CONTRACT
    const int64_t N = config_.num_train_timesteps;
    check(n >= 1 && n <= N, "DDIMScheduler::set_timesteps: the number of inference steps must be in [1, ", N,
          "] (num_train_timesteps), got ", n);
    std::vector<int64_t> ts(static_cast<std::size_t>(n));
    switch (config_.timestep_spacing) {
      case TimestepSpacing::Leading:
        for (int64_t i = 0; i < n; ++i) ts[static_cast<std::size_t>(i)] = (n - 1 - i) * (N / n) + config_.steps_offset;
        break;
      case TimestepSpacing::Trailing: {
        // numpy.arange(start, stop, step) for floats: v0 = start, v1 = start + step, v_i = start + i * (v1 - v0).
        const double start = static_cast<double>(N), second = start + -(start / static_cast<double>(n));
        const double delta = second - start;
        for (int64_t i = 0; i < n; ++i) {
          const double v = i == 0 ? start : i == 1 ? second : start + static_cast<double>(i) * delta;
          ts[static_cast<std::size_t>(i)] = static_cast<int64_t>(std::nearbyint(v)) - 1;
        }
        break;
      }
      case TimestepSpacing::Linspace: {
        // numpy.linspace(0, N - 1, n): i * ((N - 1) / (n - 1)), the last value exactly N - 1.
        const double step = n > 1 ? static_cast<double>(N - 1) / static_cast<double>(n - 1) : 0.0;
        for (int64_t i = 0; i < n; ++i) {
          const double v = n > 1 && i == n - 1 ? static_cast<double>(N - 1) : static_cast<double>(i) * step;
          ts[static_cast<std::size_t>(n - 1 - i)] = static_cast<int64_t>(std::nearbyint(v));
        }
        break;
      }
    }
    for (int64_t t : ts)
      check(t >= 0 && t < N, "DDIMScheduler::set_timesteps(", n, "): timestep ", t, " falls outside [0, ", N,
            ") (steps_offset = ", config_.steps_offset, ")");
    timesteps_ = std::move(ts);
    num_inference_steps_ = n;
  }
  /// The timesteps of the sampling run, descending (all training steps before set_timesteps).
  const std::vector<int64_t>& timesteps() const noexcept { return timesteps_; }
  /// 0 until set_timesteps is called.
  int64_t num_inference_steps() const noexcept { return num_inference_steps_; }
  /// The timestep a step from t lands on: t - N // n, as diffusers computes it for every timestep_spacing (for
  /// 'trailing' with n not dividing N this is not always the next entry of timesteps()).
  int64_t prev_timestep(int64_t t) const {
    check(num_inference_steps_ > 0, "DDIMScheduler: call set_timesteps before stepping");
    return t - config_.num_train_timesteps / num_inference_steps_;
  }

  /// DDIM needs no input scaling; kept so samplers can treat schedulers alike. Returns `sample` itself.
  Tensor<float> scale_model_input(const Tensor<float>& sample, int64_t /*t*/ = 0) const { return sample; }

  /// One DDIM step from timestep t (DDIMScheduler.step with use_clipped_model_output=False, eq. 12 of the paper):
  ///   x0 from the model output (per prediction_type), clipped if clip_sample;
  ///   sigma = eta * sqrt((1 - a_prev) / (1 - a)) * sqrt(1 - a / a_prev);
  ///   prev = sqrt(a_prev) * x0 + sqrt(1 - a_prev - sigma^2) * eps + sigma * noise.
  /// With eta > 0 the noise is `variance_noise` when given (rng is then left untouched), else drawn from `rng`.
  DDIMStepOutput step(const Tensor<float>& model_output, int64_t t, const Tensor<float>& sample, double eta = 0.0,
                      const Tensor<float>* variance_noise = nullptr, Rng* rng = nullptr) const {
    ADABLDM_NO_FP_CONTRACT
    detail::expect_same_shape(model_output, sample, "DDIMScheduler::step", "model_output", "sample");
    check(eta >= 0.0, "DDIMScheduler::step: eta must be >= 0, got ", eta);
    check(t >= 0, "DDIMScheduler::step: timestep ", t, " is negative");
    const int64_t t_prev = prev_timestep(t);
    const float a = alpha_cumprod(t), a_prev = alpha_cumprod(t_prev);
    const float b = 1.0f - a, b_prev = 1.0f - a_prev;  // beta_prod_t, beta_prod_t_prev
    const float sqrt_a = std::sqrt(a), sqrt_b = std::sqrt(b), sqrt_a_prev = std::sqrt(a_prev);
    const float variance = (b_prev / b) * (1.0f - a / a_prev);
    const float sigma = static_cast<float>(eta) * std::sqrt(variance);
    const float direction_scale = std::sqrt(b_prev - sigma * sigma);
    const float clip = static_cast<float>(config_.clip_sample_range);

    Tensor<float> noise;
    if (eta > 0.0) {
      if (variance_noise) {
        detail::expect_same_shape(*variance_noise, model_output, "DDIMScheduler::step", "variance_noise",
                                  "model_output");
        noise = variance_noise->contiguous();
      } else {
        check(rng != nullptr, "DDIMScheduler::step: eta = ", eta, " > 0 needs variance_noise or an Rng");
        noise = rng->normal<float>(model_output.shape());
      }
    }

    const Tensor<float> m = model_output.contiguous(), x = sample.contiguous();
    DDIMStepOutput out{Tensor<float>::empty(x.shape()), Tensor<float>::empty(x.shape())};
    const float *pm = m.data(), *px = x.data(), *pn = noise.defined() ? noise.data() : nullptr;
    float *prev = out.prev_sample.data(), *x0_out = out.pred_original_sample.data();
    const PredictionType kind = config_.prediction_type;
    const bool clip_sample = config_.clip_sample;
    for (int64_t i = 0, n = x.numel(); i < n; ++i) {
      float x0 = 0.0f, eps = 0.0f;
      switch (kind) {
        case PredictionType::Epsilon:
          x0 = (px[i] - sqrt_b * pm[i]) / sqrt_a;
          eps = pm[i];
          break;
        case PredictionType::VPrediction:
          x0 = sqrt_a * px[i] - sqrt_b * pm[i];
          eps = sqrt_a * pm[i] + sqrt_b * px[i];
          break;
        case PredictionType::Sample:
          x0 = pm[i];
          eps = (px[i] - sqrt_a * x0) / sqrt_b;  // from the unclipped x0, as diffusers
          break;
      }
      if (clip_sample) x0 = std::min(std::max(x0, -clip), clip);
      float p = sqrt_a_prev * x0 + direction_scale * eps;
      if (pn) p = p + sigma * pn[i];
      prev[i] = p;
      x0_out[i] = x0;
    }
    return out;
  }

  /// q(x_t | x_0) for training timesteps, one per batch item (or one for all): DDPMScheduler.add_noise,
  /// sqrt(alphas_cumprod[t]) * x0 + sqrt(1 - alphas_cumprod[t]) * noise in float32.
  Tensor<float> add_noise(const Tensor<float>& x0, const Tensor<float>& noise,
                          const std::vector<int64_t>& timesteps) const {
    return per_batch_item(x0, noise, timesteps, "add_noise", /*velocity=*/false);
  }
  Tensor<float> add_noise(const Tensor<float>& x0, const Tensor<float>& noise, int64_t t) const {
    return add_noise(x0, noise, std::vector<int64_t>{t});
  }
  /// The v-prediction training target (DDPMScheduler.get_velocity): sqrt(a) * noise - sqrt(1 - a) * x0.
  Tensor<float> velocity(const Tensor<float>& x0, const Tensor<float>& noise,
                         const std::vector<int64_t>& timesteps) const {
    return per_batch_item(x0, noise, timesteps, "velocity", /*velocity=*/true);
  }
  Tensor<float> velocity(const Tensor<float>& x0, const Tensor<float>& noise, int64_t t) const {
    return velocity(x0, noise, std::vector<int64_t>{t});
  }

 private:
  Tensor<float> per_batch_item(const Tensor<float>& x0, const Tensor<float>& noise,
                               const std::vector<int64_t>& timesteps, const char* what, bool velocity) const {
    ADABLDM_NO_FP_CONTRACT
    detail::expect_same_shape(x0, noise, what, "x0", "noise");
    check<ShapeError>(x0.rank() >= 1, what, ": x0 must have a batch dimension, got shape ", x0.shape().str());
    const int64_t batch = x0.dim(0);
    check<ShapeError>(static_cast<int64_t>(timesteps.size()) == batch || timesteps.size() == 1, what, ": ",
                      timesteps.size(), " timesteps for a batch of ", batch);
    const Tensor<float> x = x0.contiguous(), e = noise.contiguous();
    auto out = Tensor<float>::empty(x0.shape());
    const int64_t per_item = batch ? x.numel() / batch : 0;
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t t = timesteps[timesteps.size() == 1 ? 0 : static_cast<std::size_t>(b)];
      check(t >= 0 && t < config_.num_train_timesteps, what, ": timestep ", t, " out of range [0, ",
            config_.num_train_timesteps, ")");
      const float a = alphas_cumprod_[static_cast<std::size_t>(t)];
      const float sqrt_a = std::sqrt(a), sqrt_one_minus_a = std::sqrt(1.0f - a);
      const int64_t at = b * per_item;
      if (velocity)
        detail::weighted_sum(sqrt_a, e.data() + at, -sqrt_one_minus_a, x.data() + at, out.data() + at, per_item);
      else
        detail::weighted_sum(sqrt_a, x.data() + at, sqrt_one_minus_a, e.data() + at, out.data() + at, per_item);
    }
    return out;
  }

  SchedulerConfig config_;
  std::vector<float> betas_, alphas_cumprod_;
  float final_alpha_cumprod_ = 1.0f;
  std::vector<int64_t> timesteps_;
  int64_t num_inference_steps_ = 0;
};

}  // namespace adabldm::sampling

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
#undef ADABLDM_NO_FP_CONTRACT
