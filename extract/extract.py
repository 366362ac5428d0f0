"""``simcal extract``: run a frozen detector once and write the per-proposal feature cache.

    simcal extract --checkpoint tiny.pth --data runs/demo/data --split train --out train.zarr
    torchrun --nproc_per_node 4 -m simcal extract ...       # parts split across ranks

Resumable and idempotent: parts are written whole (see :mod:`simcal.extract.store`);
re-running the same command skips finished parts; a complete cache with the same
parameters is reported and left alone; different parameters or another detector
are refused unless ``--overwrite``. The result does not depend on the number of
processes: rows of an image are drawn from a generator seeded by its index, and
batches never straddle parts.

One run writes an output at a time: rank 0 holds ``OUT.lock`` for the whole run
(:mod:`simcal.core.lock`) and clears temporaries of runs that are gone. Before the
detector runs, the free space at ``--out`` must cover the rows the parameters allow
(the staged parts and the consolidated store coexist until the end); a disk that
fills anyway is one sentence, with the finished parts kept for the re-run.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from simcal.core.errors import InputError, input_error
from simcal.extract.schema import empty_rows, encode_features, row_specs

_FIX_SPACE = "free space or choose another --out"


def _identity(ck: dict[str, Any], ann: Any, params: dict[str, Any]) -> dict[str, Any]:
    """What makes two caches the same: detector, annotations, every extraction parameter."""
    return {"detector_fingerprint": ck["detector_fingerprint"], "annotation_fingerprint": ann.fingerprint,
            "params": params}


def _is_cache(out: Path) -> bool:
    """Whether ``out`` is something ``simcal extract`` wrote (so --overwrite may replace it)."""
    from simcal.core.manifest import read_manifest

    manifest = read_manifest(out)
    if manifest is not None:
        return manifest.get("command") == "extract"
    try:
        import zarr

        return "schema_version" in zarr.open_group(str(out), mode="r").attrs
    except Exception:  # zarr raises several types for "not a group"
        return False


def _already_done(out: Path, identity: dict[str, Any], overwrite: bool) -> bool:
    """True when ``out`` is a finished cache of ``identity``; refuses other outputs unless ``overwrite``."""
    from simcal.core.manifest import completed, read_manifest, same_identity
    from simcal.extract.store import parts_dir

    if out.exists() and not _is_cache(out):
        raise input_error(out, "exists and is not a SimCal feature cache", "choose another --out")
    if completed(out, "extract", identity) and not overwrite:
        return True
    if out.exists() and not overwrite:
        raise input_error(out, "is a cache with other parameters or another detector (or an unfinished one)",
                          "pass --overwrite to replace it, or choose another --out")
    staged = read_manifest(parts_dir(out))
    if staged is not None and not same_identity(staged, "extract", identity):
        if not overwrite:
            raise input_error(parts_dir(out), "holds an unfinished extraction with other parameters or detector",
                              "re-run with its parameters, or pass --overwrite to start over")
    return False


def _start(out: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Rank 0: clear what --overwrite replaces and record what the parts are for."""
    from simcal.core.manifest import read_manifest, remove_manifest, same_identity, write_manifest
    from simcal.extract.store import parts_dir

    staged = read_manifest(parts_dir(out))
    if overwrite and staged is not None and not same_identity(staged, "extract", identity):
        shutil.rmtree(parts_dir(out))
    if overwrite:
        remove_manifest(out)
    parts_dir(out).mkdir(parents=True, exist_ok=True)
    write_manifest(parts_dir(out), "extract", identity)


