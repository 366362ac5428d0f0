"""torch.distributed set-up under ``torchrun``: gloo on CPU, nccl on GPU."""

from __future__ import annotations

import datetime
import os

import torch


def init_distributed(timeout_minutes: int = 120) -> tuple[int, int, int]:
    """(rank, world_size, local_rank); initialises the process group when launched by torchrun.

    ``SIMCAL_DIST_BACKEND=gloo`` forces gloo (tests, or CPU ranks on a GPU node).
    The long timeout covers rank 0 finishing work alone (e.g. consolidating a cache).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        use_nccl = torch.cuda.is_available() and os.environ.get("SIMCAL_DIST_BACKEND") != "gloo"
        torch.distributed.init_process_group("nccl" if use_nccl else "gloo",
                                             timeout=datetime.timedelta(minutes=timeout_minutes))
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world, int(os.environ.get("LOCAL_RANK", "0"))


def finish_distributed() -> None:
    """Wait for every rank, then tear the process group down (no-op without torchrun)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
