#pragma once
// Parameters and the one mechanism every model uses to reach them: each module has
//   template <class F> void visit(const std::string& prefix, F&& f)
// calling f(full_name, param) for its own parameters and child.visit(prefix + "child.", f) for its children,
// with names exactly as in diffusers / transformers state dicts. Loading, counting, initialising, copying and
// (later) optimising are all walks over that tree, so a checkpoint lookup is a lookup, not a maze.
#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "adabldm/core/error.hpp"
#include "adabldm/core/transfer.hpp"
#include "adabldm/core/rng.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/io/state_dict.hpp"
#include "adabldm/ops/matmul.hpp"

namespace adabldm::nn {


/// A learnable tensor: its shape is fixed by the architecture; `value` is empty until loaded or initialised
/// (so a full-size model can be built just to count its parameters).
template <class T, class Dev = Cpu>
struct Param {
  Shape shape;
  Tensor<T, Dev> value;
  bool trainable = true;

  Param() = default;
  explicit Param(const Shape& s) : shape(s) {}
  bool loaded() const noexcept { return value.defined(); }
  const Tensor<T, Dev>& operator()() const noexcept { return value; }
};

/// Number of parameters (elements) of a module tree.
template <class M>
int64_t parameter_count(M& module) {
  int64_t n = 0;
  module.visit("", [&](const std::string&, auto& p) { n += p.shape.numel(); });
  return n;
}

/// Names of all parameters, in visiting order.
template <class M>
std::vector<std::string> parameter_names(M& module) {
  std::vector<std::string> names;
  module.visit("", [&](const std::string& name, auto&) { names.push_back(name); });
  return names;
}

/// The outcome of matching a module tree against a state dict, by name.
struct LoadReport {
  std::vector<std::string> missing, unexpected, mismatched;  // mismatched: "name: file [..] vs model [..]"
  int64_t loaded = 0;
  bool ok() const noexcept { return missing.empty() && unexpected.empty() && mismatched.empty(); }
  /// One readable message listing up to `limit` names of each kind.
  std::string message(const std::string& source, std::size_t limit = 12) const {
    std::string m = source + ": checkpoint does not match the model";
    auto list = [&](const char* what, const std::vector<std::string>& v) {
      if (v.empty()) return;
      m += "; " + std::to_string(v.size()) + " " + what + ": ";
      for (std::size_t i = 0; i < std::min(limit, v.size()); ++i) m += (i ? ", " : "") + v[i];
      if (v.size() > limit) m += ", ...";
    };
    list("missing", missing);
    list("unexpected", unexpected);
    list("mis-shaped", mismatched);
    return m;
  }
};

/// Sets every parameter of `module` from `sd` (converting the stored dtype to T). With `strict`, any missing,
/// unexpected or mis-shaped key throws one Error naming them; otherwise the report tells and matching
/// parameters are still loaded.
template <class M>
LoadReport load_state_dict(M& module, const io::StateDict& sd, bool strict = true) {
  LoadReport r;
  std::set<std::string> used;
  module.visit("", [&](const std::string& name, auto& p) {
    using ValueT = typename std::decay_t<decltype(p.value)>::value_type;
    using DevT = typename std::decay_t<decltype(p.value)>::device_type;
    if (!sd.contains(name)) {
      r.missing.push_back(name);
      return;
    }
    used.insert(name);
    const auto& ref = sd.at(name);
    if (ref.shape != p.shape) {
      r.mismatched.push_back(name + ": file " + ref.shape.str() + " vs model " + p.shape.str());
      return;
    }
    p.value = upload_as<ValueT, DevT>(ref.template to<ValueT>());
    ++r.loaded;
  });
  for (const auto& [name, ref] : sd.tensors())
    if (!used.count(name)) r.unexpected.push_back(name);
  if (strict && !r.ok()) throw Error(r.message(sd.source()));
  return r;
}

/// The float weights (parameters of two or more dimensions) of a host module frozen for bfloat16 products while the
/// returned scope lives (ops::FrozenWeights: nothing may change them meanwhile); an empty scope for other modules.
template <class M>
ops::FrozenWeights freeze_weights(const M& module) {
  std::vector<Tensor<float>> weights;
  const_cast<M&>(module).visit("", [&](const std::string&, auto& p) {  // visit() is not const; nothing is modified
    if constexpr (std::is_same_v<std::decay_t<decltype(p.value)>, Tensor<float>>)
      if (p.loaded() && p.value.rank() >= 2) weights.push_back(p.value);
  });
  return ops::FrozenWeights(std::move(weights));
}

/// The module's parameters as a StateDict (shares their buffers; for saving and converting).
template <class M>
io::StateDict state_dict(M& module, const std::string& source = "model") {
  io::StateDict sd(source);
  module.visit("", [&](const std::string& name, auto& p) {
    check(p.loaded(), "state_dict: parameter ", name, " has no value");
    using ValueT = typename std::decay_t<decltype(p.value)>::value_type;
    sd.add(name, download_as<ValueT>(p.value));  // host tensors as they are; device tensors copied to the host
  });
  return sd;
}

/// PyTorch's default initialisation of parameters without a value: Linear / Conv weights and their biases
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)); 1-d "norm" weights 1 and biases 0.
/// fan_in = weight.numel / weight.shape[0]; a bias uses its sibling weight's fan_in (modules visit the weight
/// first). Names starting with one of `zero` (e.g. ControlNet's zero convolutions) are set to zero.
template <class M>
void init_missing(M& module, Rng& rng, const std::vector<std::string>& zero = {}) {
  std::map<std::string, int64_t> fan_in_of;  // "conv_in." -> fan_in of conv_in.weight
  auto ends_with = [](const std::string& s, const char* suffix) {
    const std::size_t n = std::char_traits<char>::length(suffix);
    return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
  };
  module.visit("", [&](const std::string& name, auto& p) {
    using ValueT = typename std::decay_t<decltype(p.value)>::value_type;
    using DevT = typename std::decay_t<decltype(p.value)>::device_type;
    const std::string owner = name.substr(0, name.rfind('.') + 1);
    if (p.shape.rank() >= 2) fan_in_of[owner] = p.shape.numel() / std::max<int64_t>(1, p.shape[0]);
    if (p.loaded()) return;
    const bool is_zero = std::any_of(zero.begin(), zero.end(), [&](const std::string& z) { return name.rfind(z, 0) == 0; });
    if (is_zero) {
      p.value = upload_as<ValueT, DevT>(Tensor<ValueT, Cpu>::zeros(p.shape));
    } else if (p.shape.rank() == 1 && name.find("norm") != std::string::npos) {
      p.value = upload_as<ValueT, DevT>(Tensor<ValueT, Cpu>::full(p.shape, ValueT(ends_with(name, "weight") ? 1.0f : 0.0f)));
    } else {
      const auto it = fan_in_of.find(owner);
      const int64_t fan_in = p.shape.rank() >= 2 ? fan_in_of[owner] : (it != fan_in_of.end() ? it->second : p.shape.numel());
      const double bound = 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(1, fan_in)));
      p.value = upload_as<ValueT, DevT>(rng.uniform<ValueT>(p.shape, -bound, bound));
    }
  });
}