def _extract_part(model, dataset, a: int, b: int, args: argparse.Namespace, dim: int, bar) -> dict[str, np.ndarray]:
    """The rows of images [a, b), both views with --flip, as one part's arrays."""
    from torch.utils.data import DataLoader, Subset

    from simcal.data.detection_dataset import collate, flip_boxes
    from simcal.extract.proposals import extract_batch

    views = (0, 1) if args.flip else (0,)
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
                tg = [{"boxes": flip_boxes(t["boxes"], im.shape[-1]), "labels": t["labels"]}
                      for im, t in zip(images, targets)]
            else:
                ims, tg = images, targets
            for i, sel in zip(idx, extract_batch(model, ims, tg, idx, view, args.fg_per_gt, args.bg_per_image,
                                                 args.fg_iou, args.seed, args.stage)):
                per_image[i].append((view, _rows(sel, i, view, args.dtype)))
        bar.update(len(images))
    return part_arrays(per_image, args.dtype, dim)


def _consolidate(out: Path, args: argparse.Namespace, ck: dict, ann: Any, ann_path: Path, identity: dict,
                 num_parts: int, dim: int, model, world: int, t0: float) -> None:
    """Rank 0: merge the parts into the store, then mark it complete for ``identity``."""
    from tqdm import tqdm

    from simcal.detector.checkpoint import classifier_weights

    categories = [{k: c[k] for k in ("id", "name", "instance_count", "image_count", "frequency")}
                  for c in ck["category_stats"]]
    about = {"arch": ck["arch"], "checkpoint": str(args.checkpoint), "annotations": str(ann_path),
             "world_size": world}
    t1 = time.perf_counter()
    with tqdm(total=len(ann.images), desc="consolidate", unit="img", disable=None, dynamic_ncols=True) as cbar:
        counts = write_cache(out, num_parts, np.array([img["id"] for img in ann.images]), dim, args.dtype,
                             categories, args.bins, identity, about, classifier_weights(model, args.stage or 0),
                             cbar.update)
    took = time.perf_counter() - t0
    print(f"wrote {out}: {counts['rows']} rows ({counts['fg_rows']} fg, {counts['bg_rows']} bg) from "
          f"{counts['images']} images in {took:.1f} s (consolidation {time.perf_counter() - t1:.1f} s)")


def write_cache(out: Path, num_parts: int, image_ids: np.ndarray, dim: int, dtype: str, categories: list[dict],
                bins: str, identity: dict[str, Any], about: dict[str, Any], head_weights: dict[str, np.ndarray],
                progress=None, drop_parts: bool = False) -> dict[str, Any]:
    """The end of every extraction once its parts are written (``write_part``): the attributes, the
    consolidated store (:func:`~simcal.extract.store.consolidate`), then the manifest that marks ``out``
    complete for ``identity``. ``about``: what the cache was made from (checkpoint, annotations, ...),
    recorded in its attributes and manifest. Returns the counts written."""
    from simcal.core.manifest import remove_manifest, write_manifest
    from simcal.extract.schema import SCHEMA_VERSION, TAP
    from simcal.extract.store import consolidate, parts_dir

    attrs = {"schema_version": SCHEMA_VERSION, **identity, "tap": TAP, "dim": dim, "categories": categories,
             "bins": bins, **about}
    counts = consolidate(out, num_parts, image_ids, dim, dtype, len(categories), attrs, head_weights, progress,
                         drop_parts)
    remove_manifest(parts_dir(out))  # consolidate removed the parts; their manifest goes with them
    write_manifest(out, "extract", identity, {"counts": counts, **about})
    return counts


def _on_rank0(rank: int, world: int, local_rank: int, fn) -> Any:
    """``fn()`` on rank 0; its refusal is raised on every rank, so none waits at a barrier for a refused run."""
    import torch

    result, msg = None, None
    if rank == 0:
        try:
            result = fn()
        except InputError as e:
            msg = str(e)
    if world > 1:
        nccl = torch.distributed.get_backend() == "nccl"
        box = [msg]
        torch.distributed.broadcast_object_list(box, src=0,
                                                device=torch.device("cuda", local_rank) if nccl else None)
        msg = box[0]
    if msg is not None:
        raise InputError(msg)
    return result


