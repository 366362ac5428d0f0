"""Generated evaluation cases (ground truth, training file, results) for tests and benchmarks.

A case exercises everything the LVIS protocol treats specially: images with more
detections than the cap, ``neg_category_ids`` and ``not_exhaustive_category_ids``,
categories absent from val, detections of categories never annotated in an image
(federated: dropped unless negative there), all three area ranges, and masks as
RLE (ground truth uncompressed, results compressed). Masks are unions of two
rectangles, built directly as RLE so that LVIS-scale cases take seconds to make.
Deterministic by seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CaseSpec:
    num_images: int = 40
    num_categories: int = 30
    dets_per_image: tuple[int, int] = (20, 60)  # uniform range; images above the cap appear when high > cap
    gt_per_image: tuple[int, int] = (1, 8)
    image_size: tuple[int, int] = (96, 320)
    absent_fraction: float = 0.15  # categories with no val instance
    masks: bool = True
    train_scale: float = 1.0  # multiplies the drawn training instance counts
    neg_per_image: tuple[int, int] | None = (
        None  # None: 20-80% of the absent categories; else a count range (LVIS: a few)
    )


def _rect_rle(x0: int, y0: int, x1: int, y1: int, h: int, w: int) -> list[int]:
    """Uncompressed column-major RLE counts of the rectangle [x0, x1) x [y0, y1)."""
    ncol, hh = x1 - x0, y1 - y0
    counts = np.empty(2 * ncol + 1, dtype=np.int64)
    counts[0] = x0 * h + y0
    counts[1::2] = hh
    counts[2::2] = h - hh
    counts[-1] = h * w - (counts[0] + (ncol - 1) * h + hh)
    return counts.tolist()


def _shape(rng: np.random.Generator, h: int, w: int, x: float, y: float, bw: float, bh: float):
    """A union of two rectangles inside the box; returns (bbox [x, y, w, h], two rect tuples)."""
    x0, y0 = int(np.clip(round(x), 0, w - 2)), int(np.clip(round(y), 0, h - 2))
    x1, y1 = int(np.clip(round(x + bw), x0 + 1, w)), int(np.clip(round(y + bh), y0 + 1, h))
    # rect A: full width, a horizontal band; rect B: full height, a vertical band
    by0 = y0 + int(rng.integers(0, max(1, (y1 - y0) // 3)))
    by1 = max(by0 + 1, y1 - int(rng.integers(0, max(1, (y1 - y0) // 3))))
    bx0 = x0 + int(rng.integers(0, max(1, (x1 - x0) // 3)))
    bx1 = max(bx0 + 1, x1 - int(rng.integers(0, max(1, (x1 - x0) // 3))))
    ra = (x0, by0, x1, by1)
    rb = (bx0, y0, bx1, y1)
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], (ra, rb)


def _mask_rle(rects, h: int, w: int) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rles = mask_utils.frPyObjects([{"size": [h, w], "counts": _rect_rle(*r, h, w)} for r in rects], h, w)
    m = mask_utils.merge(rles, intersect=False)
    return {"size": [h, w], "counts": m["counts"].decode("ascii")}


def uncompressed_rle(rle: dict[str, Any]) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    m = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    flat = m.ravel(order="F")
    bounds = np.r_[0, np.flatnonzero(flat[1:] != flat[:-1]) + 1, flat.size]
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": list(rle["size"]), "counts": counts}


def make_case(spec: CaseSpec = CaseSpec(), seed: int = 0, first_cat_id: int = 1) -> tuple[dict, dict, list]:
    """(val ground truth dict, train dict, results list) in LVIS format."""
    rng = np.random.default_rng(seed)
    C = spec.num_categories
    cat_ids = [first_cat_id + 2 * k for k in range(C)]  # ids with gaps
    freqs = rng.choice(["r", "c", "f"], size=C, p=[0.3, 0.4, 0.3])
    categories = [
        {"id": c, "name": f"class_{c}", "frequency": str(f), "synset": f"class_{c}.n.01"}
        for c, f in zip(cat_ids, freqs)
    ]
    n_absent = int(round(spec.absent_fraction * C))
    absent = set(rng.choice(cat_ids, size=n_absent, replace=False).tolist()) if n_absent else set()
    present_cats = [c for c in cat_ids if c not in absent]
    # a long tail over categories for val instances
    wts = 1.0 / (1.0 + np.arange(len(present_cats))) ** 0.8
    wts /= wts.sum()

    images, anns, results = [], [], []
    ann_id = 1
    for i in range(spec.num_images):
        img_id = 1000 + 7 * i
        h = int(rng.integers(*spec.image_size))
        w = int(rng.integers(*spec.image_size))
        n_gt = int(rng.integers(spec.gt_per_image[0], spec.gt_per_image[1] + 1))
        gt_here = []
        for _ in range(n_gt):
            c = int(rng.choice(present_cats, p=wts))
            size = float(np.exp(rng.uniform(np.log(6), np.log(min(h, w) * 0.9))))
            bw, bh = size * rng.uniform(0.6, 1.4), size * rng.uniform(0.6, 1.4)
            x, y = rng.uniform(0, max(1.0, w - bw)), rng.uniform(0, max(1.0, h - bh))
            box, rects = _shape(rng, h, w, x, y, bw, bh)
            a = {"id": ann_id, "image_id": img_id, "category_id": c, "bbox": box, "iscrowd": 0}
            if spec.masks:
                rle = _mask_rle(rects, h, w)
                from pycocotools import mask as mask_utils

                a["area"] = float(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))
                a["segmentation"] = uncompressed_rle(rle) if rng.random() < 0.5 else rle
            else:
                a["area"] = box[2] * box[3]
            anns.append(a)
            gt_here.append((c, box))
            ann_id += 1
        pos = {c for c, _ in gt_here}
        others = [c for c in cat_ids if c not in pos]
        if spec.neg_per_image is None:
            n_neg = int(len(others) * rng.uniform(0.2, 0.8))
        else:
            n_neg = min(len(others), int(rng.integers(spec.neg_per_image[0], spec.neg_per_image[1] + 1)))
        neg = sorted(rng.choice(others, size=n_neg, replace=False).tolist()) if others else []
        not_ex = sorted(c for c in pos if rng.random() < 0.25)
        images.append(
            {
                "id": img_id,
                "file_name": f"{img_id}.png",
                "height": h,
                "width": w,
                "neg_category_ids": neg,
                "not_exhaustive_category_ids": not_ex,
            }
        )

        n_det = int(rng.integers(spec.dets_per_image[0], spec.dets_per_image[1] + 1))
        for d in range(n_det):
            if gt_here and d < 3 * len(gt_here):  # near a GT: right class, or a confusion
                c, (gx, gy, gw, gh) = gt_here[d % len(gt_here)]
                right = rng.random() < 0.7
                if not right:
                    c = int(rng.choice(cat_ids))
                j = rng.normal(0, 0.06 if d < len(gt_here) else 0.15, size=4)
                x, y = gx + j[0] * gw, gy + j[1] * gh
                bw, bh = gw * np.exp(j[2]), gh * np.exp(j[3])
            else:  # anywhere, any class (also classes not annotated here: federated drop)
                pool = list(pos) + neg if rng.random() < 0.6 and (pos or neg) else cat_ids
                c = int(rng.choice(pool))
                size = float(np.exp(rng.uniform(np.log(6), np.log(min(h, w) * 0.9))))
                bw, bh = size * rng.uniform(0.6, 1.4), size * rng.uniform(0.6, 1.4)
                x, y = rng.uniform(0, max(1.0, w - bw)), rng.uniform(0, max(1.0, h - bh))
                right = False
            box, rects = _shape(rng, h, w, x, y, bw, bh)
            score = 0.4 + 0.6 * rng.random() if right else 0.8 * rng.random()
            r = {
                "image_id": img_id,
                "category_id": int(c),
                "bbox": [round(v, 2) for v in box],
                "score": float(round(score, 6)),
            }
            if spec.masks:
                r["segmentation"] = _mask_rle(rects, h, w)
            results.append(r)
    perm = rng.permutation(len(results))  # results files are not sorted
    results = [results[k] for k in perm]

    # training file: only the per-category instance counts matter (they pick the bins)
    bin_p = [0.35, 0.3, 0.22, 0.13]
    lo_hi = [(1, 9), (10, 99), (100, 999), (1000, 1500)]
    train_imgs = [
        {
            "id": k + 1,
            "file_name": f"t{k + 1}.png",
            "height": 64,
            "width": 64,
            "neg_category_ids": [],
            "not_exhaustive_category_ids": [],
        }
        for k in range(200)
    ]
    train_anns = []
    tid = 1
    for c in cat_ids:
        b = int(rng.choice(4, p=bin_p))
        n = (
            max(1, int(rng.integers(lo_hi[b][0], lo_hi[b][1] + 1) * spec.train_scale))
            if spec.train_scale != 1.0
            else int(rng.integers(lo_hi[b][0], lo_hi[b][1] + 1))
        )
        img_of = rng.integers(1, len(train_imgs) + 1, size=n)
        for im in img_of.tolist():
            train_anns.append({"id": tid, "image_id": im, "category_id": c, "bbox": [1.0, 1.0, 8.0, 8.0], "area": 64.0})
            tid += 1
    train = {"images": train_imgs, "annotations": train_anns, "categories": [dict(c) for c in categories]}
    gt = {
        "info": {"description": "simcal.evaluate generated case", "seed": seed},
        "images": images,
        "annotations": anns,
        "categories": categories,
    }
    return gt, train, results
