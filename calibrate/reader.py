"""Reading batches of rows from a feature cache, with a background prefetch thread.

``FeatureReader.read(rows)`` takes ascending row indices and returns ``(B, D)``
float32 features: consecutive rows are coalesced into one slice each, so a
bi-level batch (rows grouped by image) costs a handful of contiguous reads.
``--preload ram`` copies the features into memory once (float16/int8 as stored),
``gpu`` onto the device; ``none`` reads from the store every batch.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import numpy as np
import torch

PRELOAD = ("none", "ram", "gpu")


def runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Maximal [start, end) runs of consecutive values in ascending ``rows``."""
    if len(rows) == 0:
        return []
    breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    return [(int(rows[s]), int(rows[e - 1]) + 1) for s, e in zip(starts, ends)]


class FeatureReader:
    def __init__(self, cache, preload: str = "none", device: torch.device | str = "cpu") -> None:
        self.cache = cache
        self.device = torch.device(device)
        self.features = cache["features"]
        self.scale = cache["feature_scale"] if str(self.features.dtype) == "int8" else None
        self.memory: torch.Tensor | None = None
        self.memory_scale: torch.Tensor | None = None
        if preload in ("ram", "gpu"):
            target = self.device if preload == "gpu" else torch.device("cpu")
            self.memory = torch.from_numpy(np.asarray(self.features[:])).to(target)
            if self.scale is not None:
                self.memory_scale = torch.from_numpy(np.asarray(self.scale[:])).to(target)
        elif preload != "none":
            raise ValueError(f"unknown preload {preload!r}; choose from {', '.join(PRELOAD)}")
        self.labels = torch.from_numpy(np.asarray(cache["labels"][:]).astype(np.int64))

    def read(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) float32 features and (B,) int64 labels of ascending ``rows``, on the device."""
        labels = self.labels[torch.from_numpy(rows)]
        if self.memory is not None:
            idx = torch.from_numpy(rows).to(self.memory.device)
            x = self.memory[idx].float()
            if self.memory_scale is not None:
                x = x * self.memory_scale[idx][:, None]
        else:
            parts = [np.asarray(self.features[a:b]) for a, b in runs(rows)]
            x = torch.from_numpy(np.concatenate(parts)).float()
            if self.scale is not None:
                sc = np.concatenate([np.asarray(self.scale[a:b]) for a, b in runs(rows)])
                x = x * torch.from_numpy(sc)[:, None]
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
