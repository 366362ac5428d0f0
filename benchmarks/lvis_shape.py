"""LVIS's class structure, and feature caches of its shape written by the project's own cache writer.

    python benchmarks/lvis_shape.py write --version v1 --gb 1 --out /tmp/train.zarr [--split train|val]

The class lists (full LVIS scale, :func:`categories`):

- **v1**: the 1,203 categories of ``benchmarks/data/lvis_v1_categories.json`` with their real training
  ``image_count``; that file has no instance counts, so each class gets ``image_count x (1 + e)``
  instances, ``e`` exponential, scaled so the total is LVIS v1's 1,270,141 training instances.
- **v0.5**: 1,230 synthesized classes matching the paper's Table 1 in both divisions at once: by
  training instances 294 / 453 / 302 / 181 (bins <10, 10-100, 100-1000, >=1000) and by training images
  454 / 461 / 315 (r <= 10 < c <= 100 < f), 693,958 instances in all. The two divisions fix how many
  classes fall in each (frequency, bin) cell (r: 294 in bin 1, 160 in bin 2; c: 293 in bin 2, 168 in
  bin 3; f: 134 in bin 3, 181 in bin 4); counts inside a cell are drawn log-uniformly.

A cache of ``--gb`` (:func:`write_cache`) holds ``I`` images, ``I`` chosen so the rows fill ``--gb``. Its
rows follow what ``simcal extract`` keeps with its defaults: for each GT instance the GT box and up to
``fg_per_gt - 1 = 7`` more proposals (each present with probability ``FG_HIT``), then ``bg_per_image = 32``
background rows per image; no flipped view. Class ``c`` appears in ``n_c = max(1, round(image_count_c x
I / LVIS train images))`` train images (every class at least once, as in LVIS's train split; at the full
size the counts are LVIS's own), each time with ``1 + Poisson(instances_c / image_count_c - 1)``
instances. A val cache draws ``n_c ~ Poisson(image_count_c x I / LVIS train images)`` (classes may be
absent, as in LVIS val). The cache's ``categories`` attribute holds the full-scale counts, so bins and
frequency groups are LVIS's.

Features are class-conditional, seeded: class ``c``'s rows are ``mu_c + noise`` with ``mu_c`` a random
unit vector per class (background included) and the noise drawn from a fixed bank of random vectors
(``NOISE``); the stored "detector head" (fc6, fc7 random, 1024 wide as R50-FPN's for 12544-d features, 256 for
smaller ones) scores classes by
their mean's representation with a bias towards frequent classes, as a long-tailed detector's classifier
does. The same seed gives the same rows in float16 and int8, train and val share the class means.

Rows are encoded (``extract.extract.image_rows``), grouped into parts (``part_arrays``), staged
(``extract.store.write_part``) and consolidated (``extract.extract.write_cache``: the store, its CSR index,
its crc32c record, its manifest) exactly as after the detector in ``simcal extract``; each part is dropped
once its rows are in the store (``consolidate(drop_parts=True)``) so the disk holds the cache once.
``write`` prints one JSON line of what it wrote and how long each stage took.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.lvis_facts import BG_PER_IMAGE, FG_HIT, FG_PER_GT, FG_ROWS_PER_INSTANCE, LVIS  # noqa: E402

V1_CATEGORIES = ROOT / "benchmarks" / "data" / "lvis_v1_categories.json"
#: v0.5: (frequency, instance bin, classes) cells that make both of the paper's Table 1 divisions hold.
V05_CELLS = (("r", 1, 294), ("r", 2, 160), ("c", 2, 293), ("c", 3, 168), ("f", 3, 134), ("f", 4, 181))
#: Norm of a row's noise (class means have norm 1), by the head's hidden width: chosen so the synthetic
#: detector gets about 2/3 to 3/4 of val rows right, frequent classes best, and calibration has room to lift
#: the tail, at both widths.
NOISE = {256: 1.0, 1024: 3.0}
NOISE_BANK = 1024
LOGIT = 12.0  # the synthetic detector's logit for a row at its class mean (before the frequency bias)
STRUCTURE_SEED = 2020  # the class lists do not depend on --seed


def _loguniform(rng: np.random.Generator, lo, hi, n: int) -> np.ndarray:
    """Integers in [lo, hi] (arrays allowed), log-uniform."""
    lo, hi = np.broadcast_to(lo, (n,)).astype(float), np.broadcast_to(hi, (n,)).astype(float)
    v = np.floor(np.exp(rng.uniform(np.log(lo), np.log(hi + 1))))
    return np.clip(v, lo, hi).astype(np.int64)


def _v05_counts(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image_count, instance_count) of v0.5's 1,230 classes, cell by cell (module doc)."""
    images, instances = [], []
    for freq, b, n in V05_CELLS:
        if (freq, b) == ("r", 1):
            img = _loguniform(rng, 1, 9, n)
            inst = rng.integers(img, 10)
        elif (freq, b) == ("r", 2):
            img = _loguniform(rng, 1, 10, n)
            inst = _loguniform(rng, 10, np.minimum(99, 12 * img), n)
        elif (freq, b) == ("c", 2):
            img = _loguniform(rng, 11, 99, n)
            inst = rng.integers(np.maximum(img, 10), 100)
        elif (freq, b) == ("c", 3):
            img = _loguniform(rng, 11, 100, n)
            inst = _loguniform(rng, 100, np.minimum(999, 12 * img), n)
        elif (freq, b) == ("f", 3):
            img = _loguniform(rng, 101, 999, n)
            inst = _loguniform(rng, np.maximum(100, img), 999, n)
        else:  # f, 4: instances first, the rest of the total spread over them, then images
            inst = _loguniform(rng, 1000, 8000, n)
            rest = LVIS["v0.5"]["train_instances"] - sum(int(v.sum()) for v in instances)
            inst = 1000 + np.round((inst - 1000) * (rest - 1000 * n) / (inst - 1000).sum()).astype(np.int64)
            inst[0] += rest - int(inst.sum())
            img = np.clip(np.round(inst / rng.uniform(2, 6, n)), 101, inst).astype(np.int64)
        images.append(img)
        instances.append(inst)
    return np.concatenate(images), np.concatenate(instances)


