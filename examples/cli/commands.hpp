#pragma once
// The adabldm tool's commands; each lives in its own .cpp file.
namespace cli {
int cmd_inspect(int argc, char** argv);
}  // namespace cli
