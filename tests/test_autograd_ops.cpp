// Every differentiable op against central finite differences in double: the gradient of <op(inputs), R> for a
// random R with respect to every input, at every coordinate of small random shapes with odd sizes (sampled
// coordinates plus random directions for the larger ones). Tolerance 1e-6 relative to the gradient's largest
// entry: with h = 1e-6 in double the truncation error is ~h^2 |f'''| ~ 1e-12 and the rounding error
// ~1e-16 |f| / h ~ 1e-10, so a correct backward lands near 1e-9 and a wrong one near 1.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>

#include "adabldm/autograd/autograd.hpp"
#include "adabldm/ops/ops.hpp"

using namespace adabldm;
using D = Tensor<double, Cpu>;
using Inputs = std::vector<std::pair<std::string, D>>;

namespace {
Rng& rng() {
  static Rng r(2025);
  return r;
}
D randn(const Shape& s, double scale = 1.0) { return rng().normal<double>(s, 0.0, scale); }
D leaf(const Shape& s, double scale = 1.0) { return autograd::leaf(randn(s, scale)); }

constexpr double kTol = 1e-6;

template <class F>
void check_op(const std::string& what, F&& f, const Inputs& inputs, autograd::GradCheckOptions o = {}) {
  const auto r = autograd::gradcheck(f, inputs, o);
  std::printf("%s", r.summary(what).c_str());
  for (const auto& e : r.entries) {
    CAPTURE(what);
    CAPTURE(e.name);
    CHECK(e.grad_scale > 0);
    CHECK(e.error() < kTol);
  }
}
autograd::GradCheckOptions sampled(int64_t coords, int directions = 2) {
  autograd::GradCheckOptions o;
  o.max_coords = coords;
  o.directions = directions;
  return o;
}
}  // namespace

TEST_CASE("linear: dX, dW, db (with and without bias)") {
  auto x = leaf({2, 3, 5}), w = leaf({4, 5}), b = leaf({4});
  check_op("linear", [&] { return ops::linear(x, w, b); }, {{"x", x}, {"weight", w}, {"bias", b}});
  check_op("linear (no bias)", [&] { return ops::linear(x, w); }, {{"x", x}, {"weight", w}});
}

TEST_CASE("matmul: batched, shared and transposed b") {
  auto a = leaf({2, 3, 4}), b = leaf({2, 4, 5}), bs = leaf({4, 5}), bt = leaf({2, 5, 4}), bst = leaf({5, 4});
  check_op("matmul batched", [&] { return ops::matmul(a, b); }, {{"a", a}, {"b", b}});
  check_op("matmul shared b", [&] { return ops::matmul(a, bs); }, {{"a", a}, {"b", bs}});
  check_op("matmul batched b^T", [&] { return ops::matmul(a, bt, true); }, {{"a", a}, {"b", bt}});
  check_op("matmul shared b^T", [&] { return ops::matmul(a, bst, true); }, {{"a", a}, {"b", bst}});
}

TEST_CASE("conv2d: padding, stride, per-side padding, 1x1 and non-square kernels") {
  struct Case {
    const char* name;
    Shape x, w;
    ops::Conv2dParams p;
  };
  const Case cases[] = {
      {"conv2d 3x3 same", {2, 3, 5, 6}, {4, 3, 3, 3}, ops::Conv2dParams::same(1)},
      {"conv2d 3x3 stride 2", {1, 2, 7, 6}, {3, 2, 3, 3}, ops::Conv2dParams::same(1, 2)},
      {"conv2d VAE pad r/b stride 2", {1, 2, 6, 5}, {3, 2, 3, 3}, ops::Conv2dParams{2, 0, 1, 0, 1}},
      {"conv2d 1x1", {2, 5, 3, 4}, {3, 5, 1, 1}, {}},
      {"conv2d 2x3 asym pad", {1, 2, 5, 7}, {2, 2, 2, 3}, ops::Conv2dParams{1, 1, 0, 2, 1}},
  };
  for (const auto& c : cases) {
    auto x = leaf(c.x), w = leaf(c.w), b = leaf({c.w[0]});
    check_op(c.name, [&] { return ops::conv2d(x, w, b, c.p); }, {{"x", x}, {"weight", w}, {"bias", b}});
  }
  // Only the wanted gradients: a constant input (dW only) and a frozen weight (dX only).
  auto x = leaf({1, 2, 5, 5}), w = leaf({3, 2, 3, 3});
  const D xc = randn({1, 2, 5, 5}), wc = randn({3, 2, 3, 3});
  check_op("conv2d dW only", [&] { return ops::conv2d(xc, w, D{}, ops::Conv2dParams::same(1)); }, {{"weight", w}});
  check_op("conv2d dX only", [&] { return ops::conv2d(x, wc, D{}, ops::Conv2dParams::same(1)); }, {{"x", x}});
}

