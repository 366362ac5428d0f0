"""Reading batches of rows from a feature cache (what calibration trains on); a prefetch thread.

``FeatureReader.read(rows)`` takes ascending row indices and returns ``(B, D)``
features in ``dtype`` (float32; bfloat16 for ``calibrate --amp``, whose matmuls cast
to bfloat16 anyway: the preloaded copy is then bfloat16 and a read is a bare gather).
``--preload ram`` copies the features into memory once (float16/int8 as stored) and
gathers rows from there; ``gpu`` does the same on the
device; ``none`` reads from the store every batch, through memory maps of the
cache's files (:mod:`simcal.extract.mapped_rows`: zarr itself would read every
touched 1 MiB chunk whole, 20x the bytes a bi-level batch needs); layouts those
maps do not cover go through zarr (an orthogonal selection); an h5 export must be
one contiguous dataset, as ``simcal cache export`` writes it.
``auto`` (the default) preloads to RAM when the features take at most
``AUTO_RAM_FRACTION`` of the machine's memory and 8 GiB, else reads from the store.
Labels and int8 scales (a few bytes a row) are always held in memory.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Callable, Iterator

import numpy as np
import torch

from simcal.core.errors import input_error
from simcal.core.names import PRELOAD
from simcal.extract.mapped_rows import H5RowReader, ShardRowReader, UnsupportedLayout

AUTO_RAM_FRACTION = 0.4
AUTO_RAM_MAX = 8 * 2**30


def resolve_preload(preload: str, nbytes: int) -> str:
    """``auto`` -> ``ram`` when the features fit comfortably in memory, else ``none``."""
    if preload != "auto":
        return preload
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    return "ram" if nbytes <= min(AUTO_RAM_FRACTION * total, AUTO_RAM_MAX) else "none"


class FeatureReader:
    def __init__(self, cache, preload: str = "auto", device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.cache = cache
        self.device = torch.device(device)
        self.dtype = dtype
        self.features = cache["features"]
        scale = cache["feature_scale"] if str(self.features.dtype) == "int8" else None
        nbytes = int(np.prod(self.features.shape)) * self.features.dtype.itemsize
        preload = resolve_preload(preload, nbytes)
        self.preload = preload
        self.memory: torch.Tensor | None = None
        self.store_rows = None
        target = self.device if preload == "gpu" else torch.device("cpu")
        cache.require_intact(["labels", "feature_scale"])  # held in memory (the features are checked below)
        self.scale = None if scale is None else torch.from_numpy(np.asarray(scale[:])).to(target)
        if preload in ("ram", "gpu"):
            cache.require_intact(["features"])
            self.memory = torch.from_numpy(np.asarray(self.features[:])).to(target)
            if self.scale is None and dtype == torch.bfloat16:  # fp16 -> bf16 once: what autocast does every step
                self.memory = self.memory.to(dtype)
        elif preload == "none":
            self.store_rows = self._row_reader(cache)
        else:
            raise ValueError(f"unknown preload {preload!r}; choose from {', '.join(PRELOAD)}")
        self.labels = torch.from_numpy(np.asarray(cache["labels"][:]).astype(np.int64)).to(target)
        # Store reads overlap compute in a thread where a core is free for it: with the device busy
        # on a GPU, or more than 2 cores. On 2 cores the thread competes with torch's own threads
        # for the cores and slows training down.
        self.prefetch = self.memory is None and (self.device.type == "cuda" or (os.cpu_count() or 1) > 2)

    def _row_reader(self, cache) -> ShardRowReader | H5RowReader | None:
        """The memory-mapped reader of the features; None where zarr must read them itself."""
        if hasattr(self.features, "get_orthogonal_selection"):
            try:
                return ShardRowReader(self.features, cache.file_record)  # checks each shard on first touch
            except UnsupportedLayout:
                cache.require_intact(["features"])  # zarr reads it: check every shard first
                return None  # e.g. a compressed store
        cache.require_intact(["features"])
        try:
            return H5RowReader(self.features)
        except UnsupportedLayout as e:
            raise input_error(cache.path, f"is an h5 export whose features are not one contiguous dataset ({e})",
                              "export it again with 'simcal cache export'")

    def _read_store(self, rows: np.ndarray) -> np.ndarray:
        if self.store_rows is not None:
            try:
                return self.store_rows.read(rows)
            except UnsupportedLayout:  # a shard the map cannot read (seen only once it is opened)
                self.store_rows = None
        return np.asarray(self.features.get_orthogonal_selection((rows, slice(None))))  # each chunk read once

    def will_need(self, rows: np.ndarray) -> None:
        """Start reading the store's bytes of ascending ``rows`` a later :meth:`read` takes (no-op in memory)."""
        if self.store_rows is not None:
            self.store_rows.will_need(rows)

    def read(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) features (``dtype``) and (B,) int64 labels of ascending ``rows``, on the device."""
        idx = torch.from_numpy(rows)
        if self.memory is not None:  # preloaded: one copy of the indices to where the features are, a gather there
            idx = idx.to(self.memory.device, non_blocking=True)
            x = torch.index_select(self.memory, 0, idx)
        else:
            x = torch.from_numpy(self._read_store(rows))
        labels = self.labels[idx]
        if self.scale is not None:
            x = x.float() * self.scale[idx][:, None]
        # float16 -> bfloat16 through float32: the same numbers; torch's direct cast is slow on CPU
        if x.dtype != self.dtype:
            x = x.float().to(self.dtype)
        if x.device.type == "cpu" and self.device.type == "cuda":  # pinned: the copy overlaps the device's compute
            x, labels = x.pin_memory(), labels.pin_memory()
        return x.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def prefetch(produce: Callable[[], object], depth: int = 4) -> Iterator[object]:
    """Run ``produce`` repeatedly in one background thread (so its order, and any RNG in it, is fixed)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            while not stop.is_set():
                item = produce()
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # surface the producer's error in the consumer
            q.put(e)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
