// Every CPU op against a naive reference written as plain loops in double, on random shapes with odd sizes.
#include <doctest/doctest.h>

#include "max_error.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include "adabldm/core/rng.hpp"
#include "adabldm/ops/ops.hpp"

using namespace adabldm;
using T32 = Tensor<float, Cpu>;

namespace {
Rng& rng() {
  static Rng r(2024);
  return r;
}
T32 randn(const Shape& s) { return rng().normal<float>(s); }

/// max |a - b| / max(1, max |b|) over all elements (infinite when a holds a NaN).
double rel_err(const T32& a, const std::vector<double>& b) {
  REQUIRE(static_cast<std::size_t>(a.numel()) == b.size());
  const auto av = a.to_vector();
  double m = 1, e = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    m = std::max(m, std::abs(b[i]));
    e = worse(e, std::abs(static_cast<double>(av[i]) - b[i]));
  }
  return e / m;
}
std::vector<double> dvec(const T32& t) {
  auto v = t.to_vector();
  return {v.begin(), v.end()};
}
int64_t rand_dim(int64_t lo, int64_t hi) { return rng().uniform_int(lo, hi); }
}  // namespace

TEST_CASE("matmul, batched matmul and linear") {
  for (int trial = 0; trial < 6; ++trial) {
    const int64_t B = rand_dim(1, 3), M = rand_dim(1, 37), K = rand_dim(1, 41), N = rand_dim(1, 29);
    auto a = randn({B, M, K}), b = randn({B, K, N}), w = randn({N, K}), bias = randn({N});
    std::vector<double> ref(static_cast<std::size_t>(B * M * N)), lin(ref.size());
    auto A = dvec(a), Bv = dvec(b), W = dvec(w), bb = dvec(bias);
    for (int64_t z = 0; z < B; ++z)
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          double s = 0, l = bb[j];
          for (int64_t k = 0; k < K; ++k) {
            s += A[(z * M + i) * K + k] * Bv[(z * K + k) * N + j];
            l += A[(z * M + i) * K + k] * W[j * K + k];
          }
          ref[(z * M + i) * N + j] = s;
          lin[(z * M + i) * N + j] = l;
        }
    CHECK(rel_err(ops::matmul(a, b), ref) < 1e-5);
    CHECK(rel_err(ops::linear(a, w, bias), lin) < 1e-5);
    // b transposed, and a shared 2-D b
    CHECK(rel_err(ops::matmul(a, w, /*trans_b=*/true), [&] {
            auto r = lin;
            for (std::size_t i = 0; i < r.size(); ++i) r[i] -= bb[i % static_cast<std::size_t>(N)];
            return r;
          }()) < 1e-5);
  }
  CHECK_THROWS_AS(ops::matmul(randn({2, 3}), randn({4, 5})), ShapeError);
  CHECK_THROWS_AS(ops::linear(randn({2, 3}), randn({4, 5})), ShapeError);
}

TEST_CASE("matmul and linear with an empty inner dimension write zeros") {
  // The output is all there (2 x 3 x 4) while the sum over k has no terms: every element must be 0, also when
  // the allocator hands back memory that held something else (here: NaN, freed just before).
  const auto litter = [] {  // many NaN blocks of the output's size, freed together: the heap reuses them
    std::vector<T32> junk;
    for (int i = 0; i < 64; ++i) junk.push_back(T32::full({2, 3, 4}, std::nanf("")));
  };
  const auto a = randn({2, 3, 0}), b = randn({0, 4}), w = randn({4, 0});
  litter();
  const auto c = ops::matmul(a, b);
  REQUIRE(c.shape() == Shape{2, 3, 4});
  CHECK(rel_err(c, std::vector<double>(24, 0.0)) == 0.0);
  litter();
  const auto y = ops::linear(a, w);
  REQUIRE(y.shape() == Shape{2, 3, 4});
  CHECK(rel_err(y, std::vector<double>(24, 0.0)) == 0.0);
}

