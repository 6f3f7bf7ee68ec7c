// adabldm evaluate on the CPU, or handed to the CUDA build (cuda_commands.cu). See evaluate_run.hpp.
#include "evaluate_run.hpp"

namespace cli {

int cmd_evaluate(int argc, char** argv) {
  const Args args = evaluate_args(argc, argv);
  if (args.flag("help")) {
    std::fputs(evaluate_detail::kUsage, stdout);
    return 0;
  }
  adabldm::check(args.positional().empty(), "unexpected argument \"", args.positional().empty() ? "" : args.positional()[0], "\"");
  const auto where = parse_device(args, {"f32"});
  adabldm::check(!(where.cuda && args.has("detectors")), "--device cuda: re-scoring with --detectors runs on the CPU");
  if (where.cuda) return evaluate_cuda(args, where);
  return evaluate_on<adabldm::Cpu>(args);
}

}  // namespace cli
