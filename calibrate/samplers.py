"""Batch samplers over a feature cache's CSR index: pure index logic with a seeded generator.

Every sampler returns the cache rows of one batch, ascending (so reading them is
a few contiguous reads), and which of them are foreground. Inputs are the
in-memory index of :class:`CacheIndex` (labels and CSR pointers, never features).

- ``bilevel`` (SimCal, paper §4.2, docs/design.md §5): (1) draw n classes uniformly **with
  replacement** among the classes that have foreground rows; (2) for each, one image
  uniformly among the images holding that class; (3) keep that image's foreground
  rows **of the drawn class only**; (4) pool the background rows of the batch's
  images and subsample them to ``bg_ratio`` x the foreground count.
- ``random``: ``batch_rows`` rows uniformly over all rows (instance-level, the
  long-tailed baseline).
- ``class_balanced``: n classes uniformly with replacement, one foreground row of
  each uniformly (instance-level class balancing), plus ``bg_ratio`` x n background
  rows uniformly over all background rows.
- ``repeat_factor``: n images drawn with probability proportional to their LVIS
  repeat factor (t = 0.001, computed from the cache's image-level class counts); all
  their foreground rows plus background rows of the same images subsampled to
  ``bg_ratio`` x the foreground count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simcal.core.names import SAMPLERS
from simcal.data.statistics import repeat_factors


def _ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ``arange(starts[k], ends[k])`` and, for each value, its ``k``: no Python loop."""
    lengths = ends - starts
    owner = np.repeat(np.arange(len(starts)), lengths)
    first = np.cumsum(lengths) - lengths  # position of each range's first value in the output
    return np.arange(int(lengths.sum()), dtype=np.int64) - first[owner] + starts[owner], owner


