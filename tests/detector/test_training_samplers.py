"""Training image samplers: LVIS repeat factors, stochastic rounding, sharding, resume offsets."""

import math
from collections import Counter
from itertools import islice

import pytest
import torch

from simcal.detector.samplers import TrainingSampler, repeat_factors


def test_repeat_factors_follow_the_lvis_rule():
    # 1000 images: category 1 in all of them, category 2 in 1 image, category 3 in 4 images.
    cats = [[1] for _ in range(1000)]
    cats[0] = [1, 2]
    for i in (1, 2, 3, 4):
        cats[i] = [1, 3]
    cats[5] = []
    r = repeat_factors(cats, t=0.01)
    # f_2 = 0.001 -> r_2 = sqrt(0.01 / 0.001); f_3 = 0.004 -> sqrt(2.5); f_1 = 1 -> 1
    assert r[0].item() == pytest.approx(math.sqrt(10))
    assert r[1].item() == pytest.approx(math.sqrt(2.5))
    assert r[5].item() == 1.0 and r[999].item() == 1.0


def test_repeat_factor_sampling_statistics():
    factors = torch.tensor([1.0, 2.5, 4.0, 1.0], dtype=torch.float64)
    s = TrainingSampler(4, seed=3, factors=factors)
    epochs = [s.epoch_indices(e) for e in range(2000)]
    counts = Counter(i for e in epochs for i in e.tolist())
    for i, f in enumerate(factors.tolist()):
        assert counts[i] / 2000 == pytest.approx(f, rel=0.05)  # E[floor(r) + Bernoulli(frac r)] = r
    # image 2 (r = 4.0) appears exactly 4 times every epoch; image 1 appears 2 or 3 times
    assert all(Counter(e.tolist())[2] == 4 for e in epochs[:50])
    assert {Counter(e.tolist())[1] for e in epochs[:200]} == {2, 3}


def test_uniform_epochs_are_permutations_and_seeded():
    s = TrainingSampler(10, seed=1)
    first = list(islice(iter(s), 20))
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:]) == list(range(10))
    assert first == list(islice(iter(TrainingSampler(10, seed=1)), 20))
    assert first != list(islice(iter(TrainingSampler(10, seed=2)), 20))


def test_ranks_partition_the_global_stream_and_start_resumes():
    glob = list(islice(iter(TrainingSampler(7, seed=5)), 42))
    r0 = list(islice(iter(TrainingSampler(7, seed=5, rank=0, world_size=2)), 21))
    r1 = list(islice(iter(TrainingSampler(7, seed=5, rank=1, world_size=2)), 21))
    assert r0 == glob[0::2] and r1 == glob[1::2]
    resumed = list(islice(iter(TrainingSampler(7, seed=5, rank=1, world_size=2, start=9)), 12))
    assert resumed == r1[9:21]