/// Deep copy of every parameter value (so the copy can be trained without touching the original).
template <class M>
void clone_parameters(M& module) {
  module.visit("", [&](const std::string&, auto& p) {
    if (p.loaded()) p.value = p.value.clone();
  });
}

/// Copies (deeply) the parameter values of `src` into `dst` for every name they share; shapes must agree.
/// Returns the number of parameters copied (ControlNet.from_unet copies the UNet's encoder this way).
template <class Dst, class Src>
int64_t copy_shared_parameters(Dst& dst, Src& src) {
  const io::StateDict sd = state_dict(src, "source model");
  int64_t n = 0;
  dst.visit("", [&](const std::string& name, auto& p) {
    using ValueT = typename std::decay_t<decltype(p.value)>::value_type;
    using DevT = typename std::decay_t<decltype(p.value)>::device_type;
    if (!sd.contains(name)) return;
    const auto& ref = sd.at(name);
    check<ShapeError>(ref.shape == p.shape, "copy_shared_parameters: ", name, " is ", ref.shape.str(),
                      " in the source, ", p.shape.str(), " in the target");
    if constexpr (std::is_same_v<DevT, Cpu>) p.value = ref.template to<ValueT>().clone();
    else p.value = upload_as<ValueT, DevT>(ref.template to<ValueT>());  // the upload is the copy
    ++n;
  });
  return n;
}

/// The module in storage type T on device Dev: a module of the same architecture (built from src.config) with
/// every parameter converted and copied. With nothing to change it is src itself (sharing its buffers).
///   auto unet_gpu = nn::convert<adabldm::half, Cuda>(unet);   // UNet2DConditionModel<half, Cuda>
template <class T, class Dev, template <class, class> class M, class U, class D>
M<T, Dev> convert(const M<U, D>& src) {
  if constexpr (std::is_same_v<T, U> && std::is_same_v<Dev, D>) {
    return src;
  } else {
    M<T, Dev> dst(src.config);
    auto& from = const_cast<M<U, D>&>(src);  // visit() is not const; nothing is modified
    const int64_t copied = copy_shared_parameters(dst, from), total = static_cast<int64_t>(parameter_names(dst).size());
    check(copied == total, "nn::convert: copied ", copied, " of ", total, " parameter tensors (architectures differ)");
    return dst;
  }
}

}  // namespace adabldm::nn
