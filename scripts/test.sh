#!/usr/bin/env bash
# The full test suite, from a clean checkout: check that every include points down the layers, install
# dependencies, build (Release, with CUDA code compiled when nvcc is present), run every test, rerun the
# file-format tests and the fuzz regression corpora under AddressSanitizer + UBSan, fuzz each reader briefly
# (when clang++ has libFuzzer), and build and run a consumer project through find_package (after install) and
# through FetchContent.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
jobs=$(nproc)
start=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - start )) s)"; }

step "layering: every include under include/ points down the layers (docs/architecture.md)"
python3 scripts/check_layers.py

step "dependencies"
scripts/install-deps.sh --fuzz

step "build (Release)"
# The CUDA code is compiled (not run: CI has no GPU) for one architecture, sm_80 + its PTX, and its host side at
# -O1: every kernel still goes through cicc and ptxas, and the CUDA test programs still start and skip. This saves
# about a quarter of nvcc's time; benchmarks/gpu_check.sh builds for the GPU it runs on, fully optimised.
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=80 -DCMAKE_CUDA_FLAGS_RELEASE="-O1 -DNDEBUG"
cmake --build build -j "$jobs"

step "tests"
ctest --test-dir build --output-on-failure -j "$jobs"

step "benchmark smoke run: our side of benchmarks/compare_pytorch.sh on small models (never timed)"
# Every component of bench_sd15_cpu --component runs once on small models of the same architectures (well under a
# second in all); the comparison script and the PyTorch harness are only parsed (they need PyTorch and SD1.5 sizes).
for c in unet vae_dec vae_enc clip adapt gemm; do
  build/bin/bench_sd15_cpu --component "$c" --tiny --res 8 --reps 1 --threads 2 | cut -c1-150
done
build/bin/bench_sd15_cpu --component adapt --last-blocks 1 --tiny --res 8 --reps 1 --threads 2 | cut -c1-150
# bf16 products where the CPU has AMX or AVX512-BF16 (exit 3 where it has neither, as compare_pytorch.sh expects).
for c in unet adapt; do
  rc=0
  build/bin/bench_sd15_cpu --component "$c" --tiny --res 8 --reps 1 --threads 2 --cpu-matmul bf16 | cut -c1-150 || rc=$?
  [ "$rc" = 0 ] || [ "$rc" = 3 ] || { echo "bench_sd15_cpu --cpu-matmul bf16 failed ($rc)"; exit 1; }
done
bash -n benchmarks/compare_pytorch.sh
python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read())' benchmarks/peer_adapt_bench.py
bash -n benchmarks/ad_gain.sh
# ad_gain.sh's cross-type table on two made-up types: mean +- std per type, a partial type marked and left out of
# the mean over types.
t=$(mktemp -d)
python3 - "$t" <<'PY'
import json, os, sys
def run(c, s, ap): return {"condition": c, "seed": s, "metrics": {k: ap for k in ("pixel_ap", "iap", "iap90", "pixel_f1_max", "pro", "pixel_auroc", "image_auroc", "image_ap")}}
for ty, runs in {"a": [run("real", 0, 0.1), run("real", 1, 0.3)], "b": [run("real", 0, 0.9)]}.items():
    os.makedirs(os.path.join(sys.argv[1], ty))
    json.dump({"seeds": [0, 1], "runs": runs}, open(os.path.join(sys.argv[1], ty, "results.json"), "w"))
PY
python3 benchmarks/ad_gain_table.py "$t" > "$t/table.md" || { echo "ad_gain_table.py failed"; exit 1; }
grep -q '^| a | (a) real | 2 | 0.200 ± 0.141 |' "$t/table.md" && grep -q '^| b | (a) real | 1 (of 2) | 0.900 ± 0.000 |' "$t/table.md" \
  && grep -q '^| \*\*mean of 1 type(s)\*\* (a) | (a) real | | 0.200 |' "$t/table.md" \
  || { echo "ad_gain_table.py: unexpected table"; cat "$t/table.md"; exit 1; }
rm -rf "$t"

step "file-format tests under AddressSanitizer + UBSan"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DADABLDM_SANITIZE=ON -DADABLDM_CUDA=OFF \
      -DADABLDM_BUILD_EXAMPLES=OFF -DADABLDM_BUILD_BENCHMARKS=OFF
cmake --build build-asan -j "$jobs" --target test_safetensors test_image test_image_stb test_torch_checkpoint \
      replay_safetensors replay_checkpoint replay_pickle replay_config replay_tokenizer replay_image replay_manifest
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build-asan -L sanitize --output-on-failure

step "fuzzing: each harness briefly, after replaying its regression corpus (docs/reliability.md)"
if command -v clang++ >/dev/null && [ -e "$(clang++ -print-file-name=libclang_rt.fuzzer-x86_64.a)" ]; then
  ADABLDM_FUZZ_BUILD=build/fuzz ADABLDM_FUZZ_JOBS=$jobs scripts/fuzz.sh "${ADABLDM_CI_FUZZ_SECONDS:-5}"
else
  echo "skipped: no clang++ with libFuzzer (Debian: clang libclang-rt-14-dev)"
fi

step "consumer project via find_package after install"
rm -rf build/install build/consumer-find build/consumer-fetch
cmake --install build --prefix "$root/build/install"
cuda_consumer=OFF  # with nvcc, the consumer also builds a CUDA program against the installed adabldm::cuda
if [ -x /usr/local/cuda/bin/nvcc ] || command -v nvcc >/dev/null; then cuda_consumer=ON; fi
cmake -S examples/consumer -B build/consumer-find -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$root/build/install" \
      -DCONSUMER_CUDA=$cuda_consumer -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
cmake --build build/consumer-find -j "$jobs"
build/consumer-find/consumer
if [ "$cuda_consumer" = ON ]; then build/consumer-find/consumer_cuda; fi

step "consumer project via FetchContent"
cmake -S examples/consumer -B build/consumer-fetch -DCMAKE_BUILD_TYPE=Release -DCONSUMER_USE_FETCHCONTENT=ON \
      -DADABLDM_SOURCE="$root"
cmake --build build/consumer-fetch -j "$jobs"
build/consumer-fetch/consumer

step "all tests passed"
