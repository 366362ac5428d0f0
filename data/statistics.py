"""Per-category training statistics: instance and image counts, LVIS frequency, paper bins.

Two division schemes (paper §5.1, Table 1):
- image-centric LVIS frequency: rare r <= 10 training images, common c 11-100,
  frequent f > 100 (reproduces LVIS v1's 337/461/405 split exactly);
- instance-centric bins 1..4 by training instance count N, giving AP1..AP4:
  LVIS ``N < 10 | 10 <= N < 100 | 100 <= N < 1000 | N >= 1000``,
  COCO-LT ``N < 20 | 20 <= N < 400 | 400 <= N < 8000 | N >= 8000``.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from simcal.core.names import BIN_EDGES  # lower edges of bins 2, 3, 4 per scheme
from simcal.data.annotations import Annotations

FREQUENCIES = ("r", "c", "f")


def frequency_of(image_count: int) -> str:
    """LVIS frequency group from the number of training images: r <= 10 < c <= 100 < f."""
    if image_count <= 10:
        return "r"
    if image_count <= 100:
        return "c"
    return "f"


def instance_bin(instance_count: int, bins: str = "lvis") -> int:
    """Paper bin 1..4 of a class with ``instance_count`` training instances."""
    try:
        edges = BIN_EDGES[bins]
    except KeyError:
        raise ValueError(f"unknown bin scheme {bins!r}; choose from {sorted(BIN_EDGES)}") from None
    return 1 + bisect.bisect_right(edges, instance_count)


def bin_labels(bins: str = "lvis") -> dict[int, str]:
    """Human-readable ranges, e.g. ``{1: "<10", 2: "10-100", 3: "100-1000", 4: ">=1000"}``."""
    a, b, c = BIN_EDGES[bins]
    return {1: f"<{a}", 2: f"{a}-{b}", 3: f"{b}-{c}", 4: f">={c}"}


def repeat_factors(pair_images: np.ndarray, pair_classes: np.ndarray, num_images: int,
                   t: float = 0.001) -> np.ndarray:
    """LVIS repeat factors (Gupta et al. 2019), one per image, from its (image, class) pairs.

    ``pair_images[k]`` holds ``pair_classes[k]`` (duplicate pairs count once):

    1. f_c = fraction of the ``num_images`` images that contain class c;
    2. r_c = max(1, sqrt(t / f_c));
    3. r_i = max over the classes c in image i of r_c (1 for an image with none).
    """
    import numpy as np  # here, so that importing statistics (and every --help) stays light

    pairs = np.unique(np.stack([np.asarray(pair_images, np.int64), np.asarray(pair_classes, np.int64)], 1), axis=0)
    r_img = np.ones(num_images, dtype=np.float64)
    if len(pairs):
        classes, inverse, images_per_class = np.unique(pairs[:, 1], return_inverse=True, return_counts=True)
        r_class = np.maximum(1.0, np.sqrt(t / (images_per_class / num_images)))  # (1), (2)
        np.maximum.at(r_img, pairs[:, 0], r_class[inverse.reshape(-1)])  # (3)
    return r_img


def category_statistics(ann: Annotations, bins: str = "lvis") -> list[dict[str, Any]]:
    """Per category, in ascending id order: id, name, instance_count, image_count, frequency, bin.

    Counts are computed from the annotations (never trusted from the file's own
    ``image_count``/``frequency`` fields); crowd regions are not instances.
    """
    instances: Counter = Counter()
    images: dict[int, set] = {}
    for a in ann.annotations:
        if a.get("iscrowd", 0):
            continue
        instances[a["category_id"]] += 1
        images.setdefault(a["category_id"], set()).add(a["image_id"])
    out = []
    for c in ann.categories:
        n_inst = instances.get(c["id"], 0)
        n_img = len(images.get(c["id"], ()))
        out.append(
            {
                "id": c["id"],
                "name": c["name"],
                "instance_count": n_inst,
                "image_count": n_img,
                "frequency": frequency_of(n_img),
                "bin": instance_bin(n_inst, bins),
            }
        )
    return out


def dataset_summary(ann: Annotations, bins: str = "lvis") -> dict[str, Any]:
    """The ``simcal data stats --json`` document."""
    cats = category_statistics(ann, bins)
    return {
        "file": str(ann.path),
        "bins_scheme": bins,
        "num_images": len(ann.images),
        "num_instances": sum(c["instance_count"] for c in cats),
        "num_categories": len(cats),
        "frequency": {f: sum(c["frequency"] == f for c in cats) for f in FREQUENCIES},
        "bins": {str(b): sum(c["bin"] == b for c in cats) for b in (1, 2, 3, 4)},
        "categories": cats,
    }


def format_summary(summary: dict[str, Any], max_rows: int = 60) -> str:
    """Markdown tables: totals, frequency split, bins, then per-category counts (most frequent first)."""
    labels = bin_labels(summary["bins_scheme"])
    cats = summary["categories"]
    lines = [
        f"# {summary['file']}",
        "",
        f"{summary['num_images']} images, {summary['num_instances']} instances, {summary['num_categories']} categories",
        "",
        "| frequency (train images) | r (<=10) | c (11-100) | f (>100) |",
        "|---|---|---|---|",
        "| classes | {r} | {c} | {f} |".format(**summary["frequency"]),
        "",
        f"| instance bin ({summary['bins_scheme']}) | "
        + " | ".join(f"{b} ({labels[b]})" for b in (1, 2, 3, 4))
        + " |",
        "|---|---|---|---|---|",
        "| classes | {} | {} | {} | {} |".format(*(summary["bins"][str(b)] for b in (1, 2, 3, 4))),
        "",
        "| id | name | instances | images | freq | bin |",
        "|---|---|---|---|---|---|",
    ]
    ranked = sorted(cats, key=lambda c: (-c["instance_count"], c["id"]))
    shown = ranked if len(ranked) <= max_rows else ranked[: max_rows // 2] + ranked[-max_rows // 2 :]
    for i, c in enumerate(shown):
        if len(shown) < len(ranked) and i == max_rows // 2:
            lines.append(f"| ... | {len(ranked) - len(shown)} more | | | | |")
        lines.append(
            f"| {c['id']} | {c['name']} | {c['instance_count']} | {c['image_count']} | {c['frequency']} | {c['bin']} |"
        )
    return "\n".join(lines)
