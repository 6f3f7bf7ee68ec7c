#!/usr/bin/env bash
# The recipe of the embedded default model (models/tile-64, issue 12), with adabldm only: from scratch on the
# defect-free magnetic-tile images, then one trimap encoder per defect type. Every stage continues where it
# stopped when the script is run again (a run may span sessions); the training state stays in WORK.
#   scripts/train_default_model.sh [BUILD_DIR (build)] [SHARED_DATA (../shared/data)] [WORK (build-models)]
# Stage lengths: VAE_STEPS, UNET_STEPS, TRIMAP_STEPS (environment). At the end the exported model (f16) and the
# loss curves are copied into models/tile-64 (the state files are not: they are float32 and large).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
shared=${2:-../shared/data}
work=${3:-build-models}
cli="$build/bin/adabldm"
[ -x "$cli" ] || { echo "no $cli: build first" >&2; exit 2; }
src="$shared/magnetic-tile"
model="$work/tile-64"
VAE_STEPS=${VAE_STEPS:-1400} UNET_STEPS=${UNET_STEPS:-3000} TRIMAP_STEPS=${TRIMAP_STEPS:-3000}

"$cli" train-base --stage vae --ok "$src/ok" --out "$model" --size 64 --batch 8 --steps "$VAE_STEPS"
"$cli" train-base --stage unet --ok "$src/ok" --out "$model" --size 64 --batch 8 --steps "$UNET_STEPS"

for defect in crack break; do
  data="$work/data/$defect"
  mkdir -p "$data/ng" "$data/masks"
  cp "$src/ng/${defect}_"*.png "$data/ng/"
  cp "$src/masks/${defect}_"*.png "$data/masks/"
  ckpt="$work/trimap-$defect.safetensors"
  resume=()
  [ -f "$ckpt" ] && resume=(--resume "$ckpt")
  "$cli" train --model "$model" --ok "$src/ok" --ng "$data/ng" --masks "$data/masks" --object tile --defect "$defect" \
    --size 64 --batch 4 --lr 2e-4 --steps "$TRIMAP_STEPS" --save-every 100 --out "$ckpt" --log "$work/trimap-$defect.csv" \
    --export "$work/trimap-$defect-f16.safetensors" "${resume[@]}"
done

# The shipped model: the pipeline folder (f16) and each trimap encoder's weights (without the optimiser state).
dest=models/tile-64
mkdir -p "$dest/curves"
for part in model_index.json scheduler text_encoder unet vae; do rm -rf "${dest:?}/$part"; cp -r "$model/$part" "$dest/"; done
cp "$model/train_state/"*_loss.csv "$dest/curves/"
for defect in crack break; do
  cp "$work/trimap-$defect-f16.safetensors" "$dest/trimap-$defect.safetensors"
  cp "$work/trimap-$defect.csv" "$dest/curves/trimap-${defect}_loss.csv"
done
scripts/plot_losses.sh "$dest/curves" "$dest/curves/losses.png" || true
echo "models/tile-64: $(du -sh "$dest" | cut -f1)"
