// The sampler against diffusers' StableDiffusionControlNetPipeline on the tiny pipeline (tests/data/tiny_pipeline,
// 10 DDIM steps, CFG 9, both ControlNet contexts), from the diffusers folder and from the single files; and the
// stage machinery (spans, composition).
#include "golden.hpp"

#include "adabldm/sampling/stages.hpp"
#include "adabldm/sampling/text_to_image.hpp"

using namespace adabldm;
using namespace adabldm::sampling;

namespace {
const std::string kFolder = golden::path("tiny_pipeline/diffusers");

models::StableDiffusion& folder_model() {
  static models::StableDiffusion sd = models::StableDiffusion::load(kFolder);
  return sd;
}

void check_run(const models::StableDiffusion& sd, const models::ControlNetModel<float>& cn, const char* io_file,
               ControlContext ctx, const std::string& label) {
  const auto io = io::SafeTensors::open(golden::path(std::string("tiny_pipeline/reference/") + io_file));
  const auto ref = io::SafeTensors::open(golden::path("tiny_pipeline/reference/io.safetensors"));
  TextToImageRequest req;
  req.prompt = "a tile with a blowhole";
  req.negative_prompt = "";
  req.control = ref.get<float>("control_image");
  req.control_context = ctx;
  req.steps = 10;
  req.guidance = 9.0;
  req.latents = io.get<float>("latents_init");
  Rng rng(0);
  std::vector<Tensor<float>> steps;
  const auto r = text_to_image(sd, &cn, req, rng, {}, [&](const StepInfo&, const SamplerState& s, const auto&) {
    steps.push_back(s.latent);
  });
  REQUIRE(steps.size() == 10);
  for (int i = 0; i < 10; i += 3) {
    const std::string name = "latents_step_0" + std::to_string(i);
    GOLDEN_CHECK(label + " " + name, steps[i], io.get<float>(name));
  }
  GOLDEN_CHECK(label + " latents_final", r.latents_final, io.get<float>("latents_final"));
  GOLDEN_CHECK(label + " image_decoded", r.image_decoded, io.get<float>("image_decoded"));
}
}  // namespace

TEST_CASE("prompt embeddings and timesteps equal the pipeline's") {
  auto& sd = folder_model();
  const auto io = io::SafeTensors::open(golden::path("tiny_pipeline/reference/io.safetensors"));
  const auto ids = sd.tokenizer.tokenize("a tile with a blowhole");
  CHECK(ids == io.get<int64_t>("prompt_ids").to_vector());
  GOLDEN_CHECK("prompt_embeds", encode_prompt(sd.tokenizer, sd.text_encoder, "a tile with a blowhole"),
               io.get<float>("prompt_embeds"));
  GOLDEN_CHECK("negative_prompt_embeds", encode_prompt(sd.tokenizer, sd.text_encoder, ""), io.get<float>("negative_prompt_embeds"));
  DDIMScheduler s(sd.scheduler);
  s.set_timesteps(10);
  CHECK(s.timesteps() == io.get<int64_t>("timesteps").to_vector());
}

TEST_CASE("ControlNet pipeline equals diffusers, both ControlNet contexts (diffusers folder)") {
  auto& sd = folder_model();
  REQUIRE(sd.controlnet.has_value());
  check_run(sd, *sd.controlnet, "io.safetensors", ControlContext::Prompt, "folder/prompt-ctx");
  check_run(sd, *sd.controlnet, "io_empty_ctx.safetensors", ControlContext::Empty, "folder/empty-ctx");
}

TEST_CASE("ControlNet pipeline equals diffusers from the single files") {
  const models::LoadOptions opt{models::ConfigOverrides::from_file(golden::path("tiny_pipeline/single_file_config.json")), ""};
  const auto sd = models::StableDiffusion::load(golden::path("tiny_pipeline/single_file.safetensors"), opt);
  const auto cn = models::load_controlnet(models::ModelSource(golden::path("tiny_pipeline/controlnet_single_file.safetensors"), opt));
  check_run(sd, cn, "io_empty_ctx.safetensors", ControlContext::Empty, "single/empty-ctx");
}

