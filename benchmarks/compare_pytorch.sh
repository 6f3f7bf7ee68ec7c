#!/usr/bin/env bash
# Our CPU speed next to PyTorch's, measured in ONE run (issue 13; docs/performance.md, "Side by side with
# PyTorch"). Random SD1.5-sized weights on both sides, the same shapes and the same thread count:
#   unet256 / unet512  UNet step, batch 2 (CFG), latent 32 / 64 (256 / 512 px), a [2, 77, 768] context
#   vae_dec / vae_enc  VAE decode / encode at 256 px, batch 1
#   clip               CLIP-L text encoder, batch 2, 77 tokens
#   adapt              one decoder-adaptation iteration at 256 px (decoder forward + MSE + backward + AdamW)
# Ours: build/bin/bench_sd15_cpu --component ...; PyTorch: ../shared/peer-bench/peer_torch_bench.py (as is) and
# benchmarks/peer_adapt_bench.py. One process per component and side, so each row's peak RSS (/usr/bin/time) is
# its own; for each row ours runs, then PyTorch's, before the next row; each process times one warm-up call and
# then --reps calls and reports their median. Also measured in the run: the f32 FMA peak on the same thread count
# (../shared/peer-bench/fma_peak.cpp) and our 1024^3 GEMM. Prints a markdown table (also written to --out) and, as
# its last line:
#   ratios unet256=R unet512=R vae_dec=R vae_enc=R clip=R adapt=R peak_unet=P peak_gemm=P
# R = our time / PyTorch's (2 decimals; "-" when the row did not run), P = our GFLOP/s as a fraction of the FMA
# peak (peak_unet: the 256 px UNet step, whose FLOPs are those PyTorch's harness counts on the same architecture;
# peak_gemm: the 1024^3 GEMM). Where the CPU has AMX or AVX512-BF16, every row of ours also runs with
# --cpu-matmul bf16 (rows of their own against the same PyTorch f32 times, and a line "bf16 ratios ..." just before
# the last).
#
#   benchmarks/compare_pytorch.sh [--threads 2] [--reps 3] [--quick] [--build DIR] [--out FILE] [--setup-only]
#     --quick       one rep, 256 px only (no unet512): a smoke run, not a measurement
#     --build DIR   our build folder (default build-compare; configured Release, CPU only, benchmarks only)
#     --out FILE    where the table goes too (default DIR/compare_pytorch.md); raw RESULT lines and logs: DIR/compare/
#     --setup-only  set up the PyTorch side and build ours, then stop
# Environment: PEERS (default /tmp/peers: OpenBLAS and the diffusers / huggingface_hub source trees, set up here
# once), PEER_BENCH (default ../shared/peer-bench), ADABLDM_PEER_MIRRORS (local git mirrors of huggingface/diffusers
# and huggingface/huggingface_hub, as <dir>/huggingface+<name>/repo; default /work/.mirror; without them the trees
# are cloned from GitHub), ADABLDM_BUILD_JOBS (default: all cores).
# The PyTorch side needs Debian packages; when they are missing the script prints the apt-get command and exits 2.
# The OpenBLAS it uses is extracted, not installed, and only this script's PyTorch commands see it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

threads=2 reps=3 quick=0 setup_only=0 build=build-compare out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --build) build=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --setup-only) setup_only=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare_pytorch.sh: unknown argument $1 (--help)" >&2; exit 2 ;;
  esac
done
[ "$quick" = 1 ] && reps=1
case "$threads$reps" in *[!0-9]*|"") echo "compare_pytorch.sh: --threads and --reps take numbers" >&2; exit 2 ;; esac
out=${out:-$build/compare_pytorch.md}
PEERS=${PEERS:-/tmp/peers}
PEER_BENCH=$(cd "${PEER_BENCH:-$root/../shared/peer-bench}" && pwd)
mirrors=${ADABLDM_PEER_MIRRORS:-/work/.mirror}
say() { echo "[compare_pytorch] $*" >&2; }

# ---- the PyTorch side: Debian packages ------------------------------------------------------------------------
# An apt run still installing them (e.g. right after a machine starts) is waited for, up to 30 minutes.
for _ in $(seq 180); do
  pgrep -x apt-get >/dev/null || pgrep -x apt >/dev/null || pgrep -x dpkg >/dev/null || break
  say "waiting for a running apt-get / dpkg to finish ..."
  sleep 10
