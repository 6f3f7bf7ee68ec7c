// GEMM (cuBLAS), matmul, linear (cuBLASLt bias epilogue and the cuBLAS path) and conv2d (cuDNN forward, backward
// data, backward filter; symmetric, per-side and no padding, strides, 1x1 and non-square kernels) against their
// CPU twins, forward and backward, in float32, half and bfloat16. Tolerances: cuda_test_util.cuh (reduction
// length K = the GEMM's inner dimension, C * kh * kw for a convolution's output, N * Ho * Wo for its weight
// gradient).
#include "cuda_test_util.cuh"

using namespace cuda_test;

CUDA_TEST_CASE("gemm_device: all transpose combinations, alpha, beta, leading dimensions, batches") {
  ADABLDM_REQUIRE_CUDA();
  const int64_t M = 37, N = 29, K = 53, ld_pad = 3;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const int64_t lda = (ta ? M : K) + ld_pad, ldb = (tb ? K : N) + ld_pad, ldc = N + ld_pad;
      const auto a = randn({ta ? K : M, lda}), b = randn({tb ? N : K, ldb}), c = randn({M, ldc});
      auto ref = c.clone();
      ops::gemm<float>(ta, tb, M, N, K, 0.5f, a.data(), lda, b.data(), ldb, 2.0f, ref.data(), ldc);
      auto dc = cuda::to_device(c);
      ops::gemm_device<float>(ta, tb, M, N, K, 0.5f, cuda::to_device(a).data(), lda, cuda::to_device(b).data(), ldb,
                              2.0f, dc.data(), ldc);
      expect_close("gemm ta=" + std::to_string(ta) + " tb=" + std::to_string(tb), cuda::to_host(dc), ref,
                   tolerance<float>(K));
    }
  // K = 0: C = beta C
  auto c = randn({4, 6});
  auto dc = cuda::to_device(c);
  ops::gemm_device<float>(false, false, 4, 6, 0, 1.0f, dc.data(), 1, dc.data(), 6, 0.5f, dc.data(), 6);
  expect_close("gemm K=0 (beta 0.5)", cuda::to_host(dc), ops::scale(c, 0.5f), 0.0);
}

CUDA_TEST_CASE("matmul: 2-D, batched, shared b, transposed b; backward") {
  ADABLDM_REQUIRE_CUDA();
  const auto a = randn({3, 19, 24}), b = randn({3, 24, 17}), bs = randn({24, 17}), bt = randn({3, 17, 24}),
             bst = randn({17, 24});
  FOR_EACH_TYPE({
    check_op<T>("matmul batched", [](const auto& in) { return ops::matmul(in[0], in[1]); }, {a, b}, 24, {}, 57);
    check_op<T>("matmul shared b", [](const auto& in) { return ops::matmul(in[0], in[1]); }, {a, bs}, 24, {}, 57);
    check_op<T>("matmul batched b^T", [](const auto& in) { return ops::matmul(in[0], in[1], true); }, {a, bt}, 24, {}, 57);
    check_op<T>("matmul shared b^T", [](const auto& in) { return ops::matmul(in[0], in[1], true); }, {a, bst}, 24, {}, 57);
    check_op<T>("matmul 2-D", [](const auto& in) { return ops::matmul(in[0], in[1]); }, {randn({31, 24}), bs}, 24, {}, 31);
  });
  CHECK_THROWS_AS(ops::matmul(cuda::zeros<float>({2, 3}), cuda::zeros<float>({4, 5})), ShapeError);
  // An empty inner dimension: the whole output is written (zeros), also in recycled memory (the caching allocator
  // hands back the NaN block freed just before).
  { auto junk = cuda::to_device(Tensor<float, Cpu>::full({2, 3, 4}, std::nanf(""))); }
  expect_close("matmul K=0", cuda::to_host(ops::matmul(cuda::zeros<float>({2, 3, 0}), cuda::zeros<float>({0, 4}))),
               Tensor<float, Cpu>::zeros({2, 3, 4}), 0.0);
  { auto junk = cuda::to_device(Tensor<float, Cpu>::full({2, 3, 4}, std::nanf(""))); }
  expect_close("linear in=0", cuda::to_host(ops::linear(cuda::zeros<float>({2, 3, 0}), cuda::zeros<float>({4, 0}))),
               Tensor<float, Cpu>::zeros({2, 3, 4}), 0.0);
}

