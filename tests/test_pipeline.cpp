// The AdaBLDM pipeline end to end on the tiny random SD + ControlNet (tests/data/tiny_pipeline) and real
// magnetic-tile images: determinism, masks inside the foreground, the background after latent editing closer to
// the OK image than the defect region, and the stage spans.
#include "golden.hpp"

#include "adabldm/defect/pipeline.hpp"
#include "adabldm/io/image.hpp"

using namespace adabldm;

namespace {
Pipeline<>& tiny() {
  static Pipeline<> p = [] {
    auto pipe = Pipeline<>::load(golden::path("tiny_pipeline/diffusers"));
    pipe.options().size = 64;
    pipe.options().steps = 10;
    pipe.options().adaptation.steps = 3;
    return pipe;
  }();
  return p;
}
DefectJob job(uint64_t seed) {
  DefectJob j;
  j.ok = read_image(golden::path("magnetic-tile/ok/free_000.png"));
  for (const char* name : {"blowhole_001"})
    j.defects.push_back({Tensor<float>{}, read_mask(golden::path(std::string("magnetic-tile/masks/") + name + ".png")), name});
  j.object = "tile";
  j.defect = "blowhole";
  j.seed = seed;
  return j;
}
double mean_abs_diff(const Tensor<float>& a, const Tensor<float>& b, const Tensor<float>& mask, bool inside) {
  double s = 0;
  int64_t n = 0;
  const int64_t plane = mask.numel(), C = a.dim(1);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < plane; ++i)
      if ((mask.data()[i] >= 0.5f) == inside) {
        s += std::abs(a.data()[c * plane + i] - b.data()[c * plane + i]);
        ++n;
      }
  return n ? s / n : 0.0;
}
}  // namespace

TEST_CASE("same seed, same bytes; different seeds differ") {
  auto& p = tiny();
  const auto a = p.generate(job(7)), b = p.generate(job(7)), c = p.generate(job(8));
  CHECK(tensor_to_image(a.image).pixels == tensor_to_image(b.image).pixels);
  CHECK(a.mask.to_vector() == b.mask.to_vector());
  CHECK(a.placement.y0 == b.placement.y0);
  CHECK(tensor_to_image(a.image).pixels != tensor_to_image(c.image).pixels);
  CHECK(a.prompt == "a tile with a blowhole");
  CHECK(a.image.shape() == Shape{1, 3, 64, 64});
  CHECK(a.mask.shape() == Shape{1, 1, 64, 64});
  CHECK(a.adapted);
  // Without adaptation the same sample decodes with the plain decoder: same mask, different pixels.
  auto& o = p.options();
  o.adapt = false;
  const auto plain = p.generate(job(7));
  o.adapt = true;
  CHECK_FALSE(plain.adapted);
  CHECK(plain.mask.to_vector() == a.mask.to_vector());
  CHECK(plain.latent.to_vector() == a.latent.to_vector());
  CHECK(plain.image.to_vector() != a.image.to_vector());
}

TEST_CASE("bf16 products: the weights packed once per sample give the same latent as packed at every product") {
  if (ops::detail::bf16_kernel() == ops::detail::Bf16Kernel::none) {
    MESSAGE("no AMX / AVX512-BF16 here: nothing to compare");
    return;
  }
  auto& p = tiny();
  auto& o = p.options();
  const auto saved = ops::cpu_matmul_precision();
  const bool saved_adapt = o.adapt;
  ops::set_cpu_matmul_precision(ops::MatmulPrecision::bf16);
  o.adapt = false;
#ifdef ADABLDM_BF16_GEMM
  const auto& uses = ops::detail::bgemm::frozen_registry().uses;
  const int64_t uses_before = uses.load();
#endif
  const auto once = p.generate(job(7));
#ifdef ADABLDM_BF16_GEMM
  const int64_t uses_once = uses.load();
  CHECK(uses_once > uses_before);  // the packed forms were read
#endif
  o.pack_weights_once = false;
  const auto every = p.generate(job(7));
  o.pack_weights_once = true;
#ifdef ADABLDM_BF16_GEMM
  CHECK(uses.load() == uses_once);  // ...and not without freezing
#endif
  ops::set_cpu_matmul_precision(saved);
  CHECK(once.latent.to_vector() == every.latent.to_vector());
  // ...and bf16 really ran: the float32 latent differs.
  const auto f32 = p.generate(job(7));
  o.adapt = saved_adapt;
  CHECK(f32.latent.to_vector() != once.latent.to_vector());
}

TEST_CASE("the device-generic path with a non-identity storage type (double) follows the float pipeline") {
  // Pipeline<T, Dev> converts the networks (nn::convert), moves every input to the networks' type (upload_as)
  // and their outputs back to host float (download_as), as on a GPU; on the CPU in float those are identities.
  // In double they are real conversions, so this runs the device path's plumbing without a device.
  auto sd = models::StableDiffusion::load(golden::path("tiny_pipeline/diffusers"));
  auto cn = *sd.controlnet;
  sd.controlnet.reset();
  Pipeline<double, Cpu> p(std::move(sd), std::move(cn));
  p.options() = tiny().options();
  CHECK(p.unet().config.in_channels == tiny().unet().config.in_channels);
  const auto a = tiny().generate(job(7)), b = p.generate(job(7));
  CHECK(b.mask.to_vector() == a.mask.to_vector());
  CHECK(b.prompt == a.prompt);
  CHECK(b.adapted);
  // Float against double through 10 sampler steps, image editing and 3 adaptation steps: the float rounding.
  GOLDEN_CHECK("pipeline in double vs float: latent", b.latent, a.latent);
  GOLDEN_CHECK("pipeline in double vs float: image", b.image, a.image);
}

