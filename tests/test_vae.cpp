// AutoencoderKL, VQModel (diffusers 0.27.2) and TAESD (taesd.py) against their golden cases (tests/data/{vae_kl,
// vae_vq,taesd}), and the original (LDM) VAE names (tests/data/ldm_format).
#include "golden.hpp"

#include <cmath>
#include <cstring>

#include "adabldm/io/safetensors.hpp"
#include "adabldm/models/autoencoder_kl.hpp"
#include "adabldm/models/ldm_vae_keys.hpp"
#include "adabldm/models/taesd.hpp"
#include "adabldm/models/vq_model.hpp"

using namespace adabldm;
using namespace adabldm::models;

namespace {
io::StateDict weights(const std::string& rel) { return io::SafeTensors::open(golden::path(rel)).state_dict(); }

AutoencoderKL<float> load_kl() {
  AutoencoderKL<float> vae(AutoencoderKLConfig::from_json(golden::config("vae_kl/config.json")));
  nn::load_state_dict(vae, weights("vae_kl/model.safetensors"));
  return vae;
}

/// Every output of the vae_kl case; `prefix` selects the ldm_format copy ("vae.").
void check_kl_golden(const AutoencoderKL<float>& vae, const io::SafeTensors& io, const std::string& prefix,
                     const std::string& label) {
  const auto image = io.get<float>(prefix + "image");
  GOLDEN_CHECK(label + " encoder_out", vae.encoder_out(image), io.get<float>(prefix + "encoder_out"));
  GOLDEN_CHECK(label + " moments", vae.moments(image), io.get<float>(prefix + "moments"));
  const auto posterior = vae.encode(image);
  GOLDEN_CHECK(label + " posterior_mean", posterior.mean, io.get<float>(prefix + "posterior_mean"));
  GOLDEN_CHECK(label + " posterior_logvar", posterior.logvar, io.get<float>(prefix + "posterior_logvar"));
  GOLDEN_CHECK(label + " posterior_std", posterior.std, io.get<float>(prefix + "posterior_std"));
  GOLDEN_CHECK(label + " latent_scaled", vae.encode_scaled(image), io.get<float>(prefix + "latent_scaled"));
  GOLDEN_CHECK(label + " decoded_mean", vae.decode(posterior.mode()), io.get<float>(prefix + "decoded_mean"));
  GOLDEN_CHECK(label + " decoded_z", vae.decode(io.get<float>(prefix + "z")), io.get<float>(prefix + "decoded_z"));
}

/// PSNR in dB of `ours` clamped to [0, 1] against a [0, 1] reference.
double psnr01(const Tensor<float>& ours, const Tensor<float>& ref) {
  const auto a = ours.to_vector(), b = ref.to_vector();
  REQUIRE(a.size() == b.size());
  double se = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::clamp(double(a[i]), 0.0, 1.0) - double(b[i]);
    se += d * d;
  }
  return 10.0 * std::log10(1.0 / (se / double(a.size())));
}

bool same_values(const Tensor<float>& a, const Tensor<float>& b) {
  return a.shape() == b.shape() && a.to_vector() == b.to_vector();
}

/// Same names, dtypes, shapes and bytes.
void check_bit_identical(const io::StateDict& a, const io::StateDict& b) {
  REQUIRE(a.names() == b.names());
  for (const auto& [name, ra] : a.tensors()) {
    const auto& rb = b.at(name);
    INFO(name);
    CHECK(ra.dtype == rb.dtype);
    CHECK(ra.shape == rb.shape);
    CHECK((ra.nbytes() == rb.nbytes() && std::memcmp(ra.data, rb.data, ra.nbytes()) == 0));
  }
}
}  // namespace

TEST_CASE("AutoencoderKL golden: encoder, posterior, scaled latent and decoder") {
  const auto vae = load_kl();
  CHECK(vae.downscale() == 8);
  check_kl_golden(vae, io::SafeTensors::open(golden::path("vae_kl/io.safetensors")), "", "vae_kl");
  // decode_scaled undoes the scaling: the same image as decoding the mean
  const auto io = io::SafeTensors::open(golden::path("vae_kl/io.safetensors"));
  GOLDEN_CHECK("vae_kl decode_scaled(latent_scaled)", vae.decode_scaled(io.get<float>("latent_scaled")),
               io.get<float>("decoded_mean"));
}

