// Every element-wise, normalisation, softmax, embedding and optimiser kernel against its CPU twin on random data,
// forward and backward (through the autograd tape on both sides), in float32, half and bfloat16. Tolerances are
// stated and justified in cuda_test_util.cuh.
#include "adabldm/autograd/optim.hpp"
#include "cuda_test_util.cuh"

using namespace cuda_test;

CUDA_TEST_CASE("add / sub / mul with broadcasting, and sum_to_shape") {
  ADABLDM_REQUIRE_CUDA();
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{3, 5, 7}, {3, 5, 7}}, {{2, 4, 6, 5}, {2, 4, 1, 1}}, {{4, 3}, {3}}, {{1, 9}, {7, 1}}, {{2, 1, 5}, {3, 1}},
      {{2, 320, 8, 8}, {1, 320, 1, 1}}, {{2, 77, 33}, {33}}};
  for (const auto& [sa, sb] : cases) {
    const auto a = randn(sa), b = randn(sb);
    const double k = static_cast<double>(ops::broadcast_shape(sa, sb).numel());  // longest gradient reduction
    FOR_EACH_TYPE({
      check_op<T>("add " + sa.str() + " + " + sb.str(), [](const auto& in) { return ops::add(in[0], in[1]); }, {a, b}, 1, {}, k);
      check_op<T>("sub " + sa.str() + " - " + sb.str(), [](const auto& in) { return ops::sub(in[0], in[1]); }, {a, b}, 1, {}, k);
      check_op<T>("mul " + sa.str() + " * " + sb.str(), [](const auto& in) { return ops::mul(in[0], in[1]); }, {a, b}, 1, {}, k);
    });
  }
  // A long reduction over inner dimensions takes the block-per-output path.
  const auto g = randn({3, 4, 4096});
  check_forward<float>("sum_to_shape [3,4,4096] -> [3,1,1]", [](const auto& in) { return ops::sum_to_shape(in[0], Shape{3, 1, 1}); }, {g}, 16384);
  check_forward<float>("sum_to_shape [3,4,4096] -> [4096]", [](const auto& in) { return ops::sum_to_shape(in[0], Shape{4096}); }, {g}, 12);
  check_forward<H>("sum_to_shape [3,4,4096] -> [4,1]", [](const auto& in) { return ops::sum_to_shape(in[0], Shape{4, 1}); }, {g}, 12288);
}

CUDA_TEST_CASE("add_ in place (outside a tape), affine, scale, clamp") {
  ADABLDM_REQUIRE_CUDA();
  const auto a = randn({2, 6, 5, 5}), b = randn({1, 6, 1, 1}), c = randn({2, 6, 5, 5});
  FOR_EACH_TYPE({
    auto da = up<T>(a);
    ops::add_(da, up<T>(b));
    auto ha = round_to<T>(a);
    ops::add_(ha, round_to<T>(b));
    expect_close(std::string("add_ broadcast [") + type_name<T>() + "]", down(da), ha, tolerance<T>());
    ops::add_(da, up<T>(c));
    ops::add_(ha, round_to<T>(c));
    expect_close(std::string("add_ same shape [") + type_name<T>() + "]", down(da), round_to<T>(ha), tolerance<T>() * 2);
    check_op<T>("affine 1.5 x - 0.25", [](const auto& in) {
      using V = typename std::decay_t<decltype(in[0])>::value_type;
      return ops::affine(in[0], V(1.5f), V(-0.25f));
    }, {a}, 1);
    check_op<T>("scale -3", [](const auto& in) {
      using V = typename std::decay_t<decltype(in[0])>::value_type;
      return ops::scale(in[0], V(-3.0f));
    }, {a}, 1);
    check_op<T>("clamp [-0.5, 0.75]", [](const auto& in) {
      using V = typename std::decay_t<decltype(in[0])>::value_type;
      return ops::clamp(in[0], V(-0.5f), V(0.75f));
    }, {a}, 1);
  });
}

