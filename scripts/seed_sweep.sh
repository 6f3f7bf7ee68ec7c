#!/usr/bin/env bash
# Issue 11's "done when": the two commands of the report succeed for seeds 0..50 on the real magnetic-tile data —
# 256 x 256 centre crops of ../shared/data/magnetic-tile/ok, every crack_* defect with its mask, the tiny pipeline
# as the model — `generate -n 4 --no-adapt --steps 5` and `train --steps 20` per seed. It runs the skipped test
# case "issue 11 sweep" of test_cli_generate, which builds that dataset with the library's own image code.
# usage: scripts/seed_sweep.sh [BUILD_DIR (default build)] [SHARED_DATA (default ../shared/data)]
# About 6 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
shared=$(cd "${2:-../shared/data}" && pwd)
[ -x "$build/bin/test_cli_generate" ] || { echo "no $build/bin/test_cli_generate: build first" >&2; exit 2; }
ADABLDM_SHARED_DATA="$shared" exec "$build/bin/test_cli_generate" -tc="issue 11 sweep*" --no-skip --success=false
