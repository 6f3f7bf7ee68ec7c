#!/usr/bin/env bash
# Fuzzes every reader of outside bytes with libFuzzer (clang++, AddressSanitizer + UBSan), SECONDS each (default
# 60), one harness at a time and niced: the machine may be shared. docs/reliability.md records the runs.
#   scripts/fuzz.sh [SECONDS] [HARNESS...]
# Environment: ADABLDM_FUZZ_BUILD (build folder, default build-fuzz), ADABLDM_FUZZ_JOBS (build jobs, default 2),
# ADABLDM_FUZZ_RUNS (stop each harness after this many executions instead; SECONDS still bounds it),
# ADABLDM_FUZZ_RSS_MB (libFuzzer's peak-memory limit, default 2048).
# Each harness keeps its corpus in $build/corpus/<name> (seeded by fuzz/make_seeds.py from tests/data, and the
# regression corpus tests/data/fuzz-regressions/<name>), so a later run continues where this one stopped. A
# finding is written to $build/findings/<name>/ and stops that harness; the script exits non-zero. Add the input
# to tests/data/fuzz-regressions/<name>/ once it is fixed. Summary per harness: $build/fuzz-summary.txt (this run)
# and $build/fuzz-history.txt (every run, with its date and commit: the totals per harness add up from it).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
harnesses=("$@")
[ ${#harnesses[@]} -eq 0 ] && harnesses=(safetensors checkpoint pickle config tokenizer image manifest)
build=${ADABLDM_FUZZ_BUILD:-build-fuzz}
command -v clang++ >/dev/null || { echo "fuzz.sh: needs clang++ (Debian: apt-get install clang libclang-rt-14-dev)"; exit 2; }

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DADABLDM_FUZZ=ON \
      -DADABLDM_BUILD_TESTS=OFF -DADABLDM_BUILD_EXAMPLES=OFF -DADABLDM_BUILD_BENCHMARKS=OFF -DADABLDM_CUDA=OFF \
      -DADABLDM_NATIVE=OFF > /dev/null
targets=()
for h in "${harnesses[@]}"; do targets+=("fuzz_$h"); done
nice -n 10 cmake --build "$build" -j "${ADABLDM_FUZZ_JOBS:-2}" --target "${targets[@]}"
python3 fuzz/make_seeds.py "$build/corpus"

# The harnesses write each input to a file (the readers take paths): on tmpfs that is 1.4x faster than on disk.
[ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ] && export TMPDIR=/dev/shm

status=0
summary="$build/fuzz-summary.txt"
: > "$summary"
for h in "${harnesses[@]}"; do
  mkdir -p "$build/corpus/$h" "$build/findings/$h" "$build/logs"
  log="$build/logs/$h.log"
  runs=()
  [ -n "${ADABLDM_FUZZ_RUNS:-}" ] && runs=(-runs="$ADABLDM_FUZZ_RUNS")
  echo "=== fuzz_$h: ${seconds} s"
  start=$(date +%s)
  # -timeout: one input may take at most 10 s; -rss_limit_mb: 2 GB of memory (the process's peak); -max_len:
  # inputs up to 64 KB.
  if nice -n 15 "$build/bin/fuzz_$h" "$build/corpus/$h" "tests/data/fuzz-regressions/$h" -dict="fuzz/$h.dict" \
       -max_total_time="$seconds" "${runs[@]}" -timeout=10 -rss_limit_mb="${ADABLDM_FUZZ_RSS_MB:-2048}" -max_len=65536 \
       -print_final_stats=1 \
       -artifact_prefix="$build/findings/$h/" > "$log" 2>&1; then result=ok
  elif grep -q "Test unit written to" "$log"; then result=FINDING; status=1
  else result=stopped; status=1  # interrupted (a signal, the machine): no input was written
  fi
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || echo "cov: ?")
  corpus=$(ls "$build/corpus/$h" | wc -l)
  line="$h: $result, $execs executions in $(( $(date +%s) - start )) s, $cov, corpus $corpus files"
  echo "$line" | tee -a "$summary"
  echo "$(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?') $line" >> "$build/fuzz-history.txt"
  [ "$result" = ok ] || tail -40 "$log"
done
exit $status
