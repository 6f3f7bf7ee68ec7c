// Uses tensors, an op, the safetensors writer/reader and the PNG writer: if this links and runs, the package
// exports everything a consumer needs.
#include <adabldm/adabldm.hpp>

#include <cstdio>
#include <filesystem>

namespace ab = adabldm;

int main() {
  ab::Rng rng(1);
  auto x = rng.normal({1, 3, 8, 8});
  auto w = rng.normal({4, 3, 3, 3});
  auto y = ab::ops::conv2d(x, w, {}, ab::ops::Conv2dParams::same(1));
  const auto dir = std::filesystem::temp_directory_path();
  const std::string st = (dir / "adabldm_consumer.safetensors").string(), png = (dir / "adabldm_consumer.png").string();
  ab::io::SafeTensorsWriter().add("y", y).write(st);
  auto back = ab::io::SafeTensors::open(st).get<float>("y");
  ab::write_image(png, ab::ops::affine(x, 0.3f));
  const bool ok = back.to_vector() == y.to_vector() && ab::read_image(png).shape() == ab::Shape{1, 3, 8, 8};
  std::printf("consumer: adabldm %s, conv2d %s, round trip %s\n", ADABLDM_VERSION_STRING, y.shape().str().c_str(),
              ok ? "ok" : "FAILED");
  std::filesystem::remove(st);
  std::filesystem::remove(png);
  return ok ? 0 : 1;
}
