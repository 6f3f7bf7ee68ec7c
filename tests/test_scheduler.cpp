// DDIMScheduler against diffusers 0.27.2 (tests/data/ddim: SD's DDIM config, epsilon, 'leading'), and the variants
// the golden case does not cover (v_prediction, sample, trailing, linspace, eta > 0, clip_sample, other schedules)
// against closed forms derived by hand.
#include "golden.hpp"

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "adabldm/core/rng.hpp"
#include "adabldm/io/safetensors.hpp"
#include "adabldm/sampling/scheduler.hpp"

using namespace adabldm;
using namespace adabldm::sampling;

namespace {

io::SafeTensors golden_io() { return io::SafeTensors::open(golden::path("ddim/io.safetensors")); }
SchedulerConfig golden_config() { return SchedulerConfig::from_json(golden::config("ddim/config.json")); }
SchedulerConfig ddpm_config() {
  const auto variants = golden::config("ddim/variant_configs.json");
  return SchedulerConfig::from_json({variants.json.at("ddpm"), "ddim/variant_configs.json[ddpm]"});
}
SchedulerConfig config_from(const io::Json& j) { return SchedulerConfig::from_json({j, "test config"}); }

/// Number of elements whose float bits differ.
std::size_t bit_mismatches(const std::vector<float>& a, const std::vector<float>& b) {
  std::size_t n = a.size() == b.size() ? 0 : std::max(a.size(), b.size());
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) n += bit_cast<uint32_t>(a[i]) != bit_cast<uint32_t>(b[i]);
  return n;
}

/// The golden comparison (printed) plus a tighter bound, 1e-6 relative, and a note whether it is bit-exact.
void check_golden(const std::string& what, const Tensor<float>& ours, const Tensor<float>& ref) {
  const auto c = golden::compare(what, ours, ref);
  const std::size_t differ = bit_mismatches(ours.to_vector(), ref.to_vector());
  std::printf("[golden] %-55s bit-exact: %s\n", what.c_str(),
              differ == 0 ? "yes" : (std::to_string(differ) + " elements differ").c_str());
  CHECK_MESSAGE(c.ok(), what);
  CHECK_MESSAGE(c.max_abs_err <= 1e-6 * std::max(1.0, c.max_abs_ref), what);
}

Tensor<float> as_tensor(const std::vector<float>& v) {
  return Tensor<float>::from_vector(v, Shape{static_cast<int64_t>(v.size())});
}

double max_abs_diff(const Tensor<float>& a, const std::vector<double>& b) {
  const auto av = a.to_vector();
  REQUIRE(av.size() == b.size());
  double m = 0;
  for (std::size_t i = 0; i < av.size(); ++i) m = worse(m, std::abs(double(av[i]) - b[i]));
  return m;
}

}  // namespace

// ---- golden ------------------------------------------------------------------------------------------------------

TEST_CASE("DDIM golden: alphas_cumprod and final_alpha_cumprod are bit-exact") {
  const auto io = golden_io();
  const DDIMScheduler s(golden_config());
  CHECK(s.config().class_name == "DDIMScheduler");
  check_golden("ddim eps.alphas_cumprod", as_tensor(s.alphas_cumprod()), io.get<float>("eps.alphas_cumprod"));
  CHECK(bit_mismatches(s.alphas_cumprod(), io.get<float>("eps.alphas_cumprod").to_vector()) == 0);
  check_golden("ddim eps.final_alpha_cumprod", as_tensor({s.final_alpha_cumprod()}),
               io.get<float>("eps.final_alpha_cumprod"));
  CHECK(s.final_alpha_cumprod() == s.alphas_cumprod()[0]);  // set_alpha_to_one = false

  const DDIMScheduler ddpm(ddpm_config());
  CHECK(ddpm.config().class_name == "DDPMScheduler");
  check_golden("ddim ddpm.alphas_cumprod", as_tensor(ddpm.alphas_cumprod()), io.get<float>("ddpm.alphas_cumprod"));
  CHECK(bit_mismatches(ddpm.alphas_cumprod(), io.get<float>("ddpm.alphas_cumprod").to_vector()) == 0);
}

