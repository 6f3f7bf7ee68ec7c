#pragma once
// Checkpoints with non-finite weights (issue 20, item 7, docs/reliability.md): a copy of a real safetensors file in
// which one named tensor holds NaN and +Inf values, stored as f32, f16 or bf16. The loaders must refuse such a file
// naming it and the tensor, `--allow-non-finite` must load it, and `adabldm inspect` must count the values.
#include <cmath>
#include <limits>
#include <string>

#include "adabldm/core/error.hpp"
#include "adabldm/io/safetensors.hpp"

namespace poisoned {

/// Copies the safetensors file `src` to `dst` (metadata and every tensor as stored) except `key`, which is stored
/// as `dtype` with its elements 0 .. nan-1 NaN and the next `inf` ones +Inf (its other values kept, converted).
inline void write(const std::string& src, const std::string& dst, const std::string& key, adabldm::DType dtype,
                  int nan = 1, int inf = 1) {
  using namespace adabldm;
  const auto sd = io::SafeTensors::open(src).state_dict();
  check(sd.contains(key), src, ": no tensor \"", key, "\" to poison");
  io::SafeTensorsWriter w;
  for (const auto& [name, ref] : sd.tensors()) {
    if (name != key) {
      w.add(name, ref);
      continue;
    }
    auto t = ref.to<float>().clone();  // a copy: the mapping of src stays as it is
    check(t.numel() >= nan + inf, key, ": too small to hold ", nan, " NaN and ", inf, " Inf");
    for (int i = 0; i < nan + inf; ++i)
      t.data()[i] = i < nan ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
    if (dtype == DType::F16)
      w.add(name, t.to<half>());
    else if (dtype == DType::BF16)
      w.add(name, t.to<bfloat16>());
    else
      w.add(name, t);
  }
  for (const auto& [k, v] : sd.metadata()) w.metadata(k, v);
  w.write(dst);
}

inline const char* dtype_label(adabldm::DType d) {
  return d == adabldm::DType::F16 ? "f16" : d == adabldm::DType::BF16 ? "bf16" : "f32";
}

}  // namespace poisoned
