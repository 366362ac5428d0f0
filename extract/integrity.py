"""Digests of a cache's files: recorded at consolidation, checked wherever the cache is read.

zarr checks only a shard's index (its crc32c), never the data, and reads a missing chunk
as its fill value: a deleted features shard would train on zeros, silently. So the writer
records ``attrs["integrity"] = {"algorithm": "crc32c", "files": {relpath: [size, crc]}}``
for every file of the store but the root ``zarr.json`` (which holds the attributes and is
written last), with every chunk stored (``write_empty_chunks``), so a missing file is
always damage. Readers then check at three depths:

- **open** (:meth:`~simcal.extract.schema.Cache` with a complete cache): every recorded
  file exists with its recorded size (one ``stat`` each);
- **touch**: calibration checks the crc32c of the small arrays it loads and of each
  features chunk the first time it reads from it (each inner chunk carries its crc32c:
  ``ShardRowReader``), or of all shards before a preload;
- **verify** (``simcal cache verify``): every file's crc32c, then the values.

An h5 export is one file: its record is a crc32c of each dataset's bytes (``arrays``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

ALGORITHM = "crc32c"
_BLOCK = 16 * 2**20


def crc_bytes(data: bytes, crc: int = 0) -> int:
    import google_crc32c  # zarr's own crc32c (hardware-accelerated)

    return google_crc32c.extend(crc, data)


def file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            crc = crc_bytes(block, crc)
    return crc


def array_crc(array: Any, block_rows: int = 65536) -> int:
    """crc32c of an array's C-order bytes, read in row blocks (an h5 dataset or anything sliceable)."""
    crc = 0
    for start in range(0, array.shape[0], block_rows):
        crc = crc_bytes(np.ascontiguousarray(np.asarray(array[start : start + block_rows])).tobytes(), crc)
    return crc


def store_files(root: Path) -> list[str]:
    """Relative posix paths of the store's files, but the root group's ``zarr.json`` (the attributes)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
                  and p.relative_to(root).as_posix() != "zarr.json")


def record_store(root: Path) -> dict[str, Any]:
    """The integrity record of a finished store (computed before its attributes are written)."""
    return {"algorithm": ALGORITHM, "files": {rel: [os.path.getsize(root / rel), file_crc(root / rel)]
                                              for rel in store_files(root)}}


def missing_or_resized(root: Path, files: dict[str, list[int]]) -> list[str]:
    """Problems a ``stat`` finds: recorded files that are missing or of another size."""
    problems = []
    for rel, (size, _) in files.items():
        try:
            actual = os.path.getsize(root / rel)
        except OSError:
            problems.append(f"file {rel} is missing")
            continue
        if actual != size:
            problems.append(f"file {rel} has {actual} bytes, {size} were written")
    return problems


def under(rel: str, names: Iterable[str] | None) -> bool:
    """Whether the file or dataset ``rel`` belongs to one of the top-level arrays or groups ``names``."""
    return names is None or rel.split("/")[0] in set(names)


def corrupted(root: Path, files: dict[str, list[int]], names: Iterable[str] | None = None) -> list[str]:
    """Problems a crc32c pass finds over the recorded files (of the arrays/groups ``names``, or all)."""
    problems = []
    for rel, (size, crc) in files.items():
        if not under(rel, names):
            continue
        path = root / rel
        if not path.is_file() or path.stat().st_size != size:
            problems.append(f"file {rel} is missing or resized")
        elif file_crc(path) != crc:
            problems.append(f"file {rel} does not match its crc32c (its bytes changed after extraction)")
    return problems
