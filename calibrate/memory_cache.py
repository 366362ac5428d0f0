"""A synthetic feature cache in memory: what calibration reads of a cache, for tests and benchmarks.

:class:`MemoryCache` has the parts of :class:`~simcal.extract.schema.Cache` the trainers use (``dim``,
``attrs["categories"]``, ``detector_head()``), :class:`MemoryReader` the part of
:class:`~simcal.extract.reader.FeatureReader` they use (``read(rows)``, ``prefetch``), and
:func:`memory_index` builds the samplers' :class:`~simcal.calibrate.samplers.CacheIndex`. Any trainer
runs on them as on a cache preloaded to RAM, at any tap size, without a detector or a store.

Rows are grouped by image, as in a cache: each image holds one or two classes (drawn from a long
tail, class c with weight 1 / c^1.5), 1..``fg_per_class`` foreground rows of each, then
``bg_per_image`` background rows. Class c's features scatter around its own mean, so heads learn.
Shapes: R rows, I images, D feature width, h hidden width, C classes (labels 0..C, 0 = background).
"""

from __future__ import annotations

import numpy as np
import torch

from simcal.calibrate.samplers import CacheIndex


class MemoryCache:
    bins = "lvis"  # the instance-count bins per-bin accuracies use

    def __init__(self, seed: int = 0, images: int = 48, classes: int = 6, dim: int = 40, hidden: int = 24,
                 fg_per_class: int = 3, bg_per_image: int = 4) -> None:
        g = np.random.default_rng(seed)
        tail = 1.0 / np.arange(1, classes + 1) ** 1.5
        labels, ptr = [], [0]
        for i in range(images):
            owned = g.choice(np.arange(1, classes + 1), size=min(1 + i % 2, classes), replace=False,
                             p=tail / tail.sum())
            labels += [int(c) for c in owned for _ in range(1 + g.integers(0, fg_per_class))] + [0] * bg_per_image
            ptr.append(len(labels))
        self.labels = np.array(labels, dtype=np.int64)  # (R,)
        self.image_row_ptr = np.array(ptr, dtype=np.int64)  # (I+1,)
        means = g.normal(0.0, 1.0, size=(classes + 1, dim)).astype(np.float32)
        noise = g.standard_normal(size=(len(labels), dim), dtype=np.float32)
        self.features = (means[self.labels] + 0.5 * noise) / np.float32(np.sqrt(dim))  # (R, D), rows of norm ~1
        self.dim = dim
        counts = np.bincount(self.labels, minlength=classes + 1)[1:]
        self.attrs = {"categories": [{"id": c + 1, "name": f"c{c + 1}", "instance_count": int(n)}
                                     for c, n in enumerate(counts)]}
        w = lambda *shape: g.normal(0.0, 0.1, size=shape).astype(np.float32)  # noqa: E731
        self._head = {"fc6.weight": w(hidden, dim), "fc6.bias": w(hidden), "fc7.weight": w(hidden, hidden),
                      "fc7.bias": w(hidden), "cls_score.weight": w(classes + 1, hidden),
                      "cls_score.bias": w(classes + 1)}

    @property
    def num_rows(self) -> int:
        return len(self.labels)

    def detector_head(self) -> dict[str, np.ndarray]:
        """The 'detector's' box head: fc6, fc7 and cls_score weights (random), as a cache stores them."""
        return self._head


class MemoryReader:
    """``read(rows) -> ((B, D) float32 features, (B,) int64 labels)``, as FeatureReader with ``--preload ram``."""

    prefetch = False

    def __init__(self, cache: MemoryCache, device: torch.device | str = "cpu") -> None:
        self.memory = torch.from_numpy(cache.features).to(device)
        self.labels = torch.from_numpy(cache.labels)
        self.device = torch.device(device)

    def will_need(self, rows: np.ndarray) -> None:
        """In memory already: nothing to ask the disk for (FeatureReader's interface)."""

    def read(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(rows)
        return self.memory[idx.to(self.device)], self.labels[idx].to(self.device)


def memory_index(cache: MemoryCache) -> CacheIndex:
    """The CSR index the samplers read, built from the rows' labels and images as a cache's writer builds it."""
    from simcal.extract.store import build_index

    labels, ptr = cache.labels, cache.image_row_ptr
    image_of_row = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    index = build_index(labels, image_of_row, len(ptr) - 1, len(cache.attrs["categories"]))
    return CacheIndex(labels, index["image_row_ptr"], index["class_row_ptr"], index["class_rows"],
                      index["class_image_ptr"], index["class_images"])