TEST_CASE("DDIM golden: 'leading' timesteps for 50, 30 and 5 steps") {
  const auto io = golden_io();
  DDIMScheduler s(golden_config());
  for (int n : {50, 30, 5}) {
    CAPTURE(n);
    s.set_timesteps(n);
    CHECK(s.num_inference_steps() == n);
    CHECK(s.timesteps() == io.get<int64_t>("eps.timesteps_" + std::to_string(n)).to_vector());
  }
}

TEST_CASE("DDIM golden: single steps at timesteps[0, 1, 10, 25, 48, 49] of 50") {
  const auto io = golden_io();
  DDIMScheduler s(golden_config());
  s.set_timesteps(50);
  const auto ref_timesteps = io.get<int64_t>("eps.timesteps_50").to_vector();
  for (int i : {0, 1, 10, 25, 48, 49}) {
    char key[32];
    std::snprintf(key, sizeof key, "eps.step%02d.", i);
    const std::string p = key;
    const int64_t t = s.timesteps()[static_cast<std::size_t>(i)];
    CHECK(t == ref_timesteps[static_cast<std::size_t>(i)]);
    const auto r = s.step(io.get<float>(p + "model_output"), t, io.get<float>(p + "sample"));
    check_golden("ddim " + p + "prev_sample", r.prev_sample, io.get<float>(p + "prev_sample"));
    check_golden("ddim " + p + "pred_original_sample", r.pred_original_sample,
                 io.get<float>(p + "pred_original_sample"));
  }
}

TEST_CASE("DDIM golden: a 5-step loop") {
  const auto io = golden_io();
  DDIMScheduler s(golden_config());
  s.set_timesteps(5);
  const auto outputs = io.get<float>("eps.loop.model_outputs"), samples = io.get<float>("eps.loop.samples");
  REQUIRE(outputs.dim(0) == 5);
  Tensor<float> x = io.get<float>("eps.loop.x_T");
  for (int64_t k = 0; k < 5; ++k) {
    x = s.step(outputs.slice(k, k + 1).reshape(x.shape()), s.timesteps()[static_cast<std::size_t>(k)], x).prev_sample;
    check_golden("ddim eps.loop.samples[" + std::to_string(k) + "]", x, samples.slice(k, k + 1).reshape(x.shape()));
  }
}

TEST_CASE("DDPM golden: add_noise with one timestep per batch item") {
  const auto io = golden_io();
  const DDIMScheduler ddpm(ddpm_config());
  const auto noisy = ddpm.add_noise(io.get<float>("ddpm.original_samples"), io.get<float>("ddpm.noise"),
                                    io.get<int64_t>("ddpm.timesteps").to_vector());
  check_golden("ddim ddpm.noisy_samples", noisy, io.get<float>("ddpm.noisy_samples"));
}

// ---- timestep spacings (hand-derived) -----------------------------------------------------------------------------
//
// numpy is not installed where these were derived; plain python3 floats are IEEE doubles, so numpy's float64
// results follow from mirroring its algorithms (N = 1000):
//   def arange(start, stop, step):            # numpy arange for floats (DOUBLE_fill)
//       n = math.ceil((stop - start) / step); v1 = start + step; d = v1 - start
//       return [start, v1] + [start + i * d for i in range(2, n)]
//   trailing(n) = [int(round(v)) - 1 for v in arange(1000.0, 0.0, -(1000 / n))]      # round(): half to even
//   def linspace(stop, num):                  # numpy linspace(0, stop, num), endpoint=True
//       if num == 1: return [0.0]
//       step = stop / (num - 1); y = [i * step for i in range(num)]; y[-1] = stop; return y
//   linspace_spacing(n) = [int(round(v)) for v in linspace(999.0, n)][::-1]
// e.g. linspace(999.0, 7) = [0.0, 166.5, 333.0, 499.5, 666.0, 832.5, 999.0] -> 166, 500, 832 (half to even);
// arange(1000.0, 0.0, -1000/7) = [1000.0, 857.142.., 714.285.., 571.428.., 428.571.., 285.714.., 142.857..].

