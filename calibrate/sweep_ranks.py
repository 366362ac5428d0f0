"""A calibration sweep across torchrun ranks: whole groups per rank, each head written once.

``torchrun --nproc_per_node N [--nnodes M] -m simcal calibrate --sweep GRID.json ...`` starts N x M
processes that open the same cache. Every rank computes the same list of units (the groups of heads
that share a batch stream, or single heads with ``--sequential``); :func:`split` hands each unit to one
rank, so a head is trained and written by exactly one process, with the batches and initialisation one
process would give it. Rank 0 then reads every head's manifest and writes the results table. With
several nodes, ``--out`` must be a folder every node sees (the heads and manifests meet there).
"""

from __future__ import annotations

from typing import Optional, Sequence


def split(costs: Sequence[float], world: int) -> list[list[int]]:
    """Unit positions per rank: the costliest unit first, each to the least-loaded rank (ties: lowest rank).

    Every rank computes the same split from the same costs (a head's cost: its steps).
    """
    load = [0.0] * world
    out: list[list[int]] = [[] for _ in range(world)]
    for n in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        r = min(range(world), key=lambda k: (load[k], k))
        out[r].append(n)
        load[r] += costs[n]
    return [sorted(units) for units in out]


def first_error(error: Optional[Exception], world: int) -> Optional[Exception]:
    """Every rank's error (None when it finished), gathered: the first one, on every rank (a barrier too)."""
    if world == 1:
        return error
    import torch.distributed as dist

    errors: list = [None] * world
    dist.all_gather_object(errors, error)
    return next((e for e in errors if e is not None), None)
