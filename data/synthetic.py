"""The synthetic long-tail benchmark: an LVIS-format dataset a CPU detector learns in minutes.

Design (see docs/synthetic_benchmark.md for the why):
- a class is a (shape, colour) pair; its instance bin is ``(shape + colour) mod 4``,
  so every shape and every colour occurs in every bin and a tail class always has
  frequent look-alikes sharing its shape or its colour (the confusion the paper studies);
- per-class train instance counts are drawn log-uniformly inside the bin's range;
  validation holds the same number of instances of every class;
- objects are pasted on a noisy gradient background without overlapping, so the
  mask of an object is exactly its drawn pixels; per-instance colour jitter and
  per-pixel noise give texture;
- everything is drawn from ``numpy.random.default_rng([seed, split])``: the same
  seed gives byte-identical json and PNG files.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from simcal.core.errors import input_error
from simcal.data.statistics import frequency_of

GENERATOR_VERSION = 1

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = {
    "red": (215, 45, 40),
    "green": (45, 175, 65),
    "blue": (50, 85, 215),
    "yellow": (225, 205, 45),
    "magenta": (195, 55, 195),
    "cyan": (45, 195, 205),
    "orange": (235, 130, 35),
}


@dataclass(frozen=True)
class SynthConfig:
    """Sizes of one preset. ``bin_ranges[b]`` is the (min, max) train count of bin b + 1."""

    num_shapes: int
    num_colours: int
    image_size: int
    objects_per_image: tuple[int, int]
    object_size: tuple[int, int]
    bin_ranges: tuple[tuple[int, int], ...]
    val_per_class: int

    @property
    def num_classes(self) -> int:
        return self.num_shapes * self.num_colours


PRESETS: dict[str, SynthConfig] = {
    # docs/design.md §8.1: 42 classes, bin 1 with 1-4 instances (the symptom needs it), 128-px images.
    "default": SynthConfig(6, 7, 128, (3, 6), (12, 40), ((1, 4), (10, 99), (100, 999), (2000, 3000)), 50),
    # The smallest benchmark with every bin present, for tests: 12 classes, 64-px images.
    "quick": SynthConfig(4, 3, 64, (4, 8), (8, 18), ((1, 3), (10, 30), (100, 140), (1000, 1040)), 15),
    # quick with 2 val instances per class: the demo's end-to-end test, where inference dominates.
    "smoke": SynthConfig(4, 3, 64, (4, 8), (8, 18), ((1, 3), (10, 30), (100, 140), (1000, 1040)), 2),
}


def max_dets_for(num_classes: int) -> int:
    """Per-image detection cap that keeps LVIS's competition for slots: 300 * C / 1230, at least 10."""
    return max(10, round(300 * num_classes / 1230))