def _lock(out: Path) -> dict[str, Any]:
    """Rank 0: become the only writer of ``out``, then clear what runs that are gone left half-written."""
    from simcal.core.lock import acquire, remove_dead_temps
    from simcal.extract.store import parts_dir

    lock = acquire(out, "extract")
    removed = (remove_dead_temps(out.parent, out.name) + remove_dead_temps(out.parent, out.name + ".manifest.json")
               + remove_dead_temps(parts_dir(out)))
    if removed:
        print(f"removed {len(removed)} temporary file(s) left by runs that are gone: "
              f"{', '.join(p.name for p in removed)}")
    return lock


def _space_needed(ann: Any, args: argparse.Namespace, dim: int, head_bytes: int, parts: list,
                  done: set[int]) -> tuple[int, int]:
    """(bytes still to write at most, bytes of the consolidated store at most), from the extraction parameters.

    An image view gives at most ``fg_per_gt`` rows per (non-crowd) GT box and ``bg_per_image`` background
    rows; a part (npz) holds its rows once, the store holds them again with the class index (two int64 per
    row at most), image arrays, the detector head and at most one padded chunk per array.
    """
    from simcal.extract.store import MIB

    views = 2 if args.flip else 1
    gts = np.array([sum(1 for a in ann.annotations_of(img["id"]) if not a.get("iscrowd", 0)) for img in ann.images],
                   dtype=np.int64)
    rows = views * (gts * args.fg_per_gt + args.bg_per_image)
    specs = row_specs(args.dtype, dim)
    row_bytes = sum(int(np.dtype(dt).itemsize * int(np.prod(tail or (1,)))) for dt, tail in specs.values())
    store = (int(rows.sum()) * (row_bytes + 16) + 24 * (len(rows) + 1) + head_bytes
             + len(specs) * (MIB + row_bytes) + MIB)
    staged = sum(int(rows[a:b].sum()) * row_bytes + 8 * (b - a) + 64 * 1024 for p, a, b in parts if p not in done)
    return staged + store, store


def _resumable_parts(out: Path, identity: dict[str, Any], num_parts: int) -> set[int]:
    """The finished parts this run will keep (none when the staged ones were made for something else)."""
    from simcal.core.manifest import read_manifest, same_identity
    from simcal.extract.store import existing_parts, parts_dir

    if not same_identity(read_manifest(parts_dir(out)), "extract", identity):
        return set()
    return existing_parts(out, num_parts)


def _check_space(out: Path, needed: tuple[int, int]) -> None:
    """Refuse before the detector runs when the file system of ``out`` cannot hold what the run may write."""
    from simcal.core.disk import free_bytes, human_bytes

    total, store = needed
    free = free_bytes(out)
    if free is not None and free < total:
        raise input_error(out, f"not enough free space (the cache needs up to {human_bytes(store)}, "
                               f"{human_bytes(total)} while its staging parts exist, and {human_bytes(free)} are free)",
                          _FIX_SPACE)


def _disk_full(out: Path, cause: OSError, needed: tuple[int, int] | None, world: int) -> InputError:
    """The one sentence for a disk that filled during the run; drops staging that holds no finished part."""
    from simcal.core.disk import disk_full_error
    from simcal.core.manifest import remove_manifest
    from simcal.extract.store import parts_dir

    staging = parts_dir(out)
    finished = sorted(staging.glob("part_*.npz")) if staging.is_dir() else []
    fix = _FIX_SPACE
    if finished:
        fix = (f"free space and run the same command again (it resumes from the {len(finished)} finished part(s) "
               f"in {staging.name}), or choose another --out")
    elif world == 1:
        shutil.rmtree(staging, ignore_errors=True)
        remove_manifest(staging)
    return disk_full_error(out, cause, needed[0] if needed else None, "the cache with its staging parts", fix)


