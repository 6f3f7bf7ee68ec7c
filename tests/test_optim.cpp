// AdamW against torch.optim.AdamW (tests/data/adamw, scripts/gen_adamw_golden.py), exact resumption from a saved
// state, the MSE and LDM losses on known inputs, and a small regression whose loss falls by more than 10x.
#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>

#include "golden.hpp"

#include "adabldm/autograd/autograd.hpp"
#include "adabldm/defect/ldm_loss.hpp"
#include "adabldm/io/safetensors.hpp"
#include "adabldm/nn/layers.hpp"

using namespace adabldm;

namespace {
/// A two-layer perceptron (3 -> 32 -> SiLU -> 2).
struct Mlp {
  nn::Linear<float> l1{3, 32}, l2{32, 2};
  Tensor<float> operator()(const Tensor<float>& x) const { return l2(ops::silu(l1(x))); }
  template <class F>
  void visit(const std::string& p, F&& f) {
    l1.visit(p + "l1.", f);
    l2.visit(p + "l2.", f);
  }
};

/// The golden's two parameters as a module.
template <class T>
struct TwoParams {
  nn::Param<T> p1{Shape{3, 5}}, p2{Shape{7}};
  template <class F>
  void visit(const std::string& prefix, F&& f) {
    f(prefix + "p1", p1);
    f(prefix + "p2", p2);
  }
};

template <class T>
void set_grad(nn::Param<T>& p, const Tensor<T>& g) {
  autograd::accumulate_grad(*p.value.autograd_meta(), g.clone());
}

/// max |a - b| / max |b|.
template <class T>
double rel_err(const Tensor<T>& a, const Tensor<T>& b) {
  REQUIRE(a.shape() == b.shape());
  double e = 0, m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    e = worse(e, std::abs(double(a.data()[i]) - double(b.data()[i])));
    m = std::max(m, std::abs(double(b.data()[i])));
  }
  return e / m;
}

/// Runs the golden's five steps for one case in T; returns the worst relative error over every step's
/// parameters and the final moments.
template <class T>
double run_golden_case(const io::SafeTensors& g, const std::string& c, const autograd::AdamWOptions& o) {
  const std::string tag = std::is_same_v<T, float> ? "f32" : "f64";
  TwoParams<T> m;
  m.p1.value = g.get<T>("p1.init").clone();
  m.p2.value = g.get<T>("p2.init").clone();
  autograd::track(m);
  autograd::AdamW<T> opt(m, o);
  double worst = 0;
  for (int k = 0; k < 5; ++k) {
    opt.zero_grad();
    for (auto [name, p] : {std::pair<std::string, nn::Param<T>*>{"p1", &m.p1}, {"p2", &m.p2}}) {
      const std::string key = "grad." + name + "." + std::to_string(k);
      if (g.contains(key)) set_grad(*p, g.get<T>(key));
    }
    opt.step();
    worst = std::max(worst, rel_err(m.p1.value, g.get<T>(c + "." + tag + ".p1.step" + std::to_string(k + 1))));
    worst = std::max(worst, rel_err(m.p2.value, g.get<T>(c + "." + tag + ".p2.step" + std::to_string(k + 1))));
  }
  const auto sd = opt.state_dict();
  for (const char* name : {"p1", "p2"})
    for (const char* moment : {"exp_avg", "exp_avg_sq"})
      worst = std::max(worst, rel_err(sd.template get<T>(std::string(moment) + "." + name),
                                      g.get<T>(c + "." + tag + "." + moment + "." + name)));
  return worst;
}
}  // namespace

