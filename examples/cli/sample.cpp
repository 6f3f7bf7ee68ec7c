// adabldm sample on the CPU, or handed to the CUDA build (cuda_commands.cu). See sample_run.hpp.
#include "sample_run.hpp"

namespace cli {

int cmd_sample(int argc, char** argv) {
  const Args args = sample_args(argc, argv);
  if (args.flag("help")) {
    std::fputs(sample_detail::kUsage, stdout);
    return 0;
  }
  adabldm::check(args.positional().empty(), "unexpected argument \"", args.positional().empty() ? "" : args.positional()[0],
                 "\"\n", sample_detail::kUsage);
  const auto where = parse_device(args, {"f16", "f32"});
  if (where.cuda) return sample_cuda(args, where);
  return sample_on<float, adabldm::Cpu>(args);
}

}  // namespace cli