TEST_CASE("'trailing' timesteps match numpy's round(arange(N, 0, -N/n)) - 1") {
  auto c = golden_config();
  c.timestep_spacing = TimestepSpacing::Trailing;
  DDIMScheduler s(c);
  const std::vector<std::pair<int, std::vector<int64_t>>> cases = {
      {1, {999}},
      {5, {999, 799, 599, 399, 199}},
      {7, {999, 856, 713, 570, 428, 285, 142}},
      {50, {999, 979, 959, 939, 919, 899, 879, 859, 839, 819, 799, 779, 759, 739, 719, 699, 679,
            659, 639, 619, 599, 579, 559, 539, 519, 499, 479, 459, 439, 419, 399, 379, 359, 339,
            319, 299, 279, 259, 239, 219, 199, 179, 159, 139, 119, 99,  79,  59,  39,  19}},
  };
  for (const auto& entry : cases) {
    const int n = entry.first;
    CAPTURE(n);
    s.set_timesteps(n);
    CHECK(s.timesteps() == entry.second);  // steps_offset (1) does not apply to 'trailing'
  }
  // n = 61: (0 - 1000) / -(1000/61) = 61.00000000000001, so numpy's arange has a 62nd value -5.7e-13 and diffusers
  // a timestep -1; we keep exactly n. python: trailing(61)[-4:] = [48, 32, 15, -1]
  s.set_timesteps(61);
  REQUIRE(s.timesteps().size() == 61);
  CHECK(std::vector<int64_t>(s.timesteps().end() - 3, s.timesteps().end()) == std::vector<int64_t>{48, 32, 15});
  CHECK(s.prev_timestep(999) == 999 - 1000 / 61);
}

TEST_CASE("'linspace' timesteps match numpy's round(linspace(0, N-1, n)) reversed") {
  auto c = golden_config();
  c.timestep_spacing = TimestepSpacing::Linspace;
  DDIMScheduler s(c);
  const std::vector<std::pair<int, std::vector<int64_t>>> cases = {
      {1, {0}},
      {5, {999, 749, 500, 250, 0}},
      {7, {999, 832, 666, 500, 333, 166, 0}},
      {50, {999, 979, 958, 938, 917, 897, 877, 856, 836, 816, 795, 775, 754, 734, 714, 693, 673,
            652, 632, 612, 591, 571, 550, 530, 510, 489, 469, 449, 428, 408, 387, 367, 347, 326,
            306, 285, 265, 245, 224, 204, 183, 163, 143, 122, 102, 82,  61,  41,  20,  0}},
  };
  for (const auto& entry : cases) {
    const int n = entry.first;
    CAPTURE(n);
    s.set_timesteps(n);
    CHECK(s.timesteps() == entry.second);
  }
}

TEST_CASE("'leading' timesteps: arange(n) * (N // n) reversed + steps_offset") {
  DDIMScheduler s(golden_config());
  s.set_timesteps(7);  // 1000 // 7 = 142: 6*142 + 1 = 853, ...
  CHECK(s.timesteps() == std::vector<int64_t>{853, 711, 569, 427, 285, 143, 1});
  CHECK(s.prev_timestep(853) == 711);
  s.set_timesteps(1);
  CHECK(s.timesteps() == std::vector<int64_t>{1});
}

// ---- step variants (closed forms) ----------------------------------------------------------------------------------

