// Training the trimap encoder on the tiny random SD (tests/data/tiny_pipeline) with real magnetic-tile defects:
// the synthetic examples, the loss falling on a tiny set, exact resume, and the checkpoint as --trimap-encoder.
#include "golden.hpp"

#include <filesystem>

#include "adabldm/defect/training.hpp"
#include "adabldm/io/image.hpp"

using namespace adabldm;
namespace fs = std::filesystem;

namespace {
const int kSize = 64;
models::StableDiffusion& tiny_sd() {
  static models::StableDiffusion sd = models::StableDiffusion::load(golden::path("tiny_pipeline/diffusers"));
  return sd;
}
models::ControlNetModel<float> fresh_encoder() {
  Rng rng(1);
  return models::ControlNetModel<float>::from_unet(tiny_sd().unet, 3, {8, 16, 32, 64}, rng);
}
defect::TrainingSource source() {
  defect::TrainingSource s;
  for (const char* f : {"free_000", "free_001"})
    s.ok_images.push_back(defect::resize_bilinear(read_image(golden::path(std::string("magnetic-tile/ok/") + f + ".png")), kSize, kSize));
  const auto ng = read_image(golden::path("magnetic-tile/ng/blowhole_001.png"));
  const auto m = read_mask(golden::path("magnetic-tile/masks/blowhole_001.png"));
  s.defects.push_back({defect::resize_bilinear(ng, 3 * kSize / 2, 3 * kSize / 2), defect::resize_mask(m, 3 * kSize / 2, 3 * kSize / 2),
                       "blowhole_001"});
  s.prompt = "a tile with a blowhole";
  return s;
}
fs::path temp(const std::string& name) {
  return fs::temp_directory_path() / ("adabldm_train_" + std::to_string(::getpid()) + "_" + name);
}
}  // namespace

TEST_CASE("training examples: composites with their trimap, deterministic from (seed, index)") {
  defect::TrainOptions opt;
  const auto src = source();
  const auto a = defect::make_training_example(src, 3, 7, 3, opt), b = defect::make_training_example(src, 3, 7, 3, opt);
  const auto c = defect::make_training_example(src, 3, 8, 3, opt);
  CHECK(a.image.to_vector() == b.image.to_vector());
  CHECK(a.mask.to_vector() != c.mask.to_vector());
  REQUIRE(a.control.shape() == Shape{1, 3, kSize, kSize});
  int64_t defect = 0;
  for (int64_t i = 0; i < a.mask.numel(); ++i)
    if (a.mask.data()[i] > 0.5f) {
      ++defect;
      REQUIRE(a.control.data()[i] == 1.0f);  // the trimap marks the pasted defect
    }
  CHECK(defect > 0);
  CHECK(a.prompt == "a tile with a blowhole");
  opt.prompt_dropout = 1.0;
  CHECK(defect::make_training_example(src, 3, 7, 3, opt).prompt.empty());
}

TEST_CASE("the trimap encoder learns: loss falls >= 10x on a tiny fixed set; the UNet stays frozen") {
  auto& sd = tiny_sd();
  auto cn = fresh_encoder();
  const auto unet_before = sd.unet.encoder.conv_in.weight().to_vector();
  defect::TrainOptions opt;
  opt.lr = 2e-3;
  opt.noise_pool = 1;  // one fixed (t, noise): the loss can go to zero
  defect::TrimapEncoderTrainer trainer(sd, cn, source(), opt);
  std::vector<double> losses;
  for (int i = 0; i < 150; ++i) losses.push_back(trainer.train_step());
  MESSAGE("loss ", losses.front(), " -> ", losses.back(), " after 150 steps");
  CHECK(losses.back() <= losses.front() / 10.0);
  CHECK(sd.unet.encoder.conv_in.weight().to_vector() == unet_before);
  CHECK_FALSE(sd.unet.encoder.conv_in.weight().requires_grad());
}

TEST_CASE("resume continues exactly; the checkpoint loads as a trimap encoder") {
  auto& sd = tiny_sd();
  defect::TrainOptions opt;
  opt.lr = 1e-3;
  opt.batch = 2;
  opt.accum = 2;
  opt.prompt_dropout = 0.5;
  auto cn_a = fresh_encoder();
  std::vector<double> straight;
  {
    defect::TrimapEncoderTrainer t(sd, cn_a, source(), opt);
    for (int i = 0; i < 4; ++i) straight.push_back(t.train_step());
  }
  const auto ckpt = temp("ckpt.safetensors");
  auto cn_b = fresh_encoder();
  std::vector<double> resumed;
  {
    defect::TrimapEncoderTrainer t(sd, cn_b, source(), opt);
    for (int i = 0; i < 2; ++i) resumed.push_back(t.train_step());
    t.save(ckpt.string());
  }
  auto cn_c = fresh_encoder();  // a new process would start from scratch and resume from the file
  {
    defect::TrimapEncoderTrainer t(sd, cn_c, source(), opt);
    t.resume(ckpt.string());
    CHECK(t.step() == 2);
    for (int i = 0; i < 2; ++i) resumed.push_back(t.train_step());
  }
  CHECK(resumed == straight);  // bit for bit
  const auto loaded = models::load_controlnet(models::ModelSource(ckpt.string()));
  CHECK(loaded.controlnet_down_blocks[0].weight().to_vector() == cn_b.controlnet_down_blocks[0].weight().to_vector());
  fs::remove(ckpt);
}
