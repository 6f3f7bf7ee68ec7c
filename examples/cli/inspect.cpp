// adabldm inspect FILE: format, components (first name segment), dtypes and parameter counts.
#include <cstdio>
#include <map>
#include <set>
#include <string>

#include <adabldm/io/safetensors.hpp>

#include "args.hpp"
#include "commands.hpp"

namespace cli {

int cmd_inspect(int argc, char** argv) {
  Args args(argc, argv, 2, {}, {"help", "tensors"});
  if (args.flag("help") || args.positional().size() != 1) {
    std::fprintf(stderr, "usage: adabldm inspect FILE [--tensors]\n"
                         "  FILE     a .safetensors checkpoint\n"
                         "  --tensors  also list every tensor\n");
    return args.flag("help") ? 0 : 2;
  }
  const auto st = adabldm::io::SafeTensors::open(args.positional()[0]);
  struct Component {
    int64_t params = 0, tensors = 0;
    std::set<std::string> dtypes;
  };
  std::map<std::string, Component> comps;
  int64_t total = 0;
  for (const auto& name : st.names()) {
    const auto& ti = st.info(name);
    auto& c = comps[name.substr(0, name.find('.'))];
    c.params += ti.shape.numel();
    c.tensors += 1;
    c.dtypes.insert(adabldm::dtype_name(ti.dtype));
    total += ti.shape.numel();
  }
  std::printf("file: %s\nformat: safetensors (%zu tensors)\n", st.path().c_str(), st.size());
  for (const auto& [k, v] : st.metadata()) std::printf("metadata: %s = %s\n", k.c_str(), v.c_str());
  std::printf("%-40s %10s %14s  %s\n", "component", "tensors", "parameters", "dtypes");
  for (const auto& [name, c] : comps) {
    std::string dts;
    for (const auto& d : c.dtypes) dts += (dts.empty() ? "" : ",") + d;
    std::printf("%-40s %10lld %14lld  %s\n", name.c_str(), static_cast<long long>(c.tensors),
                static_cast<long long>(c.params), dts.c_str());
  }
  std::printf("total parameters: %lld\n", static_cast<long long>(total));
  if (args.flag("tensors"))
    for (const auto& name : st.names())
      std::printf("  %s %s %s\n", name.c_str(), adabldm::dtype_name(st.info(name).dtype), st.info(name).shape.str().c_str());
  return 0;
}

}  // namespace cli