TEST_CASE("group_norm with every fused activation, and without affine") {
  using ops::Activation;
  auto x = leaf({2, 6, 3, 5}), g = autograd::leaf(ops::affine(randn({6}, 0.3), 1.0, 1.0)), b = leaf({6});
  for (auto [act, name] : {std::pair{Activation::Identity, "identity"}, {Activation::SiLU, "silu"},
                           {Activation::GeluErf, "gelu"}, {Activation::GeluTanh, "gelu_tanh"},
                           {Activation::QuickGelu, "quick_gelu"}, {Activation::ReLU, "relu"},
                           {Activation::Tanh, "tanh"}})
    check_op(std::string("group_norm + ") + name, [&] { return ops::group_norm(x, 3, g, b, 1e-5, act); },
             {{"x", x}, {"gamma", g}, {"beta", b}});
  check_op("group_norm no affine", [&] { return ops::group_norm(x, 2, D{}, D{}, 1e-6); }, {{"x", x}});
}

TEST_CASE("layer_norm (more rows than one partial-sum block)") {
  auto x = leaf({2, 70, 5}), g = autograd::leaf(ops::affine(randn({5}, 0.3), 1.0, 1.0)), b = leaf({5});
  check_op("layer_norm", [&] { return ops::layer_norm(x, g, b, 1e-5); }, {{"x", x}, {"gamma", g}, {"beta", b}},
           sampled(120));
  auto y = leaf({3, 7});
  check_op("layer_norm no affine", [&] { return ops::layer_norm(y, D{}, D{}, 1e-5); }, {{"x", y}});
}

TEST_CASE("softmax") {
  auto x = leaf({3, 4, 9}, 2.0);
  check_op("softmax", [&] { return ops::softmax(x); }, {{"x", x}});
}

TEST_CASE("attention: heads, cross-attention, causal, several tiles in both passes") {
  {
    auto q = leaf({2, 5, 6}), k = leaf({2, 7, 6}), v = leaf({2, 7, 4});
    check_op("attention 2 heads cross", [&] { return ops::attention(q, k, v, {2}); }, {{"q", q}, {"k", k}, {"v", v}});
    auto qs = leaf({2, 6, 6}), ks = leaf({2, 6, 6}), vs = leaf({2, 6, 4});
    ops::AttentionParams causal{2, 0.7, true};
    check_op("attention causal, scale 0.7", [&] { return ops::attention(qs, ks, vs, causal); },
             {{"q", qs}, {"k", ks}, {"v", vs}});
  }
  {  // only some inputs require a gradient: the others' are not computed
    const D q = randn({2, 5, 6}), k = randn({2, 7, 6}), v = randn({2, 7, 4});
    auto k_leaf = leaf({2, 7, 6}), v_leaf = leaf({2, 7, 4});
    check_op("attention dV only", [&] { return ops::attention(q, k, v_leaf, {2}); }, {{"v", v_leaf}});
    check_op("attention dK only", [&] { return ops::attention(q, k_leaf, v, {2}); }, {{"k", k_leaf}});
  }
  // 70 queries (2 query tiles), 300 keys (2 key tiles forward, 5 in the dK/dV pass).
  auto q = leaf({1, 70, 4}), k = leaf({1, 300, 4}), v = leaf({1, 300, 2});
  check_op("attention 70x300 tiles", [&] { return ops::attention(q, k, v, {2}); }, {{"q", q}, {"k", k}, {"v", v}},
           sampled(40));
  // causal over 300 tokens: masked tiles are skipped in both passes
  auto qc = leaf({1, 300, 2}), kc = leaf({1, 300, 2}), vc = leaf({1, 300, 2});
  check_op("attention causal 300", [&] { return ops::attention(qc, kc, vc, {1, 0, true}); },
           {{"q", qc}, {"k", kc}, {"v", vc}}, sampled(40));
}

