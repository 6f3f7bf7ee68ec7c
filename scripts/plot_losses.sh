#!/usr/bin/env bash
# Plots the loss curves of the embedded model's training (CSV step,loss,seconds) into one PNG, one panel per stage,
# with gnuplot (Debian package gnuplot-nox; used only to make this documentation figure).
#   scripts/plot_losses.sh [CURVES_DIR (models/tile-64/curves)] [OUT.png (CURVES_DIR/losses.png)]
set -euo pipefail
dir=${1:-models/tile-64/curves}
out=${2:-$dir/losses.png}
command -v gnuplot >/dev/null || { echo "gnuplot is not installed (apt-get install gnuplot-nox)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
files=("$dir"/*_loss.csv)
[ -e "${files[0]}" ] || { echo "no *_loss.csv in $dir" >&2; exit 2; }
script="set terminal pngcairo size $((360 * ${#files[@]})),360 font ',9'
set output '$out'
set logscale y; set xlabel 'step'; set grid; set key top right
set multiplot layout 1,${#files[@]}"
for f in "${files[@]}"; do
  name=$(basename "$f" _loss.csv)
  # step, loss, the mean of the last 50 steps (the per-step loss of one batch is noisy)
  awk -F, 'NR > 1 && $2 != "nan" { b[NR % 50] = $2; n = (NR - 1 < 50 ? NR - 1 : 50); s = 0; for (i in b) s += b[i];
           print $1, $2, s / n }' "$f" > "$tmp/$name.dat"
  script+="
set title '$name'
plot '$tmp/$name.dat' using 1:2 with lines lc rgb '#c0c0c0' title 'loss', '' using 1:3 with lines lw 2 lc rgb '#1060c0' title '50-step mean'"
done
script+="
unset multiplot"
gnuplot <<< "$script"
echo "wrote $out"
