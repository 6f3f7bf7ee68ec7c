#!/usr/bin/env python3
"""Makes a validation root from the training side of a few-shot root, for choosing detector settings without test/.

    benchmarks/validation_root.py ROOT TYPE OUT [--folds K] [--fold I] [--good-fraction F]

ROOT is a few-shot root (../shared/data/magnetic-tile-ad layout). Files are grouped into physical tiles the way the
dataset's README defines them (sorted by the number in exp<k>_num_<n>; a gap of more than 300 starts a new tile),
and every split is tile-disjoint:
  - fewshot/TYPE's tiles are dealt round-robin into K folds; fold I becomes OUT/test/TYPE (+ ground_truth/TYPE),
    the others OUT/fewshot/TYPE (+ fewshot_ground_truth/TYPE);
  - train/good's tiles: every round(1/F)-th tile (offset by I) becomes OUT/test/good, the rest OUT/train/good.
OUT holds symbolic links only; `adabldm evaluate --data OUT --defect TYPE` then measures on held-out training tiles.
Nothing under ROOT/test or ROOT/ground_truth is read.
"""
import argparse
import os
import re
import sys


def tiles(names):
    """Groups file names into tiles: sorted by their number, a gap of more than 300 starts a new tile."""
    def number(n):
        m = re.search(r"num_(\d+)", n)
        if not m:
            sys.exit(f"validation_root.py: {n}: no num_<id> in the name")
        return int(m.group(1))
    out = []
    last = None
    for n in sorted(names, key=number):
        if last is None or number(n) - last > 300:
            out.append([])
        out[-1].append(n)
        last = number(n)
    return out


def link(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.lexists(dst):
        os.remove(dst)
    os.symlink(os.path.abspath(src), dst)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root")
    ap.add_argument("type")
    ap.add_argument("out")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--good-fraction", type=float, default=0.25)
    a = ap.parse_args()
    if not 0 <= a.fold < a.folds:
        sys.exit(f"validation_root.py: --fold {a.fold} must be in 0..{a.folds - 1}")
    shots = os.path.join(a.root, "fewshot", a.type)
    if not os.path.isdir(shots):
        sys.exit(f"validation_root.py: {shots}: no such folder")
    shot_tiles = tiles(os.listdir(shots))
    if len(shot_tiles) < a.folds:
        sys.exit(f"validation_root.py: {shots} has {len(shot_tiles)} tiles, fewer than --folds {a.folds}")
    for t, files in enumerate(shot_tiles):
        held = t % a.folds == a.fold
        for f in files:
            stem = os.path.splitext(f)[0]
            mask = os.path.join(a.root, "fewshot_ground_truth", a.type, stem + "_mask.png")
            link(os.path.join(shots, f), os.path.join(a.out, "test" if held else "fewshot", a.type, f))
            link(mask, os.path.join(a.out, "ground_truth" if held else "fewshot_ground_truth", a.type, stem + "_mask.png"))
    good = os.path.join(a.root, "train", "good")
    good_tiles = tiles(os.listdir(good))
    every = max(2, round(1 / a.good_fraction))
    held_good = 0
    for t, files in enumerate(good_tiles):
        held = t % every == a.fold % every
        held_good += len(files) if held else 0
        for f in files:
            link(os.path.join(good, f), os.path.join(a.out, "test" if held else "train", "good", f))
    n_held = sum(len(f) for t, f in enumerate(shot_tiles) if t % a.folds == a.fold)
    print(f"{a.out}: fold {a.fold}/{a.folds}: {a.type} {n_held} held-out / {sum(map(len, shot_tiles)) - n_held} "
          f"few-shot images ({len(shot_tiles)} tiles); good {held_good} held-out / "
          f"{sum(map(len, good_tiles)) - held_good} train ({len(good_tiles)} tiles)")


if __name__ == "__main__":
    main()
