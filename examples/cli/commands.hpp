#pragma once
// The adabldm tool's commands; each lives in its own .cpp file.
namespace cli {
int cmd_inspect(int argc, char** argv);   // inspect.cpp
int cmd_tokenize(int argc, char** argv);  // tokenize.cpp
int cmd_forward(int argc, char** argv);   // forward.cpp (+ forward_models.cpp)
int cmd_convert(int argc, char** argv);   // convert.cpp
int cmd_sample(int argc, char** argv);    // sample.cpp
int cmd_generate(int argc, char** argv);  // generate.cpp
int cmd_foreground(int argc, char** argv);  // foreground.cpp
int cmd_train(int argc, char** argv);     // train.cpp
int cmd_train_base(int argc, char** argv);  // train_base.cpp
int cmd_evaluate(int argc, char** argv);    // evaluate.cpp

/// Exit status of a run that finished but could not produce every item (generate: some samples failed and are
/// listed in failures.jsonl; train: some steps had a non-finite loss and were skipped). 1 = an error stopped it.
constexpr int kExitSomeSamplesFailed = 4;
}  // namespace cli
