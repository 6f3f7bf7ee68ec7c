// adabldm train on the CPU, or handed to the CUDA build (cuda_commands.cu). See train_run.hpp.
#include "train_run.hpp"

namespace cli {

int cmd_train(int argc, char** argv) {
  const Args args = train_args(argc, argv);
  if (args.flag("help")) {
    std::fputs(train_detail::kUsage, stdout);
    return 0;
  }
  adabldm::check(args.positional().empty(), "unexpected argument \"", args.positional().empty() ? "" : args.positional()[0], "\"");
  const auto where = parse_device(args, {"f32"});
  if (where.cuda) return train_cuda(args, where);
  return train_on<adabldm::Cpu>(args);
}

}  // namespace cli