TEST_CASE("AdamW matches torch.optim.AdamW (custom and default hyper-parameters, a skipped gradient)") {
  const auto g = io::SafeTensors::open(golden::path("adamw/adamw.safetensors"));
  autograd::AdamWOptions custom;
  custom.lr = 0.01;
  custom.beta1 = 0.8;
  custom.beta2 = 0.95;
  custom.eps = 1e-6;
  custom.weight_decay = 0.1;
  const autograd::AdamWOptions defaults;
  CHECK(defaults.weight_decay == 0.01);
  for (const auto& [name, o] : {std::pair<std::string, autograd::AdamWOptions>{"custom", custom}, {"default", defaults}}) {
    const double e64 = run_golden_case<double>(g, name, o);
    const double e32 = run_golden_case<float>(g, name, o);
    std::printf("[golden] AdamW %-8s 5 steps: max rel err f64 %.2e, f32 %.2e\n", name.c_str(), e64, e32);
    CHECK(e64 < 1e-14);
    CHECK(e32 < 2e-7);  // about one float32 ulp; torch's kernels may fuse a multiply-add where ours do not
  }
}

TEST_CASE("AdamW state save/load resumes exactly") {
  Rng rng(3);
  auto fresh = [&] {
    TwoParams<float> m;
    Rng init(11);
    m.p1.value = init.normal<float>({3, 5});
    m.p2.value = init.normal<float>({7});
    autograd::track(m);
    return m;
  };
  std::vector<std::pair<Tensor<float>, Tensor<float>>> grads;
  for (int k = 0; k < 6; ++k) grads.emplace_back(rng.normal<float>({3, 5}), rng.normal<float>({7}));
  auto steps = [&](TwoParams<float>& m, autograd::AdamW<float>& opt, int from, int to) {
    for (int k = from; k < to; ++k) {
      opt.zero_grad();
      set_grad(m.p1, grads[k].first);
      if (k != 1) set_grad(m.p2, grads[k].second);  // p2 skips a step: per-parameter step counts
      opt.step();
    }
  };
  autograd::AdamWOptions o;
  o.lr = 0.05;
  auto straight = fresh();
  autograd::AdamW<float> opt_a(straight, o);
  steps(straight, opt_a, 0, 6);

  auto first = fresh();
  autograd::AdamW<float> opt_b(first, o);
  steps(first, opt_b, 0, 3);
  const auto path = (std::filesystem::temp_directory_path() / "adabldm_adamw_state.safetensors").string();
  opt_b.save(path);
  CHECK(opt_b.steps("p1") == 3);
  CHECK(opt_b.steps("p2") == 2);

  auto resumed = fresh();  // the parameters as they were at the save, then a new optimiser from the file
  resumed.p1.value = autograd::leaf(first.p1.value.clone());
  resumed.p2.value = autograd::leaf(first.p2.value.clone());
  autograd::AdamW<float> opt_c(resumed, o);
  opt_c.load(path);
  std::filesystem::remove(path);
  CHECK(opt_c.steps("p2") == 2);
  steps(resumed, opt_c, 3, 6);
  CHECK(straight.p1.value.to_vector() == resumed.p1.value.to_vector());
  CHECK(straight.p2.value.to_vector() == resumed.p2.value.to_vector());

  io::StateDict bad("bad state");
  bad.add("step.nope", Tensor<int64_t>::from_vector({1}, Shape{}));
  CHECK_THROWS_WITH_AS(opt_c.load_state_dict(bad), doctest::Contains("match no trainable parameter"), Error);
}

TEST_CASE("mse and masked_mse values") {
  const auto a = Tensor<float>::from_vector({1, 2, 3, 4}, {2, 2}), b = Tensor<float>::from_vector({1, 0, 0, 2}, {2, 2});
  const auto loss = autograd::mse(a, b);
  CHECK(loss.rank() == 0);
  CHECK(loss.data()[0] == doctest::Approx((0 + 4 + 9 + 4) / 4.0));
  const auto mask = Tensor<float>::from_vector({0, 1}, {1, 2});  // second column only, broadcast over rows
  CHECK(autograd::masked_mse(a, b, mask).data()[0] == doctest::Approx((4 + 4) / 2.0));
  CHECK_THROWS_AS(autograd::mse(a, Tensor<float>::zeros({4})), ShapeError);
  CHECK_THROWS_AS(autograd::masked_mse(a, b, Tensor<float>::zeros({1, 2})), Error);
}