TEST_CASE("v_prediction and sample prediction reproduce the epsilon step") {
  // With x_t = sqrt(a) x0 + sqrt(1-a) eps and v = sqrt(a) eps - sqrt(1-a) x0 (both exact identities), a
  // v-prediction model that outputs v, and a sample-prediction model that outputs x0, must take the same step as an
  // epsilon model that outputs eps (up to float32 rounding).
  auto base = golden_config();
  DDIMScheduler eps_s(base);
  base.prediction_type = PredictionType::VPrediction;
  DDIMScheduler v_s(base);
  base.prediction_type = PredictionType::Sample;
  DDIMScheduler x0_s(base);
  Rng rng(11);
  const auto x0 = rng.normal({2, 4, 8, 8}), eps = rng.normal({2, 4, 8, 8});
  for (auto* s : {&eps_s, &v_s, &x0_s}) s->set_timesteps(50);
  for (int64_t t : {981, 501, 21, 1}) {
    CAPTURE(t);
    const auto xt = eps_s.add_noise(x0, eps, t), v = eps_s.velocity(x0, eps, t);
    // velocity against its closed form in double
    const double a = eps_s.alpha_cumprod(t);
    std::vector<double> v_ref(static_cast<std::size_t>(v.numel()));
    for (std::size_t i = 0; i < v_ref.size(); ++i)
      v_ref[i] = std::sqrt(a) * eps.data()[i] - std::sqrt(1 - a) * x0.data()[i];
    CHECK(max_abs_diff(v, v_ref) < 1e-6);

    const auto by_eps = eps_s.step(eps, t, xt), by_v = v_s.step(v, t, xt), by_x0 = x0_s.step(x0, t, xt);
    const auto x0_values = x0.to_vector();
    const std::vector<double> x0_ref(x0_values.begin(), x0_values.end());
    CHECK(max_abs_diff(by_eps.pred_original_sample, x0_ref) < 1e-4);  // 1/sqrt(a) amplifies rounding at t = 981
    CHECK(max_abs_diff(by_v.pred_original_sample, x0_ref) < 1e-6);
    CHECK(by_x0.pred_original_sample.to_vector() == x0.to_vector());
    // the step itself, against the closed form prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps
    const double a_prev = eps_s.alpha_cumprod(eps_s.prev_timestep(t));
    std::vector<double> prev_ref(x0_ref.size());
    for (std::size_t i = 0; i < prev_ref.size(); ++i)
      prev_ref[i] = std::sqrt(a_prev) * x0.data()[i] + std::sqrt(1 - a_prev) * eps.data()[i];
    CHECK(max_abs_diff(by_eps.prev_sample, prev_ref) < 2e-5);
    CHECK(max_abs_diff(by_v.prev_sample, prev_ref) < 2e-6);
    CHECK(max_abs_diff(by_x0.prev_sample, prev_ref) < 2e-5);  // eps recovered through 1/sqrt(1-a)
  }
}

TEST_CASE("eta > 0 adds sigma * noise; the noise comes from variance_noise, else from the Rng") {
  DDIMScheduler s(golden_config());
  s.set_timesteps(50);
  Rng rng(3);
  const auto x = rng.normal({1, 4, 8, 8}), model = rng.normal({1, 4, 8, 8}), noise = rng.normal({1, 4, 8, 8});
  for (double eta : {0.5, 1.0}) {
    for (int64_t t : {981, 501, 1}) {
      CAPTURE(eta);
      CAPTURE(t);
      const double a = s.alpha_cumprod(t), ap = s.alpha_cumprod(s.prev_timestep(t));
      const double sigma = eta * std::sqrt((1 - ap) / (1 - a)) * std::sqrt(1 - a / ap);
      std::vector<double> ref(static_cast<std::size_t>(x.numel()));
      for (std::size_t i = 0; i < ref.size(); ++i) {
        const double x0 = (x.data()[i] - std::sqrt(1 - a) * model.data()[i]) / std::sqrt(a);
        ref[i] = std::sqrt(ap) * x0 + std::sqrt(1 - ap - sigma * sigma) * model.data()[i] + sigma * noise.data()[i];
      }
      const auto r = s.step(model, t, x, eta, &noise);
      CHECK(max_abs_diff(r.prev_sample, ref) < 1e-5);
      // the deterministic part is the eta = 0 formula with a smaller direction term
      CHECK(r.pred_original_sample.to_vector() == s.step(model, t, x).pred_original_sample.to_vector());
    }
  }
  // noise from an Rng: the same draw as rng.normal(shape)
  Rng a(42), b(42);
  const auto drawn = b.normal(model.shape());
  CHECK(s.step(model, 501, x, 1.0, nullptr, &a).prev_sample.to_vector() ==
        s.step(model, 501, x, 1.0, &drawn).prev_sample.to_vector());
  CHECK(a.offset() == b.offset());
  // eta = 0 draws nothing; variance_noise takes precedence over the Rng
  const uint64_t before = a.offset();
  s.step(model, 501, x, 0.0, nullptr, &a);
  s.step(model, 501, x, 1.0, &drawn, &a);
  CHECK(a.offset() == before);
  CHECK_THROWS_WITH_AS(s.step(model, 501, x, 0.5), doctest::Contains("needs variance_noise or an Rng"), Error);
  const auto wrong = Tensor<float>::zeros({1, 4, 8, 4});
  CHECK_THROWS_AS(s.step(model, 501, x, 0.5, &wrong), ShapeError);
}

