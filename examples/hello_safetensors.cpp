// The smallest "embed the library" program: open a safetensors file, list its tensors, and run one op with
// them (the file's VAE encoder.conv_in on a synthetic image, or any [O, 3, k, k] convolution weight it holds).
//
//   hello_safetensors tests/data/vae_vq/model.safetensors
#include <adabldm/adabldm.hpp>

#include <cstdio>

namespace ab = adabldm;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s FILE.safetensors\n", argv[0]);
    return 2;
  }
  try {
    const auto st = ab::io::SafeTensors::open(argv[1]);
    int64_t params = 0;
    std::printf("%s: %zu tensors\n", argv[1], st.size());
    for (const auto& name : st.names()) {
      const auto& ti = st.info(name);
      params += ti.shape.numel();
      std::printf("  %-60s %-5s %s\n", name.c_str(), ab::dtype_name(ti.dtype), ti.shape.str().c_str());
    }
    std::printf("parameters: %lld\n", static_cast<long long>(params));

    // One op: the first 3-input-channel convolution in the file, applied to a 64x64 gradient image.
    for (const auto& name : st.names()) {
      const auto& ti = st.info(name);
      if (ti.shape.rank() != 4 || ti.shape[1] != 3) continue;
      const auto weight = st.get<float>(name);
      const std::string bias_name = name.substr(0, name.size() - 6) + "bias";  // "...weight" -> "...bias"
      const auto bias = st.contains(bias_name) ? st.get<float>(bias_name) : ab::Tensor<float>{};
      auto image = ab::Tensor<float>::empty({1, 3, 64, 64});
      for (int64_t i = 0; i < image.numel(); ++i) image.data()[i] = static_cast<float>(i % 64) / 32.0f - 1.0f;
      const int pad = static_cast<int>(ti.shape[2] / 2);
      const auto out = ab::ops::conv2d(image, weight, bias, ab::ops::Conv2dParams::same(pad));
      double sum = 0, sum_abs = 0;
      for (float v : out.to_vector()) {
        sum += v;
        sum_abs += std::abs(v);
      }
      std::printf("conv2d(%s): %s -> %s, mean %.6f, mean |x| %.6f\n", name.c_str(), image.shape().str().c_str(),
                  out.shape().str().c_str(), sum / out.numel(), sum_abs / out.numel());
      return 0;
    }
    std::printf("no [O, 3, k, k] convolution weight in this file; nothing to run\n");
    return 0;
  } catch (const ab::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