def main(args: argparse.Namespace) -> int:
    from simcal.core.disk import disk_full_cause
    from simcal.core.lock import release
    from simcal.detector.distributed import init_distributed

    rank, world, local_rank = init_distributed()
    out = Path(args.out)
    lock = _on_rank0(rank, world, local_rank, lambda: _lock(out))
    needed: list[tuple[int, int]] = []
    try:
        return _run(args, rank, world, local_rank, out, needed)
    except Exception as e:
        cause = disk_full_cause(e)
        if cause is None:
            raise
        raise _disk_full(out, cause, needed[0] if needed else None, world) from e
    finally:
        if lock is not None:
            release(out, lock)


def _run(args: argparse.Namespace, rank: int, world: int, local_rank: int, out: Path,
         needed: list[tuple[int, int]]) -> int:
    """The extraction itself, under the lock; ``needed`` receives the space estimate once it is known."""
    from tqdm import tqdm

    from simcal.core.device import resolve_device
    from simcal.data.annotations import load_annotations
    from simcal.data.detection_dataset import DetectionDataset
    from simcal.data.layout import resolve_dataset
    from simcal.detector.checkpoint import check_categories, classifier_weights, load_checkpoint
    from simcal.detector.distributed import barrier, finish_distributed
    from simcal.extract.store import existing_parts, iter_parts, write_part

    device = resolve_device(args.device, local_rank)
    ann_path, image_root = resolve_dataset(args.data, args.split, args.ann, args.images)
    ann = load_annotations(ann_path)
    model, ck = load_checkpoint(args.checkpoint, device)
    check_categories(ck, ann.mapping, args.checkpoint, ann_path)
    model.requires_grad_(False)
    args = _resolve_stage(args, ck, model)

    dim = int(model.roi_heads.box_head.fc6.in_features)
    images_per_part = args.images_per_part or default_images_per_part(dim)
    params = {
        "fg_per_gt": args.fg_per_gt, "bg_per_image": args.bg_per_image, "fg_iou": args.fg_iou,
        "flip": bool(args.flip), "dtype": args.dtype, "seed": args.seed, "batch_size": args.batch_size,
        "images_per_part": images_per_part, "split": args.split if args.data else None, "bins": args.bins,
        "proposals": "rpn (eval mode) + GT boxes" if args.stage is None else
                     f"rpn (eval mode) regressed by cascade stages 0..{args.stage - 1} + GT boxes",
        **({} if args.stage is None else {"stage": args.stage}),
        "rpn_post_nms_top_n": int(model.rpn._post_nms_top_n["testing"]),
    }
    identity = _identity(ck, ann, params)
    if _already_done(out, identity, args.overwrite):
        if rank == 0:
            print(f"{out} is already a complete cache with these parameters; nothing to do.")
        finish_distributed()
        return 0
    dataset = DetectionDataset(ann, image_root, with_masks=False)
    dataset.check_files()  # every rank, so a bad input stops all of them rather than hanging at a barrier
    parts = list(iter_parts(len(dataset), images_per_part))
    head_bytes = sum(4 * v.size for v in classifier_weights(model).values())
    needed.append(_space_needed(ann, args, dim, head_bytes, parts, _resumable_parts(out, identity, len(parts))))
    _on_rank0(rank, world, local_rank, lambda: _check_space(out, needed[0]))
    if rank == 0:
        _start(out, identity, args.overwrite)
    barrier()

    done = existing_parts(out, len(parts))
    mine = [(p, a, b) for p, a, b in parts if p % world == rank and p not in done]
    if rank == 0 and done:
        print(f"resuming: {len(done)} of {len(parts)} parts already extracted")
    bar = tqdm(total=sum(b - a for _, a, b in mine), desc=f"extract r{rank}", unit="img",
               disable=None if rank == 0 else True, dynamic_ncols=True)
    t0 = time.perf_counter()
    rows_written = 0
    for p, a, b in mine:
        arrays = _extract_part(model, dataset, a, b, args, dim, bar)
        write_part(out, p, arrays)
        rows_written += len(arrays["labels"])
        bar.set_postfix(rows=rows_written)
    bar.close()
    barrier()
    if rank == 0:
        _consolidate(out, args, ck, ann, ann_path, identity, len(parts), dim, model, world, t0)
    finish_distributed()
    return 0