TEST_CASE("clip_sample clamps the predicted x0 (eps is not re-derived) and set_alpha_to_one ends on x0") {
  auto c = golden_config();
  c.clip_sample = true;
  c.clip_sample_range = 1.5;
  c.set_alpha_to_one = true;
  DDIMScheduler s(c);
  CHECK(s.final_alpha_cumprod() == 1.0f);
  s.set_timesteps(50);
  Rng rng(5);
  const auto x = rng.normal({1, 4, 8, 8}), model = rng.normal({1, 4, 8, 8});
  for (int64_t t : {981, 1}) {
    CAPTURE(t);
    const double a = s.alpha_cumprod(t), ap = s.alpha_cumprod(s.prev_timestep(t));
    std::vector<double> x0_ref(static_cast<std::size_t>(x.numel())), prev_ref(x0_ref.size());
    bool clipped = false;
    for (std::size_t i = 0; i < x0_ref.size(); ++i) {
      const double raw = (x.data()[i] - std::sqrt(1 - a) * model.data()[i]) / std::sqrt(a);
      x0_ref[i] = std::min(1.5, std::max(-1.5, raw));
      clipped |= x0_ref[i] != raw;
      prev_ref[i] = std::sqrt(ap) * x0_ref[i] + std::sqrt(1 - ap) * model.data()[i];
    }
    if (t == 981) CHECK(clipped);  // x0 at t = 981 is ~15x the noise: most of it is clipped
    const auto r = s.step(model, t, x);
    CHECK(max_abs_diff(r.pred_original_sample, x0_ref) < 1e-5);
    CHECK(max_abs_diff(r.prev_sample, prev_ref) < 1e-5);
    if (t == 1) CHECK(r.prev_sample.to_vector() == r.pred_original_sample.to_vector());  // a_prev = 1
  }
}

// ---- schedules ------------------------------------------------------------------------------------------------------

