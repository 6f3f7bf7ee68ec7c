#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU (and optionally PyTorch + diffusers for the comparison):
#   1. builds the CUDA tests, the CLI and the GPU benchmark for this GPU's architecture only (ccache when present),
#   2. runs the CUDA tests (every kernel against its CPU twin, the golden models on the device),
#   3. runs the GPU benchmark (SD1.5 sizes, random weights) and PyTorch's reference timings,
#   4. prints one table: our time, PyTorch's time, and the ratio.
# Budget: under 6 minutes on an H100 including the build.
#   benchmarks/gpu_check.sh [--quick]     (--quick: 256 x 256 only, fewer repetitions)
# Environment: BUILD_DIR (default build-gpu), JOBS (default nproc), CUDA_ARCH (default: from nvidia-smi),
# DEPS_PREFIX (a folder made by benchmarks/gpu/stage_deps.sh when the machine lacks Eigen, nlohmann-json, stb,
# doctest or zlib's headers; cuDNN is taken from PyTorch's Python package when the toolkit has none).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
quick=${1:-}
build=${BUILD_DIR:-$root/build-gpu}
jobs=${JOBS:-$(nproc)}
start=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - start )) s)"; }
status=0

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU visible (nvidia-smi fails); nothing to check here"
  exit 0
fi
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader
arch=${CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')}

step "configure (CUDA architecture $arch)"
extra=()
if command -v ccache >/dev/null; then
  extra+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
if [ -n "${DEPS_PREFIX:-}" ]; then  # headers staged by benchmarks/gpu/stage_deps.sh
  extra+=(-DCMAKE_PREFIX_PATH="$DEPS_PREFIX" -DADABLDM_STB_INCLUDE_DIR="$DEPS_PREFIX/include/stb")
fi
nvcc_bin=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
cuda_include=$(dirname "$(dirname "$(readlink -f "$nvcc_bin")")")/include
if [ ! -f "$cuda_include/cudnn.h" ] && [ ! -f /usr/include/cudnn.h ]; then
  # No system cuDNN: use the one PyTorch's wheels bring (nvidia-cudnn-cu*), headers and library included.
  cudnn_dir=$(python3 -c "import nvidia.cudnn, os; print(os.path.dirname(nvidia.cudnn.__file__))" 2>/dev/null || true)
  if [ -z "$cudnn_dir" ]; then
    cudnn_dir=$(python3 -c "import nvidia.cudnn, os; print(list(nvidia.cudnn.__path__)[0])" 2>/dev/null || true)
  fi
  if [ -n "$cudnn_dir" ] && [ -f "$cudnn_dir/include/cudnn.h" ]; then
    lib=$(ls "$cudnn_dir"/lib/libcudnn.so* 2>/dev/null | head -1)
    echo "cuDNN from the Python package: $cudnn_dir ($lib)"
    extra+=(-DADABLDM_CUDNN_INCLUDE_DIR="$cudnn_dir/include" -DADABLDM_CUDNN_LIBRARY="$lib")
    export LD_LIBRARY_PATH="$cudnn_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
fi
mkdir -p "$build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DADABLDM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
      -DADABLDM_BUILD_EXAMPLES=ON -DADABLDM_BUILD_BENCHMARKS=ON -DADABLDM_CPU_BENCHMARKS=OFF \
      -DADABLDM_BUILD_TESTS=ON "${extra[@]}" > "$build/configure.log" 2>&1 \
  || { tail -30 "$build/configure.log"; echo "gpu_check: configure failed (log: $build/configure.log)"; exit 1; }

step "build the CUDA tests, the CLI and bench_gpu ($jobs jobs)"
cmake --build "$build" -j "$jobs" --target gpu_check_build || { echo "gpu_check: build failed"; exit 1; }

step "CUDA tests"
for t in test_cuda_core test_cuda_ops test_cuda_gemm_conv test_cuda_attention test_cuda_models test_cuda_pipeline \
         test_cuda_detector test_cli_generate test_cli_evaluate; do  # (test_cli_*: the CLI with --device cuda, and its CPU cases)
  (cd "$build/tests" 2>/dev/null || cd "$build"; "$build/bin/$t") > "$build/$t.log" 2>&1
  rc=$?
  summary=$(grep -E "test cases:" "$build/$t.log" | tail -1)
  echo "$t: exit $rc; $summary"
  if [ $rc -ne 0 ]; then
    status=1
    grep -E "ERROR|FAILED|CudaError|error:" "$build/$t.log" | head -40
  fi
done
echo "logs with every kernel's max |diff| against its CPU twin: $build/test_cuda_*.log"

step "GPU benchmark (ours)"
"$build/bin/bench_gpu" $quick | tee "$build/bench_gpu.txt" || status=1

step "PyTorch reference"
python3 benchmarks/gpu/torch_ref.py $quick | tee "$build/torch_ref.txt" || true

step "comparison"
python3 - "$build/bench_gpu.txt" "$build/torch_ref.txt" <<'PY'
import sys
def results(path):
    out = {}
    try:
        for line in open(path):
            parts = line.split()
            if len(parts) == 3 and parts[0] == "RESULT":
                out[parts[1]] = float(parts[2])
    except OSError:
        pass
    return out
ours, torch = results(sys.argv[1]), results(sys.argv[2])
print("| stage | ours (s) | PyTorch (s) | ours / PyTorch |")
print("|---|---:|---:|---:|")
for key, t in ours.items():
    ref = torch.get(key)
    print(f"| {key} | {t:.4f} | " + (f"{ref:.4f} | {t / ref:.2f} |" if ref else "- | - |"))
if not torch:
    print("(no PyTorch timings: see the PyTorch reference step above)")
PY

step "done (status $status)"
exit $status
