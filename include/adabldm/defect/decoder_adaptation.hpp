#pragma once
// Online decoder adaptation (AdaBLDM §7, `adabldm-method.md`): for one generated latent z*, fine-tune a copy of
// the VAE decoder for T steps so that the decoded background matches the OK image while the defect keeps what
// the original decoder made of it, decode, and throw the copy away (the next sample starts from the original):
//   L(D) = mean[(M (D0(z) - D(z)))^2] + lambda * mean[((1 - M)(x_ok - D(z)))^2]
// with both means over all B x 3 x H x W elements (masked-out zeros count, as F.mse_loss does), M the undilated
// defect mask (1 = defect), AdamW (lr 1e-4, weight decay 0.01), post_quant_conv frozen.
//
// Its cost is the user's choice (docs/performance.md, "Decoder adaptation: cost and quality"): fewer steps with a
// larger learning rate, and `last_blocks`, which adapts only the decoder's last up blocks and output layers. The
// frozen part then runs once, and each step runs the forward and backward of the trainable tail alone.
#include <functional>
#include <string>
#include <type_traits>
#include <vector>
#include <limits>

#include "adabldm/autograd/autograd.hpp"
#include "adabldm/models/autoencoder_kl.hpp"

namespace adabldm::defect {

struct AdaptationOptions {
  int steps = 200;        ///< T_ft
  double lr = 1e-4;
  double lambda = 100.0;  ///< weight of the background term (preservation_ratio)
  double weight_decay = 0.01;
  /// 0: the whole decoder adapts (the paper). k > 0 (KL decoders): only the last k up blocks and the output norm
  /// and convolution adapt; conv_in, the mid block and the other up blocks are frozen and run once.
  int last_blocks = 0;
  /// Read the loss after every step (AdaptationResult::losses, on_step's value). On a device each read waits
  /// for the GPU, which then idles while the next step is enqueued; off, the values are NaN and losses is empty.
  bool record_losses = true;
};

struct AdaptationResult {
  Tensor<float> image;        ///< the adapted decoder's output, [1, 3, H, W] in ~[-1, 1] (host)
  Tensor<float> unadapted;    ///< D0(z*), the original decoder's output (host)
  std::vector<double> losses; ///< the loss before each step (when recorded)
};

namespace detail {
/// The `compute` argument of adapt() when the master trains itself (C = T).
struct NoComputeCopy {};

/// The parameters of a module in visiting order (two modules of one architecture pair up by position).
template <class T, class Dev, class M>
std::vector<nn::Param<T, Dev>*> parameter_list(M& module) {
  std::vector<nn::Param<T, Dev>*> out;
  module.visit("", [&](const std::string&, nn::Param<T, Dev>& p) { out.push_back(&p); });
  return out;
}

/// The adaptation loop. The master copy of decoder0 (weights, AdamW state, in T) trains; the forward and backward
/// of each step run in C on `compute`, a module of the same architecture whose values are refreshed from the
/// master before each step and whose gradients are handed back (C = T: on the master itself, no copy).
template <class C, class Decoder, class ComputeDecoder, class T, class Dev>
AdaptationResult adapt(const Decoder& decoder0, ComputeDecoder compute, const Tensor<T, Dev>& h,
                       const Tensor<float>& ok_image, const Tensor<float>& defect_mask, const AdaptationOptions& opt,
                       const std::function<void(int, int, double)>& on_step) {
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
  // The loss's constants, in the compute type.
  const auto mask = upload_as<C, Dev>(defect_mask);
  const auto background = ops::affine(mask, static_cast<C>(-1.0f), static_cast<C>(1.0f));  // 1 - M
  const auto target_fg = ops::mul(convert_as<C>(unadapted), mask);                           // M D0(z)
  const auto target_bg = ops::mul(upload_as<C, Dev>(ok_image), background);                   // (1 - M) x_ok
  const auto h_c = convert_as<C>(h);

  Decoder decoder = decoder0;     // shares the original's buffers ...
  nn::clone_parameters(decoder);  // ... until here: the copy trains, the original stays
  autograd::track(decoder);
  autograd::AdamW<T, Dev> optimiser(decoder, {opt.lr, 0.9, 0.999, 1e-8, opt.weight_decay});
  constexpr bool mixed = !std::is_same_v<C, T>;
  const auto master = parameter_list<T, Dev>(decoder);
  // One forward + backward of the loss on `net` (the master, or the compute copy); returns the loss if recorded.
  const auto forward_backward = [&](auto& net) {
    double value = std::numeric_limits<double>::quiet_NaN();
    autograd::TrainingScope scope;
    const auto x = net(h_c);
    const auto fg = autograd::mse(ops::mul(x, mask), target_fg);
    const auto bg = autograd::mse(ops::mul(x, background), target_bg);
    const auto loss = ops::add(fg, ops::scale(bg, static_cast<C>(static_cast<float>(opt.lambda))));
    if (opt.record_losses) value = scalar_value(loss);
    autograd::backward(loss);
    return value;
  };
  for (int i = 0; i < opt.steps; ++i) {
    double value;
    if constexpr (mixed) {
      const auto params = parameter_list<C, Dev>(compute);
      check(params.size() == master.size(), "decoder adaptation: the compute copy has ", params.size(),
            " parameters, the decoder ", master.size());
      for (std::size_t k = 0; k < params.size(); ++k)  // the compute copy <- the master weights
        params[k]->value = convert_as<C>(master[k]->value.detach());
      autograd::track(compute);
      value = forward_backward(compute);
      for (std::size_t k = 0; k < params.size(); ++k) {  // the master's gradients <- the compute copy's
        const auto g = autograd::grad(*params[k]);
        if (g.defined()) autograd::add_grad(*master[k], convert_as<T>(g));
      }
    } else {
      value = forward_backward(decoder);
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
}  // namespace detail

/// The adaptation of any decoder module (a struct with visit() and operator()(h)) on its input h, which is
/// fixed (no gradient): a copy of `decoder0` is trained, `decoder0` is left unchanged. The decoder and h live
/// on any device in storage type T (the parameters, gradients and AdamW state use T: float is the tested
/// choice); ok_image and defect_mask ([1, 1, H, W], 1 = defect) are host tensors in the decoder's output space.
/// `on_step(i, steps, loss)` reports progress.
template <class Decoder, class T, class Dev>
AdaptationResult adapt_decoder_module(const Decoder& decoder0, const Tensor<T, Dev>& h, const Tensor<float>& ok_image,
                                      const Tensor<float>& defect_mask, const AdaptationOptions& opt = {},
                                      const std::function<void(int, int, double)>& on_step = {}) {
  check(opt.last_blocks == 0, "decoder adaptation: last_blocks is for KL decoders (adapt_decoder); this one adapts whole");
  return detail::adapt<T>(decoder0, detail::NoComputeCopy{}, h, ok_image, defect_mask, opt, on_step);
}

/// The trainable end of a KL decoder: its last up blocks and output layers (AdaptationOptions::last_blocks). The
/// blocks are copies that share the decoder's buffers, as any module copy does.
template <class T, class Dev>
struct VaeDecoderTail {
  std::vector<models::VaeUpBlock<T, Dev>> up_blocks;
  nn::GroupNorm<T, Dev> conv_norm_out;
  nn::Conv2d<T, Dev> conv_out;

  /// The tail of `decoder` from up block `first` on.
  VaeDecoderTail(const models::VaeDecoder<T, Dev>& decoder, std::size_t first)
      : up_blocks(decoder.up_blocks.begin() + static_cast<std::ptrdiff_t>(first), decoder.up_blocks.end()),
        conv_norm_out(decoder.conv_norm_out), conv_out(decoder.conv_out) {}
  /// What the frozen head makes of h: conv_in, the mid block and up blocks [0, first).
  static Tensor<T, Dev> head(const models::VaeDecoder<T, Dev>& decoder, std::size_t first, const Tensor<T, Dev>& h) {
    auto x = decoder.mid_block(decoder.conv_in(h));
    for (std::size_t i = 0; i < first; ++i) x = decoder.up_blocks[i](x);
    return x;
  }
  Tensor<T, Dev> operator()(Tensor<T, Dev> x) const {
    for (const auto& b : up_blocks) x = b(x);
    return conv_out(conv_norm_out(x, ops::Activation::SiLU));
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    nn::visit_list(up_blocks, p + "up_blocks.", f);
    conv_norm_out.visit(p + "conv_norm_out.", f);
    conv_out.visit(p + "conv_out.", f);
  }
};

/// The KL autoencoder's decoder (any storage type and device) on a UNet-scale host latent [1, C, h, w]:
/// post_quant_conv stays frozen (applied once), the decoder adapts. ok_image [1, 3, H, W] in [-1, 1].
/// Mixed precision: with C other than T (e.g. bfloat16 for a float VAE on a GPU, where its tensor cores run at
/// twice TF32's rate) each step's forward and backward run on a copy of the decoder in C, refreshed from the
/// float master weights, whose gradients update the master through AdamW in T; the unadapted and the final
/// decodes run in T.
template <class C = void, class T, class Dev>
AdaptationResult adapt_decoder(const models::AutoencoderKL<T, Dev>& vae, const Tensor<float>& latent,
                               const Tensor<float>& ok_image, const Tensor<float>& defect_mask,
                               const AdaptationOptions& opt = {},
                               const std::function<void(int, int, double)>& on_step = {}) {
  using Compute = std::conditional_t<std::is_void_v<C>, T, C>;
  const std::size_t blocks = vae.decoder.up_blocks.size();
  check(opt.last_blocks >= 0 && static_cast<std::size_t>(opt.last_blocks) <= blocks, "decoder adaptation: last_blocks ",
        opt.last_blocks, " must be in [0, ", blocks, "] (0 = the whole decoder; this decoder has ", blocks, " up blocks)");
  const float scaling = static_cast<float>(vae.config.scaling_factor), shift = static_cast<float>(vae.config.shift_factor);
  const auto z = upload_as<T, Dev>(ops::affine(latent, 1.0f / scaling, shift));
  const auto h = vae.config.use_post_quant_conv ? vae.post_quant_conv(z) : z;
  if (opt.last_blocks > 0) {
    const std::size_t first = blocks - static_cast<std::size_t>(opt.last_blocks);
    const VaeDecoderTail<T, Dev> tail(vae.decoder, first);
    const auto x = VaeDecoderTail<T, Dev>::head(vae.decoder, first, h);
    if constexpr (std::is_same_v<Compute, T>) {
      return detail::adapt<T>(tail, detail::NoComputeCopy{}, x, ok_image, defect_mask, opt, on_step);
    } else {
      return detail::adapt<Compute>(tail, VaeDecoderTail<Compute, Dev>(models::VaeDecoder<Compute, Dev>(vae.config.layout), first),
                                    x, ok_image, defect_mask, opt, on_step);
    }
  }
  if constexpr (std::is_same_v<Compute, T>) {
    return detail::adapt<T>(vae.decoder, detail::NoComputeCopy{}, h, ok_image, defect_mask, opt, on_step);
  } else {
    models::VaeDecoder<Compute, Dev> compute(vae.config.layout);  // the architecture; values come per step
    return detail::adapt<Compute>(vae.decoder, std::move(compute), h, ok_image, defect_mask, opt, on_step);
  }
}

}  // namespace adabldm::defect
