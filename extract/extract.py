"""``simcal extract``: run a frozen detector once and write the per-proposal feature cache.

    simcal extract --checkpoint tiny.pth --data runs/demo/data --split train --out train.zarr
    torchrun --nproc_per_node 4 -m simcal extract ...       # parts split across ranks

Resumable and idempotent: parts are written whole (see :mod:`simcal.extract.store`);
re-running the same command skips finished parts; a complete cache with the same
parameters is reported and left alone; different parameters or another detector
are refused unless ``--overwrite``. The result does not depend on the number of
processes: rows of an image are drawn from a generator seeded by its index, and
batches never straddle parts.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simcal.data.errors import input_error

def _quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: row = q * scale, scale = max|row| / 127."""
    scale = np.abs(x).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def _existing_cache_params(out: Path) -> dict[str, Any] | None:
    try:
        import zarr

        attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    except Exception:
        return None
    return attrs if "schema_version" in attrs else None


def main(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from simcal.data.annotations import load_annotations
    from simcal.data.detection_dataset import DetectionDataset, collate
    from simcal.detector.checkpoint import check_categories, load_checkpoint
    from simcal.data.layout import resolve_dataset
    from simcal.detector.checkpoint import classifier_weights
    from simcal.detector.distributed import barrier, finish_distributed, init_distributed, resolve_device
    from simcal.extract.proposals import extract_batch
    from simcal.extract.schema import SCHEMA_VERSION, TAP
    from simcal.extract.store import (consolidate, existing_parts, iter_parts, parts_dir, read_params,
                                      write_params, write_part)

    if args.fg_per_gt < 1 or args.bg_per_image < 0 or args.batch_size < 1:
        raise input_error(None, "--fg-per-gt and --batch-size must be >= 1 and --bg-per-image >= 0")
    rank, world, local_rank = init_distributed()
    device = resolve_device(args.device, local_rank)
    out = Path(args.out)
    ann_path, image_root = resolve_dataset(args.data, args.split, args.ann, args.images)
    ann = load_annotations(ann_path)
    model, ck = load_checkpoint(args.checkpoint, device)
    check_categories(ck, ann.mapping, args.checkpoint, ann_path)
    model.requires_grad_(False)

    dim = int(model.roi_heads.box_head.fc6.in_features)
    # A part's rows sit in memory until written: aim at ~256 MiB for ~100 rows per image.
    images_per_part = args.images_per_part or int(min(1024, max(16, 2**28 // (100 * dim * 2))))
    params = {
        "fg_per_gt": args.fg_per_gt, "bg_per_image": args.bg_per_image, "fg_iou": args.fg_iou,
        "flip": bool(args.flip), "dtype": args.dtype, "seed": args.seed, "batch_size": args.batch_size,
        "images_per_part": images_per_part, "split": args.split if args.data else None,
        "proposals": "rpn (eval mode) + GT boxes",
        "rpn_post_nms_top_n": int(model.rpn._post_nms_top_n["testing"]),
    }
    identity = {"detector_fingerprint": ck["detector_fingerprint"], "annotation_fingerprint": ann.fingerprint,
                "params": params}

    def same(a: dict[str, Any]) -> bool:
        return all(a.get(k) == v for k, v in identity.items())

    if out.exists():
        prev = _existing_cache_params(out)
        if prev is None:
            raise input_error(out, "exists and is not a SimCal feature cache", "choose another --out")
        if prev.get("complete") and same(prev) and not args.overwrite:
            if rank == 0:
                print(f"{out} is already a complete cache with these parameters; nothing to do.", file=sys.stderr)
            return 0
        if not args.overwrite:
            raise input_error(out, "is a cache with other parameters or another detector",
                              "pass --overwrite to replace it, or choose another --out")
    dataset = DetectionDataset(ann, image_root, with_masks=False)
    dataset.check_files()  # every rank, so a bad input stops all of them rather than hanging at a barrier
    staged = read_params(out)
    if staged is not None and not same(staged):
        if not args.overwrite:
            raise input_error(parts_dir(out), "holds an unfinished extraction with other parameters or detector",
                              "re-run with its parameters, or pass --overwrite to start over")
    if rank == 0:
        if args.overwrite and staged is not None and not same(staged):
            shutil.rmtree(parts_dir(out))
        write_params(out, identity)
    barrier()

    num_images = len(dataset)
    parts = list(iter_parts(num_images, images_per_part))
    done = existing_parts(out, len(parts))
    mine = [(p, a, b) for p, a, b in parts if p % world == rank and p not in done]
    todo_images = sum(b - a for _, a, b in mine)
    if rank == 0 and done:
        print(f"resuming: {len(done)} of {len(parts)} parts already extracted", file=sys.stderr)

    views = (0, 1) if args.flip else (0,)
    bar = tqdm(total=todo_images, desc=f"extract r{rank}", unit="img", disable=None if rank == 0 else True,
               dynamic_ncols=True)
    rows_written = 0
    t0 = time.perf_counter()
    for p, a, b in mine:
        loader = DataLoader(Subset(dataset, range(a, b)), batch_size=args.batch_size, collate_fn=collate,
                            num_workers=args.workers)
        per_image: dict[int, list] = {i: [] for i in range(a, b)}
        next_index = a
        for images, targets in loader:
            idx = list(range(next_index, next_index + len(images)))
            next_index += len(images)
            for view in views:
                if view == 1:
                    ims = [im.flip(-1) for im in images]
                    tg = []
                    for im, t in zip(images, targets):
                        w = im.shape[-1]
                        bx = t["boxes"]
                        tg.append({"boxes": torch.stack([w - bx[:, 2], bx[:, 1], w - bx[:, 0], bx[:, 3]], 1),
                                   "labels": t["labels"]})
                else:
                    ims, tg = images, targets
                for i, sel in zip(idx, extract_batch(model, ims, tg, idx, view, args.fg_per_gt,
                                                     args.bg_per_image, args.fg_iou, args.seed)):
                    per_image[i].append((view, _rows(sel, i, view, args.dtype)))
            bar.update(len(images))
        arrays = _part_arrays(per_image, args.dtype, dim)
        write_part(out, p, arrays)
        rows_written += len(arrays["labels"])
        bar.set_postfix(rows=rows_written)
    bar.close()
    barrier()
    if rank == 0:
        n_cls = ck["categories"]
        categories = [{k: c[k] for k in ("id", "name", "instance_count", "image_count", "frequency")}
                      for c in ck["category_stats"]]
        attrs = {"schema_version": SCHEMA_VERSION, **identity, "tap": TAP, "dim": dim, "categories": categories,
                 "arch": ck["arch"], "checkpoint": str(args.checkpoint), "annotations": str(ann_path),
                 "world_size": world}
        t1 = time.perf_counter()
        with tqdm(total=num_images, desc="consolidate", unit="img", disable=None, dynamic_ncols=True) as cbar:
            counts = consolidate(out, len(parts), np.array([img["id"] for img in ann.images]), dim, args.dtype,
                                 len(n_cls["ids"]), attrs, classifier_weights(model), cbar.update)
        took = time.perf_counter() - t0
        print(f"wrote {out}: {counts['rows']} rows ({counts['fg_rows']} fg, {counts['bg_rows']} bg) from "
              f"{counts['images']} images in {took:.1f} s (consolidation {time.perf_counter() - t1:.1f} s)",
              file=sys.stderr)
    finish_distributed()
    return 0


def _rows(sel: Any, image_index: int, view: int, dtype: str) -> dict[str, np.ndarray]:
    """One view's rows as storage-ready numpy arrays (features already in their on-disk dtype)."""
    n = len(sel.labels)
    rows = {
        "labels": sel.labels.numpy().astype(np.int16),
        "ious": sel.ious.numpy().astype(np.float32),
        "boxes": sel.boxes.numpy().astype(np.float32),
        "image_index": np.full(n, image_index, dtype=np.int32),
        "is_gt": sel.is_gt.numpy().astype(bool),
        "flipped": np.full(n, view == 1, dtype=bool),
    }
    feats = sel.features.numpy()
    if dtype == "int8":
        rows["features"], rows["feature_scale"] = _quantize_int8(feats)
    else:
        rows["features"] = feats.astype(np.float16)
    return rows


def _part_arrays(per_image: dict[int, list], dtype: str, dim: int) -> dict[str, np.ndarray]:
    """Rows of consecutive images (view 0 then view 1 within an image), concatenated."""
    chunks = [rows for i in sorted(per_image) for _, rows in sorted(per_image[i], key=lambda vr: vr[0])]
    names = ["features", "labels", "ious", "boxes", "image_index", "is_gt", "flipped"]
    if dtype == "int8":
        names.append("feature_scale")
    if chunks:
        arrays = {k: np.concatenate([c[k] for c in chunks]) for k in names}
    else:  # a part whose images gave no rows at all
        arrays = {"features": np.zeros((0, dim), np.int8 if dtype == "int8" else np.float16),
                  "labels": np.zeros(0, np.int16), "ious": np.zeros(0, np.float32),
                  "boxes": np.zeros((0, 4), np.float32), "image_index": np.zeros(0, np.int32),
                  "is_gt": np.zeros(0, bool), "flipped": np.zeros(0, bool), "feature_scale": np.zeros(0, np.float32)}
        arrays = {k: arrays[k] for k in names}
    arrays["rows_per_image"] = np.array([sum(len(r["labels"]) for _, r in per_image[i]) for i in sorted(per_image)],
                                        dtype=np.int64)
    return arrays
