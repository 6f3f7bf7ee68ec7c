// adabldm forward: one runner per component. Each loads its model, checks every input present against the model's
// config (so that a wrong shape is one error line naming the tensor, before any progress is printed), then runs
// and adds its outputs under the names of the golden references (tests/data/*/io.safetensors).
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <adabldm/models/loader.hpp>

#include "forward.hpp"
#include "model_classes.hpp"

namespace cli::forward {

namespace {
using namespace adabldm::models;
using Clock = std::chrono::steady_clock;

template <class M>
void report_loaded(const char* what, M& model, const ModelSource& src, Clock::time_point t0) {
  std::fprintf(stderr, "forward: loaded %s, %lld parameters, from %s in %.2f s\n", what,
               static_cast<long long>(ab::nn::parameter_count(model)), src.path().c_str(),
               seconds_since(t0));
}
void report_ran(const char* what, Clock::time_point t0) {
  std::fprintf(stderr, "forward: ran %s in %.2f s\n", what, seconds_since(t0));
}

/// One timestep for the batch ([] or [1]) or one per item ([B]), any numeric dtype.
std::vector<float> read_timesteps(const Inputs& in, int64_t batch) {
  const ab::Shape& s = in.shape("timestep");
  const bool ok = s.rank() == 0 || (s.rank() == 1 && (s[0] == 1 || s[0] == batch));
  ab::check<ab::ShapeError>(ok, in.path(), ": input \"timestep\" has shape ", s.str(), ", expected [], [1] or [B] where B = ",
                            batch);
  return in.floats("timestep").to_vector();
}

/// The inputs the UNet and the ControlNet share; binds B, h, w.
void check_unet_inputs(const Inputs& in, ShapeCheck& shapes, const UNetConfig& c, const char* what) {
  for (const char* name : {"sample", "timestep", "encoder_hidden_states"})
    in.require(name, std::string(what) + " needs sample, timestep and encoder_hidden_states");
  shapes("sample", {"B", c.in_channels, "h", "w"});
  shapes("encoder_hidden_states", {"B", "L", c.cross_attention_dim});
}

/// The shapes of the UNet's skip connections (conv_in, every resnet, every downsampler) and of the mid block
/// output for a [B, *, h, w] sample: what ControlNet residuals must match.
struct SkipShapes {
  std::vector<std::vector<Dim>> down;
  std::vector<Dim> mid;
};
SkipShapes skip_shapes(const UNetConfig& c, int64_t B, int64_t h, int64_t w) {
  SkipShapes s;
  s.down.push_back({B, c.block_out_channels[0], h, w});
  for (std::size_t i = 0; i < c.block_out_channels.size(); ++i) {
    const int64_t ch = c.block_out_channels[i];
    for (int64_t j = 0; j < c.layers_per_block; ++j) s.down.push_back({B, ch, h, w});
    if (i + 1 == c.block_out_channels.size()) break;
    // Downsample2D: 3x3 stride 2 with padding p (p = 0: diffusers pads right/bottom by one instead)
    const int64_t p = c.downsample_padding;
    auto down = [&](int64_t n) { return p == 0 ? n / 2 : (n + 2 * p - 3) / 2 + 1; };
    h = down(h), w = down(w);
    s.down.push_back({B, ch, h, w});
  }
  s.mid = {B, c.block_out_channels.back(), h, w};
  return s;
}

void run_unet(const ModelSource& src, const Inputs& in, ab::io::SafeTensorsWriter& out, const Options&) {
  const auto t0 = Clock::now();
  auto unet = load_unet(src);
  ShapeCheck shapes(in);
  check_unet_inputs(in, shapes, unet.config, "the UNet");
  const auto timesteps = read_timesteps(in, shapes["B"]);
  ControlResiduals<float> control;
  if (in.has("down_block_res_sample_00") || in.has("mid_block_res_sample")) {
    const auto skips = skip_shapes(unet.config, shapes["B"], shapes["h"], shapes["w"]);
    const std::string why = "ControlNet residuals come as down_block_res_sample_00.." +
                            two_digits(skips.down.size() - 1) + " plus mid_block_res_sample";
    for (std::size_t i = 0; i < skips.down.size(); ++i) {
      const std::string name = "down_block_res_sample_" + two_digits(i);
      in.require(name, why);
      shapes(name, skips.down[i]);
      control.down.push_back(in.floats(name));
    }
    const std::string extra = "down_block_res_sample_" + two_digits(skips.down.size());
    ab::check<ab::ShapeError>(!in.has(extra), in.path(), ": input \"", extra, "\" is one too many: this UNet has ",
                              skips.down.size(), " skip connections (", why, ")");
    in.require("mid_block_res_sample", why);
    shapes("mid_block_res_sample", skips.mid);
    control.mid = in.floats("mid_block_res_sample");
  }
  report_loaded("UNet2DConditionModel", unet, src, t0);
  const auto t1 = Clock::now();
  out.add("noise_pred", unet(in.floats("sample"), timesteps, in.floats("encoder_hidden_states"), control));
  report_ran(control.empty() ? "the UNet" : "the UNet with ControlNet residuals", t1);
}

void run_controlnet(const ModelSource& src, const Inputs& in, ab::io::SafeTensorsWriter& out, const Options& opt) {
  const auto t0 = Clock::now();
  auto cn = load_controlnet(src);
  ShapeCheck shapes(in);
  check_unet_inputs(in, shapes, cn.config.unet, "the ControlNet");
  const auto timesteps = read_timesteps(in, shapes["B"]);
  in.require("controlnet_cond", "the ControlNet needs its conditioning image");
  const int64_t s = cn.controlnet_cond_embedding.downscale();
  shapes("controlnet_cond", {"B", cn.config.conditioning_channels, shapes["h"] * s, shapes["w"] * s});
  report_loaded("ControlNetModel", cn, src, t0);
  const auto t1 = Clock::now();
  const auto res = cn(in.floats("sample"), timesteps, in.floats("encoder_hidden_states"), in.floats("controlnet_cond"),
                      opt.scale);
  for (std::size_t i = 0; i < res.down.size(); ++i) out.add("down_block_res_sample_" + two_digits(i), res.down[i]);
  out.add("mid_block_res_sample", res.mid);
  report_ran("the ControlNet", t1);
}

/// An image input [B, C, H, W] whose H and W are multiples of the model's downscale factor.
void check_image(const Inputs& in, const std::string& name, int64_t channels, int64_t factor) {
  ShapeCheck shapes(in);
  const std::vector<Dim> pattern{"B", channels, "H", "W"};
  shapes(name, pattern);
  if (shapes["H"] % factor != 0 || shapes["W"] % factor != 0)
    shapes.fail(name, pattern, " with H and W multiples of " + std::to_string(factor));
}
void check_latent(const Inputs& in, const std::string& name, int64_t channels) {
  ShapeCheck shapes(in);
  shapes(name, {"B", channels, "h", "w"});
}

void run_vae(const ModelSource& src, const Inputs& in, ab::io::SafeTensorsWriter& out, const Options&) {
  const auto t0 = Clock::now();
  auto vae = load_vae(src);
  const auto& c = vae.config;
  if (in.has("image")) check_image(in, "image", c.layout.in_channels, vae.downscale());
  if (in.has("z")) check_latent(in, "z", vae.latent_channels());
  report_loaded("AutoencoderKL", vae, src, t0);
  const auto t1 = Clock::now();
  if (in.has("image")) {
    const auto encoder_out = vae.encoder_out(in.floats("image"));
    const auto moments = c.use_quant_conv ? vae.quant_conv(encoder_out) : encoder_out;
    const auto posterior = DiagonalGaussian<float>::from_moments(moments);
    const float shift = static_cast<float>(c.shift_factor), scaling = static_cast<float>(c.scaling_factor);
    out.add("encoder_out", encoder_out);
    out.add("moments", moments);
    out.add("posterior_mean", posterior.mean);
    out.add("posterior_logvar", posterior.logvar);
    out.add("latent_scaled", ab::ops::map(posterior.mean, [=](float v) { return (v - shift) * scaling; }));
  }
  if (in.has("z")) out.add("decoded_z", vae.decode(in.floats("z")));
  report_ran("the autoencoder", t1);
}

void run_vq(const ModelSource& src, const Inputs& in, ab::io::SafeTensorsWriter& out, const Options&) {
  const auto t0 = Clock::now();
  auto vq = load_vq(src);
  check_image(in, "image", vq.config.layout.in_channels, vq.downscale());
  report_loaded("VQModel", vq, src, t0);
  const auto t1 = Clock::now();
  const auto latent = vq.encode(in.floats("image"));
  const auto q = vq.quantize(latent);
  out.add("latent_prequant", latent);
  out.add("latent_quantized", q.quantized);
  out.add("codebook_indices", q.indices);
  out.add("decoded", vq.decoder(vq.post_quant_conv(q.quantized)));  // = vq.decode(latent), quantised once
  report_ran("the VQ autoencoder", t1);
}

void run_taesd(const ModelSource& src, const Inputs& in, ab::io::SafeTensorsWriter& out, const Options&) {
  const auto t0 = Clock::now();
  auto taesd = load_taesd(src);
  if (in.has("image01")) check_image(in, "image01", taesd.config.in_channels, taesd.downscale());
  if (in.has("z")) check_latent(in, "z", taesd.config.latent_channels);
  report_loaded("TAESD (AutoencoderTiny)", taesd, src, t0);
  const auto t1 = Clock::now();
  if (in.has("image01")) {
    const auto latent = taesd.encode01(in.floats("image01"));
    out.add("latent", latent);
    out.add("recon01", taesd.decode01(latent));
  }
  if (in.has("z")) out.add("decoded_z01", taesd.decode01(in.floats("z")));
  report_ran("TAESD", t1);
}

/// The text encoder; a CLIPTextModelWithProjection folder loads without its text_projection (text_embeds is not an
/// output here), which the library's strict loader would reject as unexpected.
ClipTextModel<float> load_clip(const ModelSource& src) {
  if (src.kind() != SourceKind::SingleFile) {
    const auto cfg = src.folder_config("text_encoder");
    if (config_class(cfg.json) == "CLIPTextModelWithProjection") {
      ClipTextModel<float> clip(ClipTextConfig::from_json(cfg));
      auto sd = src.folder_weights("text_encoder");
      sd.erase("text_projection.weight");
      load_clip_text(clip, sd);
      return clip;
    }
  }
  return load_text_encoder(src);
}

void run_clip(const ModelSource& src, const Inputs& in, ab::io::SafeTensorsWriter& out, const Options&) {
  const auto t0 = Clock::now();
  auto clip = load_clip(src);
  const auto& c = clip.config;
  ShapeCheck shapes(in);
  const std::vector<Dim> pattern{"B", "L"};
  shapes("input_ids", pattern);
  if (shapes["L"] > c.max_position_embeddings)
    shapes.fail("input_ids", pattern, " with L <= max_position_embeddings = " + std::to_string(c.max_position_embeddings));
  const auto ids = in.integers("input_ids");
  for (int64_t v : ids.to_vector())
    ab::check<ab::ShapeError>(v >= 0 && v < c.vocab_size, in.path(), ": input \"input_ids\" holds token id ", v,
                              ", outside the vocabulary [0, ", c.vocab_size, ")");
  report_loaded("CLIPTextModel", clip, src, t0);
  const auto t1 = Clock::now();
  const auto o = clip(ids);
  for (std::size_t i = 0; i < o.hidden_states.size(); ++i) out.add("hidden_states_" + two_digits(i), o.hidden_states[i]);
  out.add("last_hidden_state", o.last_hidden_state);
  if (c.num_hidden_layers >= 1) out.add("penultimate_hidden_state_final_ln", clip.clip_skip_output(o, 1));
  out.add("pooler_output", o.pooler_output);
  report_ran("the text encoder", t1);
}
}  // namespace

const std::vector<Runner>& runners() {
  static const std::vector<Runner> table{
      {"unet", "unet", {"UNet2DConditionModel"},
       {"sample", "timestep", "encoder_hidden_states", "down_block_res_sample_NN", "mid_block_res_sample"}, run_unet},
      {"controlnet", "controlnet", {"ControlNetModel"},
       {"sample", "timestep", "encoder_hidden_states", "controlnet_cond"}, run_controlnet},
      {"vae", "vae", {"AutoencoderKL"}, {"image", "z"}, run_vae},
      {"vq", "vqvae", {"VQModel"}, {"image"}, run_vq},
      {"taesd", "vae", {"AutoencoderTiny"}, {"image01", "z"}, run_taesd},
      {"clip", "text_encoder", {"CLIPTextModel", "CLIPTextModelWithProjection"}, {"input_ids"}, run_clip},
  };
  return table;
}

}  // namespace cli::forward
