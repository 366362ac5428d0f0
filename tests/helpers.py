"""Plain helpers shared by the test files (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent


def tiny_lvis() -> dict:
    """A small valid LVIS-v0.5-style file: 3 images, 3 categories (ids not contiguous)."""
    rle_img1 = {"size": [20, 30], "counts": [0, 600]}  # a full 20x30 mask, uncompressed RLE
    return {
        "info": {"description": "tiny"},
        "images": [
            {"id": 1, "file_name": "a.png", "height": 20, "width": 30, "neg_category_ids": [7],
             "not_exhaustive_category_ids": []},
            {"id": 2, "file_name": "sub/b.png", "height": 20, "width": 30, "neg_category_ids": [],
             "not_exhaustive_category_ids": [3]},
            {"id": 5, "file_name": "c.png", "height": 20, "width": 30},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [1, 2, 5, 4],
             "segmentation": [[1, 2, 6, 2, 6, 6, 1, 6]], "area": 20, "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [10, 2, 5, 4],
             "segmentation": [[10, 2, 15, 2, 15, 6, 10, 6]], "area": 20, "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 3, "bbox": [0, 0, 30, 20],
             "segmentation": rle_img1, "area": 600, "iscrowd": 0},
            {"id": 13, "image_id": 2, "category_id": 9, "bbox": [3, 3, 4, 4],
             "segmentation": [[3, 3, 7, 3, 7, 7, 3, 7]], "area": 16, "iscrowd": 0},
            {"id": 14, "image_id": 5, "category_id": 9, "bbox": [0, 0, 30, 20],
             "segmentation": rle_img1, "area": 600, "iscrowd": 1},
        ],
        "categories": [
            {"id": 9, "name": "zebra", "frequency": "r"},
            {"id": 3, "name": "apple", "frequency": "r"},
            {"id": 7, "name": "kite", "frequency": "r"},
        ],
    }


def write_json(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))
    return path


class Result(NamedTuple):
    """What a command gave: the fields of subprocess.CompletedProcess that the tests read."""

    returncode: int
    stdout: str
    stderr: str


def run_simcal(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (what a user sees: exit code, stdout, stderr).

    Each call pays the interpreter start and the torch import (2-3 s): use it for the one
    real exit-code path per command, for kill -9 and for torchrun; everything else goes
    through the in-process ``cli`` fixture.
    """
    return subprocess.run([sys.executable, "-m", "simcal", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def call_main(*args) -> int:
    """``simcal.cli.main`` in-process; argparse's own exits (usage errors, --help) become the exit code."""
    from simcal.cli import main

    try:
        return main([str(a) for a in args])
    except SystemExit as e:  # argparse: --help (0), usage errors (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def torchrun_simcal(*args, nproc: int = 2, timeout=300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N -m simcal ARGS`` on CPU with gloo (one thread per process)."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIMCAL_DIST_BACKEND": "gloo"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), "-m", "simcal", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)


def call_main_one_thread(*args) -> int:
    """:func:`call_main` with one torch thread, as each torchrun process has: float reductions depend on the
    thread count, so a one-process reference for a torchrun run is computed this way (in-process, no start-up)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return call_main(*args)
    finally:
        torch.set_num_threads(before)