@dataclass
class CacheIndex:
    """What samplers need, all in memory: (R,) labels and the CSR index of a cache."""

    labels: np.ndarray  # (R,) int, 0 = background
    image_row_ptr: np.ndarray  # (I+1,)
    class_row_ptr: np.ndarray  # (C+2,)
    class_rows: np.ndarray  # (R,)
    class_image_ptr: np.ndarray  # (C+2,)
    class_images: np.ndarray

    @classmethod
    def from_cache(cls, cache) -> "CacheIndex":
        return cls(np.asarray(cache["labels"][:]).astype(np.int64), cache.index("image_row_ptr"),
                   cache.index("class_row_ptr"), cache.index("class_rows"), cache.index("class_image_ptr"),
                   cache.index("class_images"))

    @property
    def num_classes(self) -> int:
        return len(self.class_row_ptr) - 2

    @property
    def num_images(self) -> int:
        return len(self.image_row_ptr) - 1

    def classes_with_rows(self) -> np.ndarray:
        """Foreground classes (1..C) that have at least one row."""
        return np.nonzero(np.diff(self.class_row_ptr)[1:] > 0)[0] + 1

    def rows_of_class(self, c: int) -> np.ndarray:
        return self.class_rows[self.class_row_ptr[c] : self.class_row_ptr[c + 1]]

    def images_of_class(self, c: int) -> np.ndarray:
        return self.class_images[self.class_image_ptr[c] : self.class_image_ptr[c + 1]]

    def rows_of_images(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All rows of ``images``, image by image, and for each row its position in ``images``."""
        return _ranges(self.image_row_ptr[images], self.image_row_ptr[images + 1])


@dataclass
class Batch:
    rows: np.ndarray  # ascending cache rows
    drawn_classes: np.ndarray  # classes drawn at the class level (bilevel, class_balanced), else empty
    images: np.ndarray  # images the batch touched
    num_fg: int


def subsample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of at most ``k`` of ``n`` items, without replacement: all of them (no draw) when ``n <= k``.

    The background subsampling of the bi-level sampler (step 4) and of the online source.
    """
    if n <= k:
        return np.arange(n)
    return rng.choice(n, size=k, replace=False)


class Sampler:
    name = "base"

    def __init__(self, index: CacheIndex, seed: int = 0, classes_per_batch: int = 16, bg_ratio: float = 1.0,
                 batch_rows: int = 256, images_per_class: int = 1) -> None:
        self.index = index
        self.rng = np.random.default_rng(seed)
        self.n = classes_per_batch
        self.bg_ratio = bg_ratio
        self.batch_rows = batch_rows
        self.images_per_class = images_per_class
        self.present = index.classes_with_rows()
        if len(self.present) == 0:
            raise ValueError("the cache has no foreground rows for any class")

    def __iter__(self):
        while True:
            yield self.sample()

    def sample(self) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    def _with_background(self, fg: np.ndarray, images: np.ndarray, drawn: np.ndarray) -> Batch:
        """fg rows + background rows of ``images`` subsampled to bg_ratio x len(fg).

        A (class, image) pair drawn twice is read once: rows are deduplicated, and the
        background target follows the deduplicated foreground count.
        """
        fg = np.unique(fg)
        rows, _ = self.index.rows_of_images(np.unique(images))
        bg = rows[self.index.labels[rows] == 0]
        bg = bg[subsample(len(bg), int(round(self.bg_ratio * len(fg))), self.rng)]
        rows = np.unique(np.concatenate([fg, bg]).astype(np.int64))
        return Batch(rows, drawn, np.unique(images), int(len(fg)))


class BilevelSampler(Sampler):
    name = "bilevel"

    def sample(self) -> Batch:
        idx = self.index
        classes = self.present[self.rng.integers(0, len(self.present), size=self.n)]  # (1) with replacement
        # (2) images_per_class images of each drawn class, uniformly among those holding it (one draw
        # with an array of bounds: the same numbers as one draw per class, in order)
        cls = np.repeat(classes, self.images_per_class)
        first, count = idx.class_image_ptr[cls], idx.class_image_ptr[cls + 1] - idx.class_image_ptr[cls]
        images = idx.class_images[first + self.rng.integers(0, count)]
        rows, k = idx.rows_of_images(images)
        fg = rows[idx.labels[rows] == cls[k]]  # (3) only the drawn class's rows of its image
        return self._with_background(fg, images, classes)  # (4)


class RandomSampler(Sampler):
    name = "random"

    def sample(self) -> Batch:
        R = len(self.index.labels)
        rows = np.sort(self.rng.choice(R, size=min(self.batch_rows, R), replace=False))
        img = np.searchsorted(self.index.image_row_ptr, rows, side="right") - 1
        return Batch(rows, np.zeros(0, dtype=np.int64), np.unique(img), int((self.index.labels[rows] > 0).sum()))


class ClassBalancedSampler(Sampler):
    name = "class_balanced"

    def sample(self) -> Batch:
        idx = self.index
        classes = self.present[self.rng.integers(0, len(self.present), size=self.n)]
        fg = np.array([idx.rows_of_class(int(c))[self.rng.integers(0, len(idx.rows_of_class(int(c))))]
                       for c in classes])
        bg_all = idx.rows_of_class(0)
        n_bg = int(round(self.bg_ratio * self.n))
        bg = bg_all[self.rng.integers(0, len(bg_all), size=n_bg)] if len(bg_all) else bg_all
        rows = np.unique(np.concatenate([fg, bg]).astype(np.int64))
        img = np.searchsorted(idx.image_row_ptr, rows, side="right") - 1
        return Batch(rows, classes, np.unique(img), int(len(np.unique(fg))))


class RepeatFactorSampler(Sampler):
    name = "repeat_factor"

    def __init__(self, index: CacheIndex, t: float = 0.001, **kw) -> None:
        super().__init__(index, **kw)
        images, owner = _ranges(index.class_image_ptr[self.present], index.class_image_ptr[self.present + 1])
        r_img = repeat_factors(index.class_images[images], self.present[owner], index.num_images, t)
        self.prob = r_img / r_img.sum()

    def sample(self) -> Batch:
        images = self.rng.choice(self.index.num_images, size=self.n, replace=True, p=self.prob)
        rows, _ = self.index.rows_of_images(images)
        return self._with_background(rows[self.index.labels[rows] > 0], images, np.zeros(0, dtype=np.int64))


def build_sampler(name: str, index: CacheIndex, **kw) -> Sampler:
    kinds = {
        "bilevel": BilevelSampler,
        "random": RandomSampler,
        "class_balanced": ClassBalancedSampler,
        "repeat_factor": RepeatFactorSampler,
    }
    if name not in kinds:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return kinds[name](index, **kw)
