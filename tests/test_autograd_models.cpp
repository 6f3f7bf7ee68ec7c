// Whole blocks and models against finite differences in double: a ResnetBlock2D (with and without a time
// embedding), a BasicTransformerBlock, Transformer2DModel with conv and linear projections, the tiny UNet of
// tests/data/unet, a ControlNet driving a frozen UNet, and the VAE decoder. Every parameter of the blocks is
// checked; for the models a subset spread over every kind of layer, plus the inputs. Gradient checkpointing of
// the UNet blocks gives the same gradients.
//
// Tolerance: blocks 1e-6 as the single ops (h = 1e-6). The models use h = 1e-5 and 1e-5: their objective
// <f(x), R> sums thousands of outputs, so its rounding error (~1e-16 |s| / h) relative to the small gradient
// entries at sampled coordinates is larger; the truncation error h^2 |f'''| stays ~1e-10.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdio>

#include "golden.hpp"

#include "adabldm/autograd/autograd.hpp"
#include "adabldm/io/safetensors.hpp"
#include "adabldm/models/autoencoder_kl.hpp"
#include "adabldm/models/controlnet.hpp"

using namespace adabldm;
using D = Tensor<double, Cpu>;
using Inputs = std::vector<std::pair<std::string, D>>;

namespace {
Rng& rng() {
  static Rng r(4242);
  return r;
}
D randn(const Shape& s, double scale = 1.0) { return rng().normal<double>(s, 0.0, scale); }
D leaf(const Shape& s, double scale = 1.0) { return autograd::leaf(randn(s, scale)); }

autograd::GradCheckOptions options(int64_t coords, int directions, double step) {
  autograd::GradCheckOptions o;
  o.max_coords = coords;
  o.directions = directions;
  o.step = step;
  return o;
}

template <class F>
void expect_gradients(const std::string& what, F&& f, const Inputs& inputs, const autograd::GradCheckOptions& o,
                      double tol) {
  const auto r = autograd::gradcheck(f, inputs, o);
  std::printf("%s", r.summary(what).c_str());
  for (const auto& e : r.entries) {
    CAPTURE(what);
    CAPTURE(e.name);
    CHECK(e.grad_scale > 0);
    CHECK(e.error() < tol);
  }
}

/// Every tracked parameter of m as a gradcheck input (names filtered by `names` when not empty).
template <class M>
Inputs parameters(M& m, const std::vector<std::string>& names = {}) {
  Inputs in;
  m.visit("", [&](const std::string& n, auto& p) {
    if (names.empty() || std::find(names.begin(), names.end(), n) != names.end()) in.push_back({n, p.value});
  });
  REQUIRE(in.size() == (names.empty() ? in.size() : names.size()));
  return in;
}

/// Only the named parameters train; every other one is frozen (no Meta).
template <class M>
void train_only(M& m, const std::vector<std::string>& names) {
  m.visit("", [&](const std::string& n, auto& p) { p.trainable = std::find(names.begin(), names.end(), n) != names.end(); });
  autograd::track(m);
}

models::UNet2DConditionModel<double> load_unet() {
  models::UNet2DConditionModel<double> unet(models::UNetConfig::from_json(golden::config("unet/config.json")));
  nn::load_state_dict(unet, io::SafeTensors::open(golden::path("unet/model.safetensors")).state_dict());
  return unet;
}

const std::vector<std::string> kUNetSubset = {
    "conv_in.weight",
    "time_embedding.linear_1.weight",
    "down_blocks.0.resnets.0.norm1.weight",
    "down_blocks.0.attentions.0.proj_in.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "down_blocks.0.downsamplers.0.conv.weight",
    "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
    "mid_block.resnets.1.conv2.bias",
    "up_blocks.0.resnets.1.conv_shortcut.weight",
    "up_blocks.0.upsamplers.0.conv.bias",
    "down_blocks.1.resnets.0.time_emb_proj.weight",  // (up_blocks.1: 32 groups of 1 channel cancel it exactly)
    "up_blocks.1.attentions.2.transformer_blocks.0.norm3.bias",
    "conv_norm_out.weight",
    "conv_out.bias",
};
}  // namespace

