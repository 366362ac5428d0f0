"""Fixtures shared by every stage's tests.

The expensive artefacts (the quick benchmark, a briefly trained tiny detector, its train
and val feature caches) are built once per session, in-process, and shared by the data,
detector, extract, calibrate, infer and evaluate tests. Tests must not modify them: copy
first (shutil.copytree) when a test needs a broken or changed one.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread per worker: the workers share the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from tests.helpers import Result, call_main, tiny_lvis


@pytest.fixture
def tiny_doc():
    return copy.deepcopy(tiny_lvis())


@pytest.fixture
def cli(capsys):
    """``cli("infer", ...)`` runs ``simcal.cli.main`` in-process: returncode, stdout, stderr of that call only."""

    def run(*args) -> Result:
        capsys.readouterr()  # drop what came before
        rc = call_main(*args)
        out, err = capsys.readouterr()
        return Result(rc, out, err)

    return run


@pytest.fixture(scope="session")
def quick_bench(tmp_path_factory) -> Path:
    """The quick synthetic benchmark (seed 0), generated once per test session (~2 s)."""
    from simcal.data.synthetic import synthesize

    out, _ = synthesize(tmp_path_factory.mktemp("bench") / "quick", "quick", seed=0, show_progress=False)
    return out


@pytest.fixture(scope="session")
def quick_detector(quick_bench, tmp_path_factory) -> Path:
    """A tiny detector briefly trained on the quick benchmark, so its RPN finds objects."""
    out = tmp_path_factory.mktemp("det") / "tiny.pth"
    rc = call_main("train", "--data", quick_bench, "--out", out, "--iters", "30", "--batch-size", "4",
                   "--warmup", "5", "--lr", "0.02")
    assert rc == 0 and out.exists()
    return out


def _quick_cache(bench, detector, root, split: str) -> Path:
    out = root / f"{split}.zarr"
    rc = call_main("extract", "--checkpoint", detector, "--data", bench, "--split", split, "--out", out)
    assert rc == 0 and out.exists()
    return out


@pytest.fixture(scope="session")
def quick_val_cache(quick_bench, quick_detector, tmp_path_factory) -> Path:
    """The quick benchmark's val cache alone (31 images): for tests that need a cache, not the train rows."""
    return _quick_cache(quick_bench, quick_detector, tmp_path_factory.mktemp("val_cache"), "val")


@pytest.fixture(scope="session")
def quick_caches(quick_bench, quick_detector, quick_val_cache, tmp_path_factory) -> dict:
    """Feature caches of the quick benchmark's train and val splits (default extraction flags)."""
    train = _quick_cache(quick_bench, quick_detector, tmp_path_factory.mktemp("caches"), "train")
    return {"train": train, "val": quick_val_cache}


@pytest.fixture(scope="session")
def few_val(quick_bench, tmp_path_factory) -> tuple:
    """``--ann FILE --images DIR`` for the first 8 val images: inference tests compare runs, not accuracy."""
    import json

    doc = json.loads((quick_bench / "annotations" / "val.json").read_text())
    keep = {im["id"] for im in doc["images"][:8]}
    doc["images"] = [im for im in doc["images"] if im["id"] in keep]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in keep]
    ann = tmp_path_factory.mktemp("few_val") / "val8.json"
    ann.write_text(json.dumps(doc))
    return ("--ann", ann, "--images", quick_bench / "images" / "val")
