// The accuracy of bfloat16 matrix products (ops/gemm_bf16.hpp, --cpu-matmul bf16) on the golden cases: the same
// models and references as test_unet / test_vae / test_clip, run with MatmulPrecision::bf16. Each error is printed
// (docs/performance.md quotes them) and bounded by 3 % of max |ref|, bfloat16's 8 significant bits carried
// through a network; each must also be above the f32 path's, which shows the products really ran in bfloat16.
// Skipped (with a message) on CPUs without AMX or AVX512-BF16.
#include "golden.hpp"

#include "adabldm/io/safetensors.hpp"
#include "adabldm/models/autoencoder_kl.hpp"
#include "adabldm/models/clip_text.hpp"
#include "adabldm/models/unet.hpp"
#include "adabldm/ops/gemm_bf16.hpp"

using namespace adabldm;
using namespace adabldm::models;

namespace {
/// Runs `fn` in float32 and in bfloat16 and compares both with the reference.
template <class F>
void compare_bf16(const std::string& what, F&& fn, const Tensor<float>& ref) {
  const auto saved = ops::cpu_matmul_precision();
  ops::set_cpu_matmul_precision(ops::MatmulPrecision::f32);
  const auto f32 = golden::compare(what + " (f32)", fn(), ref);
  ops::set_cpu_matmul_precision(ops::MatmulPrecision::bf16);
  const auto bf16 = golden::compare(what + " (bf16)", fn(), ref);
  ops::set_cpu_matmul_precision(saved);
  CHECK(f32.ok());
  CHECK(bf16.max_abs_err > f32.max_abs_err);
  CHECK(bf16.max_abs_err <= 3e-2 * std::max(1.0, bf16.max_abs_ref));
}

bool have_bf16() {
  if (ops::detail::bf16_kernel() != ops::detail::Bf16Kernel::none) return true;
  MESSAGE("no AMX / AVX512-BF16 on this CPU (or a build without AVX-512): bf16 golden cases skipped");
  return false;
}
}  // namespace

TEST_CASE("bf16 golden: UNet noise prediction") {
  if (!have_bf16()) return;
  MESSAGE("bf16 kernel: ", std::string(ops::cpu_bf16_kernel()));
  UNet2DConditionModel<float> unet(UNetConfig::from_json(golden::config("unet/config.json")));
  nn::load_state_dict(unet, io::SafeTensors::open(golden::path("unet/model.safetensors")).state_dict());
  const auto io = io::SafeTensors::open(golden::path("unet/io.safetensors"));
  const auto t = io.get<float>("timestep").to_vector();
  const auto run = [&] { return unet(io.get<float>("sample"), t, io.get<float>("encoder_hidden_states")); };
  compare_bf16("unet noise_pred", run, io.get<float>("noise_pred"));
  // As the sampler runs it: the weights frozen (packed in bfloat16 once, ops::FrozenWeights), the same bits.
  const auto saved = ops::cpu_matmul_precision();
  ops::set_cpu_matmul_precision(ops::MatmulPrecision::bf16);
  const auto plain = run().to_vector();
  {
    const auto frozen = nn::freeze_weights(unet);
    CHECK(frozen.size() > 0);
#ifdef ADABLDM_BF16_GEMM
    const int64_t uses_before = ops::detail::bgemm::frozen_registry().uses.load();
#endif
    CHECK(run().to_vector() == plain);
    CHECK(run().to_vector() == plain);
#ifdef ADABLDM_BF16_GEMM
    CHECK(ops::detail::bgemm::frozen_registry().uses.load() > uses_before);  // the packed forms were read
#endif
  }
  ops::set_cpu_matmul_precision(saved);
}

TEST_CASE("bf16 golden: AutoencoderKL encode and decode") {
  if (!have_bf16()) return;
  AutoencoderKL<float> vae(AutoencoderKLConfig::from_json(golden::config("vae_kl/config.json")));
  nn::load_state_dict(vae, io::SafeTensors::open(golden::path("vae_kl/model.safetensors")).state_dict());
  const auto io = io::SafeTensors::open(golden::path("vae_kl/io.safetensors"));
  compare_bf16("vae_kl posterior_mean", [&] { return vae.encode(io.get<float>("image")).mean; },
               io.get<float>("posterior_mean"));
  compare_bf16("vae_kl decoded_z", [&] { return vae.decode(io.get<float>("z")); }, io.get<float>("decoded_z"));
}

TEST_CASE("bf16 golden: CLIP text encoder") {
  if (!have_bf16()) return;
  ClipTextModel<float> clip(ClipTextConfig::from_json(golden::config("clip_text/config.json")));
  load_clip_text(clip, io::SafeTensors::open(golden::path("clip_text/model.safetensors")).state_dict());
  const auto io = io::SafeTensors::open(golden::path("clip_text/io.safetensors"));
  const auto ids = io.get<int64_t>("input_ids");
  compare_bf16("clip last_hidden_state", [&] { return clip(ids).last_hidden_state; }, io.get<float>("last_hidden_state"));
}