TEST_CASE("AutoencoderKL posterior sampling has the posterior's mean and std") {
  const auto io = io::SafeTensors::open(golden::path("vae_kl/io.safetensors"));
  const auto posterior = DiagonalGaussian<float>::from_moments(io.get<float>("moments"));
  const auto mean = posterior.mean.to_vector(), std = posterior.std.to_vector();
  constexpr int kDraws = 4000;
  std::vector<double> sum(mean.size(), 0.0), sum2(mean.size(), 0.0);
  Rng rng(2024);
  for (int d = 0; d < kDraws; ++d) {
    const auto z = posterior.sample(rng).to_vector();
    for (std::size_t i = 0; i < z.size(); ++i) {
      sum[i] += z[i];
      sum2[i] += double(z[i]) * z[i];
    }
  }
  double worst_mean = 0, worst_std = 0;  // in standard errors / relative
  for (std::size_t i = 0; i < mean.size(); ++i) {
    const double m = sum[i] / kDraws, s = std::sqrt(sum2[i] / kDraws - m * m);
    worst_mean = worse(worst_mean, std::abs(m - mean[i]) / (std[i] / std::sqrt(double(kDraws))));
    worst_std = worse(worst_std, std::abs(s / std[i] - 1.0));
  }
  std::printf("[stats] posterior samples: worst |mean err| %.2f standard errors, worst |std/std_ref - 1| %.4f\n",
              worst_mean, worst_std);
  CHECK(worst_mean < 5.0);  // 256 elements: a 5-sigma deviation is practically impossible
  CHECK(worst_std < 0.06);  // std of the std estimate ~ 1/sqrt(2 * 4000) = 1.1%

  // encode_scaled(image, &rng) = the same posterior sample, scaled; same seed, same sample
  const auto vae = load_kl();
  Rng a(7), b(7);
  const auto scaled = vae.encode_scaled(io.get<float>("image"), &a);
  const auto z = vae.encode(io.get<float>("image")).sample(b);
  CHECK(same_values(scaled, ops::scale(z, float(vae.config.scaling_factor))));
  CHECK_FALSE(same_values(scaled, vae.encode_scaled(io.get<float>("image"), &a)));  // the stream moved on
}

TEST_CASE("AutoencoderKL: clear errors for wrong inputs and unsupported configs") {
  const auto vae = load_kl();
  CHECK_THROWS_WITH_AS(vae.encode(Tensor<float>::zeros({1, 4, 64, 64})), doctest::Contains("image must be [B, 3, H, W]"),
                       ShapeError);
  CHECK_THROWS_WITH_AS(vae.encode(Tensor<float>::zeros({1, 3, 60, 64})),
                       doctest::Contains("60x64 is not a multiple of the downsampling factor 8"), ShapeError);
  CHECK_THROWS_WITH_AS(vae.decode(Tensor<float>::zeros({1, 3, 8, 8})), doctest::Contains("latent must be [B, 4, h, w]"),
                       ShapeError);
  CHECK_THROWS_AS(vae.decode(Tensor<float>::zeros({4, 8, 8})), ShapeError);

  auto c = golden::config("vae_kl/config.json");
  c.json["up_block_types"][1] = "AttnUpDecoderBlock2D";
  CHECK_THROWS_WITH_AS(AutoencoderKLConfig::from_json(c), doctest::Contains("AttnUpDecoderBlock2D"), FormatError);
  c = golden::config("vae_kl/config.json");
  c.json["act_fn"] = "relu";
  CHECK_THROWS_WITH_AS(AutoencoderKLConfig::from_json(c), doctest::Contains("act_fn"), FormatError);
  c = golden::config("vae_kl/config.json");
  c.json["latents_mean"] = {0.1, 0.2, 0.3, 0.4};
  CHECK_THROWS_WITH_AS(AutoencoderKLConfig::from_json(c), doctest::Contains("latents_mean"), FormatError);
  // diffusers >= 0.28 options: use_quant_conv=false drops the tensor from the expected names
  c = golden::config("vae_kl/config.json");
  c.json["use_quant_conv"] = false;
  AutoencoderKL<float> no_quant(AutoencoderKLConfig::from_json(c));
  CHECK_THROWS_WITH_AS(nn::load_state_dict(no_quant, weights("vae_kl/model.safetensors")),
                       doctest::Contains("unexpected: quant_conv.bias, quant_conv.weight"), Error);
}

