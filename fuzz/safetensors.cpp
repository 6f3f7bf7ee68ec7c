// safetensors: header and data. Accepted files are read back completely (every element of every tensor) and
// written again with our writer: the copy must hold the same names, dtypes, shapes, bytes and metadata.
#include <cstring>

#include "fuzz_common.hpp"

#include "adabldm/io/safetensors.hpp"

using namespace adabldm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string path = fuzz::write_temp("in.safetensors", data, size);
  fuzz::run(path, [&] {
    const auto st = io::SafeTensors::open(path);
    double sum = 0;
    for (const auto& name : st.names()) {
      const auto& info = st.info(name);
      const auto t = st.get<double>(name);
      FUZZ_CHECK(t.shape() == info.shape && info.nbytes == static_cast<std::size_t>(t.numel()) * dtype_size(info.dtype));
      for (double v : t.to_vector()) sum += v;
    }
    const std::string copy = fuzz::temp_path("copy.safetensors");
    io::SafeTensorsWriter w;
    w.add_all(st.state_dict());
    for (const auto& [k, v] : st.metadata()) w.metadata(k, v);
    w.write(copy);
    const auto back = io::SafeTensors::open(copy);
    FUZZ_CHECK(back.size() == st.size() && back.metadata() == st.metadata());
    for (const auto& name : st.names()) {
      const auto &a = st.info(name), &b = back.info(name);
      FUZZ_CHECK(a.dtype == b.dtype && a.shape == b.shape && a.nbytes == b.nbytes);
      FUZZ_CHECK(a.nbytes == 0 || std::memcmp(st.raw(name), back.raw(name), a.nbytes) == 0);
    }
    volatile double keep = sum;
    (void)keep;
  });
  return 0;
}
