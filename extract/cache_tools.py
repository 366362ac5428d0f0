"""``simcal cache info | verify | export``: look inside a feature cache, check it, copy it to HDF5."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from simcal.core.atomic import atomic_target
from simcal.core.errors import input_error
from simcal.data.statistics import bin_labels, instance_bin
from simcal.extract.integrity import ALGORITHM, crc_bytes
from simcal.extract.schema import INDEX_ARRAYS, ROW_NAMES, Cache

_BLOCK = 65536  # rows per read when scanning a cache


def _size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cache_summary(cache: Cache) -> dict[str, Any]:
    a = cache.attrs
    labels = np.asarray(cache["labels"][:])
    image_index = np.asarray(cache["image_index"][:])
    cats = a["categories"]
    per_bin: dict[str, dict[str, int]] = {str(b): {"classes": 0, "rows": 0, "images": 0} for b in (1, 2, 3, 4)}
    class_row_ptr, class_image_ptr = cache.index("class_row_ptr"), cache.index("class_image_ptr")
    for k, c in enumerate(cats, start=1):
        b = str(instance_bin(c["instance_count"], cache.bins))
        per_bin[b]["classes"] += 1
        per_bin[b]["rows"] += int(class_row_ptr[k + 1] - class_row_ptr[k])
        per_bin[b]["images"] += int(class_image_ptr[k + 1] - class_image_ptr[k])
    fg = int((labels > 0).sum())
    return {
        "path": str(cache.path),
        "complete": a.get("complete") is True,
        "rows": int(len(labels)),
        "fg_rows": fg,
        "bg_rows": int(len(labels) - fg),
        "images": int(cache["image_ids"].shape[0]),
        "images_with_rows": int(len(np.unique(image_index))),
        "dim": a["dim"],
        "dtype": str(cache["features"].dtype),
        "bytes_on_disk": _size_on_disk(cache.path),
        "bytes_per_row": _size_on_disk(cache.path) / max(len(labels), 1),
        "tap": a["tap"],
        "detector_fingerprint": a["detector_fingerprint"],
        "annotation_fingerprint": a["annotation_fingerprint"],
        "params": a["params"],
        "bins": cache.bins,
        "per_bin": per_bin,
    }


def run_info(args: argparse.Namespace) -> int:
    cache = Cache(args.cache, require_complete=False)
    s = cache_summary(cache)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    gb = s["bytes_on_disk"] / 1e9
    lines = [
        f"# {s['path']}",
        "",
        f"complete: {s['complete']}; {s['rows']} rows ({s['fg_rows']} fg, {s['bg_rows']} bg) from {s['images']} "
        f"images; features {s['dtype']} x {s['dim']} ({s['tap']}); {gb:.3f} GB on disk, "
        f"{s['bytes_per_row']:.0f} bytes/row",
        f"detector {s['detector_fingerprint'][:19]}..., annotations {s['annotation_fingerprint'][:19]}...",
        "params: " + ", ".join(f"{k}={v}" for k, v in s["params"].items() if k not in ("annotations",)),
        "",
        f"| bin ({s['bins']}, train instances) | classes | fg rows | (class, image) pairs |",
        "|---|---|---|---|",
    ]
    for b, label in bin_labels(s["bins"]).items():
        d = s["per_bin"][str(b)]
        lines.append(f"| {b} ({label}) | {d['classes']} | {d['rows']} | {d['images']} |")
    print("\n".join(lines))
    return 0


def verify(cache: Cache) -> list[str]:
    """Problems found (empty when the cache is sound): structure, then every file's crc32c, then the values.

    Values are read only from files whose checksums hold, so a damaged cache gives a list of
    problems, never a crash inside zarr or h5py.
    """
    problems = [] if cache.attrs.get("complete") is True else ["it is not marked complete"]
    problems += cache.structure_problems()
    if problems:
        return problems
    problems += cache.corrupt_files()
    if problems:
        return problems
    try:
        return _value_problems(cache)
    except (ValueError, OSError, KeyError) as e:  # what zarr/h5py raise for unreadable data
        return [f"an array cannot be read ({type(e).__name__}: {e})"]


def _value_problems(cache: Cache) -> list[str]:
    """Ranges and consistency of the values (the structure and checksums already hold).

    Memory: the row arrays and the stored index are read in blocks of rows; only the labels are held whole
    (16-bit), to check the index against them (extract/store.py ``index_disagreements``).
    """
    from simcal.extract.store import index_disagreements

    a = cache.attrs
    R, I, C = cache.num_rows, int(cache["image_ids"].shape[0]), len(a["categories"])
    problems, fg, image_counts = _scan_rows(cache, R, I, C)
    if problems:
        return problems
    labels = np.asarray(cache["labels"][:]).astype(np.int16 if C < 2**15 - 1 else np.int64, copy=False)
    bad = index_disagreements(labels, image_counts, C, {name: cache.index_array(name) for name in INDEX_ARRAYS})
    del labels
    problems += [f"index/{name} disagrees with the labels" for name in INDEX_ARRAYS if name in bad]
    if len(np.unique(np.asarray(cache["image_ids"][:]))) != I:
        problems.append("repeated image ids")
    counts = a.get("counts") or {}
    if (counts.get("rows"), counts.get("fg_rows"), counts.get("images")) != (R, fg, I):
        problems.append(f"the 'counts' attribute says {counts.get('rows')} rows / {counts.get('fg_rows')} fg / "
                        f"{counts.get('images')} images, the arrays hold {R} / {fg} / {I}")
    if str(cache["features"].dtype) == "int8":
        scale = np.asarray(cache["feature_scale"][:])
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            problems.append("int8 feature scales that are not finite and positive")
    feats = cache["features"]
    step = _feature_block_rows(feats)
    for start in range(0 if feats.dtype == np.float16 else R, R, step):
        bits = np.asarray(feats[start : start + step]).view(np.uint16)
        if np.any((bits & 0x7C00) == 0x7C00):  # float16 exponent all ones: inf or NaN
            problems.append(f"non-finite features in rows {start}..{start + len(bits) - 1}")
            break
    return problems


def _feature_block_rows(feats: Any, target_bytes: int = 16 * 2**20) -> int:
    """Rows of features to read at a time: whole chunks, about ``target_bytes``, and a divisor of the shard.

    A read that ends inside a shard makes zarr decode part of it; at LVIS scale such reads grew the
    process by about 6 MB per GB of cache read (benchmarks/lvis_scale.py), aligned ones do not.
    """
    rows = (getattr(feats, "chunks", None) or (1,))[0]
    per = max(1, target_bytes // max(1, rows * feats.shape[1] * feats.dtype.itemsize))
    shards = getattr(feats, "shards", None)
    if shards:
        in_shard = max(1, shards[0] // rows)
        per = max(d for d in range(1, in_shard + 1) if in_shard % d == 0 and d <= per)
    return rows * per


def _scan_rows(cache: Cache, R: int, I: int, C: int, block: int = 1 << 19) -> tuple[list[str], int, np.ndarray]:
    """(problems, foreground rows, rows per image) of the per-row arrays, read ``block`` rows at a time (a
    multiple of every row array's chunk, extract/store.py ``chunk_rows``): labels in 0..C, rows grouped by
    image in image-index order, IoUs in [0, 1], finite xyxy boxes. Stops at a label or grouping problem (the
    index cannot be checked against such rows)."""
    problems: set[str] = set()
    fg, last_image = 0, -1
    image_counts = np.zeros(I, dtype=np.int64)
    for start in range(0, R, block):
        labels = np.asarray(cache["labels"][start : start + block])
        if labels.min(initial=0) < 0 or labels.max(initial=0) > C:
            return [f"labels outside 0..{C}"], fg, image_counts
        image_index = np.asarray(cache["image_index"][start : start + block]).astype(np.int64)
        if len(image_index) and (image_index[0] < last_image or np.any(np.diff(image_index) < 0)
                                 or image_index.min() < 0 or image_index.max() >= I):
            return ["rows are not grouped by image in image-index order"], fg, image_counts
        last_image = int(image_index[-1]) if len(image_index) else last_image
        fg += int(np.count_nonzero(labels))
        image_counts += np.bincount(image_index, minlength=I)
        ious = np.asarray(cache["ious"][start : start + block])
        if not (np.isfinite(ious).all() and ious.min(initial=0) >= 0 and ious.max(initial=0) <= 1):
            problems.add("ious outside [0, 1]")
        boxes = np.asarray(cache["boxes"][start : start + block])
        if not np.isfinite(boxes).all() or np.any(boxes[:, 2:] < boxes[:, :2]):
            problems.add("boxes that are not finite xyxy boxes")
    order = ["ious outside [0, 1]", "boxes that are not finite xyxy boxes"]
    return sorted(problems, key=order.index), fg, image_counts


def run_verify(args: argparse.Namespace) -> int:
    cache = Cache(args.cache, require_complete=False)
    problems = verify(cache)
    if problems:
        raise input_error(cache.path, "failed verification: " + "; ".join(problems), "re-extract it")
    print(f"{cache.path}: OK ({cache.num_rows} rows; every file matches its crc32c; index consistent; values "
          "in range; complete)")
    return 0


def export_h5(src: Cache, out: Path) -> Path:
    import h5py

    src.require_intact()  # a damaged cache is not copied into an export that would then look sound
    crcs: dict[str, int] = {}
    with atomic_target(out) as tmp, h5py.File(tmp, "w") as h:
        for name in (*ROW_NAMES, "image_ids"):
            try:
                arr = src[name]
            except KeyError:
                continue
            shape, dtype = arr.shape, arr.dtype
            chunk_rows = max(1, min(shape[0], (2**20) // max(1, int(np.prod(shape[1:] or (1,))) * dtype.itemsize)))
            # features contiguous: the trainer maps them (np.memmap at the dataset's offset)
            chunks = (chunk_rows, *shape[1:]) if shape[0] and name != "features" else None
            ds = h.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks)
            crc = 0
            for start in range(0, shape[0], _BLOCK):
                block = np.ascontiguousarray(arr[start : start + _BLOCK])
                ds[start : start + _BLOCK] = block
                crc = crc_bytes(block.tobytes(), crc)
            crcs[name] = crc
        groups = {"index": {n: src.index(n) for n in INDEX_ARRAYS}, "detector_head": src.detector_head()}
        for group, arrays in groups.items():
            g = h.create_group(group)
            for name, value in arrays.items():
                g.create_dataset(name, data=value)
                crcs[f"{group}/{name}"] = crc_bytes(np.ascontiguousarray(value).tobytes())
        for k, v in src.attrs.items():
            if k not in ("complete", "integrity"):
                h.attrs[k] = json.dumps(v)
        h.attrs["integrity"] = json.dumps({"algorithm": ALGORITHM, "arrays": crcs})
        h.attrs["complete"] = json.dumps(src.attrs.get("complete") is True)
    return out


def run_export(args: argparse.Namespace) -> int:
    src = Cache(args.cache)
    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise input_error(out, "is a folder", "pass a file name such as cache.h5")
    export_h5(src, out)
    print(f"wrote {out} ({out.stat().st_size / 1e9:.3f} GB)")
    return 0
