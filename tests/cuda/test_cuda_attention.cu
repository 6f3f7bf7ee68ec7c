// The fused flash-style attention against the CPU twin: forward (output and saved log-sum-exp) and backward
// (dQ, dK, dV) for head widths 8..512, self- and cross-attention, causal masks, lengths that are not multiples of
// the tiles, L = 4096; float32, half and bfloat16. Tolerance: cuda_test_util.cuh with K = the key length (the
// softmax sums) times the head width (each score's dot product), i.e. 1e-5 * sqrt(Lk * D) for float32.
// half / bfloat16 forwards run on tensor cores by default (ops/cuda/attention_tc.cuh) wherever the head widths
// allow it; the last case checks that path explicitly against the CPU twin and against the CUDA-core kernel.
#include <array>
#include <exception>
#include <thread>

#include "cuda_test_util.cuh"

using namespace cuda_test;

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

namespace {
/// Sets cuda::set_tensor_core_attention for a scope and restores the previous value (also when a check throws).
struct TensorCoreSwitch {
  bool previous;
  explicit TensorCoreSwitch(bool on) : previous(cuda::tensor_core_attention()) { cuda::set_tensor_core_attention(on); }
  ~TensorCoreSwitch() { cuda::set_tensor_core_attention(previous); }
  TensorCoreSwitch(const TensorCoreSwitch&) = delete;
  TensorCoreSwitch& operator=(const TensorCoreSwitch&) = delete;
};

/// The tensor-core forward (output and saved log-sum-exp) against the CPU twin in float32 on the same 16-bit
/// values, and against the CUDA-core forward on the device.
/// Tolerances (cuda_test_util.cuh's conventions, K = Lk * max(D, Dv)):
/// - output: tolerance<T>(K) covers the output's one rounding to T; the tensor-core kernel also rounds the
///   probabilities P to T before P V (tensor-core inputs), which adds about one more storage rounding (relative to
///   the probabilities, averaged over the keys in practice): tolerance<T>(K) + storage_tolerance<T>(). The same
///   bound holds against the CUDA-core kernel (one output rounding each, plus P's).
/// - log-sum-exp: float32 on both sides (16-bit products are exact in float, the sums of scores and of the
///   unrounded probabilities are float): tolerance<float>(K).
template <class T>
void tensor_core_case(const AttnCase& c) {
  const F32 q = round_to<T>(randn({c.B, c.Lq, c.heads * c.D})), k = round_to<T>(randn({c.B, c.Lk, c.heads * c.D})),
            v = round_to<T>(randn({c.B, c.Lk, c.heads * c.Dv}));
  const ops::AttentionParams p{c.heads, 0.0, c.causal};
  const std::string name = "tensor cores B" + std::to_string(c.B) + " Lq" + std::to_string(c.Lq) + " Lk" +
                           std::to_string(c.Lk) + " H" + std::to_string(c.heads) + " D" + std::to_string(c.D) +
                           " Dv" + std::to_string(c.Dv) + (c.causal ? " causal" : "") + " [" + type_name<T>() + "]";
  const bool applicable = ops::cuda_detail::attention_tc_applicable<T>(c.D, c.Dv);
  if (c.D <= 160 && c.Dv <= 160 && cuda::device_properties().major >= 8 &&
      static_cast<std::size_t>(ops::cuda_detail::tc_layout(static_cast<int>(c.D), static_cast<int>(c.Dv)).bytes) <=
          cuda::device_properties().sharedMemPerBlockOptin) {  // (99 KB cards, sm_86 / sm_89, fit D <= 128 only)
    CAPTURE(name);
    CHECK(applicable);  // sm_80+ and every SD head width: the tensor-core path must be taken
  }
  if (!applicable) {
    std::printf("  %s: not applicable on this device (shared memory or compute capability), skipped\n", name.c_str());
    return;
  }
  const double K = static_cast<double>(c.Lk * std::max(c.D, c.Dv));
  const double tol_out = tolerance<T>(K) + storage_tolerance<T>(), tol_lse = tolerance<float>(K);

  auto lse_cpu = F32::empty({c.B, c.heads, c.Lq});
  const auto out_cpu = ops::detail::attention_forward<float>(q, k, v, p, lse_cpu.data());
  const auto dq = up<T>(q), dk = up<T>(k), dv = up<T>(v);
  auto lse_tc = Tensor<float, Cuda>::empty({c.B, c.heads, c.Lq}), lse_cc = Tensor<float, Cuda>::empty({c.B, c.heads, c.Lq});
  Tensor<T, Cuda> out_tc, out_cc;
  {
    TensorCoreSwitch on(true);
    out_tc = ops::attention_forward<T>(dq, dk, dv, p, lse_tc.data());
  }
  {
    TensorCoreSwitch off(false);
    out_cc = ops::attention_forward<T>(dq, dk, dv, p, lse_cc.data());
  }
  const F32 o_tc = down(out_tc), o_cc = down(out_cc), l_tc = cuda::to_host(lse_tc);
  expect_close(name + " vs CPU", o_tc, out_cpu, tol_out);
  expect_close(name + " log-sum-exp vs CPU", l_tc, lse_cpu, tol_lse);
  expect_close(name + " vs CUDA cores", o_tc, o_cc, tol_out);
  expect_close(name + " log-sum-exp vs CUDA cores", l_tc, cuda::to_host(lse_cc), tol_lse);
}
}  // namespace