def class_table(cfg: SynthConfig, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Classes in id order with their attributes, bin and drawn train instance count."""
    colours = list(COLOURS)[: cfg.num_colours]
    out = []
    for s in range(cfg.num_shapes):
        for c in range(cfg.num_colours):
            b = (s + c) % 4
            lo, hi = cfg.bin_ranges[b]
            count = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi + 1) - 1e-9))))
            out.append(
                {
                    "id": len(out) + 1,
                    "name": f"{colours[c]}_{SHAPES[s]}",
                    "shape": SHAPES[s],
                    "colour": colours[c],
                    "design_bin": b + 1,
                    "train_count": min(max(count, lo), hi),
                }
            )
    return out


def _shape_mask(shape: str, w: int, h: int) -> np.ndarray:
    """(h, w) bool mask of ``shape`` filling a w x h box."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(im)
    x1, y1 = w - 1, h - 1
    if shape == "circle":
        d.ellipse([0, 0, x1, y1], fill=1)
    elif shape == "square":
        d.rectangle([0, 0, x1, y1], fill=1)
    elif shape == "triangle":
        d.polygon([(x1 / 2, 0), (x1, y1), (0, y1)], fill=1)
    elif shape == "diamond":
        d.polygon([(x1 / 2, 0), (x1, y1 / 2), (x1 / 2, y1), (0, y1 / 2)], fill=1)
    elif shape == "cross":
        tw, th = max(2, round(w * 0.34)), max(2, round(h * 0.34))
        d.rectangle([(w - tw) // 2, 0, (w - tw) // 2 + tw - 1, y1], fill=1)
        d.rectangle([0, (h - th) // 2, x1, (h - th) // 2 + th - 1], fill=1)
    elif shape == "ring":
        d.ellipse([0, 0, x1, y1], fill=1)
        bw, bh = max(2, round(w * 0.25)), max(2, round(h * 0.25))
        d.ellipse([bw, bh, x1 - bw, y1 - bh], fill=0)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)
    return np.asarray(im, dtype=bool)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Noisy linear gradient between two greyish colours, (size, size, 3) float."""
    c0, c1 = rng.uniform(40, 150, 3), rng.uniform(40, 150, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]
    return img + rng.normal(0, 8, (size, size, 3))


def _render_split(
    cfg: SynthConfig,
    classes: list[dict[str, Any]],
    counts: dict[int, int],
    rng: np.random.Generator,
    image_dir: Path,
    first_image_id: int,
    first_ann_id: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict], list[dict]]:
    from PIL import Image
    from pycocotools import mask as mask_utils

    pool = np.repeat(np.array([c["id"] for c in classes]), [counts[c["id"]] for c in classes])
    rng.shuffle(pool)
    rarity = {cid: n for cid, n in counts.items()}
    by_id = {c["id"]: c for c in classes}
    S = cfg.image_size
    images: list[dict] = []
    anns: list[dict] = []
    carry: list[int] = []
    pos = 0
    while pos < len(pool) or carry:
        k = int(rng.integers(cfg.objects_per_image[0], cfg.objects_per_image[1] + 1))
        take = max(0, k - len(carry))
        wanted = carry + [int(x) for x in pool[pos : pos + take]]
        pos += take
        # Rarest first: if the image fills up, only frequent objects wait for the next one.
        wanted.sort(key=lambda cid: (rarity[cid], cid))
        carry = []
        img = _background(rng, S)
        occupied = np.zeros((S, S), dtype=bool)
        placed: list[tuple[int, np.ndarray]] = []
        for cid in wanted:
            cls = by_id[cid]
            ok = False
            for _ in range(30):
                side = rng.uniform(*cfg.object_size)
                aspect = np.exp(rng.uniform(-0.3, 0.3))
                w = int(np.clip(round(side * aspect), 6, S - 2))
                h = int(np.clip(round(side / aspect), 6, S - 2))
                x = int(rng.integers(0, S - w + 1))
                y = int(rng.integers(0, S - h + 1))
                # One free pixel around every object so masks never touch.
                if occupied[max(y - 1, 0) : y + h + 1, max(x - 1, 0) : x + w + 1].any():
                    continue
                ok = True
                break
            if not ok:
                carry.append(cid)
                continue
            m = np.zeros((S, S), dtype=bool)
            m[y : y + h, x : x + w] = _shape_mask(cls["shape"], w, h)
            occupied[y : y + h, x : x + w] = True
            colour = np.array(COLOURS[cls["colour"]], dtype=float) + rng.normal(0, 12, 3)
            texture = rng.normal(0, 10, (h, w, 3))
            region = img[y : y + h, x : x + w]
            sub = m[y : y + h, x : x + w]
            region[sub] = (colour + texture)[sub]
            placed.append((cid, m))
        if not placed and not carry:
            continue
        image_id = first_image_id + len(images)
        file_name = f"{image_id:08d}.png"
        Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8)).save(image_dir / file_name)
        present = set()
        for cid, m in placed:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            ys, xs = np.nonzero(m)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
            anns.append(
                {
                    "id": first_ann_id + len(anns),
                    "image_id": image_id,
                    "category_id": cid,
                    "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
                    "area": float(m.sum()),
                    "segmentation": {"size": [S, S], "counts": rle["counts"].decode("ascii")},
                    "iscrowd": 0,
                }
            )
            present.add(cid)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": S,
                "width": S,
                # Every image is exhaustively labelled, so every absent class is a verified negative.
                "neg_category_ids": [c["id"] for c in classes if c["id"] not in present],
                "not_exhaustive_category_ids": [],
            }
        )
        if progress:
            progress(len(placed))
    return images, anns


def _categories_json(classes: list[dict[str, Any]], train_anns: list[dict]) -> list[dict[str, Any]]:
    inst: dict[int, int] = {}
    imgs: dict[int, set] = {}
    for a in train_anns:
        inst[a["category_id"]] = inst.get(a["category_id"], 0) + 1
        imgs.setdefault(a["category_id"], set()).add(a["image_id"])
    out = []
    for c in classes:
        n_img = len(imgs.get(c["id"], ()))
        out.append(
            {
                "id": c["id"],
                "name": c["name"],
                "synset": f"{c['name']}.n.01",
                "shape": c["shape"],
                "colour": c["colour"],
                "frequency": frequency_of(n_img),
                "image_count": n_img,
                "instance_count": inst.get(c["id"], 0),
            }
        )
    return out


def _info(preset: str, seed: int, split: str, cfg: SynthConfig) -> dict[str, Any]:
    return {
        "description": "SimCal synthetic long-tail benchmark (shape x colour classes)",
        "generator": "simcal.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "preset": preset,
        "seed": seed,
        "split": split,
        "config": asdict(cfg),
        # The benchmark's evaluation cap (docs/design.md §8.1): fixed by formula, never tuned.
        "max_dets_per_image": max_dets_for(cfg.num_classes),
    }


def synthesize(
    out: str | os.PathLike, preset: str = "default", seed: int = 0, overwrite: bool = False, show_progress: bool = True
) -> tuple[Path, bool]:
    """Write ``out/annotations/{train,val}.json`` and ``out/images/{train,val}/*.png``.

    Built in a temporary sibling folder and renamed into place, so ``out`` is
    either complete or absent; ``OUT.manifest.json`` records what it was made from.
    Returns ``(out, created)``; an existing benchmark with the same preset and seed
    is reused (``created`` False); anything else at ``out`` is refused unless ``overwrite``.
    """
    from simcal.core.atomic import atomic_target, write_text
    from simcal.core.manifest import completed, read_manifest, remove_manifest, write_manifest

    out = Path(out)
    if preset not in PRESETS:
        raise input_error(None, f"unknown preset {preset!r}", f"choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    identity = {"preset": preset, "seed": seed, "generator_version": GENERATOR_VERSION}
    if out.exists() and not overwrite:
        if completed(out, "data synth", identity):
            return out, False
        other = read_manifest(out)
        if other is not None and other.get("command") == "data synth":
            raise input_error(
                out, f"holds a synthetic benchmark with preset {other['identity'].get('preset')!r} seed "
                f"{other['identity'].get('seed')}", "pass --overwrite to replace it or choose another --out",
            )
        if out.is_file() or any(out.iterdir()):
            raise input_error(out, "exists and is not a finished synthetic benchmark", "choose an empty or new --out")
    remove_manifest(out)
    with atomic_target(out) as tmp:
        _write_benchmark(tmp, cfg, preset, seed, show_progress, write_text)
    write_manifest(out, "data synth", identity)
    return out, True


def _write_benchmark(tmp: Path, cfg: SynthConfig, preset: str, seed: int, show_progress: bool, write_text) -> None:
    """Render both splits into the folder ``tmp``."""
    (tmp / "annotations").mkdir(parents=True)

    classes = class_table(cfg, np.random.default_rng([seed, 0]))
    splits = {
        "train": {c["id"]: c["train_count"] for c in classes},
        "val": {c["id"]: cfg.val_per_class for c in classes},
    }
    total = sum(sum(v.values()) for v in splits.values())
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="obj", desc=f"synth {preset}", leave=False, disable=None)
    try:
        rendered = {}
        for k, (split, counts) in enumerate(splits.items()):
            (tmp / "images" / split).mkdir(parents=True)
            rendered[split] = _render_split(
                cfg, classes, counts, np.random.default_rng([seed, k + 1]), tmp / "images" / split,
                first_image_id=1 + k * 1_000_000, first_ann_id=1 + k * 10_000_000,
                progress=bar.update if bar else None,
            )
        categories = _categories_json(classes, rendered["train"][1])
        for split, (images, anns) in rendered.items():
            doc = {
                "info": _info(preset, seed, split, cfg),
                "images": images,
                "annotations": anns,
                "categories": categories,
                "licenses": [],
            }
            write_text(tmp / "annotations" / f"{split}.json", json.dumps(doc, separators=(",", ":")))
    finally:
        if bar:
            bar.close()