done
apt_packages="python3-torch python3-numpy python3-filelock python3-requests python3-regex python3-tqdm python3-yaml \
python3-packaging python3-importlib-metadata python3-pil python3-typing-extensions"
if ! /usr/bin/python3 -c 'import torch, numpy, filelock, requests, regex, tqdm, yaml, packaging, importlib_metadata, PIL, typing_extensions' 2>/dev/null \
   || [ ! -x /usr/bin/time ] || ! command -v git >/dev/null || ! command -v g++ >/dev/null; then
  echo "compare_pytorch.sh: the PyTorch side needs Debian packages; install them with:" >&2
  echo "  apt-get install -y $apt_packages time git g++" >&2
  exit 2
fi

# ---- OpenBLAS (OpenMP build), extracted under $PEERS/openblas, never installed -------------------------------------
# Debian's default libblas.so.3 is the slow reference BLAS; PyTorch's dense products go through it.
mkdir -p "$PEERS"
blas_dir=$(find "$PEERS/openblas" -type d -name openblas-openmp 2>/dev/null | head -1 || true)
if [ -z "$blas_dir" ] || [ ! -e "$blas_dir/libblas.so.3" ]; then
  say "extracting libopenblas0-openmp into $PEERS/openblas"
  rm -rf "$PEERS/openblas" "$PEERS/openblas-deb" && mkdir -p "$PEERS/openblas-deb"
  if ! (cd "$PEERS/openblas-deb" && apt-get download libopenblas0-openmp >&2); then
    echo "compare_pytorch.sh: 'apt-get download libopenblas0-openmp' failed; run 'apt-get update' and retry" >&2
    exit 2
  fi
  dpkg -x "$PEERS"/openblas-deb/libopenblas0-openmp_*.deb "$PEERS/openblas"
  blas_dir=$(find "$PEERS/openblas" -type d -name openblas-openmp | head -1)
fi
blas_version=$(dpkg-deb -f "$PEERS"/openblas-deb/libopenblas0-openmp_*.deb Version 2>/dev/null || echo "?")

# ---- diffusers v0.21.4 and huggingface_hub v0.17.3 source trees (the last that run on torch 1.13) -------------
checkout_tree() {  # checkout_tree NAME TAG: $PEERS/NAME checked out at TAG
  local name=$1 tag=$2 mirror="$mirrors/huggingface+$1/repo"
  if [ -d "$PEERS/$name/src" ]; then
    local head want
    head=$(git -C "$PEERS/$name" rev-parse HEAD 2>/dev/null || echo none)
    want=$(git -C "$PEERS/$name" rev-parse "$tag^{commit}" 2>/dev/null || echo "$head")
    if [ "$head" = "$want" ]; then return; fi
    echo "compare_pytorch.sh: $PEERS/$name is not at $tag; remove it (git worktree remove) and rerun" >&2
    exit 2
  fi
  rm -rf "${PEERS:?}/$name"
  if [ -d "$mirror" ] && [ -n "$(git --git-dir="$mirror" tag -l "$tag")" ]; then
    say "checking out $name $tag from $mirror"
    git --git-dir="$mirror" worktree prune  # a tree of an earlier $PEERS that is gone
    git --git-dir="$mirror" worktree add --detach "$PEERS/$name" "$tag" >&2
  else
    say "cloning $name $tag from GitHub"
    git clone --quiet --depth 1 --branch "$tag" "https://github.com/huggingface/$name" "$PEERS/$name" >&2
  fi
}
checkout_tree diffusers v0.21.4
checkout_tree huggingface_hub v0.17.3

# The environment of every PyTorch command (and of no other).
torch_env=(env PEERS="$PEERS" PEER_BENCH="$PEER_BENCH" LD_LIBRARY_PATH="$blas_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
           PEER_BLAS="openblas-openmp ${blas_version:-?}" OMP_NUM_THREADS="$threads")
avx512=0
grep -qw avx512f /proc/cpuinfo && avx512=1
[ "$avx512" = 1 ] && torch_env+=(OPENBLAS_CORETYPE=SkylakeX)
# Check the set-up once: diffusers imports and torch sees OpenBLAS (the libblas.so.3 it has loaded).
torch_info=$("${torch_env[@]}" /usr/bin/python3 - <<'EOF'
import os, sys
sys.path[:0] = [os.path.join(os.environ["PEERS"], d) for d in ("diffusers/src", "huggingface_hub/src")]
sys.path.insert(0, os.path.join(os.environ["PEER_BENCH"], "peer_stubs"))
import torch, diffusers
torch.ones(8, 8) @ torch.ones(8, 8)
blas = sorted({l.split()[-1] for l in open("/proc/self/maps") if "libblas" in l or "libopenblas" in l})
cap = [l.split(":", 1)[1].strip() for l in torch.__config__.show().splitlines() if "CPU capability" in l]
print(f"torch {torch.__version__} (CPU capability {cap[0] if cap else '?'}), diffusers {diffusers.__version__}, "
      f"BLAS {' + '.join(os.path.basename(b) for b in blas) or '?'}")
EOF
)
torch_info="$torch_info (libopenblas0-openmp $blas_version, extracted)"
say "$torch_info"