TEST_CASE("linear, squaredcos_cap_v2 and zero-terminal-SNR schedules") {
  SUBCASE("linear: betas run from beta_start to beta_end in equal steps") {
    const DDIMScheduler s;  // DDIMScheduler defaults: linear 1e-4 .. 0.02
    REQUIRE(s.betas().size() == 1000);
    CHECK(s.betas().front() == 0.0001f);
    CHECK(s.betas().back() == 0.02f);
    for (std::size_t i = 0; i < 1000; ++i) CHECK(std::abs(s.betas()[i] - (1e-4 + (0.02 - 1e-4) * i / 999.0)) < 5e-9);
    double prod = 1;
    for (std::size_t i = 0; i < 1000; ++i) {
      prod *= double(1.0f - s.betas()[i]);  // alphas are float32; the running product is double
      CHECK(std::abs(s.alphas_cumprod()[i] - prod) <= 1e-7 * prod + 1e-12);
    }
  }
  SUBCASE("squaredcos_cap_v2: alphas_cumprod[t] = f((t+1)/N) / f(0), f(u) = cos((u + 0.008) / 1.008 * pi/2)^2") {
    auto c = SchedulerConfig{};
    c.beta_schedule = BetaSchedule::SquaredCosCapV2;
    const DDIMScheduler s(c);
    const auto f = [](double u) { return std::pow(std::cos((u + 0.008) / 1.008 * M_PI / 2), 2); };
    for (int t = 0; t < 999; ++t) {  // the telescoping product; only the last beta hits the 0.999 cap
      CAPTURE(t);
      CHECK(std::abs(s.alphas_cumprod()[t] / (f((t + 1) / 1000.0) / f(0)) - 1) < 1e-4);
    }
    CHECK(s.betas().back() == 0.999f);
  }
  SUBCASE("rescale_betas_zero_snr: sqrt(alphas_cumprod) shifted to end at 0 and scaled to keep the start") {
    auto c = golden_config();
    const DDIMScheduler plain(c);
    c.rescale_betas_zero_snr = true;
    const DDIMScheduler s(c);
    CHECK(s.alphas_cumprod().back() == 0.0f);
    const double s0 = std::sqrt(double(plain.alphas_cumprod().front())), sT = std::sqrt(double(plain.alphas_cumprod().back()));
    for (std::size_t t = 0; t < 1000; ++t) {
      const double expected = (std::sqrt(double(plain.alphas_cumprod()[t])) - sT) * s0 / (s0 - sT);
      CHECK(std::abs(std::sqrt(double(s.alphas_cumprod()[t])) - expected) < 2e-6);
    }
  }
}

TEST_CASE("add_noise at an explicit alpha equals add_noise at the timestep with that alpha") {
  DDIMScheduler s(golden_config());
  Rng rng(9);
  const auto x0 = rng.normal({3, 4, 8, 8}), noise = rng.normal({3, 4, 8, 8});
  for (int64_t t : {0, 500, 999})
    CHECK(add_noise(x0, noise, s.alpha_cumprod(t)).to_vector() == s.add_noise(x0, noise, t).to_vector());
  // one timestep per batch item: item b uses its own alpha
  const auto mixed = s.add_noise(x0, noise, std::vector<int64_t>{0, 500, 999});
  CHECK(mixed.slice(1, 2).to_vector() == s.add_noise(x0.slice(1, 2), noise.slice(1, 2), 500).to_vector());
  CHECK(add_noise(x0, noise, 1.0f).to_vector() == x0.to_vector());
  CHECK(add_noise(x0, noise, 0.0f).to_vector() == noise.to_vector());
  CHECK_THROWS_WITH_AS(add_noise(x0, noise, 500.0f), doctest::Contains("alpha_cumprod must be in [0, 1]"), Error);
  CHECK_THROWS_AS(s.add_noise(x0, noise, std::vector<int64_t>{1, 2}), ShapeError);
  CHECK_THROWS_WITH_AS(s.add_noise(x0, noise, 1000), doctest::Contains("timestep 1000 out of range"), Error);
}

TEST_CASE("scale_model_input is the identity and the initial noise has unit sigma") {
  DDIMScheduler s(golden_config());
  const auto x = Tensor<float>::full({1, 4, 2, 2}, 3.0f);
  CHECK(s.scale_model_input(x, 981).data() == x.data());
  CHECK(DDIMScheduler::init_noise_sigma() == 1.0f);
}

// ---- configs ---------------------------------------------------------------------------------------------------