TEST_CASE("activations and GEGLU") {
  using ops::Activation;
  auto x = leaf({3, 7}, 2.0);
  for (auto [act, name] : {std::pair{Activation::Identity, "identity"}, {Activation::SiLU, "silu"},
                           {Activation::GeluErf, "gelu"}, {Activation::GeluTanh, "gelu_tanh"},
                           {Activation::QuickGelu, "quick_gelu"}, {Activation::ReLU, "relu"},
                           {Activation::Tanh, "tanh"}})
    check_op(std::string("activation ") + name, [&] { return ops::activate(x, act); }, {{"x", x}});
  auto h = leaf({3, 2, 10}, 1.5);
  check_op("geglu", [&] { return ops::geglu(h); }, {{"x", h}});
}

TEST_CASE("nearest upsampling (2x and to a size)") {
  auto x = leaf({2, 3, 3, 5});
  check_op("upsample_nearest2x", [&] { return ops::upsample_nearest2x(x); }, {{"x", x}});
  check_op("upsample_nearest 7x9", [&] { return ops::upsample_nearest(x, 7, 9); }, {{"x", x}});
  check_op("upsample_nearest 2x3 (down)", [&] { return ops::upsample_nearest(x, 2, 3); }, {{"x", x}});
}

TEST_CASE("concat (one part constant)") {
  auto a = leaf({2, 3, 4}), b = leaf({2, 1, 4});
  const D c = randn({2, 2, 4});
  check_op("concat dim 1", [&] { return ops::concat<double>({a, c, b}, 1); }, {{"a", a}, {"b", b}});
  auto d = leaf({2, 3, 5});
  check_op("concat dim -1", [&] { return ops::concat<double>({a, d}, -1); }, {{"a", a}, {"d", d}});
}

TEST_CASE("add, sub, mul with broadcasting (gradients summed over broadcast dimensions)") {
  auto a = leaf({2, 3, 4, 5});
  const std::pair<const char*, Shape> others[] = {
      {"same", {2, 3, 4, 5}}, {"[3,1,5]", {3, 1, 5}}, {"[2,3,1,1]", {2, 3, 1, 1}}, {"[5]", {5}}, {"[1]", {1}}};
  for (const auto& [name, shape] : others) {
    auto b = leaf(shape);
    check_op(std::string("add ") + name, [&] { return ops::add(a, b); }, {{"a", a}, {"b", b}});
    check_op(std::string("sub ") + name, [&] { return ops::sub(b, a); }, {{"b", b}, {"a", a}});
    check_op(std::string("mul ") + name, [&] { return ops::mul(a, b); }, {{"a", a}, {"b", b}});
  }
  auto r = leaf({1, 4}), c = leaf({3, 1});  // both sides broadcast
  check_op("mul [1,4]x[3,1]", [&] { return ops::mul(r, c); }, {{"a", r}, {"b", c}});
}

TEST_CASE("affine, scale and clamp") {
  auto x = leaf({4, 5});
  check_op("affine", [&] { return ops::affine(x, 0.3, -2.0); }, {{"x", x}});
  check_op("scale", [&] { return ops::scale(x, -1.7); }, {{"x", x}});
  check_op("clamp", [&] { return ops::clamp(x, -0.5, 0.8); }, {{"x", x}});
}

TEST_CASE("embedding: scatter-add into the table, repeated ids sum") {
  auto table = leaf({6, 4});
  const std::vector<int64_t> ids{1, 3, 1, 5, 1};
  check_op("embedding", [&] { return ops::embedding(table, ids); }, {{"table", table}});
  autograd::TrainingScope scope;
  auto out = ops::embedding(table, ids);
  autograd::backward(out, D::full(out.shape(), 1.0));
  auto g = autograd::grad(table);
  CHECK(g.at({1, 2}) == 3.0);
  CHECK(g.at({0, 0}) == 0.0);
  CHECK(g.at({5, 3}) == 1.0);
}

