"""Reading a batch's feature rows through memory maps of the cache's files.

- :class:`ShardRowReader`: the zarr store's sharded ``features`` (below).
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

The features' inner chunks are plain bytes followed by their crc32c (the ``bytes`` then
``crc32c`` codecs inside ``sharding_indexed``, extract/store.py), so every row is a fixed
byte range of its shard file. By the zarr v3 sharding spec a shard ends with its index:
one little-endian ``(offset, nbytes)`` uint64 pair per inner chunk, ``2**64 - 1`` for an
empty chunk, then the crc32c of those bytes. A row's bytes start at ``offset(chunk) + row
in chunk x row bytes``. :class:`ShardRowReader` maps each shard file read-only (the
nanoGPT way: the data file *is* the array) and takes a batch's rows of each chunk with one
numpy gather, so the page cache serves just the pages those rows live on.

**Integrity.** The index is checked against its crc32c when a shard is first mapped, and an
inner chunk against its own crc32c the first time a read touches it (zarr checks the same
when it reads a chunk), so no damaged row is ever returned and a batch reads its chunks,
not its shards, whole: on a cache larger than memory the first pass over the data costs
about the chunks a step touches, not every shard it touches.

It accepts only a local store, the ``bytes`` + ``crc32c`` codecs inside ``sharding_indexed``,
and the index at the end with crc32c.
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

EMPTY = np.uint64(2**64 - 1)
#: Shard files kept mapped at once (a large cache has thousands of shards).
MAX_OPEN_FILES = 64
CRC_BYTES = 4


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


def _little_endian(codec: dict[str, Any]) -> bool:
    return codec.get("configuration", {}).get("endian", "little") == "little"


class ShardRowReader:
    """Reads rows of a 2-D sharded zarr array (inner chunks: bytes + crc32c) straight from its shard files.

    ``read(rows)`` -> ``(len(rows), D)`` array in the stored dtype, for ascending ``rows``;
    equal to ``array.get_orthogonal_selection((rows, slice(None)))``. ``will_need(rows)`` asks the
    disk for a later read's bytes now.
    """

    def __init__(self, array: Any, expected: Callable[[str], tuple[int, int] | None] | None = None) -> None:
        """``expected(relpath)``: a shard file's recorded (size, crc32c) (``Cache.file_record``): a recorded
        shard that is missing, or of another size, is an error when it is first mapped."""
        codecs = _codec_dicts(array)
        if array.ndim != 2 or len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            raise UnsupportedLayout("not a 2-D array with the sharding codec alone")
        conf = codecs[0]["configuration"]
        inner = conf["codecs"]
        dtype = np.dtype(array.dtype)
        if [c["name"] for c in inner] != ["bytes", "crc32c"]:
            raise UnsupportedLayout("inner chunks are not plain bytes with a crc32c (compressed, or unchecked)")
        if dtype.itemsize > 1 and not _little_endian(inner[0]):
            raise UnsupportedLayout("inner chunks are big-endian")
        index_codecs = conf.get("index_codecs", [])
        if (conf.get("index_location", "end") != "end" or [c["name"] for c in index_codecs] != ["bytes", "crc32c"]
                or not _little_endian(index_codecs[0])):
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
        self.chunk_bytes = self.chunk_rows * self.row_bytes  # the rows; the chunk's crc32c follows them
        self.shard_rows = int(array.shards[0])
        self.chunks_per_shard = self.shard_rows // self.chunk_rows
        self.fill = np.asarray(array.fill_value if array.fill_value is not None else 0, dtype=dtype)
        self._open: OrderedDict[int, tuple[np.ndarray, mmap.mmap] | None] = OrderedDict()
        # chunks (numbered over the array) whose crc32c held: checked once per reader, however often mapped
        self._verified: set[int] = set()
        self._lock = threading.Lock()  # a sweep's next prefetch thread may start before the last one ends

    # -- shard files, their indexes, their mappings
    def _path(self, shard: int) -> Path:
        return self.dir / self.array.metadata.encode_chunk_key((shard, 0))

    def _shard(self, shard: int) -> tuple[np.ndarray, mmap.mmap] | None:
        """(chunks_per_shard,) byte offset of each inner chunk in the file (-1: empty) and the file's map;
        None when the shard has no file (never written: all fill value)."""
        with self._lock:
            if shard in self._open:
                self._open.move_to_end(shard)
                return self._open[shard]
            entry = self._map(shard)
            self._open[shard] = entry
            if len(self._open) > MAX_OPEN_FILES:
                self._open.popitem(last=False)  # unmapped once no batch holds a view of it
            return entry

    def _map(self, shard: int) -> tuple[np.ndarray, mmap.mmap] | None:
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
        with f:
            size = os.fstat(f.fileno()).st_size
            if record is not None and size != record[0]:
                raise input_error(path, f"has {size} bytes, {record[0]} were written at extraction (damaged)",
                                  "extract the cache again")
            n = self.chunks_per_shard * 16
            data_end = size - n - 4  # the index (and its checksum) follows the chunks
            raw = os.pread(f.fileno(), n + 4, max(data_end, 0))
            if len(raw) != n + 4 or google_crc32c.value(raw[:n]) != int(np.frombuffer(raw[n:], "<u4")[0]):
                raise input_error(path, "the shard index is truncated or corrupt (crc32c mismatch)",
                                  "extract the cache again")
            pairs = np.frombuffer(raw[:n], "<u8").reshape(-1, 2)
            empty = (pairs[:, 0] == EMPTY) & (pairs[:, 1] == EMPTY)
            full = pairs[~empty].astype(np.int64)
            if np.any(full[:, 1] != self.chunk_bytes + CRC_BYTES) or np.any(full.sum(1) > data_end):
                raise UnsupportedLayout(f"{path}: an inner chunk is not {self.chunk_rows} plain rows and a crc32c")
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # stays valid after the file closes
        return np.where(empty, -1, pairs[:, 0].astype(np.int64)), mapped

    def _chunks(self, rows: np.ndarray) -> list[tuple[int, int, int, int, mmap.mmap | None]]:
        """``rows`` cut by inner chunk: (first, end) positions in ``rows``, the chunk's number, its byte offset
        in its shard file (-1: not stored, all fill value) and the file's map."""
        chunk = rows // self.chunk_rows
        cuts = np.flatnonzero(np.diff(chunk)) + 1
        out = []
        for a, b in zip(np.concatenate([[0], cuts]).tolist(), np.concatenate([cuts, [len(rows)]]).tolist()):
            c = int(chunk[a])
            entry = self._shard(c // self.chunks_per_shard)
            if entry is None:
                out.append((a, b, c, -1, None))
            else:
                offsets, mm = entry
                out.append((a, b, c, int(offsets[c % self.chunks_per_shard]), mm))
        return out

    # -- reads
    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = _check_rows(rows, self.array.shape[0])
        out = np.empty((len(rows), self.dim), dtype=self.dtype)
        if len(rows) == 0:
            return out
        groups = self._chunks(rows)
        self._will_need(rows, groups)  # every read is in flight before the first gather or check waits
        for a, b, c, offset, mm in groups:
            if offset < 0:
                out[a:b] = self.fill
                continue
            if c not in self._verified:
                self._verify(c, offset, mm)
            chunk = np.frombuffer(mm, self.dtype, count=self.chunk_rows * self.dim, offset=offset)
            np.take(chunk.reshape(self.chunk_rows, self.dim), rows[a:b] - c * self.chunk_rows, axis=0, out=out[a:b])
        return out

    def will_need(self, rows: np.ndarray) -> None:
        """Ask the kernel to start reading what ``read(rows)`` will need; returns at once."""
        rows = _check_rows(rows, self.array.shape[0])
        if len(rows):
            self._will_need(rows, self._chunks(rows))

    def _verify(self, c: int, offset: int, mm: mmap.mmap) -> None:
        import google_crc32c

        stored = int(np.frombuffer(mm, "<u4", count=1, offset=offset + self.chunk_bytes)[0])
        if google_crc32c.value(mm[offset : offset + self.chunk_bytes]) != stored:
            first = c * self.chunk_rows
            raise input_error(self._path(c // self.chunks_per_shard),
                              f"inner chunk {c % self.chunks_per_shard} (rows {first}..{first + self.chunk_rows - 1}) "
                              "does not match its crc32c (damaged)",
                              "run 'simcal cache verify' for every problem, and extract the cache again")
        self._verified.add(c)

    def _will_need(self, rows: np.ndarray, groups: list) -> None:
        """``MADV_WILLNEED`` on the bytes a read needs: a chunk not yet checked whole, else one request per
        run of consecutive rows. From a cold page cache the reads then go to the disk together instead of
        one page fault at a time."""
        page = mmap.PAGESIZE
        for a, b, c, offset, mm in groups:
            if offset < 0 or not hasattr(mm, "madvise"):
                continue
            if c not in self._verified:
                spans = [(offset, offset + self.chunk_bytes + CRC_BYTES)]
            else:
                local = rows[a:b] - c * self.chunk_rows
                starts = np.flatnonzero(np.diff(local, prepend=-2) != 1)
                ends = np.append(starts[1:], len(local)) - 1
                spans = zip((offset + local[starts] * self.row_bytes).tolist(),
                            (offset + (local[ends] + 1) * self.row_bytes).tolist())
            for lo, hi in spans:
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

    def will_need(self, rows: np.ndarray) -> None:
        """No read-ahead request: the page faults of :meth:`read` fetch the rows (ShardRowReader's interface)."""

    def read(self, rows: np.ndarray) -> np.ndarray:
        return np.take(self.rows, _check_rows(rows, len(self.rows)), axis=0)
