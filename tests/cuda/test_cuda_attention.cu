// The fused flash-style attention against the CPU twin: forward (output and saved log-sum-exp) and backward
// (dQ, dK, dV) for head widths 8..512, self- and cross-attention, causal masks, lengths that are not multiples of
// the tiles, L = 4096; float32, half and bfloat16. Tolerance: cuda_test_util.cuh with K = the key length (the
// softmax sums) times the head width (each score's dot product), i.e. 1e-5 * sqrt(Lk * D) for float32.
#include "cuda_test_util.cuh"

using namespace cuda_test;
using H = adabldm::half;
using BF = adabldm::bfloat16;

namespace {
struct AttnCase {
  int64_t B, Lq, Lk, heads, D, Dv;
  bool causal;
};

template <class T>
void run_case(const AttnCase& c, bool backward) {
  const auto q = randn({c.B, c.Lq, c.heads * c.D}), k = randn({c.B, c.Lk, c.heads * c.D}),
             v = randn({c.B, c.Lk, c.heads * c.Dv});
  const ops::AttentionParams p{c.heads, 0.0, c.causal};
  const std::string name = "attention B" + std::to_string(c.B) + " Lq" + std::to_string(c.Lq) + " Lk" +
                           std::to_string(c.Lk) + " H" + std::to_string(c.heads) + " D" + std::to_string(c.D) +
                           " Dv" + std::to_string(c.Dv) + (c.causal ? " causal" : "");
  const double kf = static_cast<double>(c.Lk * std::max(c.D, c.Dv)), kb = static_cast<double>(std::max(c.Lq, c.Lk) * std::max(c.D, c.Dv));
  if (backward) {
    check_op<T>(name, [p](const auto& in) { return ops::attention(in[0], in[1], in[2], p); }, {q, k, v}, kf, {}, kb);
  } else {
    check_forward<T>(name, [p](const auto& in) { return ops::attention(in[0], in[1], in[2], p); }, {q, k, v}, kf);
  }
}
}  // namespace

CUDA_TEST_CASE("attention forward and backward: shapes of the UNet, VAE and CLIP, and odd ones") {
  ADABLDM_REQUIRE_CUDA();
  const std::vector<AttnCase> cases = {
      {2, 37, 37, 2, 8, 8, false},    {1, 65, 130, 3, 16, 24, false}, {2, 77, 77, 4, 64, 64, true},
      {2, 100, 77, 8, 40, 40, false},  // UNet cross-attention (320 channels, 8 heads)
      {2, 256, 256, 8, 40, 40, false}, {1, 64, 64, 8, 80, 80, false}, {1, 96, 77, 8, 160, 160, false},
      {1, 64, 64, 1, 512, 512, false},  // VAE mid-block attention
      {1, 33, 33, 1, 300, 200, true},
  };
  for (const auto& c : cases) {
    run_case<float>(c, true);
    run_case<H>(c, true);
    run_case<BF>(c, true);
  }
}

CUDA_TEST_CASE("attention at L = 4096 (512x512 images' first UNet level)") {
  ADABLDM_REQUIRE_CUDA();
  run_case<float>({1, 4096, 4096, 2, 40, 40, false}, false);
  run_case<H>({1, 4096, 4096, 2, 40, 40, false}, true);
  run_case<float>({1, 4096, 77, 8, 40, 40, false}, false);
}

CUDA_TEST_CASE("attention: the saved log-sum-exp and the named backward function") {
  ADABLDM_REQUIRE_CUDA();
  const auto q = randn({2, 50, 64}), k = randn({2, 70, 64}), v = randn({2, 70, 32}), dout = randn({2, 50, 32});
  const ops::AttentionParams p{4, 0.3, false};
  auto lse_cpu = F32::empty({2, 4, 50});
  const auto out_cpu = ops::detail::attention_forward<float>(q, k, v, p, lse_cpu.data());
  auto lse_dev = Tensor<float, Cuda>::empty({2, 4, 50});
  const auto dq_ = cuda::to_device(q), dk_ = cuda::to_device(k), dv_ = cuda::to_device(v);
  const auto out_dev = ops::attention_forward<float>(dq_, dk_, dv_, p, lse_dev.data());
  expect_close("attention_forward output", cuda::to_host(out_dev), out_cpu, tolerance<float>(70 * 16));
  expect_close("attention_forward log-sum-exp", cuda::to_host(lse_dev), lse_cpu, tolerance<float>(70 * 16));
  F32 gq, gk, gv;
  ops::attention_backward(dout, q, k, v, out_cpu, lse_cpu, p, &gq, &gk, &gv);
  Tensor<float, Cuda> hq, hk, hv;
  Tensor<float, Cuda>* none = nullptr;  // (a literal nullptr would not let T be deduced)
  ops::attention_backward(cuda::to_device(dout), dq_, dk_, dv_, out_dev, lse_dev, p, &hq, none, &hv);
  expect_close("attention_backward dq", cuda::to_host(hq), gq, tolerance<float>(70 * 16));
  expect_close("attention_backward dv", cuda::to_host(hv), gv, tolerance<float>(70 * 16));
  ops::attention_backward(cuda::to_device(dout), dq_, dk_, dv_, out_dev, lse_dev, p, none, &hk, none);
  expect_close("attention_backward dk alone", cuda::to_host(hk), gk, tolerance<float>(70 * 16));
  CHECK_THROWS_AS(ops::attention(cuda::zeros<float>({1, 4, 1030}), cuda::zeros<float>({1, 4, 1030}),
                                 cuda::zeros<float>({1, 4, 1030}), ops::AttentionParams{1, 0.0, false}),
                  ShapeError);
}
