#pragma once
// --shard i/n | auto | auto/n: which indices of a run this process generates (i, i+n, i+2n, ...). `auto` reads the
// index (and the count) from a scheduler's job-array variables, so one command line serves every array task:
//   - Kubernetes Indexed Job: JOB_COMPLETION_INDEX; the count is not in the environment: give it, --shard auto/N
//     with N = the Job's spec.completions;
//   - Slurm job array: SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN (divided by the array's step when it has one),
//     and SLURM_ARRAY_TASK_COUNT (or auto/N).
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>

#include <adabldm/core/error.hpp>

namespace cli {

struct Shard {
  int64_t index = 0, count = 1;
  std::string from = "--shard";  ///< where the numbers came from, for messages and the manifest
};

namespace shard_detail {
inline int64_t parse_count(const std::string& s, const std::string& what) {
  std::size_t used = 0;
  long long v = -1;
  try {
    v = std::stoll(s, &used);
  } catch (...) {
    used = 0;
  }
  adabldm::check(used == s.size() && !s.empty() && v >= 0, what, ": \"", s, "\" is not a non-negative integer");
  return v;
}
}  // namespace shard_detail

/// Parses the --shard value; `env` looks up environment variables (std::getenv; replaceable in tests).
inline Shard parse_shard(const std::string& spec,
                         const std::function<const char*(const char*)>& env = [](const char* n) { return std::getenv(n); }) {
  using shard_detail::parse_count;
  Shard s;
  const auto slash = spec.find('/');
  const std::string head = spec.substr(0, slash);
  const bool has_count = slash != std::string::npos;
  if (has_count) s.count = parse_count(spec.substr(slash + 1), "--shard " + spec + " (the count)");
  if (head != "auto") {
    adabldm::check(has_count, "--shard must be i/n, auto or auto/n, got \"", spec, "\"");
    s.index = parse_count(head, "--shard " + spec + " (the index)");
  } else if (const char* k8s = env("JOB_COMPLETION_INDEX")) {
    s.index = parse_count(k8s, "JOB_COMPLETION_INDEX");
    adabldm::check(has_count, "--shard auto: JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but the shard count "
                              "is not in the environment; give it: --shard auto/N with N = the Job's completions");
    s.from = "JOB_COMPLETION_INDEX";
  } else if (const char* id = env("SLURM_ARRAY_TASK_ID")) {
    const int64_t task = parse_count(id, "SLURM_ARRAY_TASK_ID");
    const char* min = env("SLURM_ARRAY_TASK_MIN");
    const char* step = env("SLURM_ARRAY_TASK_STEP");
    const int64_t lo = min ? parse_count(min, "SLURM_ARRAY_TASK_MIN") : 0;
    const int64_t by = step ? parse_count(step, "SLURM_ARRAY_TASK_STEP") : 1;
    adabldm::check(by >= 1 && task >= lo && (task - lo) % by == 0, "--shard auto: SLURM_ARRAY_TASK_ID ", task,
                   " is not in the array (min ", lo, ", step ", by, ")");
    s.index = (task - lo) / by;
    if (const char* count = env("SLURM_ARRAY_TASK_COUNT")) {
      const int64_t n = parse_count(count, "SLURM_ARRAY_TASK_COUNT");
      adabldm::check(!has_count || n == s.count, "--shard ", spec, ": the count disagrees with SLURM_ARRAY_TASK_COUNT=", n);
      s.count = n;
    } else {
      adabldm::check(has_count, "--shard auto: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not (Slurm "
                                "older than 20.02?); give the count: --shard auto/N");
    }
    s.from = "SLURM_ARRAY_TASK_ID";
  } else {
    throw adabldm::Error("--shard " + spec + ": neither JOB_COMPLETION_INDEX (Kubernetes Indexed Job) nor "
                         "SLURM_ARRAY_TASK_ID (Slurm job array) is set");
  }
  adabldm::check(s.count >= 1 && s.index < s.count, "--shard ", spec, ": need 0 <= index < count, got index ", s.index,
                 " of ", s.count, s.from == "--shard" ? "" : " (from " + s.from + ")");
  return s;
}

}  // namespace cli