CUDA_TEST_CASE("linear: cuBLASLt bias epilogue and the cuBLAS path, with and without bias; backward") {
  ADABLDM_REQUIRE_CUDA();
  struct Case {
    Shape x;
    int64_t out;
  };
  for (bool lt : {true, false}) {
    cuda::set_use_cublaslt(lt);
    for (const auto& c : std::vector<Case>{{{2, 7, 33}, 19}, {{2, 77, 768}, 320}, {{2, 256, 320}, 2560}, {{5, 1}, 3}}) {
      const int64_t in = c.x.dim(-1), rows = c.x.numel() / in;
      const auto x = randn(c.x), w = randn({c.out, in}, 0.1), b = randn({c.out});
      const std::string tag = std::string(lt ? "cuBLASLt " : "cuBLAS ") + c.x.str() + " -> " + std::to_string(c.out);
      FOR_EACH_TYPE({
        check_op<T>("linear " + tag, [](const auto& in) { return ops::linear(in[0], in[1], in[2]); }, {x, w, b},
                    static_cast<double>(in), {}, static_cast<double>(std::max(rows, c.out)));
        check_op<T>("linear (no bias) " + tag, [](const auto& in) { return ops::linear(in[0], in[1]); }, {x, w},
                    static_cast<double>(in), {}, static_cast<double>(std::max(rows, c.out)));
      });
    }
  }
  cuda::set_use_cublaslt(true);
  // A repeated problem reuses its cuBLASLt plan (no heuristic query per call) and gives the same bytes.
  {
    const auto xd = cuda::to_device(randn({3, 40, 64})), wd = cuda::to_device(randn({96, 64})),
               bd = cuda::to_device(randn({96}));
    const auto first = cuda::to_host(ops::linear(xd, wd, bd));
    const int64_t built = ops::cuda_detail::lt_plans_built();
    const auto second = cuda::to_host(ops::linear(xd, wd, bd));
    CHECK(ops::cuda_detail::lt_plans_built() == built);
    CHECK(first.to_vector() == second.to_vector());
  }
  // Only the weight trains (the UNet's frozen input): no dX is computed, dW and db are.
  const auto x = randn({4, 9, 16}), w = randn({8, 16}), b = randn({8});
  check_op<float>("linear, frozen input", [](const auto& in) { return ops::linear(in[0], in[1], in[2]); }, {x, w, b},
                  16, {false, true, true}, 36);
}

CUDA_TEST_CASE("TF32 is opt-in for float32 GEMMs and convolutions") {
  ADABLDM_REQUIRE_CUDA();
  CHECK_FALSE(cuda::allow_tf32());
  const auto a = randn({64, 512}), b = randn({512, 64});
  cuda::set_allow_tf32(true);
  const auto tf32 = cuda::to_host(ops::matmul(cuda::to_device(a), cuda::to_device(b)));
  cuda::set_allow_tf32(false);
  const auto f32 = cuda::to_host(ops::matmul(cuda::to_device(a), cuda::to_device(b)));
  const auto ref = ops::matmul(a, b);
  expect_close("matmul float32 (TF32 off)", f32, ref, tolerance<float>(512));
  // TF32 keeps 10 mantissa bits: errors ~ 2^-11 sqrt(K) relative to the products' scale; bounded loosely here.
  expect_close("matmul float32 with TF32 allowed", tf32, ref, 5e-3 * std::sqrt(512.0));
}

