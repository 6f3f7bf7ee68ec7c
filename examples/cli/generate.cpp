// adabldm generate on the CPU, or handed to the CUDA build (cuda_commands.cu). See generate_run.hpp.
#include "generate_run.hpp"

namespace cli {

int cmd_generate(int argc, char** argv) {
  const Args args = generate_args(argc, argv);
  if (args.flag("help")) {
    std::fputs(generate_detail::kUsage, stdout);
    return 0;
  }
  adabldm::check(args.positional().empty(), "unexpected argument \"", args.positional().empty() ? "" : args.positional()[0], "\"");
  const auto where = parse_device(args, {"f16", "f32"});
  if (where.cuda) return generate_cuda(args, where);
  return generate_on<float, adabldm::Cpu>(args);
}

}  // namespace cli