TEST_CASE("ResnetBlock2D: every parameter, the input and the time embedding") {
  nn::ResnetBlock2D<double> block(4, 6, 5, 2, 1e-5);  // with a shortcut conv
  nn::init_missing(block, rng());
  autograd::track(block);
  auto x = leaf({2, 4, 5, 3}), temb = leaf({2, 5});
  auto in = parameters(block);
  in.push_back({"x", x});
  in.push_back({"temb", temb});
  expect_gradients("ResnetBlock2D(temb, shortcut)", [&] { return block(x, temb); }, in, options(12, 1, 1e-6), 1e-6);

  nn::ResnetBlock2D<double> vae_block(4, 4, 0, 2, 1e-6);  // the VAE's: no time embedding, identity shortcut
  vae_block.output_scale_factor = 2.0;
  nn::init_missing(vae_block, rng());
  autograd::track(vae_block);
  auto in2 = parameters(vae_block);
  in2.push_back({"x", x});
  expect_gradients("ResnetBlock2D(no temb, scale 2)", [&] { return vae_block(x); }, in2, options(12, 1, 1e-6), 1e-6);
}

TEST_CASE("BasicTransformerBlock and Transformer2DModel (conv and linear projections)") {
  nn::BasicTransformerBlock<double> block(8, 2, 4, 6);
  nn::init_missing(block, rng());
  autograd::track(block);
  auto x = leaf({2, 5, 8}), ctx = leaf({2, 3, 6});
  auto in = parameters(block);
  in.push_back({"x", x});
  in.push_back({"context", ctx});
  // The block adds into its input's buffer when not training (ops::add_), so it gets a copy (recorded as one).
  expect_gradients("BasicTransformerBlock", [&] { return block(x.clone(), ctx); }, in, options(8, 1, 1e-6), 1e-6);

  for (bool linear : {false, true}) {
    nn::Transformer2DModel<double> t(8, 2, 6, 4, 1, linear);
    nn::init_missing(t, rng());
    autograd::track(t);
    auto img = leaf({2, 8, 3, 2});
    auto ti = parameters(t);
    ti.push_back({"x", img});
    ti.push_back({"context", ctx});
    expect_gradients(linear ? "Transformer2DModel(linear proj)" : "Transformer2DModel(conv proj)",
                     [&] { return t(img, ctx); }, ti, options(6, 1, 1e-6), 1e-6);
  }
}

TEST_CASE("tiny UNet (tests/data/unet) in double: parameters of every layer kind, sample and context") {
  auto unet = load_unet();
  train_only(unet, kUNetSubset);
  auto sample = leaf({1, 4, 8, 8}), ctx = leaf({1, 5, 32});
  const std::vector<float> t{421.0f};
  auto in = parameters(unet, kUNetSubset);
  in.push_back({"sample", sample});
  in.push_back({"encoder_hidden_states", ctx});
  expect_gradients("UNet2DConditionModel", [&] { return unet(sample, t, ctx); }, in, options(4, 2, 1e-5), 1e-5);
}

TEST_CASE("UNet gradient checkpointing (CheckpointBlocks): same gradients, fewer records") {
  auto unet = load_unet();
  train_only(unet, kUNetSubset);
  auto sample = leaf({1, 4, 8, 8});
  const D ctx = randn({1, 5, 32}), target = randn({1, 4, 8, 8});
  auto run = [&](bool checkpointed) {
    autograd::zero_grad(unet);
    sample.autograd_meta()->grad.reset();
    autograd::CheckpointBlocks policy(checkpointed);
    autograd::TrainingScope scope;
    const auto loss = autograd::mse(unet(sample, {421.0}, ctx), target);
    const std::size_t records = scope.tape().size();
    autograd::backward(loss);
    std::vector<D> grads{autograd::grad(sample).clone()};
    unet.visit("", [&](const std::string&, auto& p) {
      if (p.trainable) grads.push_back(autograd::grad(p).clone());
    });
    return std::pair{records, grads};
  };
  const auto [n_plain, plain] = run(false);
  const auto [n_ckpt, ckpt] = run(true);
  MESSAGE("tape records: ", n_plain, " without checkpointing, ", n_ckpt, " with");
  CHECK(n_ckpt < n_plain / 3);
  REQUIRE(plain.size() == ckpt.size());
  double worst = 0;
  for (std::size_t i = 0; i < plain.size(); ++i) {
    REQUIRE(ckpt[i].defined());
    double m = 0, s = 0;
    for (int64_t k = 0; k < plain[i].numel(); ++k) {
      m = worse(m, std::abs(plain[i].data()[k] - ckpt[i].data()[k]));
      s = std::max(s, std::abs(plain[i].data()[k]));
    }
    worst = std::max(worst, m / s);
  }
  MESSAGE("max relative difference of the gradients: ", worst);
  CHECK(worst < 1e-12);
}

