#!/usr/bin/env bash
# The numbers of docs/demo.md: the README's first command (the embedded model, 8 break samples with decoder
# adaptation and a contact sheet), timed, then the same samples decoded without adaptation, and per run the mean
# of the manifest's change metrics (background PSNR against the OK image, mean |change| inside / outside the mask).
#   scripts/demo_report.sh [BUILD_DIR (build)] [OUT (build/demo)]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
out=${2:-build/demo}
rm -rf "$out"
mkdir -p "$out"
start=$(date +%s%N)
"$build/bin/adabldm" generate --out "$out/adapted"
end=$(date +%s%N)
"$build/bin/adabldm" generate --out "$out/plain" --no-adapt --quiet
"$build/bin/adabldm" generate --defect crack --out "$out/crack" --quiet
python3 - "$out" "$start" "$end" <<'PY'
import json, sys, statistics as st
out, secs = sys.argv[1], (int(sys.argv[3]) - int(sys.argv[2])) / 1e9
print(f"README command (8 break samples, 50 DDIM steps, 200 adaptation steps, contact sheet): {secs:.1f} s")
print("| run | samples | background PSNR dB (mean, min) | mean abs change inside mask | outside |")
print("|---|---|---|---|---|")
for run in ("adapted", "plain", "crack"):
    rows = [json.loads(l) for l in open(f"{out}/{run}/manifest.jsonl")]
    c = [r["change"] for r in rows]
    psnr = [x["background_psnr_db"] for x in c]
    print(f"| {run} | {len(rows)} | {st.mean(psnr):.2f}, {min(psnr):.2f} | "
          f"{st.mean(x['defect_mean_abs_change'] for x in c):.4f} | {st.mean(x['background_mean_abs_change'] for x in c):.4f} |")
PY