TEST_CASE("gemm: all transpose combinations, alpha and beta") {
  const int64_t M = 13, N = 7, K = 9;
  auto a = randn({K, M}), b = randn({N, K}), c = randn({M, N});
  auto A = dvec(a), Bv = dvec(b), C = dvec(c);
  std::vector<double> ref(static_cast<std::size_t>(M * N));
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += A[k * M + i] * Bv[j * K + k];
      ref[i * N + j] = 0.5 * s + 2.0 * C[i * N + j];
    }
  auto out = c.clone();
  ops::gemm<float>(true, true, M, N, K, 0.5f, a.data(), M, b.data(), K, 2.0f, out.data(), N);
  CHECK(rel_err(out, ref) < 1e-5);
}

TEST_CASE("gemm: the AVX-512 SGEMM against a double reference and Eigen, every edge and layout") {
  // Sizes around the micro-kernel's 12 x 32 tile and the K blocking, padded leading dimensions, alpha and beta,
  // and beta = 0 ignoring NaN in C; each compared with the double product and with Eigen's (the switch off).
  const auto naive = [](bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const std::vector<double>& A,
                        int64_t lda, const std::vector<double>& B, int64_t ldb, double beta, const std::vector<double>& C,
                        int64_t ldc) {
    std::vector<double> out(C);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += (ta ? A[k * lda + i] : A[i * lda + k]) * (tb ? B[j * ldb + k] : B[k * ldb + j]);
        out[i * ldc + j] = alpha * s + (beta == 0 ? 0.0 : beta * C[i * ldc + j]);
      }
    return out;
  };
  Rng rng(11);
  int cases = 0;
  for (int64_t M : {1, 11, 12, 13, 37})
    for (int64_t N : {1, 15, 16, 17, 31, 32, 33, 70})
      for (int64_t K : {1, 7, 300, 700})
        for (int layout = 0; layout < 4; ++layout) {
          const bool ta = layout & 1, tb = layout & 2;
          const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
          const auto a = rng.normal({(ta ? K : M) * lda}), b = rng.normal({(tb ? N : K) * ldb});
          auto c = rng.normal({M * ldc});
          const float alpha = 0.75f, beta = (M + N + K + layout) % 3 == 0 ? 0.0f : -1.5f;
          if (beta == 0.0f) c.data()[0] = std::numeric_limits<float>::quiet_NaN();
          const auto ref = naive(ta, tb, M, N, K, alpha, dvec(a), lda, dvec(b), ldb, beta, dvec(c), ldc);
          auto ours = c.clone(), eigen = c.clone();
          const bool was = ops::detail::use_own_sgemm();
          ops::detail::use_own_sgemm() = true;
          ops::gemm<float>(ta, tb, M, N, K, alpha, a.data(), lda, b.data(), ldb, beta, ours.data(), ldc);
          ops::detail::use_own_sgemm() = false;
          ops::gemm<float>(ta, tb, M, N, K, alpha, a.data(), lda, b.data(), ldb, beta, eigen.data(), ldc);
          ops::detail::use_own_sgemm() = was;
          double worst = 0, worst_eigen = 0, scale = 1;
          for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < ldc; ++j) {
              const std::size_t x = static_cast<std::size_t>(i * ldc + j);
              if (j >= N) {  // the padding between rows is never written
                CHECK(ours.data()[x] == c.data()[x]);
                continue;
              }
              scale = std::max(scale, std::fabs(ref[x]));
              worst = std::max(worst, std::fabs(ours.data()[x] - ref[x]));
              worst_eigen = std::max(worst_eigen, std::fabs(eigen.data()[x] - ref[x]));
            }
          CAPTURE(M);
          CAPTURE(N);
          CAPTURE(K);
          CAPTURE(layout);
          CHECK(worst <= 2e-6 * scale * std::sqrt(static_cast<double>(K)));
          CHECK(worst_eigen <= 2e-6 * scale * std::sqrt(static_cast<double>(K)));
          ++cases;
        }
  CHECK(cases == 5 * 8 * 4 * 4);
  MESSAGE("own AVX-512 SGEMM compiled in: ", ops::detail::kHasOwnSgemm);

  // Large enough to be split over threads (shared packed B, slices of A): the same bits on 1 and 2 threads, and
  // the double product's values.
  const bool was = ops::detail::use_own_sgemm();
  ops::detail::use_own_sgemm() = true;
  const int threads = num_threads();
  for (int layout = 0; layout < 4; ++layout) {
    const bool ta = layout & 1, tb = layout & 2;
    const int64_t M = 301, N = 259, K = 530;
    const auto a = rng.normal({M * K}), b = rng.normal({K * N});
    const int64_t lda = ta ? M : K, ldb = tb ? K : N;
    auto one = Tensor<float>::empty({M * N}), two = Tensor<float>::empty({M * N});
    set_num_threads(1);
    ops::gemm<float>(ta, tb, M, N, K, 1.0f, a.data(), lda, b.data(), ldb, 0.0f, one.data(), N);
    set_num_threads(2);
    ops::gemm<float>(ta, tb, M, N, K, 1.0f, a.data(), lda, b.data(), ldb, 0.0f, two.data(), N);
    CHECK(one.to_vector() == two.to_vector());
    const auto ref = naive(ta, tb, M, N, K, 1.0, dvec(a), lda, dvec(b), ldb, 0.0, std::vector<double>(M * N), N);
    double worst = 0, scale = 1;
    for (std::size_t i = 0; i < ref.size(); ++i)
      worst = std::max(worst, std::fabs(two.data()[i] - ref[i])), scale = std::max(scale, std::fabs(ref[i]));
    CHECK(worst <= 2e-6 * scale * std::sqrt(static_cast<double>(K)));
  }
  set_num_threads(threads);
  ops::detail::use_own_sgemm() = was;
}