TEST_CASE("official preset: stage spans are the official code's step indices (method doc 6.2)") {
  const auto s = StageSpans::official(50);
  CHECK(s.free_first == 0);
  CHECK(s.free_last == 25);
  CHECK(s.latent_first == 26);
  CHECK(s.latent_last == 45);
  CHECK(s.image_first == 45);
  CHECK(s.image_last == 49);
  // Instrumented loop with a fake denoiser: which stages ran at which step, and at which timesteps.
  DDIMScheduler sched(models::sd_scheduler_config());
  sched.set_timesteps(50);
  BlendInputs in;
  in.ok_image = Tensor<float>::zeros({1, 3, 16, 16});
  in.ok_latent = Tensor<float>::zeros({1, 4, 2, 2});
  in.latent_mask = Tensor<float>::zeros({1, 1, 2, 2});
  in.pixel_mask = Tensor<float>::zeros({1, 1, 16, 16});
  int decodes = 0, encodes = 0;
  in.codec.decode = [&](const Tensor<float>&) { ++decodes; return Tensor<float>::zeros({1, 3, 16, 16}); };
  in.codec.encode = [&](const Tensor<float>&, Rng* r) { ++encodes; CHECK(r != nullptr); return Tensor<float>::zeros({1, 4, 2, 2}); };
  const auto stages = make_stages(Preset::Official, 50, in);
  std::vector<std::vector<std::string>> trace;
  std::vector<int64_t> ts;
  Rng rng(1);
  int calls = 0;
  run_sampler(sched, rng.normal({1, 4, 2, 2}), [&](const Tensor<float>& z, int64_t) { ++calls; return ops::scale(z, 0.1f); },
              stages, rng, 0.0, [&](const StepInfo& info, const SamplerState&, const std::vector<std::string>& active) {
                trace.push_back(active);
                ts.push_back(info.t);
              });
  CHECK(calls == 50);
  CHECK(decodes == 5);
  CHECK(encodes == 5);
  for (int i = 0; i < 50; ++i) {
    const bool lat = std::count(trace[i].begin(), trace[i].end(), "latent_editing") == 1;
    const bool img = std::count(trace[i].begin(), trace[i].end(), "image_editing") == 1;
    const bool fre = std::count(trace[i].begin(), trace[i].end(), "free_diffusion") == 1;
    CAPTURE(i);
    CHECK(fre == (i <= 25));
    CHECK(lat == (i >= 26 && i <= 45));
    CHECK(img == (i >= 45));
  }
  CHECK(ts[0] == 981);
  CHECK(ts[25] == 481);
  CHECK(ts[26] == 461);
  CHECK(ts[45] == 81);
  CHECK(ts[49] == 1);
}

TEST_CASE("latent editing keeps the OK latent outside the mask; corrected preset ends clean") {
  DDIMScheduler sched(models::sd_scheduler_config());
  sched.set_timesteps(10);
  Rng rng(3);
  const auto ok = rng.normal({1, 4, 4, 4});
  auto mask = Tensor<float>::zeros({1, 1, 4, 4});
  mask.at({0, 0, 1, 1}) = 1.0f;
  // An "oracle" denoiser that predicts the noise which takes z to `ok`: then after every step the OK region is
  // the OK latent noised to the next level, and the last step lands on `ok` exactly outside the mask.
  BlendInputs in;
  in.ok_image = Tensor<float>::zeros({1, 3, 32, 32});
  in.ok_latent = ok;
  in.latent_mask = mask;
  in.pixel_mask = Tensor<float>::zeros({1, 1, 32, 32});
  in.codec.decode = [&](const Tensor<float>&) { return Tensor<float>::zeros({1, 3, 32, 32}); };
  in.codec.encode = [&](const Tensor<float>&, Rng*) { return ok; };  // the pasted image encodes to the OK latent
  const auto corrected = make_stages(Preset::Corrected, 10, in);
  auto z = run_sampler(sched, rng.normal({1, 4, 4, 4}), [&](const Tensor<float>& x, int64_t) { return ops::scale(x, 0.0f); },
                       corrected, rng);
  CHECK(z.to_vector() == ok.to_vector());  // re-noised to t_prev < 0 after the last step: exactly clean
  const auto official = make_stages(Preset::Official, 10, in);
  auto z2 = run_sampler(sched, rng.normal({1, 4, 4, 4}), [&](const Tensor<float>& x, int64_t) { return ops::scale(x, 0.0f); },
                        official, rng);
  double d = 0;  // official: re-noised to the current t = 1, noise sqrt(1 - alpha_1) ~ 0.04 remains
  for (int64_t i = 0; i < z2.numel(); ++i) d = worse(d, double(std::abs(z2.data()[i] - ok.data()[i] * std::sqrt(sched.alpha_cumprod(1)))));
  CHECK(d > 0.0);
  CHECK(d < 0.3);
}