# ---- our side: bench_sd15_cpu, and the FMA peak ------------------------------------------------------------------
say "building bench_sd15_cpu in $build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DADABLDM_CUDA=OFF -DADABLDM_BUILD_TESTS=OFF \
      -DADABLDM_BUILD_EXAMPLES=OFF -DADABLDM_BUILD_BENCHMARKS=ON >/dev/null
cmake --build "$build" -j "${ADABLDM_BUILD_JOBS:-$(nproc)}" --target bench_sd15_cpu >&2
work=$build/compare
mkdir -p "$work"
# fma_peak.cpp measures 1 and 2 threads; this copy measures --threads only.
sed "s/for (int t : {1, 2})/for (int t : {$threads})/" "$PEER_BENCH/fma_peak.cpp" > "$work/fma_peak.cpp"
grep -q "for (int t : {$threads})" "$work/fma_peak.cpp" || { echo "compare_pytorch.sh: fma_peak.cpp changed" >&2; exit 1; }
g++ -O2 -march=native -fopenmp "$work/fma_peak.cpp" -o "$work/fma_peak"
[ "$setup_only" = 1 ] && { say "set up; stopping (--setup-only)"; exit 0; }

# ---- the run ---------------------------------------------------------------------------------------------------
results=$work/results.tsv  # key, side, peak RSS (KB), the RESULT json (or FAILED)
: > "$results"
run() {  # run KEY SIDE COMMAND...: one process; its RESULT line and peak RSS go to $results
  local key=$1 side=$2; shift 2
  local log=$work/$key.$side.log rss line
  say "$key, $side"
  if /usr/bin/time -f '%M' -o "$work/rss" "$@" > "$log" 2>&1 && line=$(grep '^RESULT ' "$log" | tail -1); then
    rss=$(tail -1 "$work/rss")
    printf '%s\t%s\t%s\t%s\n' "$key" "$side" "$rss" "${line#RESULT }" >> "$results"
  else
    say "$key, $side FAILED; see $log"
    printf '%s\t%s\t-\tFAILED\n' "$key" "$side" >> "$results"
  fi
}
ours() { run "$1" ours env ADABLDM_NUM_THREADS="$threads" "$build/bin/bench_sd15_cpu" --threads "$threads" --reps "$reps" "${@:2}"; }
torch() { run "$1" torch "${torch_env[@]}" /usr/bin/python3 "${@:2}" --threads "$threads" --reps "$reps"; }

say "FMA peak, $threads threads"
fma=$("$work/fma_peak" | grep "^threads=$threads ")
echo "$fma" > "$work/fma.txt"
# Where the CPU has AMX or AVX512-BF16, each row of ours also runs with --cpu-matmul bf16 (its own row, against
# the same PyTorch f32 time); bench_sd15_cpu exits 3 where it has neither.
bf16=0
"$build/bin/bench_sd15_cpu" --component gemm --tiny --reps 1 --cpu-matmul bf16 >/dev/null 2>&1 && bf16=1
ours gemm --component gemm
[ "$bf16" = 1 ] && ours gemm_bf16 --component gemm --cpu-matmul bf16
rows="unet256:unet:32:2 unet512:unet:64:2 vae_dec:vae_dec:32:1 vae_enc:vae_enc:32:1 clip:clip:32:2 adapt:adapt:32:1"
for row in $rows; do
  IFS=: read -r key component res batch <<< "$row"
  if [ "$quick" = 1 ] && [ "$key" = unet512 ]; then continue; fi
  ours "$key" --component "$component" --res "$res" --batch "$batch"
  [ "$bf16" = 1 ] && ours "${key}_bf16" --component "$component" --res "$res" --batch "$batch" --cpu-matmul bf16
  if [ "$component" = adapt ]; then
    torch "$key" "$root/benchmarks/peer_adapt_bench.py" --res "$res"
  else
    torch "$key" "$PEER_BENCH/peer_torch_bench.py" --component "$component" --res "$res" --batch "$batch"
  fi
done

# ---- the table ----------------------------------------------------------------------------------------------------
commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- include benchmarks || commit="$commit (with uncommitted changes)"
cpu=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^[^:]*: *//')
if [ "$avx512" = 1 ]; then cpu="$cpu, AVX-512"; else cpu="$cpu, no AVX-512"; fi
grep -qw avx512_bf16 /proc/cpuinfo && cpu="$cpu + BF16"
grep -qw amx_tile /proc/cpuinfo && cpu="$cpu + AMX"
mkdir -p "$(dirname "$out")"
/usr/bin/python3 - "$results" "$fma" "$quick" "$reps" "$threads" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$cpu" "$commit" \
  "$torch_info" > "$out" <<'EOF'
