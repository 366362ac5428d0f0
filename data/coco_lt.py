"""COCO-LT: a long-tailed subset of COCO sampled by whole images (paper §5.1, Fig. 3).

Procedure (the paper defers details to its supplement; this is our documented version):

1. Rank the C classes by COCO train instance count, descending (ties by id).
2. Per-class targets follow an exponential in the rank: the ``keep_head`` most
   frequent classes keep all their instances; from rank ``keep_head`` to the last
   rank the target decays exponentially from ``n_high`` to ``n_low``:
   ``target(r) = n_high * (n_low / n_high) ** ((r - keep_head) / (C - 1 - keep_head))``,
   capped by the class's real count. With the defaults (20, 7900, 15) and 80
   classes whose 20 largest have >= 8000 instances (true of COCO 2017) the targets
   fall 20/29/28/3 into the COCO-LT bins >=8000 / 400-8000 / 20-400 / <20 (the
   paper reports about 20/32/24/4; one exponential cannot hit both inner edges).
3. Images are kept whole (dropping single instances would leave unlabelled objects).
   Classes are filled from the smallest target up: for each class, candidate
   images containing it are visited in a seeded random order and taken while the
   class is below its target and the image would not push any class already
   filled above its own target. Classes are never exceeded except by the images a
   rarer class needed; the achieved counts are reported.

Crowd annotations ride along with their images and do not count as instances.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from simcal.data.annotations import Annotations


def exponential_targets(
    counts: dict[int, int], keep_head: int = 20, n_high: float = 7900, n_low: float = 15
) -> dict[int, int]:
    """Target instance count per category id (see module doc, step 2)."""
    ranked = sorted(counts, key=lambda cid: (-counts[cid], cid))
    C = len(ranked)
    out = {}
    span = max(C - 1 - keep_head, 1)
    for r, cid in enumerate(ranked):
        if r < keep_head:
            t = counts[cid]
        else:
            t = n_high * (n_low / n_high) ** ((r - keep_head) / span)
        out[cid] = int(min(counts[cid], max(1, round(t))))
    return out


def sample_coco_lt(
    ann: Annotations, seed: int = 0, keep_head: int = 20, n_high: float = 7900, n_low: float = 15
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(coco_lt_json, report)``; the json keeps the input's categories and image records."""
    rng = np.random.default_rng(seed)
    per_image: dict[int, Counter] = defaultdict(Counter)
    for a in ann.annotations:
        if not a.get("iscrowd", 0):
            per_image[a["image_id"]][a["category_id"]] += 1
    counts = Counter()
    for c in per_image.values():
        counts.update(c)
    all_counts = {c["id"]: counts.get(c["id"], 0) for c in ann.categories if counts.get(c["id"], 0) > 0}
    targets = exponential_targets(all_counts, keep_head, n_high, n_low)
    images_of: dict[int, list[int]] = defaultdict(list)
    for image_id in sorted(per_image):
        for cid in per_image[image_id]:
            images_of[cid].append(image_id)

    chosen: set[int] = set()
    have = Counter()
    filled: set[int] = set()
    for cid in sorted(targets, key=lambda c: (targets[c], c)):
        filled.add(cid)
        if have[cid] >= targets[cid]:
            continue
        cands = np.array(images_of[cid])
        for image_id in cands[rng.permutation(len(cands))].tolist():
            if have[cid] >= targets[cid]:
                break
            if image_id in chosen:
                continue
            inst = per_image[image_id]
            if any(have[o] + n > targets[o] for o, n in inst.items() if o in filled and o != cid):
                continue
            if have[cid] + inst[cid] > targets[cid] and have[cid] > 0:
                continue
            chosen.add(image_id)
            have.update(inst)

    images = [img for img in ann.images if img["id"] in chosen]
    anns = [a for a in ann.annotations if a["image_id"] in chosen]
    doc = {
        "info": {"description": "COCO-LT sampled by simcal data coco-lt", "seed": seed,
                 "source": str(ann.path), "keep_head": keep_head, "n_high": n_high, "n_low": n_low},
        "images": images,
        "annotations": anns,
        "categories": ann.categories,
    }
    report = {
        "num_images": len(images),
        "num_instances": sum(have.values()),
        "categories": [
            {"id": cid, "original": all_counts[cid], "target": targets[cid], "sampled": have.get(cid, 0)}
            for cid in sorted(all_counts, key=lambda c: (-all_counts[c], c))
        ],
    }
    return doc, report