namespace {
std::vector<double> conv_ref(const T32& x, const T32& w, const T32& b, const ops::Conv2dParams& p, int64_t& Ho,
                             int64_t& Wo) {
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3), O = w.dim(0), kh = w.dim(2), kw = w.dim(3);
  Ho = (H + p.pad_top + p.pad_bottom - kh) / p.stride + 1;
  Wo = (W + p.pad_left + p.pad_right - kw) / p.stride + 1;
  auto X = dvec(x), Wt = dvec(w), Bv = dvec(b);
  std::vector<double> out(static_cast<std::size_t>(N * O * Ho * Wo));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t oy = 0; oy < Ho; ++oy)
        for (int64_t ox = 0; ox < Wo; ++ox) {
          double s = Bv[o];
          for (int64_t c = 0; c < C; ++c)
            for (int64_t ky = 0; ky < kh; ++ky)
              for (int64_t kx = 0; kx < kw; ++kx) {
                const int64_t iy = oy * p.stride - p.pad_top + ky, ix = ox * p.stride - p.pad_left + kx;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                s += X[((n * C + c) * H + iy) * W + ix] * Wt[((o * C + c) * kh + ky) * kw + kx];
              }
          out[((n * O + o) * Ho + oy) * Wo + ox] = s;
        }
  return out;
}
}  // namespace

TEST_CASE("conv2d: k x k, stride, symmetric and asymmetric padding, 1x1 fast path") {
  struct Case {
    int k, stride, pt, pb, pl, pr;
  };
  const Case cases[] = {{3, 1, 1, 1, 1, 1}, {3, 2, 1, 1, 1, 1}, {3, 2, 0, 1, 0, 1}, {1, 1, 0, 0, 0, 0},
                        {1, 2, 0, 0, 0, 0}, {5, 1, 2, 2, 2, 2}, {3, 1, 0, 0, 0, 0}, {4, 3, 2, 0, 1, 3}};
  for (const auto& cs : cases) {
    const int64_t N = rand_dim(1, 2), C = rand_dim(1, 7), O = rand_dim(1, 9), H = rand_dim(cs.k, 13),
                  W = rand_dim(cs.k, 11);
    auto x = randn({N, C, H, W}), w = randn({O, C, cs.k, cs.k}), b = randn({O});
    const ops::Conv2dParams p{cs.stride, cs.pt, cs.pb, cs.pl, cs.pr};
    int64_t Ho = 0, Wo = 0;
    auto ref = conv_ref(x, w, b, p, Ho, Wo);
    auto y = ops::conv2d(x, w, b, p);
    REQUIRE(y.shape() == Shape{N, O, Ho, Wo});
    CAPTURE(cs.k);
    CAPTURE(cs.stride);
    CHECK(rel_err(y, ref) < 1e-5);
    auto ynb = ops::conv2d(x, w, T32{}, p);
    auto zero = T32::zeros({O});
    CHECK(rel_err(ynb, conv_ref(x, w, zero, p, Ho, Wo)) < 1e-5);
  }
  CHECK_THROWS_AS(ops::conv2d(randn({1, 3, 8, 8}), randn({4, 2, 3, 3}), T32{}, ops::Conv2dParams::same(1)),
                  ShapeError);
  CHECK_THROWS_AS(ops::conv2d(randn({1, 3, 2, 2}), randn({4, 3, 3, 3}), T32{}, ops::Conv2dParams{}), ShapeError);
}

