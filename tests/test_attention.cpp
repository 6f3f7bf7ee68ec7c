// Tiled (flash-style) attention against the textbook softmax(q k^T * scale) v, computed row by row in double.
#include <doctest/doctest.h>

#include "max_error.hpp"

#include <cmath>
#include <vector>

#include "adabldm/core/rng.hpp"
#include "adabldm/ops/attention.hpp"

using namespace adabldm;
using T32 = Tensor<float, Cpu>;

namespace {
std::vector<double> naive_attention(const T32& q, const T32& k, const T32& v, int64_t H, double scale, bool causal) {
  const int64_t B = q.dim(0), Lq = q.dim(1), Lk = k.dim(1), D = q.dim(2) / H, Dv = v.dim(2) / H;
  const auto Q = q.to_vector(), K = k.to_vector(), V = v.to_vector();
  std::vector<double> out(static_cast<std::size_t>(B * Lq * H * Dv)), s(static_cast<std::size_t>(Lk));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Lq; ++i) {
        double m = -1e300;
        const int64_t n = causal ? std::min(Lk, i + 1) : Lk;
        for (int64_t j = 0; j < n; ++j) {
          double d = 0;
          for (int64_t c = 0; c < D; ++c)
            d += double(Q[(b * Lq + i) * H * D + h * D + c]) * K[(b * Lk + j) * H * D + h * D + c];
          s[j] = d * scale;
          m = std::max(m, s[j]);
        }
        double z = 0;
        for (int64_t j = 0; j < n; ++j) z += (s[j] = std::exp(s[j] - m));
        for (int64_t c = 0; c < Dv; ++c) {
          double acc = 0;
          for (int64_t j = 0; j < n; ++j) acc += s[j] * V[(b * Lk + j) * H * Dv + h * Dv + c];
          out[(b * Lq + i) * H * Dv + h * Dv + c] = acc / z;
        }
      }
  return out;
}
double max_err(const T32& a, const std::vector<double>& b) {
  const auto av = a.to_vector();
  double e = 0;
  for (std::size_t i = 0; i < b.size(); ++i) e = worse(e, std::abs(av[i] - b[i]));
  return e;
}
}  // namespace

TEST_CASE("attention: random shapes, odd sizes, several tiles, causal") {
  Rng rng(11);
  struct Case {
    int64_t B, H, Lq, Lk, D;
    bool causal;
  };
  const Case cases[] = {{1, 1, 1, 1, 1, false},   {2, 3, 17, 77, 5, false},  {1, 8, 65, 300, 8, false},
                        {2, 2, 77, 77, 16, true}, {1, 4, 130, 130, 7, true}, {1, 2, 257, 513, 3, true},
                        {3, 1, 64, 256, 40, false}};
  for (const auto& c : cases) {
    auto q = rng.normal({c.B, c.Lq, c.H * c.D}), k = rng.normal({c.B, c.Lk, c.H * c.D}),
         v = rng.normal({c.B, c.Lk, c.H * c.D});
    const double scale = 1.0 / std::sqrt(double(c.D));
    auto out = ops::attention(q, k, v, {c.H, 0.0, c.causal});
    REQUIRE(out.shape() == Shape{c.B, c.Lq, c.H * c.D});
    CAPTURE(c.Lq);
    CAPTURE(c.Lk);
    CHECK(max_err(out, naive_attention(q, k, v, c.H, scale, c.causal)) < 2e-5);
    auto out2 = ops::attention(q, k, v, {c.H, 0.3, c.causal});  // explicit scale
    CHECK(max_err(out2, naive_attention(q, k, v, c.H, 0.3, c.causal)) < 2e-5);
  }
}

TEST_CASE("attention at L = 4096 (64x64 latent) matches the reference") {
  Rng rng(12);
  const int64_t L = 4096, H = 2, D = 8;
  auto q = rng.normal({1, L, H * D}, 0.0, 2.0), k = rng.normal({1, L, H * D}, 0.0, 2.0), v = rng.normal({1, L, H * D});
  auto out = ops::attention(q, k, v, {H});
  CHECK(max_err(out, naive_attention(q, k, v, H, 1.0 / std::sqrt(double(D)), false)) < 2e-5);
}

TEST_CASE("attention rejects inconsistent inputs") {
  Rng rng(13);
  CHECK_THROWS_AS(ops::attention(rng.normal({1, 4, 6}), rng.normal({1, 5, 6}), rng.normal({1, 4, 6}), {2}), ShapeError);
  CHECK_THROWS_AS(ops::attention(rng.normal({1, 4, 6}), rng.normal({1, 4, 6}), rng.normal({1, 4, 6}), {4}), ShapeError);
}