TEST_CASE("masks lie inside the foreground") {
  auto& p = tiny();
  auto j = job(11);
  j.defects.push_back({Tensor<float>{}, read_mask(golden::path("magnetic-tile/masks/break_002.png")), "break_002"});
  auto fg = Tensor<float>::zeros({1, 1, 64, 64});  // a centred rectangle
  for (int y = 10; y < 54; ++y)
    for (int x = 6; x < 58; ++x) fg.at({0, 0, y, x}) = 1.0f;
  j.foreground = fg;
  for (uint64_t seed = 0; seed < 4; ++seed) {
    j.seed = seed;
    const auto s = p.generate(j);
    int64_t defect = 0;
    for (int64_t i = 0; i < s.mask.numel(); ++i)
      if (s.mask.data()[i] > 0.5f) {
        ++defect;
        REQUIRE(fg.data()[i] == 1.0f);
      }
    CHECK(defect > 0);
  }
}

namespace {
/// Records the latent at each step where it is active, after the stages before it edited it (instrumentation
/// by composition: a probe is just another stage).
class Probe : public sampling::Stage {
 public:
  Probe(int first, int last) : Stage("probe", first, last) {}
  void before_model(const sampling::StepInfo& s, sampling::SamplerState& st, Rng&) override {
    inputs.push_back(st.latent);
    alphas.push_back(s.alpha);
  }
  std::vector<Tensor<float>> inputs;
  std::vector<float> alphas;
};
}  // namespace

TEST_CASE("after latent editing the latent follows the OK latent outside the dilated mask; spans as configured") {
  auto pipe = Pipeline<>::load(golden::path("tiny_pipeline/diffusers"));
  pipe.options().size = 64;
  pipe.options().steps = 10;
  pipe.options().adapt = false;
  std::shared_ptr<Probe> probe;
  Tensor<float> ok_latent, latent_mask;
  std::vector<std::vector<std::string>> spans;
  pipe.options().stage_builder = [&](int steps, const sampling::BlendInputs& in) {
    auto stages = sampling::make_stages(sampling::Preset::Official, steps, in);
    const auto s = sampling::StageSpans::official(steps);
    probe = std::make_shared<Probe>(s.latent_first, s.latent_last);
    stages.push_back(probe);  // runs after LatentEditing at the same step
    ok_latent = in.ok_latent;
    latent_mask = in.latent_mask;
    for (const auto& st : stages) spans.push_back({st->name(), std::to_string(st->first()), std::to_string(st->last())});
    return stages;
  };
  const auto s = pipe.generate(job(5));
  const auto sp = sampling::StageSpans::official(10);
  CHECK(spans[0] == std::vector<std::string>{"free_diffusion", "0", std::to_string(sp.free_last)});
  CHECK(spans[1] == std::vector<std::string>{"latent_editing", std::to_string(sp.latent_first), std::to_string(sp.latent_last)});
  CHECK(spans[2] == std::vector<std::string>{"image_editing", std::to_string(sp.image_first), "9"});
  REQUIRE(probe->inputs.size() == static_cast<std::size_t>(sp.latent_last - sp.latent_first + 1));
  int64_t masked = 0;
  for (int64_t i = 0; i < latent_mask.numel(); ++i) masked += latent_mask.data()[i] > 0.5f;
  REQUIRE(masked > 0);                   // the defect survives at latent resolution
  REQUIRE(masked < latent_mask.numel()); // and there is background
  // The last latent-edited input: outside the mask it is sqrt(a) z_ok + sqrt(1 - a) eps, so it is much closer to
  // sqrt(a) z_ok than the generated region is.
  const auto& z = probe->inputs.back();
  const auto target = ops::scale(ok_latent, std::sqrt(probe->alphas.back()));
  const double outside = mean_abs_diff(z, target, latent_mask, false), inside = mean_abs_diff(z, target, latent_mask, true);
  INFO("mean |z - sqrt(a) z_ok| outside ", outside, ", inside ", inside, " (alpha ", probe->alphas.back(), ")");
  CHECK(outside < 0.5 * inside);
  CHECK(outside < 1.2 * std::sqrt(1.0 - probe->alphas.back()));  // |N(0,1)| averages 0.8
}

TEST_CASE("bad input gives clear errors") {
  auto& p = tiny();
  auto j = job(1);
  j.defects.clear();
  CHECK_THROWS_WITH_AS(p.generate(j), doctest::Contains("no real defect masks"), Error);
  auto k = job(1);
  k.foreground = Tensor<float>::zeros({1, 1, 64, 64});  // nowhere to put a defect
  CHECK_THROWS_AS(p.generate(k), Error);
  CHECK_THROWS_WITH_AS(Pipeline<>::load(golden::path("tiny_pipeline/single_file.safetensors"), "",
                                        {models::ConfigOverrides::from_file(golden::path("tiny_pipeline/single_file_config.json")), ""}),
                       doctest::Contains("no trimap encoder"), Error);
}