TEST_CASE("exp_span: within 2 ulp of exp over the float range, inf / -inf / NaN / underflow at the edges") {
  // Every 997th float of [-110, 90] by bit pattern (about 2 M values), then the special values.
  std::vector<float> xs;
  for (const float end : {-110.0f, 90.0f}) {
    const uint32_t top = bit_cast<uint32_t>(end) & 0x7fffffffu;
    for (uint32_t b = 0; b <= top; b += 997) xs.push_back(bit_cast<float>(b | (end < 0 ? 0x80000000u : 0u)));
  }
  const float inf = std::numeric_limits<float>::infinity();
  xs.insert(xs.end(), {0.0f, -0.0f, 1.5f, -3.25f, 20.0f, inf, -inf, std::numeric_limits<float>::quiet_NaN()});
  std::vector<float> ys(xs.size());
  for (std::size_t n : {xs.size(), std::size_t{13}}) {  // a masked tail too: the last 13 values
    const std::size_t first = xs.size() - n;
    ops::detail::exp_span(xs.data() + first, ys.data() + first, static_cast<int64_t>(n));
    double worst = 0;
    for (std::size_t i = first; i < xs.size(); ++i) {
      const double ref = std::exp(static_cast<double>(xs[i]));
      if (std::isnan(xs[i])) {
        CHECK(std::isnan(ys[i]));
      } else if (ref > std::numeric_limits<float>::max()) {
        CHECK(ys[i] == inf);
      } else if (ref < std::numeric_limits<float>::min()) {  // denormal or 0
        CHECK(ys[i] >= 0.0f);
        CHECK(ys[i] < 2 * std::numeric_limits<float>::min());
      } else {
        const float rf = static_cast<float>(ref);
        worst = std::max(worst, std::fabs(ys[i] - ref) / (std::nextafter(rf, inf) - rf));
      }
    }
    CHECK(worst <= 2.0);
    MESSAGE("exp_span: ", n, " values, worst ", worst, " ulp");
  }
  // a x + b, and in place
  std::vector<float> v = {0.5f, -2.0f, 3.0f};
  ops::detail::exp_span(v.data(), v.data(), 3, -1.5f, 0.25f);
  for (int i = 0; i < 3; ++i)
    CHECK(v[i] == doctest::Approx(std::exp(-1.5 * std::vector<double>{0.5, -2.0, 3.0}[i] + 0.25)).epsilon(1e-6));
}

TEST_CASE("activate_span / activation_derivative_span (float): the scalar functions over several chunks, in place") {
  const int64_t n = 600;  // three chunks of 256, the last short
  const auto x = randn({n}), g = randn({n});
  for (const auto a : {ops::Activation::SiLU, ops::Activation::GeluErf, ops::Activation::GeluTanh,
                       ops::Activation::QuickGelu, ops::Activation::Tanh, ops::Activation::ReLU}) {
    CAPTURE(static_cast<int>(a));
    std::vector<float> y(n), d(n), in_place(x.data(), x.data() + n), d_on_x(x.data(), x.data() + n),
        d_on_g(g.data(), g.data() + n);
    ops::activate_span(a, x.data(), y.data(), n);
    ops::activate_span(a, in_place.data(), in_place.data(), n);
    ops::activation_derivative_span(a, x.data(), g.data(), d.data(), n);
    ops::activation_derivative_span(a, d_on_x.data(), g.data(), d_on_x.data(), n);  // d == x (GroupNorm's backward)
    ops::activation_derivative_span(a, x.data(), d_on_g.data(), d_on_g.data(), n);  // d == g
    double worst_y = 0, worst_d = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double xi = x.data()[i], gi = g.data()[i];
      worst_y = std::max(worst_y, std::fabs(y[i] - ops::activate(a, xi)));
      worst_d = std::max(worst_d, std::fabs(d[i] - gi * ops::activation_derivative(a, xi)));
    }
    CHECK(worst_y < 2e-6);
    CHECK(worst_d < 2e-6 * 4);
    CHECK(in_place == y);
    CHECK(d_on_x == d);
    CHECK(d_on_g == d);
  }
}

