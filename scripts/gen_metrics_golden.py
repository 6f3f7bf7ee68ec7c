#!/usr/bin/python3
"""Write the golden cases of tests/test_metrics.cpp to tests/data/metrics/ (docs/evaluation.md, "Metrics").

Random score maps with blob ground truths, six cases (two with scores quantised to a few levels, so that many
scores tie), and the reference values of each metric:
  - pixel/image AP, AUROC: scikit-learn's average_precision_score and roc_auc_score;
  - pixel F1-max: the best 2PR/(P+R) over sklearn's precision_recall_curve;
  - IAP / IAP90: DeSTSeg's definition (apple/ml-destseg, model/metrics.py, IAPS.compute) written afresh in NumPy,
    the precision computed in float64 (DeSTSeg's torch divides in float32);
  - PRO: MVTec AD's definition (mvtec_ad_evaluation: compute_pro, then trapezoid up to 0.3, divided by 0.3) written
    afresh in NumPy, the FPRs kept in float64 (MVTec casts them to float32); the float32 variant is stored too,
    as pro_mvtec_f32;
  - the image score: DeSTSeg's mean of the 100 highest pixel scores; components: scipy.ndimage.label with a 3x3
    structure (8-connected), labelled per image.
Scores are stored as integers q (the score is the float32 nearest to q / 10000), gt rows as strings of 0/1.

Needs Debian's python3-numpy, python3-scipy, python3-sklearn (run with /usr/bin/python3).
Usage: scripts/gen_metrics_golden.py [OUT_DIR]   (default tests/data/metrics)
"""
import json
import os
import sys
import numpy as np
import sklearn
from scipy.ndimage import label
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

STRUCTURE = np.ones((3, 3), dtype=int)  # 8-connected


def blobs(rng, h, w, count, max_r):
    """A 0/1 mask with `count` random ellipses (some touching only diagonally when small)."""
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w), dtype=np.uint8)
    for _ in range(count):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.6, max_r), rng.uniform(0.6, max_r)
        m[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0] = 1
    return m


def quantise(s):
    """Scores as integers q in [0, 10000]; the score is float32(q / 10000)."""
    return np.clip(np.rint(np.asarray(s) * 10000), 0, 10000).astype(np.int64)


def make_case(rng, name, n_images, h, w, n_normal, blob_count, max_r, signal, levels=None, gain=0.6):
    images = []
    for i in range(n_images):
        gt = np.zeros((h, w), np.uint8) if i < n_normal else blobs(rng, h, w, blob_count, max_r)
        if i >= n_normal and gt.sum() == 0:
            gt[h // 2, w // 2] = 1
        s = rng.uniform(0, 1, (h, w)) * (1 - signal) + signal * gt * rng.uniform(0.3, 1, (h, w))
        s = s * rng.uniform(gain, 1.0)  # a per-image gain, so that image scores overlap between the classes
        if levels is not None:  # tied scores: `levels` equally spaced values in [0, 1]
            s = np.round(s * (levels - 1)) / (levels - 1)
        images.append((quantise(s), gt))
    return {"name": name, "images": images}


def iap_destseg(preds, target, cca):
    """DeSTSeg's IAP and IAP90 (ioi_thresh 0.5, recall_thresh 0.9) on flat arrays; cca: global component labels."""
    n = int(cca.max())
    assert n > 0, "gt all zeros"
    # Instance score: element floor(0.5 m) of the component's m scores in descending order.
    ins = np.array([np.sort(preds[cca == k])[::-1][int(0.5 * np.sum(cca == k))] for k in range(1, n + 1)])
    ins = np.sort(ins)  # ascending; instance i has recall 1 - i / n (by rank, also for ties)
    masked = preds * target  # "pred x gt": a gt = 0 pixel counts as 0
    precision = np.array([np.count_nonzero(masked >= s) / np.count_nonzero(preds >= s) for s in ins])
    precision = np.maximum.accumulate(precision)  # best precision at any lower threshold
    recall = np.array([1 - i / n for i in range(n)])
    at = np.nonzero(recall >= 0.9)[0].max()  # the lowest recall still >= 0.9
    return float(precision.mean()), float(precision[at])


def pro_curve(maps, gts, fpr_dtype):
    """MVTec AD's exact PRO curve: (FPR, mean region overlap) after each distinct score, highest first, from one
    sort of all pixels; starts at (0, 0), ends at (1, 1), values clipped at 1. fpr_dtype float32 is MVTec's cast."""
    scores, neg, weight = [], [], []
    n_regions = 0
    for m, g in zip(maps, gts):
        lab, n = label(g, STRUCTURE)
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        w = np.where(lab > 0, 1.0 / sizes[lab], 0.0)
        scores.append(m.ravel())
        neg.append((lab == 0).ravel())
        weight.append(w.ravel())
        n_regions += n
    scores, neg, weight = np.concatenate(scores), np.concatenate(neg), np.concatenate(weight)
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    s = scores[order]
    fpr = (np.cumsum(neg[order]).astype(fpr_dtype) / fpr_dtype(neg.sum())).astype(np.float64)
    pro = np.cumsum(weight[order]) / n_regions
    last = np.r_[s[1:] != s[:-1], True]  # the last pixel of each group of equal scores
    x = np.minimum(np.r_[0.0, fpr[last], 1.0], 1.0)
    y = np.minimum(np.r_[0.0, pro[last], 1.0], 1.0)
    return x, y


def area_up_to(x, y, x_max):
    """Trapezoid area under (x, y) for x <= x_max, the point at x_max linearly interpolated from the last point
    <= x_max and the first > x_max (MVTec AD's generic_util.trapezoid)."""
    keep = x <= x_max
    xi, yi = x[keep], y[keep]
    area = float(np.sum((xi[1:] - xi[:-1]) * (yi[1:] + yi[:-1]) / 2))
    if xi[-1] != x_max:
        j = len(xi)  # first point beyond x_max
        y_at = yi[-1] + (y[j] - yi[-1]) * (x_max - xi[-1]) / (x[j] - xi[-1])
        area += (x_max - xi[-1]) * (y_at + yi[-1]) / 2
    return area


def f1_max(y, s):
    p, r, _ = precision_recall_curve(y, s)
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) != 0)
    return float(f1.max())