CUDA_TEST_CASE("concat along every dimension; nearest upsampling (2x and to a size)") {
  ADABLDM_REQUIRE_CUDA();
  const auto a = randn({2, 3, 4, 5}), b = randn({2, 3, 4, 5}), c = randn({2, 3, 4, 5});
  FOR_EACH_TYPE({
    for (int d : {0, 1, 2, 3, -1})
      check_op<T>("concat dim " + std::to_string(d), [d](const auto& in) {
        using Tn = std::decay_t<decltype(in[0])>;
        return ops::concat(std::vector<Tn>{in[0], in[1], in[2]}, d);
      }, {a, b, c}, 1);
    check_op<T>("upsample_nearest2x", [](const auto& in) { return ops::upsample_nearest2x(in[0]); }, {a}, 1, {}, 4);
    for (auto hw : std::vector<std::pair<int64_t, int64_t>>{{7, 11}, {3, 2}, {8, 10}, {13, 5}})
      check_op<T>("upsample_nearest to " + std::to_string(hw.first) + "x" + std::to_string(hw.second),
                  [hw](const auto& in) { return ops::upsample_nearest(in[0], hw.first, hw.second); }, {a}, 1, {}, 9);
  });
}

CUDA_TEST_CASE("activations (all six) and GEGLU") {
  ADABLDM_REQUIRE_CUDA();
  const auto x = randn({3, 17, 29}, 2.0);
  const std::vector<std::pair<const char*, ops::Activation>> acts = {
      {"identity", ops::Activation::Identity}, {"silu", ops::Activation::SiLU},
      {"gelu (erf)", ops::Activation::GeluErf}, {"gelu (tanh)", ops::Activation::GeluTanh},
      {"quick_gelu", ops::Activation::QuickGelu}, {"relu", ops::Activation::ReLU}, {"tanh", ops::Activation::Tanh}};
  FOR_EACH_TYPE({
    for (const auto& [name, act] : acts)
      check_op<T>(std::string("activate ") + name, [act = act](const auto& in) { return ops::activate(in[0], act); }, {x}, 1);
    check_op<T>("geglu", [](const auto& in) { return ops::geglu(in[0]); }, {randn({2, 9, 2 * 40})}, 1);
  });
  // In place, outside a tape.
  auto d = cuda::to_device(x);
  ops::activate_(d, ops::Activation::SiLU);
  expect_close("activate_ silu in place [f32]", cuda::to_host(d), ops::silu(x), tolerance<float>());
}

CUDA_TEST_CASE("softmax") {
  ADABLDM_REQUIRE_CUDA();
  for (const Shape& s : {Shape{4, 7}, Shape{3, 5, 77}, Shape{2, 1000}, Shape{2, 4096}}) {
    const auto x = randn(s, 3.0);
    const double k = static_cast<double>(s.dim(-1));
    FOR_EACH_TYPE(check_op<T>("softmax " + s.str(), [](const auto& in) { return ops::softmax(in[0]); }, {x}, k));
  }
}

CUDA_TEST_CASE("layer_norm (affine and plain)") {
  ADABLDM_REQUIRE_CUDA();
  for (const Shape& s : {Shape{3, 7, 33}, Shape{2, 64, 320}, Shape{2, 1280}, Shape{1, 77, 768}}) {
    const int64_t D = s.dim(-1), rows = s.numel() / D;
    const auto x = randn(s, 2.0), g = randn({D}), b = randn({D});
    FOR_EACH_TYPE({
      check_op<T>("layer_norm " + s.str(), [](const auto& in) { return ops::layer_norm(in[0], in[1], in[2], 1e-5); },
                  {ops::affine(x, 1.0f, 3.0f), g, b}, static_cast<double>(D), {}, static_cast<double>(std::max(D, rows)));
      check_op<T>("layer_norm (no affine) " + s.str(), [](const auto& in) {
        using Tn = std::decay_t<decltype(in[0])>;
        return ops::layer_norm(in[0], Tn{}, Tn{}, 1e-6);
      }, {x}, static_cast<double>(D));
    });
  }
}

