#pragma once
// The KL decoder-adaptation case the CPU and CUDA tests share: the golden tiny VAE, its OK image, a latent near
// the image's encoding (Rng(2) noise of std 0.05) and a 16 x 16 square defect mask.
#include "golden.hpp"

#include "adabldm/core/rng.hpp"
#include "adabldm/io/safetensors.hpp"
#include "adabldm/models/autoencoder_kl.hpp"
#include "adabldm/ops/ops.hpp"

struct KlAdaptationCase {
  adabldm::models::AutoencoderKL<float> vae;
  adabldm::Tensor<float> ok, latent, mask;
};

inline KlAdaptationCase kl_adaptation_case() {
  using namespace adabldm;
  KlAdaptationCase c{models::AutoencoderKL<float>(models::AutoencoderKLConfig::from_json(golden::config("vae_kl/config.json"))),
                     {}, {}, Tensor<float>::zeros({1, 1, 64, 64})};
  nn::load_state_dict(c.vae, io::SafeTensors::open(golden::path("vae_kl/model.safetensors")).state_dict());
  Rng rng(2);
  c.ok = io::SafeTensors::open(golden::path("vae_kl/io.safetensors")).get<float>("image");
  c.latent = ops::add(c.vae.encode_scaled(c.ok), rng.normal({1, 4, 8, 8}, 0.0, 0.05));
  for (int y = 20; y < 36; ++y)
    for (int x = 24; x < 40; ++x) c.mask.at({0, 0, y, x}) = 1.0f;
  return c;
}