def reference(case):
    maps = [(q / 10000.0).astype(np.float32) for q, _ in case["images"]]
    gts = [g for _, g in case["images"]]
    preds = np.concatenate([m.ravel() for m in maps])
    target = np.concatenate([g.ravel() for g in gts]).astype(np.float32)
    y = target.astype(np.int64)
    # Global component labels, per image (components never span two images).
    cca, offset, n_comp = [], 0, []
    for g in gts:
        lab, n = label(g, STRUCTURE)
        n_comp.append(int(n))
        cca.append(np.where(lab > 0, lab + offset, 0).ravel())
        offset += n
    cca = np.concatenate(cca)
    iap, iap90 = iap_destseg(preds, target, cca)
    fpr64, pro64 = pro_curve(maps, gts, np.float64)
    fpr32, pro32 = pro_curve(maps, gts, np.float32)
    img_scores = np.array([np.sort(m.astype(np.float64).ravel())[::-1][:100].mean() for m in maps])
    # Ties between image scores must be exact in every summation order (else AUROC depends on rounding).
    for a in img_scores:
        for b in img_scores:
            assert a == b or abs(a - b) > 1e-9
    img_y = np.array([int(g.any()) for g in gts])
    return {
        "pixel_ap": float(average_precision_score(y, preds)),
        "pixel_auroc": float(roc_auc_score(y, preds)),
        "pixel_f1_max": f1_max(y, preds),
        "iap": float(iap),
        "iap90": float(iap90),
        "pro": area_up_to(fpr64, pro64, 0.3) / 0.3,
        "pro_mvtec_f32": area_up_to(fpr32, pro32, 0.3) / 0.3,
        "image_scores": [float(v) for v in img_scores],
        "image_auroc": float(roc_auc_score(img_y, img_scores)),
        "image_ap": float(average_precision_score(img_y, img_scores)),
        "components": n_comp,
    }


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                                                             "metrics")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(21)
    cases = [
        make_case(rng, "uniform", 4, 32, 32, 1, 3, 5.0, 0.0),              # a random detector
        make_case(rng, "levels5", 5, 32, 32, 2, 3, 6.0, 0.6, levels=5),   # heavy ties, dyadic levels
        make_case(rng, "signal", 4, 32, 32, 1, 4, 4.0, 0.5),              # a fair detector
        make_case(rng, "specks", 3, 32, 32, 1, 14, 1.6, 0.4),             # many small components (IAP90 > 10)
        make_case(rng, "wide", 6, 20, 40, 2, 2, 5.0, 0.3, levels=101),    # not square, scores on a 0.01 grid
        make_case(rng, "many", 14, 16, 16, 7, 2, 3.0, 0.3, gain=0.3),     # image AUROC / AP on 14 images
    ]
    for case in cases:
        ref = reference(case)
        doc = {
            "source": "scripts/gen_metrics_golden.py (numpy %s, scikit-learn %s)" % (np.__version__,
                                                                                   sklearn.__version__),
            "name": case["name"],
            "images": [{"h": int(g.shape[0]), "w": int(g.shape[1]), "score_q": [int(v) for v in q.ravel()],
                        "gt": ["".join(str(int(v)) for v in row) for row in g]} for q, g in case["images"]],
            "expected": ref,
        }
        path = os.path.join(out, case["name"] + ".json")
        with open(path, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.write("\n")
        print(path, {k: v for k, v in ref.items() if k != "image_scores"})


if __name__ == "__main__":
    main()
