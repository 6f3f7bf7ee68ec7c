#!/usr/bin/env bash
# Does it help? The whole protocol of issue 21 for each defect type of an MVTec-layout root with a few-shot side
# (e.g. ../shared/data/magnetic-tile-ad), with the embedded default model unless --model is given:
#   1. fine-tune a trimap encoder on fewshot/<type> only (train/good as the backgrounds)   OUT/<type>/trimap*.safetensors
#   2. generate N defect images on train/good (without the decoder adaptation unless --adapt-steps: evaluate
#      composites each generated defect into its OK image, which keeps the background the adaptation aims at)
#                                                                                          OUT/<type>/generated/
#   3. evaluate real / croppaste / adabldm with the same detector, schedule and seeds      OUT/<type>/results.md
# Every step resumes: rerun the same command after a stop and it continues where it was (the trimap training from
# its checkpoint, generate with --resume, evaluate reusing finished detectors). Times per step go to OUT/times.csv;
# at the end OUT/summary.md holds every type measured under OUT, per type and averaged (benchmarks/ad_gain_table.py).
#
# usage: benchmarks/ad_gain.sh ROOT [--types crack,blowhole] [--out DIR] [--model M] [--device cuda] [-n N]
#                                   [--trimap-steps S] [--detector-steps S] [--detector-lr LR]
#                                   [--detector-pos-weight W] [--seeds 0,1,2]
#                                   [--adapt-steps S] [--cli PATH]
# The detector's learning rate (3e-3) and BCE positive weight (1) were chosen on held-out training tiles, never on test/
# (benchmarks/detector_validation.sh; docs/evaluation.md, "Choosing the detector's settings").
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
root="${1:?usage: benchmarks/ad_gain.sh ROOT [options] (see the top of this script)}"
shift
types="blowhole,break,crack,fray,uneven"
out="ad-gain"
model="$here/models/tile-64"
size=64
device=cpu
n=100
trimap_steps=3000
trimap_lr=2e-4
detector_steps=500
detector_lr=3e-3
detector_pos_weight=1
seeds=0,1,2
adapt=(--no-adapt)
cli="$here/build/bin/adabldm"
while [ $# -gt 0 ]; do
  case "$1" in
    --types) types="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --model) model="$2"; size=256; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    -n) n="$2"; shift 2 ;;
    --trimap-steps) trimap_steps="$2"; shift 2 ;;
    --detector-steps) detector_steps="$2"; shift 2 ;;
    --detector-lr) detector_lr="$2"; shift 2 ;;
    --detector-pos-weight) detector_pos_weight="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --adapt-steps) adapt=(--adapt-steps "$2"); shift 2 ;;
    --cli) cli="$2"; shift 2 ;;
    *) echo "ad_gain.sh: unknown option $1" >&2; exit 1 ;;
  esac
done
[ -x "$cli" ] || { echo "ad_gain.sh: $cli not found; build it: cmake --build build --target adabldm_cli" >&2; exit 1; }
[ -d "$root/fewshot" ] || { echo "ad_gain.sh: $root has no fewshot/ folder" >&2; exit 1; }
mkdir -p "$out"
times="$out/times.csv"
[ -f "$times" ] || echo "type,step,seconds" > "$times"
timed() {  # timed TYPE STEP command...: runs it and appends its wall time
  local t0=$SECONDS
  "${@:3}"
  echo "$1,$2,$((SECONDS - t0))" >> "$times"
}

IFS=, read -r -a type_list <<< "$types"
for t in "${type_list[@]}"; do
  dir="$out/$t"
  mkdir -p "$dir"
  echo "=== $t ($(date -u +%H:%M:%S))"
  ng="$root/fewshot/$t" masks="$root/fewshot_ground_truth/$t"
  ckpt="$dir/trimap.safetensors" trimap="$dir/trimap-f16.safetensors"
  if [ ! -f "$trimap" ]; then
    resume=()
    [ -f "$ckpt" ] && resume=(--resume "$ckpt")
    timed "$t" trimap "$cli" train --model "$model" --ok "$root/train/good" --ng "$ng" --masks "$masks" --object tile \
      --defect "$t" --size "$size" --batch 4 --lr "$trimap_lr" --steps "$trimap_steps" --save-every 100 --out "$ckpt" \
      --log "$dir/trimap_loss.csv" --export "$trimap" --device "$device" "${resume[@]}"
  fi
  timed "$t" generate "$cli" generate --model "$model" --trimap-encoder "$trimap" --ok "$root/train/good" --ng "$ng" \
    --masks "$masks" --object tile --defect "$t" --size "$size" -n "$n" --device "$device" --resume \
    "${adapt[@]}" --contact-sheet --out "$dir/generated" || [ $? -eq 4 ]  # 4: some samples failed (failures.jsonl); evaluate checks the count
  timed "$t" evaluate "$cli" evaluate --data "$root" --defect "$t" --synthetic "$dir/generated" --extra "$n" \
    --seeds "$seeds" --steps "$detector_steps" --lr "$detector_lr" --device "$device" \
    --pos-weight "$detector_pos_weight" --out "$dir"
  cat "$dir/results.md"
done
# Every type measured so far under OUT, per type and averaged (docs/evaluation.md's table).
python3 "$here/benchmarks/ad_gain_table.py" "$out" | tee "$out/summary.md"