CUDA_TEST_CASE("group_norm with every fused activation, several group sizes") {
  ADABLDM_REQUIRE_CUDA();
  struct Case {
    Shape shape;
    int64_t groups;
  };
  // {2, 320, 64, 64} / 32: groups of 40960 = 3 partial-moment chunks (16384, 16384, 8192), SD 1.5's first norm.
  for (const auto& c : std::vector<Case>{{{2, 12, 5, 7}, 3}, {{2, 64, 16, 16}, 32}, {{1, 32, 9}, 32}, {{2, 128, 64, 64}, 32},
                                         {{2, 320, 64, 64}, 32}}) {
    const int64_t C = c.shape[1], N = c.shape[0], group = c.shape.numel() / (N * c.groups);
    const auto x = ops::affine(randn(c.shape, 1.5), 1.0f, 0.5f), g = randn({C}), b = randn({C});
    for (auto act : {ops::Activation::Identity, ops::Activation::SiLU, ops::Activation::GeluErf}) {
      FOR_EACH_TYPE(check_op<T>("group_norm " + c.shape.str() + " groups " + std::to_string(c.groups) + " act " +
                                    std::to_string(static_cast<int>(act)),
                                [groups = c.groups, act](const auto& in) { return ops::group_norm(in[0], groups, in[1], in[2], 1e-5, act); },
                                {x, g, b}, static_cast<double>(group)));
    }
    FOR_EACH_TYPE(check_op<T>("group_norm (no affine) " + c.shape.str(), [groups = c.groups](const auto& in) {
      using Tn = std::decay_t<decltype(in[0])>;
      return ops::group_norm(in[0], groups, Tn{}, Tn{}, 1e-6, ops::Activation::SiLU);
    }, {x}, static_cast<double>(group)));
  }
  // Mean 10, standard deviation 0.01 (float32 only: f16 cannot hold the spread): a float E[x^2] - E[x]^2 over 40960
  // values (sum ~4e6, ulp 0.25) would be off by ~1e-3 on a variance of 1e-4.
  const auto shifted = ops::affine(randn({2, 320, 64, 64}), 0.01f, 10.0f);
  check_op<float>("group_norm mean 10 std 0.01", [](const auto& in) {
    using Tn = std::decay_t<decltype(in[0])>;
    return ops::group_norm(in[0], 32, Tn{}, Tn{}, 1e-12, ops::Activation::Identity);
  }, {shifted}, 40960.0);
}

CUDA_TEST_CASE("embedding (repeated ids) and timestep embedding") {
  ADABLDM_REQUIRE_CUDA();
  const auto table = randn({50, 24});
  const std::vector<int64_t> ids = {3, 7, 3, 0, 49, 7, 7, 12};
  FOR_EACH_TYPE(check_op<T>("embedding", [&ids](const auto& in) { return ops::embedding(in[0], ids); }, {table}, 1, {}, 3));
  CHECK_THROWS_AS(ops::embedding(cuda::to_device(table), {50}), ShapeError);
  const std::vector<float> ts = {0.0f, 1.0f, 999.0f, 261.0f};
  expect_close("timestep_embedding [f32]", cuda::to_host(ops::timestep_embedding<float, Cuda>(ts, 320, true, 0.0)),
               ops::timestep_embedding<float>(ts, 320, true, 0.0), 0.0);
  // 16-bit: the float32 embedding of the exact timesteps rounded once, as on the CPU (999 is not bfloat16's 1000)
  expect_close("timestep_embedding [f16]", down(ops::timestep_embedding<H, Cuda>(ts, 33, false, 1.0)),
               round_to<H>(ops::timestep_embedding<float>(ts, 33, false, 1.0)), 0.0);
  expect_close("timestep_embedding [bf16]", down(ops::timestep_embedding<BF, Cuda>(ts, 320, true, 0.0)),
               round_to<BF>(ops::timestep_embedding<float>(ts, 320, true, 0.0)), 0.0);
}

namespace {
template <class T, class Dev>
struct OneParam {
  nn::Param<T, Dev> w{Shape{1000, 37}};
  template <class F>
  void visit(const std::string& p, F&& f) {
    f(p + "w", w);
  }
};
}  // namespace