def categories(version: str) -> list[dict]:
    """The version's categories at full LVIS scale: id, name, instance_count, image_count, frequency."""
    from simcal.data.statistics import frequency_of

    rng = np.random.default_rng(STRUCTURE_SEED)
    if version == "v1":
        src = json.loads(V1_CATEGORIES.read_text())
        img = np.array([c["image_count"] for c in src], dtype=np.int64)
        mean = LVIS["v1"]["train_instances"] / img.sum()
        extra = img * rng.exponential(mean - 1, len(img))  # instances beyond one per image, then scaled to the total
        extra *= (LVIS["v1"]["train_instances"] - img.sum()) / extra.sum()
        inst = img + np.round(extra).astype(np.int64)
        return [{"id": int(c["id"]), "name": c["name"], "instance_count": int(n), "image_count": int(c["image_count"]),
                 "frequency": c["frequency"]} for c, n in zip(src, inst)]
    if version != "v0.5":
        raise ValueError(f"unknown LVIS version {version!r}; choose v0.5 or v1")
    img, inst = _v05_counts(rng)
    order = rng.permutation(len(img))  # ids do not follow the cells
    return [{"id": k + 1, "name": f"lvis05_class_{k + 1:04d}", "instance_count": int(inst[j]),
             "image_count": int(img[j]), "frequency": frequency_of(int(img[j]))} for k, j in enumerate(order)]


def table(cats: list[dict]) -> dict:
    """Bins by instances and frequency groups by images of a class list, with its totals."""
    from simcal.data.statistics import instance_bin

    bins = [instance_bin(c["instance_count"]) for c in cats]
    return {"classes": len(cats), "bins": [bins.count(b) for b in (1, 2, 3, 4)],
            "rcf": [sum(c["frequency"] == f for c in cats) for f in "rcf"],
            "instances": sum(c["instance_count"] for c in cats), "pairs": sum(c["image_count"] for c in cats)}


def row_bytes(dtype: str, dim: int) -> int:
    """Bytes of one row over every row array of the schema (features, labels, ious, boxes, ...)."""
    from simcal.extract.schema import row_specs

    return sum(int(np.dtype(dt).itemsize * int(np.prod(tail or (1,)))) for dt, tail in row_specs(dtype, dim).values())


@dataclass
class Shape:
    """Which classes each image holds: (image, class) pairs sorted by image, and instances per pair."""

    images: int
    pair_image: np.ndarray  # (P,) image index, ascending
    pair_label: np.ndarray  # (P,) label 1..C
    pair_instances: np.ndarray  # (P,)


def _images_per_class(cats: list[dict], images: int, version: str, split: str, rng=None) -> np.ndarray:
    s = images / LVIS[version]["train_images"]
    counts = np.array([c["image_count"] for c in cats], dtype=float) * s
    n = np.maximum(1, np.round(counts)) if split == "train" else rng.poisson(counts)
    return np.minimum(n, images).astype(np.int64)


