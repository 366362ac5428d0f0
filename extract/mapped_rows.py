"""Reading a batch's feature rows through memory maps of the cache's files.

- :class:`ShardRowReader`: the zarr store's uncompressed sharded ``features`` (below).
- :class:`H5RowReader`: an h5 export whose ``features`` is one contiguous, unfiltered
  dataset (what ``simcal cache export`` writes), mapped with ``np.memmap`` at the
  dataset's file offset, the usual h5py idiom.

Both return what the library would, byte for byte (tested), and refuse layouts they do
not understand with :class:`UnsupportedLayout`, so the caller reads through the library.

**The zarr store.**

zarr reads and decodes whole inner chunks (partial chunk reads are zarr-specs
issue #59), and docs/design.md §4 fixes chunks at >= 1 MiB. A bi-level batch
wants about 200 rows from 16 images, which touch about 20 chunks: zarr would read
about 20x the useful bytes.

The features are written uncompressed (only the ``bytes`` codec inside
``sharding_indexed``, extract/store.py), so every row is a fixed byte range of its shard
file. By the zarr v3 sharding spec a shard ends with its index: one little-endian
``(offset, nbytes)`` uint64 pair per inner chunk, ``2**64 - 1`` for an empty chunk,
then the crc32c of those bytes. A row's bytes start at ``offset(chunk) + row in
chunk x row bytes``. :class:`ShardRowReader` maps each shard file read-only (the
nanoGPT way: the data file *is* the array) and takes a batch's rows of a shard with
one numpy gather, so the page cache serves just the pages those rows live on. The
index is checked against its crc32c when a shard is first mapped.

It accepts only a local store, the ``bytes`` codec inside ``sharding_indexed``, the
index at the end with crc32c, and inner chunks at row-aligned offsets.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from simcal.core.errors import input_error
from simcal.extract.integrity import file_crc

EMPTY = np.uint64(2**64 - 1)
#: Shard files kept mapped at once (a large cache has thousands of shards).
MAX_OPEN_FILES = 64


class UnsupportedLayout(ValueError):
    """The array's layout is not one these readers map; read it through its library."""


def _check_rows(rows: np.ndarray, n: int) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and (rows[0] < 0 or rows[-1] >= n or np.any(np.diff(rows) <= 0)):
        raise IndexError("rows must be ascending, unique and inside the array")
    return rows


def _codec_dicts(array: Any) -> list[dict[str, Any]]:
    meta = array.metadata.to_dict()
    if meta.get("zarr_format") != 3:
        raise UnsupportedLayout("not a zarr v3 array")
    return meta.get("codecs", [])