import json, sys
results, fma, quick, reps, threads, date, cpu, commit, torch_info = sys.argv[1:]
res = {}
for line in open(results):
    key, side, rss, js = line.rstrip("\n").split("\t")
    res[key, side] = None if js == "FAILED" else dict(json.loads(js), rss_gb=int(rss) / 1048576)
f = dict(kv.split("=") for kv in fma.split())
peak = max(float(f["avx512_fp32_fma_GFLOPs"]), float(f["avx2_fp32_fma_GFLOPs"]))
rows = [("unet256", "UNet step, batch 2, 256 px (latent 32)"), ("unet512", "UNet step, batch 2, 512 px (latent 64)"),
        ("vae_dec", "VAE decode, 256 px"), ("vae_enc", "VAE encode, 256 px"), ("clip", "CLIP-L text encoder, batch 2, 77 tokens"),
        ("adapt", "decoder-adaptation iteration, 256 px (fwd + bwd + AdamW)"), ("gemm", "GEMM 1024^3, one product (ops::gemm; ours only)")]
sec = lambda x: f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3g}"
gb = lambda r: f"{r['rss_gb']:.2f} GB" if r else "-"

def gflops(key):  # ours; the FLOPs of a model row are those PyTorch's harness counted on the same architecture
    o, t = res.get((key, "ours")), res.get((key.removesuffix("_bf16"), "torch"))
    if o and "gflops_achieved" in o:
        return o["gflops_achieved"]
    if o and t and t.get("gmac"):
        return 2 * t["gmac"] / o["median_s"]
    return None

print(f"- {date}, commit {commit}{'; --quick: one rep, a smoke run, not a measurement' if quick == '1' else ''}")
print(f"- CPU: {cpu}; f32 FMA peak on {threads} threads (fma_peak.cpp): {peak:.0f} GFLOP/s "
      f"(AVX-512 {float(f['avx512_fp32_fma_GFLOPs']):.0f}, AVX2 {float(f['avx2_fp32_fma_GFLOPs']):.0f})")
print(f"- ours: bench_sd15_cpu --component (Release, -march=native); PyTorch: {torch_info}")
print(f"- {threads} threads on both sides; seconds per call: median of {reps} call(s) after one warm-up call; "
      "peak RSS: the whole process's (/usr/bin/time)\n")
print("| row | ours s | PyTorch s | ratio | our peak RSS | PyTorch peak RSS | our GFLOP/s | of peak |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
ratio, frac = {}, {}
rows = [r for key, name in rows for r in ((key, name), (key + "_bf16", name + ", ours with --cpu-matmul bf16"))]
for key, name in rows:
    o, t = res.get((key, "ours")), res.get((key.removesuffix("_bf16"), "torch"))
    if (key, "ours") not in res:
        if not key.endswith("_bf16"):
            print(f"| {name} | skipped (--quick) | | | | | | |")
        continue
    if o and t:
        ratio[key] = o["median_s"] / t["median_s"]
    g = gflops(key)
    if g:
        frac[key] = g / peak
    cells = [sec(o["median_s"]) if o else "failed", (sec(t["median_s"]) if t else ("failed" if (key, "torch") in res else "-")),
             f"{ratio[key]:.2f}" if key in ratio else "-", gb(o), gb(t),
             f"{g:.0f}" if g else "-", f"{frac[key]:.2f}" if key in frac else "-"]
    print(f"| {name} | " + " | ".join(cells) + " |")
r = lambda k: f"{ratio[k]:.2f}" if k in ratio else "-"
p = lambda k: f"{frac[k]:.2f}" if k in frac else "-"
print()
if any(k.endswith("_bf16") for k in ratio):
    print("bf16 ratios (ours with --cpu-matmul bf16 / PyTorch f32) " + " ".join(f"{k}={r(k + '_bf16')}" for k in
          ("unet256", "unet512", "vae_dec", "vae_enc", "clip", "adapt")) + f" peak_unet={p('unet256_bf16')} "
          f"peak_gemm={p('gemm_bf16')} (of the f32 FMA peak)")
print("ratios " + " ".join(f"{k}={r(k)}" for k in ("unet256", "unet512", "vae_dec", "vae_enc", "clip", "adapt"))
      + f" peak_unet={p('unet256')} peak_gemm={p('gemm')}")
EOF
say "table written to $out; RESULT lines and logs in $work"
cat "$out"