def expected_rows(cats: list[dict], images: int, version: str, split: str = "train") -> float:
    """Expected rows of a cache of ``images`` images (for train, the floor of one image per class included)."""
    ratio = np.array([c["instance_count"] / c["image_count"] for c in cats])
    if split == "train":
        n = _images_per_class(cats, images, version, split)
    else:  # the mean of the Poisson draws
        n = np.minimum(np.array([c["image_count"] for c in cats]) * images / LVIS[version]["train_images"], images)
    return float((n * ratio).sum() * FG_ROWS_PER_INSTANCE + images * BG_PER_IMAGE)


def images_for(cats: list[dict], version: str, split: str, target_bytes: float, bytes_per_row: float) -> int:
    """The image count whose expected rows fill ``target_bytes``."""
    lo, hi = 1, 10 * LVIS[version]["train_images"]
    while lo < hi:
        mid = (lo + hi) // 2
        if expected_rows(cats, mid, version, split) * bytes_per_row < target_bytes:
            lo = mid + 1
        else:
            hi = mid
    return lo


def plan(cats: list[dict], images: int, version: str, split: str, seed: int) -> Shape:
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, 7])
    n = _images_per_class(cats, images, version, split, rng)
    ratio = np.array([c["instance_count"] / c["image_count"] for c in cats])
    img_parts, lab_parts = [], []
    for k, m in enumerate(n.tolist()):
        if m:
            img_parts.append(rng.choice(images, size=m, replace=False))
            lab_parts.append(np.full(m, k + 1))
    pair_image = np.concatenate(img_parts).astype(np.int64)
    pair_label = np.concatenate(lab_parts).astype(np.int64)
    order = np.lexsort((pair_label, pair_image))
    pair_image, pair_label = pair_image[order], pair_label[order]
    inst = 1 + rng.poisson(np.maximum(ratio[pair_label - 1] - 1, 0))
    return Shape(images, pair_image, pair_label, inst.astype(np.int64))


class FeatureModel:
    """Class means (C+1, D), a noise bank, and the 'detector head' that scores them (module doc)."""

    def __init__(self, num_classes: int, dim: int, instance_counts: list[int], seed: int) -> None:
        g = np.random.default_rng([seed, 11])
        means = g.standard_normal((num_classes + 1, dim), dtype=np.float32)
        self.means = means / np.linalg.norm(means, axis=1, keepdims=True)
        bank = g.standard_normal((NOISE_BANK, dim), dtype=np.float32)
        hidden = 1024 if dim >= 4096 else 256  # R50-FPN's box head width, or the tiny detector's
        self.bank = (NOISE[hidden] * bank / np.linalg.norm(bank, axis=1, keepdims=True)).astype(np.float32)
        w6 = g.standard_normal((hidden, dim), dtype=np.float32) * np.float32(math.sqrt(2.0 / dim))
        w7 = g.standard_normal((hidden, hidden), dtype=np.float32) * np.float32(math.sqrt(2.0 / hidden))
        phi = np.maximum(np.maximum(self.means @ w6.T, 0) @ w7.T, 0)  # each class mean's representation
        cls = phi / np.maximum((phi * phi).sum(1, keepdims=True), 1e-12)  # logit ~ LOGIT at the mean
        counts = np.array([max(instance_counts)] + list(instance_counts), dtype=np.float64)
        z = np.float32
        self.head = {"fc6.weight": w6, "fc6.bias": np.zeros(hidden, z), "fc7.weight": w7,
                     "fc7.bias": np.zeros(hidden, z), "cls_score.weight": (LOGIT * cls).astype(z),
                     "cls_score.bias": (0.5 * np.log(counts / counts.max())).astype(z)}

    def rows(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.means[labels] + self.bank[rng.integers(0, NOISE_BANK, len(labels))]


def _image(shape: Shape, lo: int, hi: int, rng: np.random.Generator):
    """(labels, ious, boxes, is_gt) of one image from its pairs ``[lo, hi)`` of the shape."""
    inst_label = np.repeat(shape.pair_label[lo:hi], shape.pair_instances[lo:hi])
    per_inst = 1 + rng.binomial(FG_PER_GT - 1, FG_HIT, len(inst_label))
    fg = np.repeat(inst_label, per_inst)
    first = np.zeros(len(fg), dtype=bool)
    first[np.cumsum(per_inst) - per_inst] = True  # each instance's GT box comes first
    labels = np.concatenate([fg, np.zeros(BG_PER_IMAGE, np.int64)])
    is_gt = np.concatenate([first, np.zeros(BG_PER_IMAGE, bool)])
    ious = np.concatenate([np.where(first, 1.0, rng.uniform(0.5, 1.0, len(fg))), rng.uniform(0.0, 0.5, BG_PER_IMAGE)])
    xy = rng.uniform(0, 560, (len(labels), 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 80, (len(labels), 2))], axis=1)
    return labels, ious.astype(np.float32), boxes.astype(np.float32), is_gt