CUDA_TEST_CASE("AdamW on the device matches the host optimiser (float32: bit for bit expected, 1e-6 required)") {
  ADABLDM_REQUIRE_CUDA();
  autograd::AdamWOptions o;
  o.lr = 1e-2;
  o.weight_decay = 0.05;
  OneParam<float, Cpu> host;
  OneParam<float, Cuda> dev;
  host.w.value = autograd::leaf(randn({1000, 37}));
  dev.w.value = autograd::leaf(cuda::to_device(host.w.value.detach()));
  autograd::AdamW<float, Cpu> host_opt(host, o);
  autograd::AdamW<float, Cuda> dev_opt(dev, o);
  for (int step = 0; step < 5; ++step) {
    const auto g = randn({1000, 37});
    host.w.value.autograd_meta()->grad = std::make_shared<F32>(g);
    host.w.value.autograd_meta()->grad_type = &typeid(F32);
    dev.w.value.autograd_meta()->grad = std::make_shared<Tensor<float, Cuda>>(cuda::to_device(g));
    dev.w.value.autograd_meta()->grad_type = &typeid(Tensor<float, Cuda>);
    host_opt.step();
    dev_opt.step();
  }
  const auto got = cuda::to_host(dev.w.value), want = host.w.value.detach();
  int64_t identical = 0;
  for (int64_t i = 0; i < got.numel(); ++i) identical += got.data()[i] == want.data()[i];
  MESSAGE("AdamW: " << identical << " of " << got.numel() << " parameters bit-identical after 5 steps");
  expect_close("AdamW 5 steps [f32]", got, want, 1e-6);
  CHECK(dev_opt.steps("w") == 5);
}

CUDA_TEST_CASE("autograd on device tensors: a small network, views, accumulation into a reused input") {
  ADABLDM_REQUIRE_CUDA();
  const auto x = randn({2, 5, 8}), w1 = randn({16, 8}), b1 = randn({16}), w2 = randn({8, 16});
  check_op<float>("linear -> silu -> narrow -> linear + x (x used twice)", [](const auto& in) {
    auto h = ops::silu(ops::linear(in[0], in[1], in[2]));
    h = h.permute({0, 2, 1}).contiguous().permute({0, 2, 1}).contiguous();  // recorded views
    auto part = h.narrow(2, 4, 8).contiguous();
    auto y = ops::linear(ops::concat(std::vector<std::decay_t<decltype(part)>>{h.narrow(2, 0, 8).contiguous(), part}, 2), in[3]);
    return ops::add(y, in[0]);
  }, {x, w1, b1, w2}, 16);
  // backward from a scalar on the device seeds with ones
  autograd::TrainingScope scope;
  auto a = autograd::leaf(cuda::to_device(x));
  auto s = ops::sum_to_shape(ops::mul(a, a), Shape{1});
  autograd::backward(s);
  expect_close("d sum(x^2) / dx = 2x [f32]", cuda::to_host(autograd::grad(a)), ops::scale(x, 2.0f), tolerance<float>());
}

CUDA_TEST_CASE("losses: mse and masked_mse (value and gradients)") {
  ADABLDM_REQUIRE_CUDA();
  const auto a = randn({2, 3, 40, 50}), b = randn({2, 3, 40, 50});
  auto mask = F32::zeros({2, 1, 40, 50});
  for (int64_t y = 10; y < 30; ++y)
    for (int64_t x = 5; x < 45; ++x) mask.at({1, 0, y, x}) = mask.at({0, 0, y, x}) = 1.0f;
  const double n = static_cast<double>(a.numel());
  FOR_EACH_TYPE({
    // The gradients are element-wise (no reduction: k_backward = 1) and ~1e-3 in size, so they are compared
    // relative to their own largest entry (check_op's gradient comparison), not to max(1, |ref|).
    check_op<T>("mse", [](const auto& in) { return autograd::mse(in[0], in[1]); }, {a, b}, n, {}, 1);
    check_op<T>("masked_mse", [](const auto& in) { return autograd::masked_mse(in[0], in[1], in[2]); }, {a, b, mask}, n,
                {true, true, false}, 1);
  });
  CHECK_THROWS_AS(autograd::masked_mse(cuda::to_device(a), cuda::to_device(b), cuda::zeros<float>({2, 1, 40, 50})), Error);
}
