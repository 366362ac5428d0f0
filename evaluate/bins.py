"""Summary metrics from the accumulated precision array, incl. the paper's AP1-AP4.

``precision`` is ``[T, R, K, A]`` (IoU thresholds, recall points, categories,
area ranges), -1 where category k has no ground truth in area range a. Every
summary is the mean of the entries > -1 of a slice, exactly as
``LVISEval._summarize`` does; a slice without such entries gives -1:

- AP / AP50 / AP75: all categories, area "all", IoU .50:.95 / .50 / .75;
- APs / APm / APl: the small / medium / large area ranges;
- APr / APc / APf: categories by the ground truth's ``frequency`` field;
- AP1..AP4: categories by their *training* instance count bin (paper §5.1):
  LVIS ``N < 10 | 10 <= N < 100 | 100 <= N < 1000 | N >= 1000``,
  COCO-LT ``N < 20 | 20 <= N < 400 | 400 <= N < 8000 | N >= 8000``.

A category's entries are either all -1 (no ground truth in val) or all >= 0, so a
group's AP is also the mean of the per-class APs of its categories present in val.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from simcal.evaluate.protocol import FREQUENCIES, IOU_THRS


def _mean_valid(s: np.ndarray) -> float:
    v = s[s > -1]
    return float(np.mean(v)) if v.size else -1.0


def summarize(
    precision: np.ndarray,
    cat_ids: Sequence[int],
    frequency: Mapping[int, str],
    bins: Mapping[int, int],
) -> dict[str, float]:
    """The METRICS.json keys for one IoU type (fractions, -1 for an empty group)."""
    p = np.asarray(precision)
    if p.ndim != 4 or p.shape[2] != len(cat_ids):
        raise ValueError(f"precision has shape {p.shape}; expected [T, R, {len(cat_ids)}, A]")
    t50 = np.where(IOU_THRS == 0.5)[0]
    t75 = np.where(IOU_THRS == 0.75)[0]
    out = {
        "AP": _mean_valid(p[:, :, :, 0]),
        "AP50": _mean_valid(p[t50][:, :, :, 0]),
        "AP75": _mean_valid(p[t75][:, :, :, 0]),
        "APs": _mean_valid(p[:, :, :, 1]),
        "APm": _mean_valid(p[:, :, :, 2]),
        "APl": _mean_valid(p[:, :, :, 3]),
    }
    for f in FREQUENCIES:
        idx = [k for k, c in enumerate(cat_ids) if frequency[c] == f]
        out[f"AP{f}"] = _mean_valid(p[:, :, idx, 0])
    for b in (1, 2, 3, 4):
        idx = [k for k, c in enumerate(cat_ids) if bins[c] == b]
        out[f"AP{b}"] = _mean_valid(p[:, :, idx, 0])
    return out


def per_class_ap(precision: np.ndarray) -> np.ndarray:
    """AP (IoU .50:.95, area all) of each category; -1 for a category without ground truth."""
    p = np.asarray(precision)[:, :, :, 0]
    valid = p > -1
    n = valid.sum(axis=(0, 1))
    s = np.where(valid, p, 0.0).sum(axis=(0, 1))
    return np.where(n > 0, s / np.maximum(n, 1), -1.0)


def empty_precision(
    gt_annotations: Sequence[Mapping],
    cat_ids: Sequence[int],
    area_ranges: Sequence[tuple[float, float]],
    num_thrs: int,
    num_recalls: int,
) -> np.ndarray:
    """The precision array of an evaluation without detections: 0 where ground truth exists, else -1."""
    index = {c: k for k, c in enumerate(cat_ids)}
    has = np.zeros((len(cat_ids), len(area_ranges)), dtype=bool)
    for a in gt_annotations:
        k = index[a["category_id"]]
        for j, (lo, hi) in enumerate(area_ranges):
            if lo <= a["area"] <= hi:
                has[k, j] = True
    out = np.where(has, 0.0, -1.0)
    return np.broadcast_to(out, (num_thrs, num_recalls) + out.shape).copy()