TEST_CASE("conv2d: a batch of small images in one GEMM, as each image alone") {
  // 5 images of 6 x 5 (one group of 5) and of 24 x 25 (groups of 3 and 2: 2048 / 600 positions) with 3x3 (im2col
  // side by side) and 1x1 (the inputs side by side), bias and none: the reference, and on our own SGEMM (sums in an
  // order fixed by its K blocks) the bits of each image alone.
  for (const int k : {3, 1, -3}) {
    const ops::Conv2dParams p = k != 1 ? ops::Conv2dParams::same(1) : ops::Conv2dParams{};
    const int64_t H = k < 0 ? 24 : 6, W = k < 0 ? 25 : 5, kk = k < 0 ? 3 : k;
    auto x = randn({5, 170, H, W}), w = randn({7, 170, kk, kk}), b = randn({7});  // 170 inputs: not the direct 3x3
    int64_t Ho = 0, Wo = 0;
    const auto ref = conv_ref(x, w, b, p, Ho, Wo);
    const auto y = ops::conv2d(x, w, b, p);
    CAPTURE(k);
    CHECK(rel_err(y, ref) < 1e-5);
    if (ops::detail::kHasOwnSgemm && ops::detail::use_own_sgemm())
      for (int64_t n = 0; n < 5; ++n) {
        const auto alone = ops::conv2d(x.slice(n, n + 1).contiguous(), w, b, p).to_vector();
        const auto batch = y.slice(n, n + 1).contiguous().to_vector();
        CHECK(alone == batch);
      }
    CHECK(rel_err(ops::conv2d(x, w, T32{}, p), conv_ref(x, w, T32::zeros({7}), p, Ho, Wo)) < 1e-5);
  }
}

TEST_CASE("conv2d: large image uses several im2col bands") {
  // 64 channels x 9 x 200 columns x 4 bytes = 460 KB per output row: an 8 MB band holds ~18 rows of 100.
  auto x = randn({1, 64, 100, 200}), w = randn({3, 64, 3, 3}), b = randn({3});
  int64_t Ho = 0, Wo = 0;
  auto ref = conv_ref(x, w, b, ops::Conv2dParams::same(1), Ho, Wo);
  CHECK(rel_err(ops::conv2d(x, w, b, ops::Conv2dParams::same(1)), ref) < 1e-5);
}

TEST_CASE("conv2d 3x3 stride 1 pad 1: the direct kernel and im2col agree with the reference, forward and dX") {
  // Widths cover every tail of the direct kernel (32-pixel blocks, a masked second vector, a lone vector), output
  // counts every remainder of its 8-channel blocks. Both paths run: on a machine without AVX-512 only im2col.
  const ops::Conv2dParams p = ops::Conv2dParams::same(1);
  for (const int64_t W : {1, 5, 16, 17, 32, 33, 48, 70}) {
    const int64_t N = 2, C = rand_dim(1, 20), O = rand_dim(1, 19), H = rand_dim(1, 9);  // <= kDirectConvMaxInputs
    CAPTURE(W);
    CAPTURE(C);
    CAPTURE(O);
    auto x = randn({N, C, H, W}), w = randn({O, C, 3, 3}), b = randn({O}), dy = randn({N, O, H, W});
    int64_t Ho = 0, Wo = 0;
    const auto ref = conv_ref(x, w, b, p, Ho, Wo);
    // dX of sum(y * dy) is the convolution of dy with w flipped and transposed: a reference of its own.
    auto wt = T32::empty({C, O, 3, 3});
    for (int64_t o = 0; o < O; ++o)
      for (int64_t c = 0; c < C; ++c)
        for (int k = 0; k < 9; ++k) wt.data()[(c * O + o) * 9 + (8 - k)] = w.data()[(o * C + c) * 9 + k];
    const auto dx_ref = conv_ref(dy, wt, T32::zeros({C}), p, Ho, Wo);
    for (const bool direct : {true, false}) {
      CAPTURE(direct);
      ops::detail::use_direct_conv3x3() = direct;
      CHECK(rel_err(ops::conv2d(x, w, b, p), ref) < 1e-5);
      T32 dx, dw, db;
      ops::conv2d_backward(dy, x, w, x.shape(), w.shape(), p, true, false, false, dx, dw, db);
      CHECK(rel_err(dx, dx_ref) < 1e-5);
    }
    ops::detail::use_direct_conv3x3() = true;
  }
}

