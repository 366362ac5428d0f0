"""Writing a feature cache: staged parts, then one consolidation into the sharded zarr store.

Extraction knows a row count only after running the detector, and ranks finish
out of order, so it writes in two steps (dinov2-style index-addressed parts):

1. **Parts.** Images are cut into consecutive parts of ``images_per_part``; part p
   belongs to rank ``p % world_size``. A part is written to ``OUT.parts/part_<p>.npz``
   under a temporary name and renamed: it exists whole or not at all, so a killed
   run resumes by skipping existing parts.
2. **Consolidation** (rank 0, after all parts exist): rows are copied part by part, in
   image order, into ``OUT.tmp-<pid>`` through shard-aligned writes (memory holds one
   part plus one shard), the CSR index is built from the labels, the attributes are
   written with ``complete: true`` last, and the folder is renamed to ``OUT``. So
   ``OUT`` exists only complete; the parts are deleted afterwards.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from simcal.core.atomic import atomic_target, atomic_write
from simcal.extract.integrity import record_store
from simcal.extract.schema import HEAD_ARRAYS, INDEX_ARRAYS, SCHEMA_VERSION, row_specs

MIB = 2**20
CHUNKS_PER_SHARD = 64


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def part_path(out: Path, p: int) -> Path:
    return parts_dir(out) / f"part_{p:06d}.npz"


def write_part(out: Path, p: int, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(part_path(out, p), lambda f: np.savez(f, **arrays))


def chunk_rows(row_bytes: int) -> int:
    """Rows per chunk: whole rows and at least 1 MiB."""
    return max(1, math.ceil(MIB / row_bytes))


class ShardAlignedWriter:
    """Append rows to a zarr array, writing only whole shards (plus the final partial one).

    Writing a part of a shard would make zarr read, merge and rewrite it; buffering
    to shard boundaries keeps consolidation a single sequential pass.
    """

    def __init__(self, array: Any, shard_rows: int) -> None:
        self.array, self.shard_rows = array, shard_rows
        self.pos = 0
        self.buf: list[np.ndarray] = []
        self.buffered = 0

    def append(self, rows: np.ndarray) -> None:
        self.buf.append(rows)
        self.buffered += len(rows)
        if self.buffered >= self.shard_rows:
            block = np.concatenate(self.buf)
            n = (len(block) // self.shard_rows) * self.shard_rows
            self.array[self.pos : self.pos + n] = block[:n]
            self.pos += n
            self.buf = [block[n:]] if n < len(block) else []
            self.buffered = len(block) - n

    def close(self) -> None:
        if self.buffered:
            block = np.concatenate(self.buf)
            self.array[self.pos : self.pos + len(block)] = block
            self.pos += len(block)
        self.buf, self.buffered = [], 0


def csr(keys: np.ndarray, num_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """(ptr (num_keys + 1,), members ascending within each key) for integer keys in [0, num_keys)."""
    order = np.argsort(keys, kind="stable").astype(np.int64)
    counts = np.bincount(keys, minlength=num_keys).astype(np.int64)
    ptr = np.zeros(num_keys + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr, order


def build_index(
    labels: np.ndarray, image_index: np.ndarray, num_images: int, num_classes: int
) -> dict[str, np.ndarray]:
    """The CSR index over classes 0..C (0 = background) and images."""
    image_row_ptr, _ = csr(image_index, num_images)
    class_row_ptr, class_rows = csr(labels.astype(np.int64), num_classes + 1)
    # images per class: unique (class, image) pairs; rows are grouped by image, so pairs come sorted by image
    pair = labels.astype(np.int64) * num_images + image_index.astype(np.int64)
    uniq = np.unique(pair)
    cls, img = uniq // num_images, uniq % num_images
    class_image_ptr, _ = csr(cls, num_classes + 1)
    return {
        "image_row_ptr": image_row_ptr,
        "class_image_ptr": class_image_ptr,
        "class_images": img.astype(np.int64),  # already ascending within each class
        "class_row_ptr": class_row_ptr,
        "class_rows": class_rows,
    }


def consolidate(
    out: Path,
    num_parts: int,
    image_ids: np.ndarray,
    dim: int,
    dtype: str,
    num_classes: int,
    attrs: dict[str, Any],
    head_weights: dict[str, np.ndarray],
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Merge the parts into the final store at ``out`` (see module doc); returns the counts written."""
    paths = [part_path(out, p) for p in range(num_parts)]
    rows_per_image = np.concatenate([np.load(p)["rows_per_image"] for p in paths])
    import zarr

    with atomic_target(out) as tmp:  # the store appears at ``out`` whole, ``complete`` written last
        R = int(rows_per_image.sum())
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update({"schema_version": SCHEMA_VERSION, "complete": False})
        writers = {}
        for name, (dt, shape_tail) in row_specs(dtype, dim).items():
            row_bytes = int(np.dtype(dt).itemsize * int(np.prod(shape_tail or (1,))))
            rows = chunk_rows(row_bytes)
            kw: dict[str, Any] = {"chunks": (rows, *shape_tail)}
            if name == "features":  # the only large array: shards keep the file count low
                kw["shards"] = (rows * CHUNKS_PER_SHARD, *shape_tail)
                kw["compressors"] = None  # fp16 activations barely compress; reads stay plain copies
            # every chunk stored, even all-zero ones: a missing file is then always damage (extract/integrity.py)
            arr = root.create_array(name, shape=(R, *shape_tail), dtype=dt, fill_value=0,
                                    config={"write_empty_chunks": True}, **kw)
            writers[name] = ShardAlignedWriter(arr, kw.get("shards", kw["chunks"])[0])
        labels = np.empty(R, dtype=np.int16)
        image_index = np.empty(R, dtype=np.int32)
        pos = 0
        for p in paths:
            with np.load(p) as part:
                n = len(part["labels"])
                for name, w in writers.items():
                    w.append(part[name])
                labels[pos : pos + n] = part["labels"]
                image_index[pos : pos + n] = part["image_index"]
                pos += n
                if progress:
                    progress(len(part["rows_per_image"]))
        for w in writers.values():
            w.close()
        every_chunk = {"write_empty_chunks": True}
        root.create_array("image_ids", data=image_ids.astype(np.int64), config=every_chunk)
        index = build_index(labels, image_index, len(image_ids), num_classes)
        ig = root.create_group("index")
        for name in INDEX_ARRAYS:
            ig.create_array(name, data=index[name], config=every_chunk)
        hg = root.create_group("detector_head")
        for name in HEAD_ARRAYS:
            hg.create_array(name, data=np.asarray(head_weights[name], dtype=np.float32), config=every_chunk)
        fg = int((labels > 0).sum())
        counts = {
            "rows": R,
            "images": int(len(image_ids)),
            "fg_rows": fg,
            "bg_rows": R - fg,
            "gt_rows": None,
            "classes_with_rows": int((np.diff(index["class_row_ptr"])[1:] > 0).sum()),
        }
        counts["gt_rows"] = int(sum(int(np.load(p)["is_gt"].sum()) for p in paths))
        integrity = record_store(tmp)  # every file but the attributes, which are written next
        root.attrs.update({**attrs, "counts": counts, "integrity": integrity})
        root.attrs["complete"] = True  # last: everything above is on disk
    shutil.rmtree(parts_dir(out), ignore_errors=True)
    return counts


def existing_parts(out: Path, num_parts: int) -> set[int]:
    return {p for p in range(num_parts) if part_path(out, p).exists()}


def iter_parts(num_images: int, images_per_part: int) -> Iterable[tuple[int, int, int]]:
    """(part, first image index, end image index)."""
    for p in range(math.ceil(num_images / images_per_part)):
        yield p, p * images_per_part, min((p + 1) * images_per_part, num_images)