def identity(version: str, dim: int, seed: int, split: str, images: int) -> dict:
    """The cache's identity (what ``simcal extract`` records): a simulated detector shared by train and val."""
    return {"detector_fingerprint": f"simulated:lvis_{version}:dim{dim}:seed{seed}",
            "annotation_fingerprint": f"simulated:lvis_{version}:{split}:{images}:seed{seed}",
            "params": {"fg_per_gt": FG_PER_GT, "bg_per_image": BG_PER_IMAGE, "fg_iou": 0.5, "flip": False,
                       "seed": seed, "split": split, "bins": "lvis",
                       "proposals": f"simulated LVIS {version} (benchmarks/lvis_shape.py)"}}


def write_cache(out: Path, version: str, split: str, gb: float, dim: int, dtype: str, seed: int) -> dict:
    """Write an LVIS-shaped cache at ``out`` through the extraction writer; its figures. ``gb``: its size in
    float16 (an int8 cache holds the same rows, in about half the bytes)."""
    from simcal.extract.extract import default_images_per_part, image_rows, part_arrays, write_cache
    from simcal.extract.store import iter_parts, write_part

    t0 = time.perf_counter()
    cats = categories(version)
    per_row = row_bytes("float16", dim) + 16  # the index: two int64 per row; int8 keeps float16's rows
    images = max(1, images_for(cats, version, split, gb * 1e9, per_row))
    shape = plan(cats, images, version, split, seed)
    model = FeatureModel(len(cats), dim, [c["instance_count"] for c in cats], seed)
    ident = identity(version, dim, seed, split, images)
    ident["params"].update(dtype=dtype, images_per_part=default_images_per_part(dim))
    bounds = np.searchsorted(shape.pair_image, np.arange(images + 1))
    setup_s = time.perf_counter() - t0
    gen_s = part_s = 0.0
    parts = list(iter_parts(images, ident["params"]["images_per_part"]))
    for p, a, b in parts:
        t = time.perf_counter()
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, p])
        per_image = {}
        for i in range(a, b):
            labels, ious, boxes, is_gt = _image(shape, int(bounds[i]), int(bounds[i + 1]), rng)
            per_image[i] = [(0, image_rows(labels, ious, boxes, is_gt, model.rows(labels, rng), i, 0, dtype))]
        arrays = part_arrays(per_image, dtype, dim)
        del per_image
        t1 = time.perf_counter()
        write_part(out, p, arrays)
        del arrays
        gen_s += t1 - t
        part_s += time.perf_counter() - t1
    t = time.perf_counter()
    about = {"simulated": {"version": version, "split": split, "benchmark": "benchmarks/lvis_shape.py",
                           "lvis_train_images": LVIS[version]["train_images"]}}
    counts = write_cache(out, len(parts), np.arange(1, images + 1, dtype=np.int64), dim, dtype, cats, "lvis", ident,
                         about, model.head, drop_parts=True)
    consolidate_s = time.perf_counter() - t
    from benchmarks.measure import size_on_disk

    nbytes = size_on_disk(out)
    write_s = part_s + consolidate_s
    return {"split": split, "images": images, "rows": counts["rows"], "fg_rows": counts["fg_rows"],
            "classes_with_rows": counts["classes_with_rows"], "bytes": nbytes, "gb": round(nbytes / 1e9, 3),
            "setup_s": round(setup_s, 2), "generate_s": round(gen_s, 2), "stage_parts_s": round(part_s, 2),
            "consolidate_s": round(consolidate_s, 2), "write_s": round(write_s, 2),
            "write_gb_s": round(nbytes / 1e9 / max(write_s, 1e-9), 3),
            "consolidate_gb_s": round(nbytes / 1e9 / max(consolidate_s, 1e-9), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write one LVIS-shaped cache; prints one JSON line")
    w.add_argument("--version", choices=tuple(LVIS), default="v1")
    w.add_argument("--split", choices=("train", "val"), default="train")
    w.add_argument("--gb", type=float, required=True)
    w.add_argument("--dim", type=int, default=12544)
    w.add_argument("--dtype", choices=("float16", "int8"), default="float16")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("table", help="print the class list's bins, frequency groups and totals")
    t.add_argument("--version", choices=tuple(LVIS), default="v1")
    args = p.parse_args(argv)
    if args.cmd == "table":
        print(json.dumps(table(categories(args.version))))
        return 0
    print(json.dumps(write_cache(args.out, args.version, args.split, args.gb, args.dim, args.dtype, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