TEST_CASE("group norm and layer norm, with eps and fused activation") {
  for (double eps : {1e-5, 1e-6, 0.1}) {
    const int64_t N = rand_dim(1, 3), G = rand_dim(1, 4), cpg = rand_dim(1, 5), H = rand_dim(1, 7), W = rand_dim(1, 9);
    const int64_t C = G * cpg, S = H * W;
    auto x = randn({N, C, H, W});
    // offset the input so a naive one-pass variance would lose precision
    x = ops::affine(x, 3.0f, 100.0f);
    auto g = randn({C}), b = randn({C});
    auto X = dvec(x), Gv = dvec(g), Bv = dvec(b);
    std::vector<double> ref(X.size()), ref_silu(X.size());
    for (int64_t n = 0; n < N; ++n)
      for (int64_t gi = 0; gi < G; ++gi) {
        double m = 0, v = 0;
        const int64_t off = (n * C + gi * cpg) * S, cnt = cpg * S;
        for (int64_t i = 0; i < cnt; ++i) m += X[off + i];
        m /= cnt;
        for (int64_t i = 0; i < cnt; ++i) v += (X[off + i] - m) * (X[off + i] - m);
        v /= cnt;
        for (int64_t i = 0; i < cnt; ++i) {
          const int64_t c = gi * cpg + i / S;
          const double y = (X[off + i] - m) / std::sqrt(v + eps) * Gv[c] + Bv[c];
          ref[off + i] = y;
          ref_silu[off + i] = y / (1 + std::exp(-y));
        }
      }
    CHECK(rel_err(ops::group_norm(x, G, g, b, eps), ref) < 2e-5);
    CHECK(rel_err(ops::group_norm(x, G, g, b, eps, ops::Activation::SiLU), ref_silu) < 2e-5);

    const int64_t rows = rand_dim(1, 9), D = rand_dim(1, 67);
    auto xl = ops::affine(randn({rows, D}), 2.0f, -50.0f), gl = randn({D}), bl = randn({D});
    auto XL = dvec(xl), GL = dvec(gl), BL = dvec(bl);
    std::vector<double> lref(XL.size());
    for (int64_t r = 0; r < rows; ++r) {
      double m = 0, v = 0;
      for (int64_t i = 0; i < D; ++i) m += XL[r * D + i];
      m /= D;
      for (int64_t i = 0; i < D; ++i) v += (XL[r * D + i] - m) * (XL[r * D + i] - m);
      v /= D;
      for (int64_t i = 0; i < D; ++i) lref[r * D + i] = (XL[r * D + i] - m) / std::sqrt(v + eps) * GL[i] + BL[i];
    }
    CHECK(rel_err(ops::layer_norm(xl, gl, bl, eps), lref) < 2e-5);
  }
  CHECK_THROWS_AS(ops::group_norm(randn({1, 6, 2, 2}), 4, T32{}, T32{}, 1e-5), ShapeError);
}

