// The bfloat16 matrix products (ops/gemm_bf16.hpp): each kernel this CPU has against a double reference of the
// operands rounded to bfloat16, exactly (inputs chosen so every product and sum is exact in float32, so any wrong
// index, padding or rounding shows as a difference), with round-to-nearest-even ties; the same bits on any thread
// count; and ops::gemm<float> taking the path only when asked.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "adabldm/core/rng.hpp"
#include "adabldm/ops/ops.hpp"

using namespace adabldm;
using ops::detail::Bf16Kernel;

namespace {
/// The kernels this machine can run (empty where it has none: the tests then check the float32 fallback only).
std::vector<Bf16Kernel> kernels_here() {
  const Bf16Kernel best = ops::detail::detect_bf16_kernel();
  if (best == Bf16Kernel::amx) return {Bf16Kernel::amx, Bf16Kernel::avx512_bf16};
  if (best == Bf16Kernel::avx512_bf16) return {Bf16Kernel::avx512_bf16};
  return {};
}

double round_bf16(float x) { return static_cast<float>(bfloat16(x)); }

std::vector<double> reference(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const std::vector<float>& A,
                              int64_t lda, const std::vector<float>& B, int64_t ldb, double beta,
                              const std::vector<float>& C, int64_t ldc) {
  std::vector<double> out(C.begin(), C.end());
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k)
        s += round_bf16(ta ? A[k * lda + i] : A[i * lda + k]) * round_bf16(tb ? B[j * ldb + k] : B[k * ldb + j]);
      out[i * ldc + j] = alpha * s + (beta == 0 ? 0.0 : beta * C[i * ldc + j]);
    }
  return out;
}

/// Integers in [-lim, lim] divided by `div`: with lim <= 300 some need 9 significant bits, so bfloat16 (8) rounds
/// them, ties included (257 -> 256, 259 -> 260); every rounded value stays a small multiple of 1/div.
std::vector<float> grid(Rng& rng, int64_t n, int lim, float div) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = static_cast<float>(rng.uniform_int(-lim, lim)) / div;
  return v;
}
}  // namespace

TEST_CASE("bf16 gemm: rounding ties to even, as the reference rounds") {
  CHECK(round_bf16(257.0f) == 256.0);
  CHECK(round_bf16(259.0f) == 260.0);
  CHECK(round_bf16(-259.0f) == -260.0);
  CHECK(round_bf16(255.0f) == 255.0);
}

