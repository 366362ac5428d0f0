"""Reading batches of rows from a feature cache; a background prefetch thread for store reads.

``FeatureReader.read(rows)`` takes ascending row indices and returns ``(B, D)``
features in ``dtype`` (float32; bfloat16 for ``calibrate --amp``, whose matmuls cast
to bfloat16 anyway: the preloaded copy is then bfloat16 and a read is a bare gather).
``--preload ram`` copies the features into memory once (float16/int8 as stored) and
gathers rows from there; ``gpu`` does the same on the
device; ``none`` reads from the store every batch with one orthogonal selection,
so zarr reads each touched chunk once (a bi-level batch touches about two chunks
per image, since rows are grouped by image); ``auto`` (the default) preloads to
RAM when the features take at most ``AUTO_RAM_FRACTION`` of the machine's memory
and 8 GiB, else reads from the store. Measured (benchmarks/calibrate_speed.py): reads
from a zarr store are slow for these small scattered batches (about 70 MB/s), reads
from the h5py export fast (about 770 MB/s): export caches that do not fit in memory.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import numpy as np
import torch

PRELOAD = ("auto", "none", "ram", "gpu")
AUTO_RAM_FRACTION = 0.4
AUTO_RAM_MAX = 8 * 2**30


def resolve_preload(preload: str, nbytes: int) -> str:
    """``auto`` -> ``ram`` when the features fit comfortably in memory, else ``none``."""
    if preload != "auto":
        return preload
    import os

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    return "ram" if nbytes <= min(AUTO_RAM_FRACTION * total, AUTO_RAM_MAX) else "none"


def runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Maximal [start, end) runs of consecutive values in ascending ``rows``."""
    if len(rows) == 0:
        return []
    breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    return [(int(rows[s]), int(rows[e - 1]) + 1) for s, e in zip(starts, ends)]


class FeatureReader:
    def __init__(self, cache, preload: str = "auto", device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.cache = cache
        self.device = torch.device(device)
        self.dtype = dtype
        self.features = cache["features"]
        self.scale = cache["feature_scale"] if str(self.features.dtype) == "int8" else None
        nbytes = int(np.prod(self.features.shape)) * self.features.dtype.itemsize
        preload = resolve_preload(preload, nbytes)
        self.preload = preload
        self.memory: torch.Tensor | None = None
        self.memory_scale: torch.Tensor | None = None
        if preload in ("ram", "gpu"):
            target = self.device if preload == "gpu" else torch.device("cpu")
            self.memory = torch.from_numpy(np.asarray(self.features[:])).to(target)
            if self.scale is not None:
                self.memory_scale = torch.from_numpy(np.asarray(self.scale[:])).to(target)
            elif dtype == torch.bfloat16:  # float16 -> bfloat16 once: what autocast would do every step
                self.memory = self.memory.to(dtype)
        elif preload != "none":
            raise ValueError(f"unknown preload {preload!r}; choose from {', '.join(PRELOAD)}")
        self.labels = torch.from_numpy(np.asarray(cache["labels"][:]).astype(np.int64))

    @staticmethod
    def _read_store(array, rows: np.ndarray) -> np.ndarray:
        if hasattr(array, "get_orthogonal_selection"):  # zarr: one call, each chunk read once
            return np.asarray(array.get_orthogonal_selection((rows, slice(None)) if array.ndim == 2 else (rows,)))
        return np.concatenate([np.asarray(array[a:b]) for a, b in runs(rows)])  # h5py: contiguous runs

    def read(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) features (``dtype``) and (B,) int64 labels of ascending ``rows``, on the device."""
        labels = self.labels[torch.from_numpy(rows)]
        if self.memory is not None:
            idx = torch.from_numpy(rows).to(self.memory.device)
            x = torch.index_select(self.memory, 0, idx)
            if self.memory_scale is not None:
                x = x.float() * self.memory_scale[idx][:, None]
            x = x.to(self.dtype)
        else:
            x = torch.from_numpy(self._read_store(self.features, rows)).float()
            if self.scale is not None:
                x = x * torch.from_numpy(self._read_store(self.scale, rows))[:, None]
            x = x.to(self.dtype)
        return x.to(self.device, non_blocking=True), labels.to(self.device)


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