TEST_CASE("LDM loss: t ~ U{0..N-1}, noise ~ N(0,1), z_t by the scheduler's add_noise, target by prediction type") {
  sampling::DDIMScheduler sched;  // 1000 training steps
  Rng data(1);
  const auto x0 = data.normal<float>({3, 4, 5, 5});
  Tensor<float> seen_zt;
  std::vector<float> seen_t;
  auto zero_model = [&](const Tensor<float>& zt, const std::vector<float>& t) {
    seen_zt = zt;
    seen_t = t;
    return Tensor<float>::zeros(zt.shape());
  };
  Rng rng(77);
  const auto r = autograd::ldm_loss(zero_model, x0, sched, rng);
  // the same draws, by hand
  Rng again(77);
  std::vector<int64_t> t;
  for (int b = 0; b < 3; ++b) t.push_back(again.uniform_int(0, 999));
  const auto noise = again.normal<float>(x0.shape());
  CHECK(r.timesteps == t);
  CHECK(seen_t == std::vector<float>(t.begin(), t.end()));
  CHECK(r.noise.to_vector() == noise.to_vector());
  CHECK(seen_zt.to_vector() == sched.add_noise(x0, noise, t).to_vector());
  double ms = 0;
  for (float v : noise.to_vector()) ms += double(v) * v;
  CHECK(r.loss.data()[0] == doctest::Approx(ms / noise.numel()).epsilon(1e-6));  // mse(0, noise)

  // v-prediction: the target is the velocity; a model predicting it exactly has zero loss.
  sampling::SchedulerConfig vc;
  vc.prediction_type = sampling::PredictionType::VPrediction;
  sampling::DDIMScheduler vsched(vc);
  Rng rv(77);
  const auto velocity = vsched.velocity(x0, noise, t);
  const auto rv_loss = autograd::ldm_loss([&](const Tensor<float>&, const std::vector<float>&) { return velocity; }, x0,
                                          vsched, rv);
  CHECK(rv_loss.loss.data()[0] == 0.0f);
}

TEST_CASE("LDM loss is differentiable through the model (double, fixed draws)") {
  sampling::DDIMScheduler sched;
  Rng init(5);
  nn::Conv2d<double> denoiser(2, 2, 3, 1, 1);
  nn::init_missing(denoiser, init);
  autograd::track(denoiser);
  const auto x0 = init.normal<double>({2, 2, 4, 3});
  auto f = [&] {
    Rng rng(9);  // the same t and noise at every evaluation
    return autograd::ldm_loss([&](const Tensor<double>& zt, const std::vector<float>&) { return denoiser(zt); }, x0,
                              sched, rng).loss;
  };
  const auto r = autograd::gradcheck(f, {{"weight", denoiser.weight.value}, {"bias", denoiser.bias.value}});
  std::printf("%s", r.summary("ldm_loss(conv denoiser)").c_str());
  CHECK(r.max_error() < 1e-6);
}

TEST_CASE("a small MLP regression trained with AdamW: the loss falls more than 10x") {
  Mlp mlp;
  Rng rng(8);
  nn::init_missing(mlp, rng);
  autograd::track(mlp);
  const auto x = rng.uniform<float>({64, 3}, -1, 1);
  auto y = Tensor<float>::empty({64, 2});
  for (int64_t i = 0; i < 64; ++i) {
    const float a = x.at({i, 0}), b = x.at({i, 1}), c = x.at({i, 2});
    y.at({i, 0}) = std::sin(2 * a) + b * c;
    y.at({i, 1}) = a * a - 0.5f * c;
  }
  autograd::AdamWOptions o;
  o.lr = 0.02;
  autograd::AdamW<float> opt(mlp, o);
  CHECK(opt.size() == 4);
  float first = 0, last = 0;
  for (int step = 0; step < 300; ++step) {
    autograd::TrainingScope scope;
    const auto loss = autograd::mse(mlp(x), y);
    if (step == 0) first = loss.data()[0];
    last = loss.data()[0];
    opt.zero_grad();
    autograd::backward(loss);
    opt.step();
  }
  MESSAGE("MLP regression: loss ", first, " -> ", last);
  CHECK(last * 10 < first);
}
