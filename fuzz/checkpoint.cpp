// PyTorch checkpoints (.ckpt / .pth / .bin): the zip container, the restricted unpickler and the tensor rebuild,
// through load_checkpoint (which also dispatches safetensors and the legacy format by content). Accepted files
// are read back completely and written as safetensors; the copy must hold the same tensors, byte for byte.
#include <cstring>

#include "fuzz_common.hpp"

#include "adabldm/io/checkpoint.hpp"
#include "adabldm/io/safetensors.hpp"

using namespace adabldm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string path = fuzz::write_temp("in.ckpt", data, size);
  fuzz::run(path, [&] {
    const io::StateDict sd = io::load_checkpoint(path);
    double sum = 0;
    for (const auto& [name, ref] : sd.tensors()) {
      const auto t = ref.to<double>();
      FUZZ_CHECK(t.shape() == ref.shape);
      for (double v : t.to_vector()) sum += v;
    }
    const std::string copy = fuzz::temp_path("copy.safetensors");
    io::SafeTensorsWriter().add_all(sd).write(copy);
    const auto back = io::SafeTensors::open(copy);
    FUZZ_CHECK(back.size() == sd.tensors().size());
    for (const auto& [name, ref] : sd.tensors()) {
      const auto& b = back.info(name);
      FUZZ_CHECK(b.dtype == ref.dtype && b.shape == ref.shape && b.nbytes == ref.nbytes());
      FUZZ_CHECK(b.nbytes == 0 || std::memcmp(back.raw(name), ref.data, b.nbytes) == 0);
    }
    volatile double keep = sum;
    (void)keep;
  });
  return 0;
}