TEST_CASE("VQModel golden: prequant latent, codebook, decoding with and without quantisation") {
  VQModel<float> vq(VQModelConfig::from_json(golden::config("vae_vq/config.json")));
  nn::load_state_dict(vq, weights("vae_vq/model.safetensors"));
  const auto io = io::SafeTensors::open(golden::path("vae_vq/io.safetensors"));
  const auto latent = vq.encode(io.get<float>("image"));
  GOLDEN_CHECK("vae_vq latent_prequant", latent, io.get<float>("latent_prequant"));
  const auto q = vq.quantize(io.get<float>("latent_prequant"));
  GOLDEN_CHECK("vae_vq latent_quantized", q.quantized, io.get<float>("latent_quantized"));
  const auto ref_idx = io.get<int64_t>("codebook_indices");
  CHECK(q.indices.shape() == ref_idx.shape());
  CHECK(q.indices.to_vector() == ref_idx.to_vector());
  CHECK(vq.quantize(latent).indices.to_vector() == ref_idx.to_vector());  // our own latent picks the same codes
  GOLDEN_CHECK("vae_vq decoded", vq.decode(io.get<float>("latent_prequant")), io.get<float>("decoded"));
  GOLDEN_CHECK("vae_vq decoded_not_quantized", vq.decode(io.get<float>("latent_prequant"), /*force_not_quantize=*/true),
               io.get<float>("decoded_not_quantized"));

  CHECK_THROWS_WITH_AS(vq.encode(Tensor<float>::zeros({1, 1, 32, 32})), doctest::Contains("image must be [B, 3, H, W]"),
                       ShapeError);
  CHECK_THROWS_WITH_AS(vq.encode(Tensor<float>::zeros({1, 3, 33, 32})),
                       doctest::Contains("not a multiple of the downsampling factor 2"), ShapeError);
  CHECK_THROWS_AS(vq.quantize(Tensor<float>::zeros({1, 4, 16, 16})), ShapeError);
}

TEST_CASE("VQModel config: only norm_type group") {
  auto c = golden::config("vae_vq/config.json");
  CHECK(VQModelConfig::from_json(c).vq_embed_dim == 3);  // null -> latent_channels
  c.json["norm_type"] = "spatial";
  CHECK_THROWS_WITH_AS(VQModelConfig::from_json(c), doctest::Contains("\"norm_type\" = \"spatial\" is not supported"),
                       FormatError);
}