namespace {
struct ConvCase {
  Shape x, w;
  ops::Conv2dParams p;
  const char* what;
};
std::vector<ConvCase> conv_cases() {
  return {
      {{2, 5, 9, 11}, {7, 5, 3, 3}, ops::Conv2dParams::same(1), "3x3 pad 1"},
      {{2, 5, 9, 11}, {7, 5, 3, 3}, ops::Conv2dParams::same(1, 2), "3x3 pad 1 stride 2"},
      {{1, 4, 10, 10}, {6, 4, 3, 3}, ops::Conv2dParams{2, 0, 1, 0, 1}, "3x3 stride 2, pad right/bottom (VAE)"},
      {{2, 3, 8, 9}, {4, 3, 3, 3}, ops::Conv2dParams{1, 2, 0, 1, 3}, "3x3 per-side pads 2/0/1/3"},
      {{2, 6, 7, 5}, {8, 6, 1, 1}, ops::Conv2dParams{}, "1x1"},
      {{1, 3, 12, 10}, {5, 3, 5, 2}, ops::Conv2dParams{1, 2, 2, 0, 0}, "5x2 non-square"},
      {{1, 3, 6, 6}, {2, 3, 6, 6}, ops::Conv2dParams{}, "kernel = image"},
      {{2, 64, 32, 32}, {64, 64, 3, 3}, ops::Conv2dParams::same(1), "64ch 32x32 3x3"},
      {{2, 4, 64, 64}, {320, 4, 3, 3}, ops::Conv2dParams::same(1), "UNet conv_in 64x64"},
  };
}
}  // namespace

CUDA_TEST_CASE("conv2d: forward, backward data, backward filter, bias") {
  ADABLDM_REQUIRE_CUDA();
  for (bool bench : {false, true}) {
    cuda::set_conv_benchmark(bench);
    for (const auto& c : conv_cases()) {
      const auto x = randn(c.x), w = randn(c.w, 1.0 / std::sqrt(static_cast<double>(c.w.numel() / c.w[0]))),
                 b = randn({c.w[0]});
      const double k = static_cast<double>(c.w[1] * c.w[2] * c.w[3]);
      const double k_back = static_cast<double>(std::max(c.x[0] * c.x[2] * c.x[3], c.w[0] * c.w[2] * c.w[3]));
      const std::string tag = std::string(c.what) + (bench ? " (benchmarked)" : "");
      FOR_EACH_TYPE({
        check_op<T>("conv2d " + tag, [p = c.p](const auto& in) { return ops::conv2d(in[0], in[1], in[2], p); },
                    {x, w, b}, k, {}, k_back);
      });
    }
  }
  cuda::set_conv_benchmark(false);
  // No bias; and a frozen weight (only dX).
  const auto x = randn({2, 5, 9, 11}), w = randn({7, 5, 3, 3}, 0.2);
  check_op<float>("conv2d no bias", [](const auto& in) {
    using Tn = std::decay_t<decltype(in[0])>;
    return ops::conv2d(in[0], in[1], Tn{}, ops::Conv2dParams::same(1));
  }, {x, w}, 45, {}, 198);
  check_op<float>("conv2d frozen weight", [](const auto& in) {
    using Tn = std::decay_t<decltype(in[0])>;
    return ops::conv2d(in[0], in[1], Tn{}, ops::Conv2dParams::same(1));
  }, {x, w}, 45, {true, false}, 63);
  // The named backward function directly (what the tape calls).
  auto dy = randn({2, 7, 9, 11});
  Tensor<float, Cuda> dx, dw, db;
  ops::conv2d_backward(cuda::to_device(dy), cuda::to_device(x), cuda::to_device(w), x.shape(), w.shape(),
                       ops::Conv2dParams::same(1), true, true, true, dx, dw, db);
  F32 hx, hw, hb;
  ops::conv2d_backward(dy, x, w, x.shape(), w.shape(), ops::Conv2dParams::same(1), true, true, true, hx, hw, hb);
  expect_close("conv2d_backward dx", cuda::to_host(dx), hx, tolerance<float>(63));
  expect_close("conv2d_backward dw", cuda::to_host(dw), hw, tolerance<float>(198));
  expect_close("conv2d_backward db", cuda::to_host(db), hb, tolerance<float>(198));
  CHECK_THROWS_AS(ops::conv2d(cuda::zeros<float>({1, 3, 4, 4}), cuda::zeros<float>({2, 4, 3, 3}), {}, {}), ShapeError);
}
