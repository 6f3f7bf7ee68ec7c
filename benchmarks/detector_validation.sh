#!/usr/bin/env bash
# Chooses detector settings on the training side only (issue 21): for each type and fold, a tile-disjoint
# validation root (benchmarks/validation_root.py: held-out few-shot tiles as test/TYPE, held-out train/good tiles as
# test/good) and `adabldm evaluate --conditions real` per configuration. Resumable: evaluate reuses finished
# detectors. Summary: OUT/summary.csv (config, type, fold, seed, pixel AP, IAP, IAP90, F1-max, image AUROC).
#   [SEEDS=0,1,2] benchmarks/detector_validation.sh ROOT OUT CLI TYPES FOLDS NAME="ARGS" ...   (SEEDS default 0)
# e.g. benchmarks/detector_validation.sh ../shared/data/magnetic-tile-ad build-models/val build-dev/bin/adabldm \
#        crack,break 0,1 base="--lr 1e-3" lr3="--lr 3e-3"
set -euo pipefail
root=$1 out=$2 cli=$3 types=$4 folds=$5
shift 5
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
for cfg in "$@"; do
  name=${cfg%%=*} args=${cfg#*=}
  for t in ${types//,/ }; do
    for f in ${folds//,/ }; do
      vroot="$out/roots/$t-f$f"
      [ -d "$vroot" ] || python3 "$here/validation_root.py" "$root" "$t" "$vroot" --folds 3 --fold "$f"
      run="$out/runs/$name/$t-f$f"
      echo "=== $name $t fold $f: $args"
      # shellcheck disable=SC2086
      "$cli" evaluate --data "$vroot" --defect "$t" --out "$run" --conditions real --seeds "${SEEDS:-0}" $args
    done
  done
done
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = ["config,type,fold,seed,pixel_ap,iap,iap90,f1_max,image_auroc"]
for cfg in sorted(os.listdir(os.path.join(out, "runs"))):
    for run in sorted(os.listdir(os.path.join(out, "runs", cfg))):
        p = os.path.join(out, "runs", cfg, run, "results.json")
        if not os.path.exists(p):
            continue
        t, f = run.rsplit("-f", 1)
        for one in json.load(open(p))["runs"]:
            r = one["metrics"]
            rows.append(f"{cfg},{t},{f},{one['seed']},{r['pixel_ap']:.4f},{r['iap']:.4f},{r['iap90']:.4f},{r['pixel_f1_max']:.4f},{r['image_auroc']:.4f}")
open(os.path.join(out, "summary.csv"), "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