CUDA_TEST_CASE("attention forward on tensor cores (half, bfloat16) against the CPU twin and the CUDA-core kernel") {
  ADABLDM_REQUIRE_CUDA();
  // {shape, also the backward through the tape with the tensor-core forward (check_op: its lse feeds the backward)}
  const std::vector<std::pair<AttnCase, bool>> cases = {
      // the shapes of the first case that the tensor-core kernel supports
      {{2, 37, 37, 2, 8, 8, false}, false},
      {{1, 65, 130, 3, 16, 24, false}, false},  // odd lengths, D != Dv
      {{2, 77, 77, 4, 64, 64, true}, false},    // causal, odd length (CLIP)
      {{2, 100, 77, 8, 40, 40, false}, false},
      {{2, 256, 256, 8, 40, 40, false}, false},
      {{1, 64, 64, 8, 80, 80, false}, false},
      {{1, 96, 77, 8, 160, 160, false}, false},
      // SD1.5 at 256 x 256, first level: self- and cross-attention
      {{2, 1024, 1024, 8, 40, 40, false}, true},
      {{2, 1024, 77, 8, 40, 40, false}, true},
      {{1, 4096, 4096, 2, 64, 64, false}, true},
      {{2, 4096, 4096, 8, 40, 40, false}, false},  // SD1.5 at 512 x 512, first level: forward only
      // partial tiles on both sides with causal masks (Lq > Lk and Lq < Lk), widths that are not multiples of 8
      // (the element-wise staging path) or of 16 (zero padding), a single row, the widest head (opt-in memory)
      {{1, 130, 70, 2, 40, 40, true}, true},
      {{1, 70, 130, 2, 24, 24, true}, true},
      {{2, 50, 70, 3, 20, 12, false}, true},
      {{1, 1, 3, 1, 8, 8, false}, false},
      {{1, 80, 100, 2, 256, 256, true}, false},
  };
  for (const auto& [c, backward] : cases) {
    tensor_core_case<H>(c);
    tensor_core_case<BF>(c);
    if (backward) {
      run_case<H>(c, true);
      run_case<BF>(c, true);
    }
  }
  CHECK(cuda::tensor_core_attention());  // the switch was restored (default on)
}

CUDA_TEST_CASE("attention from several host threads with different shared-memory sizes") {
  ADABLDM_REQUIRE_CUDA();
  // Head widths 40 and 160 need different opt-in shared memory in the same kernel (half); the per-kernel limit is
  // process-wide, so one thread's setting must not make another thread's launch fail. Each thread has its own
  // stream; every result is checked against the CPU twin.
  const std::vector<AttnCase> cases = {{1, 256, 256, 8, 40, 40, false}, {1, 96, 77, 8, 160, 160, false}};
  std::vector<F32> refs;
  std::vector<std::array<F32, 3>> inputs;
  for (const auto& c : cases) {
    inputs.push_back({round_to<H>(randn({c.B, c.Lq, c.heads * c.D})), round_to<H>(randn({c.B, c.Lk, c.heads * c.D})),
                      round_to<H>(randn({c.B, c.Lk, c.heads * c.Dv}))});
    const auto& in = inputs.back();
    refs.push_back(ops::attention(in[0], in[1], in[2], ops::AttentionParams{c.heads, 0.0, c.causal}));
  }
  std::vector<double> worst(cases.size(), 0.0);
  std::vector<std::string> failures(cases.size());
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < cases.size(); ++i)
    threads.emplace_back([&, i] {
      try {
        const auto& c = cases[i];
        const auto q = up<H>(inputs[i][0]), k = up<H>(inputs[i][1]), v = up<H>(inputs[i][2]);
        for (int rep = 0; rep < 50; ++rep) {
          const auto out = ops::attention(q, k, v, ops::AttentionParams{c.heads, 0.0, c.causal});
          worst[i] = std::max(worst[i], compare(down(out), refs[i]).relative());
        }
      } catch (const std::exception& e) {
        failures[i] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    CAPTURE(c.D);
    CHECK(failures[i] == "");
    const double K = static_cast<double>(c.Lk * c.D);
    std::printf("  concurrent attention D%ld: worst rel %.3e over 50 launches (tol %.1e)\n", static_cast<long>(c.D),
                worst[i], tolerance<H>(K) + storage_tolerance<H>());
    CHECK(worst[i] <= tolerance<H>(K) + storage_tolerance<H>());
  }
}
