"""Image samplers for detector training: uniform and LVIS repeat-factor sampling (RFS).

Both are infinite, seeded index streams for ``torch.utils.data.DataLoader``:
epoch e draws a permutation from ``torch.Generator().manual_seed(seed + e)``, the
global stream is the concatenation of the epochs, and rank r of W takes every W-th
element starting at r. ``start`` skips the first ``start`` elements of this
rank's stream, so a resumed run sees exactly the images it would have seen.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def repeat_factors(image_categories: Sequence[Sequence[int]], t: float = 0.001) -> torch.Tensor:
    """LVIS repeat factors, one per image, from each image's category ids
    (:func:`simcal.data.statistics.repeat_factors`)."""
    from simcal.data.statistics import repeat_factors as factors

    images = [i for i, cats in enumerate(image_categories) for _ in cats]
    classes = [c for cats in image_categories for c in cats]
    return torch.from_numpy(factors(np.array(images, np.int64), np.array(classes, np.int64), len(image_categories), t))


class TrainingSampler(Sampler[int]):
    """Infinite stream of image indices; uniform permutations, or RFS when ``factors`` is given.

    With RFS, each epoch repeats image i ``floor(r_i) + Bernoulli(frac(r_i))`` times
    (stochastic rounding, as detectron2's RepeatFactorTrainingSampler) before permuting.
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 factors: torch.Tensor | None = None, start: int = 0) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.factors = factors
        self.start = start

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + epoch)
        if self.factors is None:
            return torch.randperm(self.size, generator=g)
        whole = self.factors.floor()
        reps = whole + (torch.rand(self.size, generator=g, dtype=torch.float64) < self.factors - whole)
        idx = torch.repeat_interleave(torch.arange(self.size), reps.long())
        return idx[torch.randperm(len(idx), generator=g)]

    def __iter__(self) -> Iterator[int]:
        skip = self.start
        pos = 0  # position in the global stream
        epoch = 0
        while True:
            idx = self.epoch_indices(epoch)
            # this rank's elements of the epoch: global positions p with p % W == rank
            first = (self.rank - pos) % self.world_size
            mine = idx[first :: self.world_size]
            pos += len(idx)
            epoch += 1
            if skip >= len(mine):
                skip -= len(mine)
                continue
            yield from mine[skip:].tolist()
            skip = 0