TEST_CASE("member views: reshape, permute, narrow, slice, clone, contiguous") {
  auto x = leaf({2, 3, 4});
  const D w = randn({3, 2});
  check_op("view permute+contiguous+reshape", [&] { return x.permute({2, 0, 1}).contiguous().reshape({4, 6}); },
           {{"x", x}});
  check_op("view narrow (non-contiguous) into mul", [&] { return ops::mul(x.narrow(2, 1, 2), w); }, {{"x", x}});
  check_op("view slice + clone", [&] { return ops::scale(x.slice(1, 2).clone(), 2.0); }, {{"x", x}});
  check_op("view permute into linear", [&] { return ops::linear(x.permute({0, 2, 1}), w.reshape({2, 3})); }, {{"x", x}});
}

TEST_CASE("losses: mse and masked_mse") {
  auto a = leaf({2, 3, 4}), b = leaf({2, 3, 4});
  const D mask = ops::clamp(randn({2, 1, 4}), 0.0, 1.0);
  check_op("mse", [&] { return autograd::mse(a, b); }, {{"a", a}, {"b", b}});
  check_op("masked_mse", [&] { return autograd::masked_mse(a, b, mask); }, {{"a", a}, {"b", b}});
}

TEST_CASE("losses: bce_with_logits and dice_loss") {
  auto z = leaf({2, 1, 3, 5}, 2.0);
  // Soft and hard targets: a label of 0.3 exercises both terms of the cross-entropy at one pixel.
  D y = ops::clamp(randn({2, 1, 3, 5}, 2.0), 0.0, 1.0);
  y.data()[0] = 0.3;
  check_op("bce_with_logits", [&] { return autograd::bce_with_logits(z, y); }, {{"z", z}});
  check_op("bce_with_logits pos_weight 5", [&] { return autograd::bce_with_logits(z, y, 5.0); }, {{"z", z}});
  check_op("dice_loss", [&] { return autograd::dice_loss(z, y); }, {{"z", z}});
  // Values against the formulas at a point: z = 0 gives s = 1/2, so BCE = w y log 2 + (1 - y) log 2 per pixel.
  const D zero = D::zeros({1, 1, 1, 2}), half = D::full({1, 1, 1, 2}, 0.5);
  CHECK(autograd::bce_with_logits(zero, half, 3.0).data()[0] == doctest::Approx((3.0 * 0.5 + 0.5) * std::log(2.0)));
  CHECK(autograd::dice_loss(zero, half, 1.0).data()[0] == doctest::Approx(1.0 - (2.0 * 0.5 + 1.0) / (2.0 + 1.0)));
  // Large logits stay finite (no exp overflow) and a confident correct answer costs almost nothing.
  const D big = D::full({1, 1, 1, 2}, 800.0), ones = D::full({1, 1, 1, 2}, 1.0);
  CHECK(autograd::bce_with_logits(big, ones).data()[0] == doctest::Approx(0.0).epsilon(1e-12));
  CHECK(std::isfinite(autograd::bce_with_logits(ops::affine(big, -1.0), ones).data()[0]));
  CHECK_THROWS_WITH_AS(autograd::bce_with_logits(zero, D::zeros({1, 1, 2, 1})), doctest::Contains("differ"), Error);
}

TEST_CASE("on_host: the copy's gradient reaches the original (here double -> float on the CPU)") {
  // The CPU twin of the device path (tests/cuda/test_cuda_detector.cu): a host float copy of a double tensor feeds
  // a float loss; the loss's gradient must come back to the double leaf. mse(x, t) has gradient 2 (x - t) / n.
  auto x = leaf({2, 3});
  const auto t = Tensor<float, Cpu>::zeros({2, 3});
  {
    autograd::TrainingScope scope;
    const auto h = autograd::on_host(x);
    CHECK(h.shape() == x.shape());
    CHECK(h.requires_grad());
    autograd::backward(autograd::mse(h, t));
  }
  const auto g = autograd::grad(x);
  REQUIRE(g.defined());
  for (int64_t i = 0; i < x.numel(); ++i)
    CHECK(g.data()[i] == doctest::Approx(2.0 * static_cast<double>(static_cast<float>(x.data()[i])) / 6.0).epsilon(1e-6));
  // A host float tensor is passed through as it is: the same tensor, no copy and no record.
  const auto f = Tensor<float, Cpu>::full({2}, 1.0f);
  CHECK(autograd::on_host(f).data() == f.data());
}