def _resolve_stage(args: argparse.Namespace, ck: dict[str, Any], model) -> argparse.Namespace:
    """``--stage`` checked against the detector (a cascade needs one, a Mask R-CNN takes none) and ``--fg-iou``
    defaulted to the stage's IoU threshold (0.5 without a stage)."""
    cascade = model.roi_heads.num_stages > 1
    if cascade and args.stage is None:
        raise input_error(args.checkpoint, f"is a cascade detector ({ck['arch']}) with "
                          f"{model.roi_heads.num_stages} box stages", "choose the stage to extract with --stage")
    if not cascade and args.stage is not None:
        raise input_error(args.checkpoint, f"is a {ck['arch']} detector, which has one box stage",
                          "drop --stage (it is for tiny_cascade and r50_cascade detectors)")
    if cascade and args.stage >= model.roi_heads.num_stages:
        raise input_error(None, f"--stage {args.stage} does not exist: {args.checkpoint} has stages 0 to "
                          f"{model.roi_heads.num_stages - 1}")
    fg_iou = args.fg_iou
    if fg_iou is None:
        from simcal.detector.cascade import stage_iou

        fg_iou = 0.5 if args.stage is None else stage_iou(args.stage)
    return argparse.Namespace(**{**vars(args), "fg_iou": fg_iou})


def default_images_per_part(dim: int) -> int:
    """A part's rows sit in memory until written: aim at ~256 MiB of float16 features for ~100 rows per image."""
    return int(min(1024, max(16, 2**28 // (100 * dim * 2))))


def _rows(sel: Any, image_index: int, view: int, dtype: str) -> dict[str, np.ndarray]:
    """One view's rows as storage-ready numpy arrays (features already in their on-disk dtype)."""
    return image_rows(sel.labels.numpy(), sel.ious.numpy(), sel.boxes.numpy(), sel.is_gt.numpy(),
                      sel.features.numpy(), image_index, view, dtype)


def image_rows(labels: np.ndarray, ious: np.ndarray, boxes: np.ndarray, is_gt: np.ndarray, features: np.ndarray,
               image_index: int, view: int, dtype: str) -> dict[str, np.ndarray]:
    """The stored arrays of one image view's selected rows (``(n,)`` labels, ious, is_gt, ``(n, 4)``
    boxes, ``(n, D)`` float features), in the schema's dtypes; features encoded as ``dtype``."""
    n = len(labels)
    rows = {
        "labels": labels.astype(np.int16),
        "ious": ious.astype(np.float32),
        "boxes": boxes.astype(np.float32),
        "image_index": np.full(n, image_index, dtype=np.int32),
        "is_gt": is_gt.astype(bool),
        "flipped": np.full(n, view == 1, dtype=bool),
    }
    rows.update(encode_features(features, dtype))
    return rows


def part_arrays(per_image: dict[int, list], dtype: str, dim: int) -> dict[str, np.ndarray]:
    """Rows of consecutive images (view 0 then view 1 within an image), concatenated: what ``write_part`` stores.

    ``per_image``: image index -> [(view, :func:`image_rows` of that view), ...] for every image of the part.
    """
    chunks = [rows for i in sorted(per_image) for _, rows in sorted(per_image[i], key=lambda vr: vr[0])]
    empty = empty_rows(dtype, dim)
    arrays = {k: np.concatenate([c[k] for c in chunks]) if chunks else v for k, v in empty.items()}
    arrays["rows_per_image"] = np.array([sum(len(r["labels"]) for _, r in per_image[i]) for i in sorted(per_image)],
                                        dtype=np.int64)
    return arrays