TEST_CASE("ControlNet training with a frozen UNet: gradients reach the trimap encoder, none the UNet") {
  auto unet = load_unet();  // never tracked: frozen, no Meta
  models::ControlNetModel<double> cn(models::ControlNetConfig::from_json(golden::config("controlnet/config.json")));
  nn::load_state_dict(cn, io::SafeTensors::open(golden::path("controlnet/model.safetensors")).state_dict());
  autograd::track(cn);
  const auto io = io::SafeTensors::open(golden::path("controlnet/io.safetensors"));
  const D sample = io.get<double>("sample").narrow(0, 0, 1).contiguous();
  const D ctx = io.get<double>("encoder_hidden_states").narrow(0, 0, 1).narrow(1, 0, 6).contiguous();
  auto cond = autograd::leaf(io.get<double>("controlnet_cond").narrow(0, 0, 1).contiguous());
  const std::vector<float> t{500.0f};
  auto f = [&] { return unet(sample, t, ctx, cn(sample, t, ctx, cond, 0.8)); };
  const std::vector<std::string> subset = {
      "controlnet_cond_embedding.conv_out.bias", "conv_in.weight",
      "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_v.weight", "down_blocks.1.resnets.1.norm2.bias",
      "mid_block.attentions.0.proj_out.weight", "controlnet_down_blocks.0.weight", "controlnet_down_blocks.5.bias",
      "controlnet_mid_block.weight"};
  expect_gradients("ControlNet -> frozen UNet", f, parameters(cn, subset), options(4, 2, 1e-5), 1e-5);
  // The hint block's first layers and the hint itself get gradients of ~1e-3 .. 1e-4 (four convolutions and
  // SiLUs away from the output): a larger step keeps the objective's rounding error (~1e-14 / 2h) small
  // against them, and the truncation error (~h^2) stays below the tolerance.
  auto hint = parameters(cn, {"controlnet_cond_embedding.conv_in.weight", "controlnet_cond_embedding.blocks.3.weight"});
  hint.push_back({"controlnet_cond", cond});
  expect_gradients("ControlNet -> frozen UNet (hint)", f, hint, options(6, 2, 1e-3), 1e-5);
  int64_t with_meta = 0;
  unet.visit("", [&](const std::string&, auto& p) { with_meta += p.value.requires_grad(); });
  CHECK(with_meta == 0);
}

TEST_CASE("VAE decoder fine-tuning (tests/data/vae_kl): decoder parameters and the latent") {
  models::AutoencoderKL<double> vae(models::AutoencoderKLConfig::from_json(golden::config("vae_kl/config.json")));
  nn::load_state_dict(vae, io::SafeTensors::open(golden::path("vae_kl/model.safetensors")).state_dict());
  const std::vector<std::string> subset = {
      "conv_in.weight", "mid_block.attentions.0.to_q.weight", "mid_block.attentions.0.group_norm.weight",
      "mid_block.attentions.0.to_out.0.bias", "mid_block.resnets.1.conv2.bias", "up_blocks.0.upsamplers.0.conv.weight",
      "up_blocks.3.resnets.2.norm1.weight", "conv_norm_out.bias", "conv_out.weight"};
  train_only(vae.decoder, subset);
  auto z = leaf({1, 4, 3, 2});
  auto in = parameters(vae.decoder, subset);
  in.push_back({"z", z});
  expect_gradients("VAE decoder", [&] { return vae.decode(z); }, in, options(4, 2, 1e-5), 1e-5);
}