TEST_CASE("configs of other diffusers schedulers give the same schedule; missing keys take DDIM's defaults") {
  // Stable Diffusion 1.5's scheduler/scheduler_config.json
  const auto pndm = config_from(io::Json::parse(R"({"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0",
      "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
      "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null,
      "clip_sample": false})"));
  CHECK(pndm.class_name == "PNDMScheduler");
  CHECK(DDIMScheduler(pndm).alphas_cumprod() == DDIMScheduler(golden_config()).alphas_cumprod());
  CHECK(pndm.prediction_type == PredictionType::Epsilon);
  CHECK(pndm.timestep_spacing == TimestepSpacing::Leading);
  // an SD 2.x-style Euler config with v-prediction and trailing spacing
  const auto euler = config_from(io::Json::parse(R"({"_class_name": "EulerDiscreteScheduler", "beta_schedule":
      "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction",
      "timestep_spacing": "trailing", "use_karras_sigmas": false, "interpolation_type": "linear"})"));
  CHECK(euler.prediction_type == PredictionType::VPrediction);
  CHECK(euler.timestep_spacing == TimestepSpacing::Trailing);
  CHECK(euler.clip_sample);        // DDIMScheduler's default when the file has no clip_sample
  CHECK(euler.set_alpha_to_one);   // likewise
  CHECK(config_from(io::Json::parse(R"({"predict_epsilon": false})")).prediction_type == PredictionType::Sample);
  const auto defaults = config_from(io::Json::object());
  CHECK(defaults.beta_schedule == BetaSchedule::Linear);
  CHECK(defaults.num_train_timesteps == 1000);
}

TEST_CASE("unsupported or invalid options are errors that name the option") {
  const auto expect_error = [](const char* json, const char* needle) {
    CAPTURE(json);
    CHECK_THROWS_WITH_AS(config_from(io::Json::parse(json)), doctest::Contains(needle), FormatError);
  };
  expect_error(R"({"beta_schedule": "cosine"})", "\"beta_schedule\" = \"cosine\" is not supported");
  expect_error(R"({"prediction_type": "x0"})", "\"prediction_type\" = \"x0\" is not supported");
  expect_error(R"({"timestep_spacing": "karras"})", "\"timestep_spacing\" = \"karras\" is not supported");
  expect_error(R"({"thresholding": true})", "\"thresholding\"");
  expect_error(R"({"trained_betas": [0.1, 0.2]})", "\"trained_betas\"");
  expect_error(R"({"num_train_timesteps": 0})", "\"num_train_timesteps\"");
  expect_error(R"({"beta_end": 1.5})", "\"beta_end\"");
  expect_error(R"({"steps_offset": -1})", "\"steps_offset\"");
  expect_error(R"({"clip_sample": "yes"})", "\"clip_sample\" has the wrong type");
  CHECK_THROWS_WITH_AS(config_from(io::Json::parse(R"({"beta_schedule": "cosine"})")),
                       doctest::Contains("test config"), FormatError);  // and the file
}

TEST_CASE("misuse: bad step counts, stepping before set_timesteps, out-of-range timesteps, shape mismatch") {
  DDIMScheduler s(golden_config());
  const auto x = Tensor<float>::zeros({1, 4, 2, 2});
  CHECK(s.timesteps().size() == 1000);  // before set_timesteps: every training step, descending
  CHECK(s.timesteps().front() == 999);
  CHECK_THROWS_WITH_AS(s.step(x, 981, x), doctest::Contains("call set_timesteps"), Error);
  CHECK_THROWS_WITH_AS(s.set_timesteps(0), doctest::Contains("number of inference steps"), Error);
  CHECK_THROWS_WITH_AS(s.set_timesteps(1001), doctest::Contains("number of inference steps"), Error);
  CHECK_THROWS_WITH_AS(s.set_timesteps(1000), doctest::Contains("steps_offset"), Error);  // 999 + 1 = 1000
  s.set_timesteps(50);
  CHECK_THROWS_WITH_AS(s.step(x, 1000, x), doctest::Contains("timestep 1000 out of range"), Error);
  CHECK_THROWS_AS(s.step(x, 981, Tensor<float>::zeros({1, 4, 2, 3})), ShapeError);
  CHECK(s.alpha_cumprod(-19) == s.final_alpha_cumprod());
}
