// The evaluation's detector with Dev = Cuda against its CPU twin: one backward through the losses on the host
// (autograd::on_host carries the gradient back to the device) gives every parameter the CPU's gradient; training
// draws the same batches and follows the CPU's losses; the score maps agree. `adabldm evaluate --device cuda` is
// this code (run_evaluation<Cuda>).
#include "cuda_test_util.cuh"
// (cuda_test_util.cuh includes adabldm/cuda.cuh first: the model headers must come after it.)
#include <map>

#include "adabldm/autograd/autograd.hpp"
#include "adabldm/eval/evaluation.hpp"
#include "../eval_samples.hpp"

using namespace cuda_test;

CUDA_TEST_CASE("detector: the host losses' gradient reaches every device parameter as on the CPU") {
  ADABLDM_REQUIRE_CUDA();
  eval::SegmentationDetector<float, Cpu> cpu(toy::small_detector());
  Rng init(11);
  nn::init_missing(cpu, init);
  auto dev = nn::convert<float, Cuda>(cpu);
  autograd::track(cpu);
  autograd::track(dev);
  Rng data(5);
  const auto a = toy::seg_sample(toy::make_sample(data, 32, true)), b = toy::seg_sample(toy::make_sample(data, 32, false));
  auto x = F32::empty({2, 1, 32, 32}), y = F32::empty({2, 1, 32, 32});
  std::copy(a.image.data(), a.image.data() + 1024, x.data());
  std::copy(b.image.data(), b.image.data() + 1024, x.data() + 1024);
  std::copy(a.mask.data(), a.mask.data() + 1024, y.data());
  std::copy(b.mask.data(), b.mask.data() + 1024, y.data() + 1024);
  auto loss_of = [&](const F32& logits) {
    return ops::add(autograd::bce_with_logits(logits, y, 5.0), autograd::dice_loss(logits, y));
  };
  double l_cpu = 0, l_dev = 0;
  {
    autograd::TrainingScope scope;
    const auto l = loss_of(cpu(x));
    l_cpu = l.data()[0];
    autograd::backward(l);
  }
  {
    autograd::TrainingScope scope;
    const auto l = loss_of(autograd::on_host(dev(cuda::to_device(x))));
    l_dev = l.data()[0];
    autograd::backward(l);
  }
  std::printf("  detector loss: cpu %.7f cuda %.7f\n", l_cpu, l_dev);
  CHECK(std::abs(l_cpu - l_dev) <= tolerance<float>(2048) * std::max(1.0, std::abs(l_cpu)));
  std::map<std::string, F32> cpu_grads;
  cpu.visit("", [&](const std::string& name, nn::Param<float, Cpu>& p) { cpu_grads[name] = autograd::grad(p); });
  int64_t count = 0;
  dev.visit("", [&](const std::string& name, nn::Param<float, Cuda>& p) {
    const auto g = autograd::grad(p);
    REQUIRE_MESSAGE(g.defined(), name);
    // Weight gradients sum over N*H*W = 2048 positions; measured against their own largest entry.
    expect_close(name + " gradient", cuda::to_host(g), cpu_grads.at(name), tolerance<float>(2048), 1e-30);
    ++count;
  });
  CHECK(count == static_cast<int64_t>(cpu_grads.size()));
}

CUDA_TEST_CASE("detector training and scoring on the device follow the CPU's") {
  ADABLDM_REQUIRE_CUDA();
  Rng rng(3);
  std::vector<eval::SegSample> pos, neg;
  for (int i = 0; i < 3; ++i) pos.push_back(toy::seg_sample(toy::make_sample(rng, 32, true)));
  for (int i = 0; i < 3; ++i) neg.push_back(toy::seg_sample(toy::make_sample(rng, 32, false)));
  eval::DetectorTraining t;
  t.steps = 4;
  t.crop = 16;
  t.batch = 4;
  t.positives = 2;
  // A tiny learning rate: AdamW's first updates are ~lr * sign(g), so a gradient within rounding of zero may flip
  // sign between the devices; lr = 1e-6 keeps such a flip far below the tolerance (the gradients themselves are
  // compared in the case above).
  t.lr = 1e-6;
  eval::SegmentationDetector<float, Cpu> cpu(toy::small_detector());
  eval::SegmentationDetector<float, Cuda> dev(toy::small_detector());
  std::vector<double> l_cpu, l_dev;
  eval::train_detector(cpu, pos, neg, t, [&](const eval::TrainStep& s) { l_cpu.push_back(s.loss); });
  eval::train_detector(dev, pos, neg, t, [&](const eval::TrainStep& s) { l_dev.push_back(s.loss); });
  REQUIRE(l_cpu.size() == l_dev.size());
  for (std::size_t i = 0; i < l_cpu.size(); ++i) {
    std::printf("  step %zu loss: cpu %.7f cuda %.7f\n", i + 1, l_cpu[i], l_dev[i]);
    CHECK(std::abs(l_cpu[i] - l_dev[i]) <= tolerance<float>(1024) * std::max(1.0, std::abs(l_cpu[i])));
  }
  expect_close("head.weight after training", cuda::to_host(dev.head.weight()), cpu.head.weight().detach(), 1e-5);
  expect_close("score map", eval::score_image(dev, pos[0].image), eval::score_image(cpu, pos[0].image),
               tolerance<float>(1024));
}
