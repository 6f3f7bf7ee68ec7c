#!/usr/bin/env python3
"""The table of issue 21 across defect types: per type and averaged over the types measured.

usage: benchmarks/ad_gain_table.py OUT [--types blowhole,break,...]

Reads OUT/<type>/results.json (written by `adabldm evaluate`, one folder per type as benchmarks/ad_gain.sh lays
them out) and prints a markdown table: for each type and condition the mean +- sample std over its seeds, then for
each condition the mean over the types (of the per-type means). A type or condition with fewer runs than seeds is
marked with its run count, so a partial result is never read as a whole one, and the mean over types takes only
the types complete for every condition shown, so the conditions are compared on the same types. Standard library
only.
"""
import json
import math
import os
import sys

METRICS = [("pixel_ap", "pixel AP"), ("iap", "IAP"), ("iap90", "IAP90"), ("pixel_f1_max", "F1-max"), ("pro", "PRO"),
           ("pixel_auroc", "pixel AUROC"), ("image_auroc", "image AUROC"), ("image_ap", "image AP")]
CONDITIONS = ["real", "croppaste", "adabldm"]
LABELS = {"real": "(a) real", "croppaste": "(b) + crop & paste", "adabldm": "(c) + AdaBLDM"}


def mean_std(values):
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out = argv[1]
    types = None
    if len(argv) == 4 and argv[2] == "--types":
        types = argv[3].split(",")
    elif len(argv) != 2:
        print("ad_gain_table.py: usage: ad_gain_table.py OUT [--types a,b]", file=sys.stderr)
        return 2
    if types is None:
        types = sorted(t for t in os.listdir(out) if os.path.isfile(os.path.join(out, t, "results.json")))
    if not types:
        print(f"ad_gain_table.py: no <type>/results.json under {out}", file=sys.stderr)
        return 1

    header = "| type | condition | runs | " + " | ".join(label for _, label in METRICS) + " |"
    print(header)
    print("|---|---|---:|" + "---:|" * len(METRICS))
    per_type_means = {c: [] for c in CONDITIONS}  # condition -> [(type, {metric: mean})], types with all seeds
    for t in types:
        path = os.path.join(out, t, "results.json")
        try:
            with open(path) as f:
                results = json.load(f)
        except (OSError, ValueError) as e:
            print(f"ad_gain_table.py: {path}: {e}", file=sys.stderr)
            return 1
        seeds = len(results.get("seeds", []))
        for c in CONDITIONS:
            runs = [r["metrics"] for r in results.get("runs", []) if r.get("condition") == c]
            if not runs:
                continue
            cells, means = [], {}
            for key, _ in METRICS:
                m, s = mean_std([r[key] for r in runs])
                means[key] = m
                cells.append(f"{m:.3f} ± {s:.3f}")
            note = "" if len(runs) == seeds else f" (of {seeds})"
            print(f"| {t} | {LABELS[c]} | {len(runs)}{note} | " + " | ".join(cells) + " |")
            if len(runs) == seeds:
                per_type_means[c].append((t, means))
    # The mean over types compares conditions only on the same types: those complete for every condition shown.
    present = [c for c in CONDITIONS if per_type_means[c]]
    common = set.intersection(*(set(t for t, _ in per_type_means[c]) for c in present)) if present else set()
    for c in present:
        rows = [(t, m) for t, m in per_type_means[c] if t in common]
        if not rows:
            continue
        cells = [f"{sum(m[key] for _, m in rows) / len(rows):.3f}" for key, _ in METRICS]
        names = ",".join(t for t, _ in rows)
        print(f"| **mean of {len(rows)} type(s)** ({names}) | {LABELS[c]} | | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