TEST_CASE("TAESD golden (taesd.py names): latents, reconstructions, scaled latents, PSNR") {
  TAESD<float> taesd(TaesdConfig::from_json(golden::config("taesd/config.json")));
  taesd.load(weights("taesd/model.safetensors"));
  const auto io = io::SafeTensors::open(golden::path("taesd/io.safetensors"));
  for (const std::string which : {"synthetic", "photo"}) {
    const auto latent = taesd.encode01(io.get<float>("image01_" + which));
    GOLDEN_CHECK("taesd latent_" + which, latent, io.get<float>("latent_" + which));
    GOLDEN_CHECK("taesd latent_scaled_uint8domain_" + which, taesd.scale_latents(latent),
                 io.get<float>("latent_scaled_uint8domain_" + which));
    const auto recon = taesd.decode01(io.get<float>("latent_" + which));
    GOLDEN_CHECK("taesd recon01_" + which, recon, io.get<float>("recon01_" + which));
    const double ours = psnr01(recon, io.get<float>("image01_" + which));
    const double ref = psnr01(io.get<float>("recon01_" + which), io.get<float>("image01_" + which));
    const double stated = which == "photo" ? 29.24 : 16.35;  // taesd/README.md
    std::printf("[psnr] taesd recon01_%-9s ours %.4f dB, reference output %.4f dB, README %.2f dB\n", which.c_str(),
                ours, ref, stated);
    CHECK(std::abs(ref - stated) <= 0.005);
    CHECK(std::abs(ours - ref) <= 0.1);
    CHECK(std::abs(ours - stated) <= 0.1);
  }
  GOLDEN_CHECK("taesd decoded_z01", taesd.decode01(io.get<float>("z")), io.get<float>("decoded_z01"));
  // unscale_latents inverts scale_latents inside the clamp range
  const auto s = io.get<float>("latent_scaled_uint8domain_synthetic");
  GOLDEN_CHECK("taesd scale_latents(unscale_latents(x))", taesd.scale_latents(taesd.unscale_latents(s)), s);
}

TEST_CASE("TAESD loads the AutoencoderTiny names and the split encoder/decoder files identically") {
  const auto sd = weights("taesd/model.safetensors");
  TAESD<float> reference;
  reference.load(sd);

  // The mapping in code agrees with the golden case's fact sheet, both ways, for every key.
  const auto keymap = io::read_json(golden::path("taesd/keymap_taesd_to_AutoencoderTiny.json"));
  REQUIRE(keymap.size() == sd.size());
  io::StateDict tiny("AutoencoderTiny names");
  for (const auto& [taesd_name, tiny_name] : keymap.items()) {
    CHECK(autoencoder_tiny_name_from_taesd(taesd_name) == tiny_name.get<std::string>());
    CHECK(taesd_name_from_autoencoder_tiny(tiny_name.get<std::string>()) == taesd_name);
    tiny.add(tiny_name.get<std::string>(), sd.at(taesd_name));
  }
  TAESD<float> from_tiny;
  from_tiny.load(tiny);
  TAESD<float> from_split;
  from_split.load_split(sd.with_prefix("encoder."), sd.with_prefix("decoder."));

  const auto io = io::SafeTensors::open(golden::path("taesd/io.safetensors"));
  const auto image01 = io.get<float>("image01_synthetic"), latent = io.get<float>("latent_synthetic");
  const auto ref_latent = reference.encode01(image01), ref_recon = reference.decode01(latent);
  CHECK(same_values(from_tiny.encode01(image01), ref_latent));
  CHECK(same_values(from_tiny.decode01(latent), ref_recon));
  CHECK(same_values(from_split.encode01(image01), ref_latent));
  CHECK(same_values(from_split.decode01(latent), ref_recon));

  // diffusers' [-1, 1] convention: encode(2x - 1) = latent, decode(latent) = 2 * recon01 - 1
  GOLDEN_CHECK("taesd (AutoencoderTiny) encode(image*2-1)", from_tiny.encode(ops::affine(image01, 2.0f, -1.0f)),
               io.get<float>("latent_synthetic"));
  GOLDEN_CHECK("taesd (AutoencoderTiny) decode(latent)", from_tiny.decode(latent),
               ops::affine(io.get<float>("recon01_synthetic"), 2.0f, -1.0f));
}