class ShardRowReader:
    """Reads rows of a 2-D uncompressed sharded zarr array straight from its shard files.

    ``read(rows)`` -> ``(len(rows), D)`` array in the stored dtype, for ascending ``rows``;
    equal to ``array.get_orthogonal_selection((rows, slice(None)))``.
    """

    def __init__(self, array: Any, expected: Callable[[str], tuple[int, int] | None] | None = None) -> None:
        """``expected(relpath)``: a shard file's recorded (size, crc32c) (``Cache.file_record``); each shard is
        checked against it the first time it is mapped, and a recorded shard that is missing is an error."""
        codecs = _codec_dicts(array)
        if array.ndim != 2 or len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            raise UnsupportedLayout("not a 2-D array with the sharding codec alone")
        conf = codecs[0]["configuration"]
        inner = conf["codecs"]
        dtype = np.dtype(array.dtype)
        if len(inner) != 1 or inner[0]["name"] != "bytes":
            raise UnsupportedLayout("inner chunks are compressed or transformed")
        if dtype.itemsize > 1 and inner[0].get("configuration", {}).get("endian", "little") != "little":
            raise UnsupportedLayout("inner chunks are big-endian")
        index_codecs = conf.get("index_codecs", [])
        if (conf.get("index_location", "end") != "end" or [c["name"] for c in index_codecs] != ["bytes", "crc32c"]
                or index_codecs[0].get("configuration", {}).get("endian", "little") != "little"):
            raise UnsupportedLayout("the shard index is not a little-endian index at the end with crc32c")
        if list(conf["chunk_shape"])[1:] != [array.shape[1]] or list(array.shards)[1:] != [array.shape[1]]:
            raise UnsupportedLayout("chunks do not hold whole rows")
        store = array.store_path.store
        root = getattr(store, "root", None)
        if root is None:
            raise UnsupportedLayout("not a local store")
        self.array = array
        self.expected = expected
        self.dir = Path(root) / array.store_path.path
        self.dtype = dtype.newbyteorder("<")
        self.dim = int(array.shape[1])
        self.row_bytes = self.dim * dtype.itemsize
        self.chunk_rows = int(conf["chunk_shape"][0])
        self.shard_rows = int(array.shards[0])
        self.chunks_per_shard = self.shard_rows // self.chunk_rows
        self.fill = np.asarray(array.fill_value if array.fill_value is not None else 0, dtype=dtype)
        self._open: OrderedDict[int, tuple[np.ndarray, np.ndarray] | None] = OrderedDict()
        # shards whose size and crc32c held: checked once per reader, not again each time the LRU maps them anew
        self._checked: set[int] = set()
        self._lock = threading.Lock()  # a sweep's next prefetch thread may start before the last one ends

    # -- shard files, their indexes, their mappings
    def _path(self, shard: int) -> Path:
        return self.dir / self.array.metadata.encode_chunk_key((shard, 0))

    def _shard(self, shard: int) -> tuple[np.ndarray, np.ndarray, mmap.mmap] | None:
        """(chunks_per_shard,) first file row of each inner chunk (-1: empty), the file mapped as (rows, D),
        and its map; None when the shard has no file (never written: all fill value)."""
        with self._lock:
            if shard in self._open:
                self._open.move_to_end(shard)
                return self._open[shard]
            entry = self._map(shard)
            self._open[shard] = entry
            if len(self._open) > MAX_OPEN_FILES:
                self._open.popitem(last=False)  # unmapped once no batch holds a view of it
            return entry

    def _map(self, shard: int) -> tuple[np.ndarray, np.ndarray, mmap.mmap] | None:
        import google_crc32c  # zarr's own crc32c implementation

        path = self._path(shard)
        key = f"{self.array.store_path.path}/{self.array.metadata.encode_chunk_key((shard, 0))}"
        record = self.expected(key) if self.expected else None
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            if record is not None:
                raise input_error(path, "is missing from the cache (a features shard written at extraction)",
                                  "extract the cache again")
            return None
        if record is not None and shard not in self._checked:
            if os.fstat(f.fileno()).st_size != record[0] or file_crc(path) != record[1]:
                f.close()
                raise input_error(path, "does not match the size and crc32c recorded at extraction (damaged)",
                                  "extract the cache again")
            self._checked.add(shard)
        with f:
            size = os.fstat(f.fileno()).st_size
            n = self.chunks_per_shard * 16
            data_end = size - n - 4  # the index (and its checksum) follows the chunks
            raw = os.pread(f.fileno(), n + 4, max(data_end, 0))
            if len(raw) != n + 4 or google_crc32c.value(raw[:n]) != int(np.frombuffer(raw[n:], "<u4")[0]):
                raise input_error(path, "the shard index is truncated or corrupt (crc32c mismatch)",
                                  "extract the cache again")
            pairs = np.frombuffer(raw[:n], "<u8").reshape(-1, 2)
            empty = (pairs[:, 0] == EMPTY) & (pairs[:, 1] == EMPTY)
            full = pairs[~empty].astype(np.int64)
            if (np.any(full[:, 1] != self.chunk_rows * self.row_bytes) or np.any(full[:, 0] % self.row_bytes)
                    or np.any(full.sum(1) > data_end)):
                raise UnsupportedLayout(f"{path}: an inner chunk is not {self.chunk_rows} plain, row-aligned rows")
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # stays valid after the file closes
        rows = np.frombuffer(mapped, dtype=self.dtype, count=(data_end // self.row_bytes) * self.dim)
        first = np.where(empty, -1, pairs[:, 0].astype(np.int64) // self.row_bytes)
        return first, rows.reshape(-1, self.dim), mapped

    # -- reads
    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = _check_rows(rows, self.array.shape[0])
        out = np.empty((len(rows), self.dim), dtype=self.dtype)
        if len(rows) == 0:
            return out
        shard = rows // self.shard_rows
        local = rows - shard * self.shard_rows
        cuts = np.flatnonzero(np.diff(shard)) + 1
        groups = []
        for a, b in zip(np.concatenate([[0], cuts]).tolist(), np.concatenate([cuts, [len(rows)]]).tolist()):
            entry = self._shard(int(shard[a]))
            if entry is None:
                out[a:b] = self.fill
                continue
            chunk_first, mapped, mm = entry
            first = chunk_first[local[a:b] // self.chunk_rows]
            file_rows = first + local[a:b] % self.chunk_rows
            self._will_need(mm, file_rows[first >= 0])
            groups.append((a, b, first, file_rows, mapped))
        for a, b, first, file_rows, mapped in groups:  # every read is in flight before the first gather waits
            if np.all(first >= 0):
                np.take(mapped, file_rows, axis=0, out=out[a:b])  # one gather from the page cache
            else:
                ok = first >= 0
                out[a:b][~ok] = self.fill
                out[a:b][ok] = mapped[file_rows[ok]]
        return out

    def _will_need(self, mm: mmap.mmap, file_rows: np.ndarray) -> None:
        """Ask the kernel to read the pages of ``file_rows`` now (``MADV_WILLNEED``), one request per run of
        consecutive rows: from a cold page cache the reads of a batch then go to the disk together instead
        of one page fault at a time."""
        if len(file_rows) == 0 or not hasattr(mm, "madvise"):
            return
        starts = np.flatnonzero(np.diff(file_rows, prepend=-2) != 1)
        ends = np.append(starts[1:], len(file_rows)) - 1
        page = mmap.PAGESIZE
        lows, highs = file_rows[starts] * self.row_bytes, (file_rows[ends] + 1) * self.row_bytes
        for lo, hi in zip(lows.tolist(), highs.tolist()):
            lo -= lo % page
            mm.madvise(mmap.MADV_WILLNEED, lo, hi - lo)


class H5RowReader:
    """Rows of a contiguous, unfiltered 2-D h5py dataset, through ``np.memmap``.

    ``read(rows)`` -> ``(len(rows), D)``, equal to ``dataset[rows]``. Chunked or filtered
    datasets raise :class:`UnsupportedLayout`.
    """

    def __init__(self, dataset: Any) -> None:
        import h5py

        if not isinstance(dataset, h5py.Dataset) or dataset.ndim != 2 or dataset.chunks is not None \
                or dataset.compression is not None:
            raise UnsupportedLayout("not a contiguous, unfiltered 2-D h5py dataset")
        offset = dataset.id.get_offset()
        if offset is None:  # storage never allocated (nothing written), or external
            raise UnsupportedLayout("the dataset has no storage in its file")
        try:
            self.rows = np.memmap(dataset.file.filename, dtype=dataset.dtype, mode="r", offset=offset,
                                  shape=dataset.shape)
        except (ValueError, OSError) as e:  # e.g. a truncated file: h5py reports it better
            raise UnsupportedLayout(f"cannot map the dataset ({e})")

    def read(self, rows: np.ndarray) -> np.ndarray:
        return np.take(self.rows, _check_rows(rows, len(self.rows)), axis=0)