TEST_CASE("softmax and activations") {
  auto x = ops::affine(randn({5, 33}), 30.0f);  // large logits: needs the max subtraction
  auto X = dvec(x);
  std::vector<double> ref(X.size());
  for (int r = 0; r < 5; ++r) {
    double m = -1e300, s = 0;
    for (int i = 0; i < 33; ++i) m = std::max(m, X[r * 33 + i]);
    for (int i = 0; i < 33; ++i) s += std::exp(X[r * 33 + i] - m);
    for (int i = 0; i < 33; ++i) ref[r * 33 + i] = std::exp(X[r * 33 + i] - m) / s;
  }
  CHECK(rel_err(ops::softmax(x), ref) < 1e-6);

  auto a = ops::affine(randn({4, 3, 17}), 3.0f);
  auto A = dvec(a);
  auto ref_of = [&](auto f) {
    std::vector<double> r(A.size());
    for (std::size_t i = 0; i < A.size(); ++i) r[i] = f(A[i]);
    return r;
  };
  const double pi = 3.14159265358979323846;
  CHECK(rel_err(ops::silu(a), ref_of([](double v) { return v / (1 + std::exp(-v)); })) < 1e-6);
  CHECK(rel_err(ops::gelu(a), ref_of([](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); })) < 1e-6);
  CHECK(rel_err(ops::gelu(a, true), ref_of([&](double v) {
          return 0.5 * v * (1 + std::tanh(std::sqrt(2 / pi) * (v + 0.044715 * v * v * v)));
        })) < 1e-6);
  CHECK(rel_err(ops::quick_gelu(a), ref_of([](double v) { return v / (1 + std::exp(-1.702 * v)); })) < 1e-6);
  CHECK(rel_err(ops::activate(a, ops::Activation::ReLU), ref_of([](double v) { return v > 0 ? v : 0.0; })) == 0);
  CHECK(rel_err(ops::activate(a, ops::Activation::Tanh), ref_of([](double v) { return std::tanh(v); })) < 1e-6);
  CHECK(rel_err(ops::clamp(a, -1.0f, 0.5f), ref_of([](double v) { return std::min(std::max(v, -1.0), 0.5); })) == 0);
  auto sq = ops::map(a, [](float v) { return v * v; });
  CHECK(rel_err(sq, ref_of([](double v) { return double(float(v) * float(v)); })) == 0);
  // erf and tanh GELU really differ (so the tests above can tell them apart)
  CHECK(rel_err(ops::gelu(a, true), dvec(ops::gelu(a))) > 1e-5);

  auto g = randn({3, 5, 2 * 11});
  auto Gv = dvec(g);
  std::vector<double> gref(3 * 5 * 11);
  for (int r = 0; r < 15; ++r)
    for (int i = 0; i < 11; ++i) {
      const double h = Gv[r * 22 + i], gate = Gv[r * 22 + 11 + i];
      gref[r * 11 + i] = h * 0.5 * gate * (1 + std::erf(gate / std::sqrt(2.0)));
    }
  CHECK(rel_err(ops::geglu(g), gref) < 1e-6);
  CHECK_THROWS_AS(ops::geglu(randn({2, 3})), ShapeError);
}

TEST_CASE("broadcasting add/mul/sub, concat, upsample") {
  auto a = randn({2, 3, 4, 5}), b = randn({3, 1, 5}), c = randn({2, 3, 1, 1});
  auto A = dvec(a), Bv = dvec(b), Cv = dvec(c);
  std::vector<double> ab(A.size()), ac(A.size()), amc(A.size());
  for (int n = 0; n < 2; ++n)
    for (int ch = 0; ch < 3; ++ch)
      for (int y = 0; y < 4; ++y)
        for (int x = 0; x < 5; ++x) {
          const int i = ((n * 3 + ch) * 4 + y) * 5 + x;
          ab[i] = A[i] + Bv[ch * 5 + x];
          ac[i] = A[i] * Cv[n * 3 + ch];
          amc[i] = A[i] - Cv[n * 3 + ch];
        }
  CHECK(rel_err(ops::add(a, b), ab) < 1e-6);
  CHECK(rel_err(ops::add(b, a), ab) < 1e-6);  // commutes, broadcast on the left
  CHECK(rel_err(ops::mul(a, c), ac) < 1e-6);
  CHECK(rel_err(ops::sub(a, c), amc) < 1e-6);
  auto inplace = a.clone();
  ops::add_(inplace, b);
  CHECK(rel_err(inplace, ab) < 1e-6);
  CHECK_THROWS_AS(ops::add(a, randn({4, 4})), ShapeError);
  CHECK_THROWS_AS(ops::add_(b, a), ShapeError);

  auto p = randn({2, 3, 4, 5}), q = randn({2, 2, 4, 5});
  auto cat = ops::concat<float>({p, q}, 1);
  REQUIRE(cat.shape() == Shape{2, 5, 4, 5});
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t ch = 0; ch < 5; ++ch)
      for (int64_t y = 0; y < 4; ++y)
        for (int64_t x = 0; x < 5; ++x)
          REQUIRE(cat.at({n, ch, y, x}) == (ch < 3 ? p.at({n, ch, y, x}) : q.at({n, ch - 3, y, x})));
  auto last = ops::concat<float>({p, p}, -1);
  CHECK(last.shape() == Shape{2, 3, 4, 10});
  CHECK(last.at({1, 2, 3, 7}) == p.at({1, 2, 3, 2}));
  CHECK_THROWS_AS(ops::concat<float>({p, randn({2, 2, 3, 5})}, 1), ShapeError);

  auto u = randn({2, 3, 5, 7});
  auto up = ops::upsample_nearest2x(u);
  REQUIRE(up.shape() == Shape{2, 3, 10, 14});
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t ch = 0; ch < 3; ++ch)
      for (int64_t y = 0; y < 10; ++y)
        for (int64_t x = 0; x < 14; ++x) REQUIRE(up.at({n, ch, y, x}) == u.at({n, ch, y / 2, x / 2}));
}

