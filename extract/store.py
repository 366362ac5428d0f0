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
from typing import Any, Callable, Iterable, Mapping

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
    to shard boundaries keeps consolidation a single sequential pass. Whole shards of an
    appended block are written from views of it; only the rows that do not fill a shard
    are copied into the buffer, so memory holds one shard besides what is appended.
    ``pos`` counts the rows on disk.
    """

    def __init__(self, array: Any, shard_rows: int) -> None:
        self.array, self.shard_rows = array, shard_rows
        self.pos = 0
        self.buf: list[np.ndarray] = []
        self.buffered = 0

    def _write(self, block: np.ndarray) -> None:
        self.array[self.pos : self.pos + len(block)] = block
        self.pos += len(block)

    def append(self, rows: np.ndarray) -> None:
        if self.buffered:  # complete the buffered shard first
            take = min(self.shard_rows - self.buffered, len(rows))
            self.buf.append(rows[:take])
            self.buffered += take
            rows = rows[take:]
            if self.buffered < self.shard_rows:
                return
            self._write(np.concatenate(self.buf))
            self.buf, self.buffered = [], 0
        n = (len(rows) // self.shard_rows) * self.shard_rows
        for a in range(0, n, self.shard_rows):
            self._write(rows[a : a + self.shard_rows])
        if n < len(rows):
            self.buf, self.buffered = [np.array(rows[n:])], len(rows) - n  # a copy: ``rows`` may be released

    def close(self) -> None:
        if self.buffered:
            self._write(np.concatenate(self.buf))
        self.buf, self.buffered = [], 0


def csr(keys: np.ndarray, num_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """(ptr (num_keys + 1,), members ascending within each key) for integer keys in [0, num_keys).

    A stable sort: a radix sort for 16-bit keys such as the labels, so the class index of a
    large cache costs one pass over its rows, not a comparison sort.
    """
    order = np.argsort(keys, kind="stable").astype(np.int64, copy=False)
    return counts_ptr(np.bincount(keys, minlength=num_keys)), order


def counts_ptr(counts: np.ndarray) -> np.ndarray:
    """CSR pointers (len(counts) + 1,) int64 from per-key counts."""
    ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr


def build_index(
    labels: np.ndarray, image_index: np.ndarray, num_images: int, num_classes: int
) -> dict[str, np.ndarray]:
    """The CSR index over classes 0..C (0 = background) and images.

    Rows are grouped by image in image-index order (the writer's order; ``cache verify`` checks
    it before rebuilding), so the image pointers are counts, and within a class the rows'
    images are already ascending: its images are where the image changes along its rows.
    Memory: a few int64 per row, no sort of (class, image) pairs.
    """
    bounds = np.arange(num_images + 1, dtype=image_index.dtype)  # same dtype: no int64 copy of the image index
    image_row_ptr = np.searchsorted(image_index, bounds, side="left").astype(np.int64)
    # 16-bit keys: numpy's stable argsort is then a radix sort (labels are in 0..C, checked by the callers)
    keys = labels.astype(np.int16 if num_classes < 2**15 - 1 else np.int64, copy=False)
    class_row_ptr, class_rows = csr(keys, num_classes + 1)
    imgs = image_index[class_rows]  # ascending within each class
    cls = keys[class_rows]  # ascending
    new = np.ones(len(imgs), dtype=bool)  # the row starts a (class, image) pair
    new[1:] = (imgs[1:] != imgs[:-1]) | (cls[1:] != cls[:-1])
    class_images = imgs[new].astype(np.int64)
    image_counts = np.bincount(cls[new], minlength=num_classes + 1)
    del imgs, cls, new
    return {
        "image_row_ptr": image_row_ptr,
        "class_image_ptr": counts_ptr(image_counts),
        "class_images": class_images,  # ascending within each class
        "class_row_ptr": class_row_ptr,
        "class_rows": class_rows,
    }


def index_disagreements(labels: np.ndarray, image_counts: np.ndarray, num_classes: int, stored: Mapping[str, Any],
                         block: int = 1 << 19) -> list[str]:
    """Names of the stored index arrays that differ from :func:`build_index` of these rows, found without
    rebuilding the index: memory is the labels (read whole, 16-bit for LVIS), per-class and per-image counts,
    and ``block`` entries of the stored arrays at a time (``stored``: name -> an array with ``shape``, read by
    slices).

    ``image_counts``: rows per image; labels in 0..``num_classes``. ``class_rows`` equals the stable sort of the
    rows by label exactly when the class counts agree and each class's segment holds rows of that class in
    strictly increasing order (it then holds every such row, once); its (class, image) pairs, in that order,
    are ``class_images``. The pair arrays are judged only where ``class_rows`` holds.
    """
    bad = []
    image_row_ptr = counts_ptr(image_counts)
    class_row_ptr = counts_ptr(np.bincount(labels, minlength=num_classes + 1))
    for name, want in (("image_row_ptr", image_row_ptr), ("class_row_ptr", class_row_ptr)):
        if not np.array_equal(np.asarray(stored[name][:]), want):
            bad.append(name)
    R = len(labels)
    if stored["class_rows"].shape[0] != R:
        return bad + ["class_rows"]
    pairs_per_class = np.zeros(num_classes + 1, dtype=np.int64)
    pairs, images_ok = 0, True
    prev_row, prev_cls, prev_img = -1, -1, -1
    for start in range(0, R, block):
        rows = np.asarray(stored["class_rows"][start : start + block]).astype(np.int64, copy=False)
        cls = np.searchsorted(class_row_ptr, np.arange(start, start + len(rows)), side="right") - 1
        if rows.min(initial=0) < 0 or rows.max(initial=0) >= R or np.any(labels[rows] != cls):
            return bad + ["class_rows"]
        same = cls == np.r_[prev_cls, cls[:-1]]
        if np.any(same & (rows <= np.r_[prev_row, rows[:-1]])):
            return bad + ["class_rows"]
        imgs = np.searchsorted(image_row_ptr, rows, side="right") - 1
        new = ~same | (imgs != np.r_[prev_img, imgs[:-1]])  # a (class, image) pair starts here
        n = int(new.sum())
        images_ok = images_ok and np.array_equal(np.asarray(stored["class_images"][pairs : pairs + n]), imgs[new])
        pairs += n
        pairs_per_class += np.bincount(cls[new], minlength=num_classes + 1)
        prev_row, prev_cls, prev_img = int(rows[-1]), int(cls[-1]), int(imgs[-1])
    if not np.array_equal(np.asarray(stored["class_image_ptr"][:]), counts_ptr(pairs_per_class)):
        bad.append("class_image_ptr")
    if not images_ok or stored["class_images"].shape[0] != pairs:
        bad.append("class_images")
    return bad


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
    drop_parts: bool = False,
) -> dict[str, Any]:
    """Merge the parts into the final store at ``out`` (see module doc); returns the counts written.

    ``drop_parts``: delete each part once its rows are appended (to the store, or to the writers'
    buffers in memory), so the disk holds the cache about once instead of twice while consolidating; a
    consolidation stopped half-way then cannot be resumed from the parts (the benchmarks use it;
    extraction keeps its parts).
    """
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
                # fp16 activations barely compress: plain bytes, each inner chunk followed by its crc32c, so a
                # reader checks just the chunks it touches (extract/mapped_rows.py), as zarr does
                kw["compressors"] = [zarr.codecs.Crc32cCodec()]
            # every chunk stored, even all-zero ones: a missing file is then always damage (extract/integrity.py)
            arr = root.create_array(name, shape=(R, *shape_tail), dtype=dt, fill_value=0,
                                    config={"write_empty_chunks": True}, **kw)
            writers[name] = ShardAlignedWriter(arr, kw.get("shards", kw["chunks"])[0])
        labels = np.empty(R, dtype=np.int16)
        image_index = np.empty(R, dtype=np.int32)
        pos = gt_rows = 0
        for p in paths:
            with np.load(p) as part:
                n = len(part["labels"])
                for name, w in writers.items():
                    w.append(part[name])
                labels[pos : pos + n] = part["labels"]
                image_index[pos : pos + n] = part["image_index"]
                gt_rows += int(part["is_gt"].sum())
                pos += n
                if progress:
                    progress(len(part["rows_per_image"]))
            if drop_parts:  # its rows are in the store or in the writers' buffers (in memory) now
                p.unlink()
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
            "gt_rows": gt_rows,
            "classes_with_rows": int((np.diff(index["class_row_ptr"])[1:] > 0).sum()),
        }
        del index, labels, image_index
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
