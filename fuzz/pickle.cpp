// The restricted unpickler alone (the data.pkl record of a checkpoint, without its zip): every storage key gets
// the same 256 bytes. Accepted pickles that hold a dict have their state dict collected as load_torch_checkpoint
// does, and every tensor read back.
#include <vector>

#include "fuzz_common.hpp"

#include "adabldm/io/torch_checkpoint.hpp"

using namespace adabldm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  static const auto storage = std::make_shared<std::vector<std::byte>>(256, std::byte{0x3c});
  fuzz::run("data.pkl", [&] {
    io::Unpickler u("data.pkl", reinterpret_cast<const std::byte*>(data), size, [](const std::string&) {
      return io::SharedBytes{storage, storage->data(), storage->size()};
    });
    const io::PyObject& root = *u.load();
    if (!root.is_dict()) return;
    io::StateDict sd("data.pkl");
    io::torch_detail::TensorCollector{"data.pkl", sd, 1u << 20, {}, {}}.collect(io::torch_detail::select_state_dict(root), "", 0);
    double sum = 0;
    for (const auto& [name, ref] : sd.tensors()) {
      FUZZ_CHECK(ref.nbytes() <= (1u << 20) + storage->size());
      for (double v : ref.to<double>().to_vector()) sum += v;
    }
    volatile double keep = sum;
    (void)keep;
  });
  return 0;
}
