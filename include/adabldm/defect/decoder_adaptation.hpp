#pragma once
// Online decoder adaptation (AdaBLDM §7, `adabldm-method.md`): for one generated latent z*, fine-tune a copy of
// the VAE decoder for T steps so that the decoded background matches the OK image while the defect keeps what
// the original decoder made of it, decode, and throw the copy away (the next sample starts from the original):
//   L(D) = mean[(M (D0(z) - D(z)))^2] + lambda * mean[((1 - M)(x_ok - D(z)))^2]
// with both means over all B x 3 x H x W elements (masked-out zeros count, as F.mse_loss does), M the undilated
// defect mask (1 = defect), AdamW (lr 1e-4, weight decay 0.01), post_quant_conv frozen.
#include <functional>
#include <limits>

#include "adabldm/autograd/autograd.hpp"
#include "adabldm/models/autoencoder_kl.hpp"

namespace adabldm::defect {

struct AdaptationOptions {
  int steps = 200;        ///< T_ft
  double lr = 1e-4;
  double lambda = 100.0;  ///< weight of the background term (preservation_ratio)
  double weight_decay = 0.01;
  /// Read the loss after every step (AdaptationResult::losses, on_step's value). On a device each read waits
  /// for the GPU, which then idles while the next step is enqueued; off, the values are NaN and losses is empty.
  bool record_losses = true;
};

struct AdaptationResult {
  Tensor<float> image;        ///< the adapted decoder's output, [1, 3, H, W] in ~[-1, 1] (host)
  Tensor<float> unadapted;    ///< D0(z*), the original decoder's output (host)
  std::vector<double> losses; ///< the loss before each step (when recorded)
};

/// The adaptation of any decoder module (a struct with visit() and operator()(h)) on its input h, which is
/// fixed (no gradient): a copy of `decoder0` is trained, `decoder0` is left unchanged. The decoder and h live
/// on any device in storage type T (the parameters, gradients and AdamW state use T: float is the tested
/// choice); ok_image and defect_mask ([1, 1, H, W], 1 = defect) are host tensors in the decoder's output space.
/// `on_step(i, steps, loss)` reports progress.
template <class Decoder, class T, class Dev>
AdaptationResult adapt_decoder_module(const Decoder& decoder0, const Tensor<T, Dev>& h, const Tensor<float>& ok_image,
                                      const Tensor<float>& defect_mask, const AdaptationOptions& opt = {},
                                      const std::function<void(int, int, double)>& on_step = {}) {
  check(opt.steps >= 0 && opt.lr >= 0 && opt.lambda >= 0, "decoder adaptation: steps, lr and lambda must be >= 0");
  AdaptationResult r;
  const auto unadapted = decoder0(h);
  r.unadapted = download_as<float>(unadapted);
  check<ShapeError>(ok_image.shape() == r.unadapted.shape(), "decoder adaptation: the OK image is ",
                    ok_image.shape().str(), " but the decoder makes ", r.unadapted.shape().str());
  check<ShapeError>(defect_mask.rank() == 4 && defect_mask.dim(1) == 1 && defect_mask.dim(2) == ok_image.dim(2) &&
                        defect_mask.dim(3) == ok_image.dim(3),
                    "decoder adaptation: the mask must be [1, 1, ", ok_image.dim(2), ", ", ok_image.dim(3), "], got ",
                    defect_mask.shape().str());
  if (opt.steps == 0) {
    r.image = r.unadapted;
    return r;
  }
  const auto mask = upload_as<T, Dev>(defect_mask);
  const auto background = ops::affine(mask, static_cast<T>(-1.0f), static_cast<T>(1.0f));  // 1 - M
  const auto target_fg = ops::mul(unadapted, mask);                                       // M D0(z)
  const auto target_bg = ops::mul(upload_as<T, Dev>(ok_image), background);                // (1 - M) x_ok

  Decoder decoder = decoder0;     // shares the original's buffers ...
  nn::clone_parameters(decoder);  // ... until here: the copy trains, the original stays
  autograd::track(decoder);
  autograd::AdamW<T, Dev> optimiser(decoder, {opt.lr, 0.9, 0.999, 1e-8, opt.weight_decay});
  for (int i = 0; i < opt.steps; ++i) {
    double value = std::numeric_limits<double>::quiet_NaN();
    {
      autograd::TrainingScope scope;
      const auto x = decoder(h);
      const auto fg = autograd::mse(ops::mul(x, mask), target_fg);
      const auto bg = autograd::mse(ops::mul(x, background), target_bg);
      const auto loss = ops::add(fg, ops::scale(bg, static_cast<T>(static_cast<float>(opt.lambda))));
      if (opt.record_losses) value = scalar_value(loss);
      autograd::backward(loss);
    }
    optimiser.step();
    optimiser.zero_grad();
    if (opt.record_losses) r.losses.push_back(value);
    if (on_step) on_step(i + 1, opt.steps, value);
  }
  autograd::untrack(decoder);
  r.image = download_as<float>(decoder(h));
  return r;
}

/// The KL autoencoder's decoder (any storage type and device) on a UNet-scale host latent [1, C, h, w]:
/// post_quant_conv stays frozen (applied once), the decoder adapts. ok_image [1, 3, H, W] in [-1, 1].
template <class T, class Dev>
AdaptationResult adapt_decoder(const models::AutoencoderKL<T, Dev>& vae, const Tensor<float>& latent,
                               const Tensor<float>& ok_image, const Tensor<float>& defect_mask,
                               const AdaptationOptions& opt = {},
                               const std::function<void(int, int, double)>& on_step = {}) {
  const float scaling = static_cast<float>(vae.config.scaling_factor), shift = static_cast<float>(vae.config.shift_factor);
  const auto z = upload_as<T, Dev>(ops::affine(latent, 1.0f / scaling, shift));
  const auto h = vae.config.use_post_quant_conv ? vae.post_quant_conv(z) : z;
  return adapt_decoder_module(vae.decoder, h, ok_image, defect_mask, opt, on_step);
}

}  // namespace adabldm::defect