TEST_CASE("TAESD: clear errors for wrong inputs and names") {
  TAESD<float> taesd;
  taesd.load(weights("taesd/model.safetensors"));
  CHECK_THROWS_WITH_AS(taesd.encode01(Tensor<float>::zeros({1, 1, 64, 64})),
                       doctest::Contains("image must be [B, 3, H, W]"), ShapeError);
  CHECK_THROWS_WITH_AS(taesd.encode01(Tensor<float>::zeros({1, 3, 64, 36})),
                       doctest::Contains("64x36 is not a multiple of the downsampling factor 8"), ShapeError);
  CHECK_THROWS_WITH_AS(taesd.decode01(Tensor<float>::zeros({1, 16, 8, 8})),
                       doctest::Contains("latent must be [B, 4, h, w]"), ShapeError);
  CHECK_THROWS_WITH_AS(taesd_name_from_autoencoder_tiny("decoder.conv_out.weight"),
                       doctest::Contains("decoder.conv_out.weight"), FormatError);
  CHECK_THROWS_AS(autoencoder_tiny_name_from_taesd("decoder.0.weight"), FormatError);  // the Clamp has no weights
  auto sd = weights("taesd/model.safetensors");
  sd.erase("decoder.19.bias");
  CHECK_THROWS_WITH_AS(taesd.load(sd), doctest::Contains("missing: decoder.19.bias"), Error);
  auto c = golden::config("taesd/config.json");
  c.json["act_fn"] = "silu";
  CHECK_THROWS_WITH_AS(TaesdConfig::from_json(c), doctest::Contains("act_fn"), FormatError);
}

TEST_CASE("Original (LDM) VAE names: load, golden outputs and round trip") {
  const auto file = weights("ldm_format/model.safetensors");
  const auto first_stage = file.with_prefix("first_stage_model.");
  REQUIRE(first_stage.size() == 244);
  const auto converted = io::vae_from_ldm(first_stage);
  CHECK(converted.at("encoder.mid_block.attentions.0.to_q.weight").shape == Shape{32, 32});
  CHECK(converted.contains("decoder.up_blocks.0.upsamplers.0.conv.weight"));  // = decoder.up.3 (reversed)

  const auto cfg = golden::config("ldm_format/config.json");
  const io::Config vae_cfg{cfg.json["first_stage_model."]["diffusers_config"], "ldm_format/config.json first_stage_model."};
  AutoencoderKL<float> vae(AutoencoderKLConfig::from_json(vae_cfg));
  nn::load_state_dict(vae, converted);
  check_kl_golden(vae, io::SafeTensors::open(golden::path("ldm_format/io.safetensors")), "vae.", "ldm_format vae");

  // the two conversions are exact inverses, and diffusers -> LDM reproduces the file's own tensors
  check_bit_identical(io::vae_to_ldm(converted), first_stage);
  check_bit_identical(io::vae_to_ldm(weights("vae_kl/model.safetensors")), first_stage);
  check_bit_identical(io::vae_from_ldm(first_stage), weights("vae_kl/model.safetensors"));
}

TEST_CASE("Original (LDM) VAE names: unrecognised names are errors naming them") {
  auto sd = weights("ldm_format/model.safetensors").with_prefix("first_stage_model.");
  sd.add("encoder.mid.attn_2.q.weight", Tensor<float>::zeros({32, 32, 1, 1}));
  sd.add("decoder.up.1.block.0.nin_shortcut.scale", Tensor<float>::zeros({16}));
  CHECK_THROWS_WITH_AS(io::vae_from_ldm(sd),
                       doctest::Contains("2 tensor names are not original (LDM) VAE names: "
                                         "decoder.up.1.block.0.nin_shortcut.scale, encoder.mid.attn_2.q.weight"),
                       FormatError);
  auto bad_shape = weights("ldm_format/model.safetensors").with_prefix("first_stage_model.");
  bad_shape.erase("decoder.mid.attn_1.k.weight");
  bad_shape.add("decoder.mid.attn_1.k.weight", Tensor<float>::zeros({32, 32, 3, 3}));
  CHECK_THROWS_WITH_AS(io::vae_from_ldm(bad_shape), doctest::Contains("decoder.mid.attn_1.k.weight\" has shape [32, 32, 3, 3]"),
                       FormatError);
  auto diffusers = weights("vae_kl/model.safetensors");
  diffusers.add("encoder.mid_block.attentions.0.query.weight", Tensor<float>::zeros({32, 32}));
  CHECK_THROWS_WITH_AS(io::vae_to_ldm(diffusers), doctest::Contains("encoder.mid_block.attentions.0.query.weight"),
                       FormatError);
}