TEST_CASE("sinusoidal timestep embedding (diffusers get_timestep_embedding)") {
  const std::vector<float> ts{0.0f, 1.0f, 500.0f, 999.0f};
  for (bool flip : {true, false})
    for (double shift : {0.0, 1.0})
      for (int64_t dim : {32, 33, 320}) {
        auto e = ops::timestep_embedding<float>(ts, dim, flip, shift);
        REQUIRE(e.shape() == Shape{4, dim});
        const int64_t half = dim / 2;
        std::vector<double> ref(static_cast<std::size_t>(4 * dim), 0.0);
        for (int b = 0; b < 4; ++b)
          for (int64_t i = 0; i < half; ++i) {
            const double arg = ts[b] * std::exp(-std::log(10000.0) * i / (half - shift));
            ref[b * dim + i] = flip ? std::cos(arg) : std::sin(arg);
            ref[b * dim + half + i] = flip ? std::sin(arg) : std::cos(arg);
          }
        // float32 arguments up to ~1000 rad: ~1e-4 absolute is the float rounding of the argument itself
        CHECK(rel_err(e, ref) < 2e-4);
      }
  auto e = ops::timestep_embedding<float>(std::vector<float>{1.0f}, 4, true, 0.0);
  CHECK(e.at({0, 0}) == doctest::Approx(std::cos(1.0)));  // cos first when flipped
  CHECK(e.at({0, 2}) == doctest::Approx(std::sin(1.0)));

  // 16-bit models: the float32 embedding of the exact timestep, rounded once (as diffusers casts it). bfloat16
  // cannot hold 999 (it would embed 1000's phases), half arguments near 1000 would lose 9 bits.
  const auto ref = ops::timestep_embedding<float>(ts, 320, true, 0.0);
  const auto bf = ops::timestep_embedding<bfloat16>(ts, 320, true, 0.0).to<float>();
  const auto hf = ops::timestep_embedding<half>(ts, 320, true, 0.0).to<float>();
  const auto dbl = ops::timestep_embedding<double>(ts, 320, true, 0.0).to<float>();
  CHECK(rel_err(bf, dvec(ref.to<bfloat16>().to<float>())) == 0.0);
  CHECK(rel_err(hf, dvec(ref.to<half>().to<float>())) == 0.0);
  CHECK(rel_err(dbl, dvec(ref)) == 0.0);
  const auto at_1000 = ops::timestep_embedding<float>(std::vector<float>{1000.0f}, 320, true, 0.0);
  CHECK(rel_err(bf.narrow(0, 3, 1), dvec(at_1000.to<bfloat16>().to<float>())) > 0.1);  // 999 is not 1000
}

TEST_CASE("embedding lookup") {
  auto table = randn({10, 3});
  auto e = ops::embedding(table, {3, 0, 9});
  CHECK(e.at({0, 1}) == table.at({3, 1}));
  CHECK(e.at({2, 2}) == table.at({9, 2}));
  CHECK_THROWS_AS(ops::embedding(table, {10}), ShapeError);
}
