#!/usr/bin/env bash
# The job-array examples, run as a scheduler would run them: examples/jobs/slurm-array.sh as 3 array tasks (ids
# 5..7, SLURM_ARRAY_TASK_MIN=5) and the command of examples/jobs/k8s-indexed-job.yaml as its 8 indexed pods
# (JOB_COMPLETION_INDEX), all concurrently into one folder each. Both must equal a single run byte for byte.
# usage: jobs_test.sh ADABLDM_CLI TEST_DATA_DIR EXAMPLES_JOBS_DIR
set -euo pipefail
cli=$1 data=$2 jobs=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/data"
ln -s "$cli" "$work/bin/adabldm"
export PATH="$work/bin:$PATH"
for d in ok ng masks; do ln -s "$data/magnetic-tile/$d" "$work/data/$d"; done
export MODEL="$data/tiny_pipeline/diffusers" TRIMAP_ENCODER="$data/tiny_pipeline/diffusers/controlnet"
export DATA="$work/data" N=10 SEED=4 EXTRA="--size 64 --steps 4 --adapt-steps 1"
fail() { echo "FAIL: $*" >&2; exit 1; }

# The single run: one array task of one.
OUT="$work/single" SLURM_ARRAY_TASK_ID=0 SLURM_ARRAY_TASK_COUNT=1 bash "$jobs/slurm-array.sh"

# Slurm: tasks 5, 6, 7 of an array --array=5-7, concurrently.
pids=()
for id in 5 6 7; do
  OUT="$work/slurm" SLURM_ARRAY_TASK_ID=$id SLURM_ARRAY_TASK_MIN=5 SLURM_ARRAY_TASK_COUNT=3 bash "$jobs/slurm-array.sh" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a Slurm array task failed"; done

# Kubernetes: the container's command from the manifest, once per completion index.
cmd=$(sed -n 's/^ *- \(exec adabldm generate .*\)$/\1/p' "$jobs/k8s-indexed-job.yaml")
[ -n "$cmd" ] || fail "no 'exec adabldm generate' command in k8s-indexed-job.yaml"
completions=$(sed -n 's/^ *completions: *\([0-9]*\)$/\1/p' "$jobs/k8s-indexed-job.yaml")
[[ "$cmd" == *"--shard auto/$completions"* ]] || fail "the manifest's --shard count is not its completions ($completions)"
pids=()
for ((i = 0; i < completions; i++)); do
  OUT="$work/k8s" JOB_COMPLETION_INDEX=$i sh -c "$cmd" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a Kubernetes pod failed"; done

# Byte-identical images and masks; the same indices in the manifests.
indices() { sed -n 's/.*"index":\([0-9]*\).*/\1/p' "$1/manifest.jsonl" | sort -n | tr '\n' ' '; }
want=$(indices "$work/single")
[ "$want" = "0 1 2 3 4 5 6 7 8 9 " ] || fail "the single run wrote indices '$want'"
for run in slurm k8s; do
  [ "$(indices "$work/$run")" = "$want" ] || fail "$run: manifest indices '$(indices "$work/$run")', want '$want'"
  for f in "$work"/single/images/*.png "$work"/single/masks/*.png; do
    rel=${f#"$work/single/"}
    cmp -s "$f" "$work/$run/$rel" || fail "$run: $rel differs from the single run"
  done
  [ ! -e "$work/$run/failures.jsonl" ] || fail "$run: failures.jsonl exists"
done
echo "job arrays: Slurm (3 tasks) and Kubernetes ($completions pods) equal the single run for all $N samples"