TEST_CASE("bf16 gemm: every kernel here equals the double product of the rounded operands, every edge and layout") {
  const auto kernels = kernels_here();
  MESSAGE("bf16 kernels on this CPU: ", kernels.size(), " (best: ", std::string(ops::cpu_bf16_kernel()), ")");
  Rng rng(5);
  int cases = 0;
  // Small shapes around the 32-wide tiles and the K block, then two past the M block (mc <= 2048) and the N block
  // (4096 columns), so that A and B are packed more than once.
  std::vector<std::array<int64_t, 3>> shapes;
  for (int64_t M : {1, 17, 32, 33, 70})
    for (int64_t N : {1, 15, 16, 31, 33, 64})
      for (int64_t K : {1, 2, 31, 33, 600, 1100}) shapes.push_back({M, N, K});
  shapes.push_back({2100, 20, 40});
  shapes.push_back({3, 4200, 40});
  for (const Bf16Kernel kernel : kernels)
    for (const auto& [M, N, K] : shapes)
          for (int layout = 0; layout < 4; ++layout) {
            const bool ta = layout & 1, tb = layout & 2;
            const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
            // |a| <= 37.5 in steps of 1/8, |b| <= 2 in steps of 1/4: each product a multiple of 2^-5 below 76, so
            // sums of up to 1100 of them need at most 22 bits: exact in float32 whatever the order.
            const auto a = grid(rng, (ta ? K : M) * lda, 300, 8.0f), b = grid(rng, (tb ? N : K) * ldb, 8, 4.0f);
            const auto c0 = grid(rng, M * ldc, 16, 4.0f);
            const float alpha = 0.5f, beta = (M + N + K + layout) % 3 == 0 ? 0.0f : 2.0f;
            std::vector<float> c = c0;
            if (beta == 0.0f) c[0] = std::numeric_limits<float>::quiet_NaN();  // beta = 0 ignores C, NaN too
            const auto ref = reference(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
            ops::detail::sgemm_bf16(kernel, ta, tb, M, N, K, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
            int64_t wrong = 0, padding_written = 0;
            for (int64_t i = 0; i < M; ++i)
              for (int64_t j = 0; j < ldc; ++j) {
                const std::size_t x = static_cast<std::size_t>(i * ldc + j);
                if (j >= N) padding_written += c[x] != c0[x] && !(x == 0 && beta == 0.0f);
                else wrong += static_cast<double>(c[x]) != ref[x];
              }
            const std::string kernel_name = ops::detail::bf16_kernel_name(kernel);
      CAPTURE(kernel_name);
            CAPTURE(M);
            CAPTURE(N);
            CAPTURE(K);
            CAPTURE(layout);
            CHECK(wrong == 0);
            CHECK(padding_written == 0);
            ++cases;
          }
  CHECK(cases == static_cast<int>(kernels.size() * shapes.size()) * 4);
}

TEST_CASE("bf16 gemm: through ops::gemm only when asked; the same bits on 1 and 2 threads; close to float32") {
  Rng rng(6);
  const int threads = num_threads();
  const auto saved_precision = ops::cpu_matmul_precision();
  const Bf16Kernel saved_kernel = ops::detail::bf16_kernel();
  // Both splits over threads: slices of rows (M >= N) and of columns (M < N).
  for (int layout = 0; layout < 8; ++layout) {
    const int64_t M = layout < 4 ? 301 : 131, N = layout < 4 ? 259 : 397, K = 530;
    const auto a = rng.normal({M * K}), b = rng.normal({K * N});
    const bool ta = layout & 1, tb = layout & 2;
    const int64_t lda = ta ? M : K, ldb = tb ? K : N;
    auto product = [&](ops::MatmulPrecision p, int nthreads) {
      ops::set_cpu_matmul_precision(p);
      set_num_threads(nthreads);
      auto c = Tensor<float>::empty({M * N});
      ops::gemm<float>(ta, tb, M, N, K, 1.0f, a.data(), lda, b.data(), ldb, 0.0f, c.data(), N);
      return c.to_vector();
    };
    const auto f32 = product(ops::MatmulPrecision::f32, 2);
    for (const Bf16Kernel kernel : kernels_here()) {
      ops::detail::bf16_kernel() = kernel;
      const auto one = product(ops::MatmulPrecision::bf16, 1), two = product(ops::MatmulPrecision::bf16, 2);
      CHECK(one == two);
      // bfloat16 keeps 8 significant bits: each product is off by up to 2^-8 relative, so the sum of K random
      // terms by about 2^-8 sqrt(K / 3) of a term; measured here, bounded loosely, and never exact.
      double worst = 0, scale = 0;
      for (std::size_t i = 0; i < f32.size(); ++i)
        worst = std::max(worst, std::fabs(static_cast<double>(two[i]) - f32[i])), scale = std::max(scale, std::fabs(static_cast<double>(f32[i])));
      const std::string kernel_name = ops::detail::bf16_kernel_name(kernel);
      CAPTURE(kernel_name);
      CAPTURE(layout);
      MESSAGE("bf16 against float32 (", kernel_name, ", layout ", layout,
              "): max |difference| ", worst, " of max |C| ", scale);
      CHECK(worst > 0);
      CHECK(worst < 0.01 * scale);
    }
    // No kernel: MatmulPrecision::bf16 leaves products in float32, bit for bit.
    ops::detail::bf16_kernel() = Bf16Kernel::none;
    CHECK(product(ops::MatmulPrecision::bf16, 2) == f32);
    ops::detail::bf16_kernel() = saved_kernel;
  }
  ops::set_cpu_matmul_precision(saved_precision);
  set_num_threads(threads);
}

TEST_CASE("bf16 gemm: frozen weights are packed once and give the same bits, as either operand, on any split") {
  const auto kernels = kernels_here();
  if (kernels.empty()) {
    MESSAGE("no AMX / AVX512-BF16 here: frozen weights change nothing to check");
    return;
  }
  Rng rng(8);
  const int threads = num_threads();
  const auto saved_precision = ops::cpu_matmul_precision();
  const Bf16Kernel saved_kernel = ops::detail::bf16_kernel();
  ops::set_cpu_matmul_precision(ops::MatmulPrecision::bf16);
  // Slices of rows and of columns on 2 threads, and a product small enough for one; K across the K block.
  const std::vector<std::array<int64_t, 3>> shapes = {{301, 259, 530}, {131, 397, 530}, {45, 70, 33}};
  int cases = 0;
  for (const Bf16Kernel kernel : kernels) {
    ops::detail::bf16_kernel() = kernel;
    for (const auto& [M, N, K] : shapes)
      for (int layout = 0; layout < 4; ++layout)
        for (const bool weight_is_b : {false, true}) {
          const bool ta = layout & 1, tb = layout & 2;
          const int64_t lda = ta ? M : K, ldb = tb ? K : N;
          auto a = rng.normal({M * K}), b = rng.normal({K * N});
          auto product = [&](int nthreads) {
            set_num_threads(nthreads);
            auto c = Tensor<float>::empty({M * N});
            ops::gemm<float>(ta, tb, M, N, K, 1.0f, a.data(), lda, b.data(), ldb, 0.0f, c.data(), N);
            return c.to_vector();
          };
          const auto one = product(1), two = product(2);
          Tensor<float> weight = weight_is_b ? b : a;
          CAPTURE(M);
          CAPTURE(layout);
          CAPTURE(weight_is_b);
          {
            ops::FrozenWeights outer({weight});
            {
              ops::FrozenWeights inner({weight});  // scopes nest: the weight stays frozen until the last one ends
              CHECK(product(2) == two);
              CHECK(product(1) == one);
            }
            // Packed once: a change made inside the scope is not seen (the documented contract)...
            const float saved = weight.data()[0];
            weight.data()[0] = saved + 1000.0f;
            CHECK(product(2) == two);
            CHECK(product(1) == one);
            weight.data()[0] = saved;
          }
          // ...and it is seen once the scope has ended.
          weight.data()[0] += 1000.0f;
          CHECK(product(2) != two);
          ++cases;
        }
  }
  CHECK(cases == static_cast<int>(kernels.size() * shapes.size()) * 8);
  ops::detail::bf16_kernel() = saved_kernel;
  ops::set_cpu_matmul_precision(saved_precision);
  set_num_threads(threads);
}
