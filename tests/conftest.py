"""Fixtures shared by every stage's tests.

The expensive artefacts (the quick benchmark, a briefly trained tiny detector, its train
and val feature caches) are built once per test run, in-process, by the first worker that
needs them, and shared by the data, detector, extract, calibrate, infer and evaluate tests
of every worker. Tests must not modify them: copy
first (shutil.copytree) when a test needs a broken or changed one.
"""

from __future__ import annotations

import copy
import fcntl
import os
import shutil
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


def _built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` once per test run: under pytest-xdist the workers share one copy, built by the
    first worker that asks for it while the others wait on a file lock, then read by all of them."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # this run's folder, shared by its workers (each worker's own is below it)
    root = base / "shared"
    root.mkdir(exist_ok=True)
    out, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():  # not built yet, or a build that failed half-way
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def quick_bench(tmp_path_factory) -> Path:
    """The quick synthetic benchmark (seed 0), generated once per test run (~2 s)."""
    from simcal.data.synthetic import synthesize

    def build(folder):
        synthesize(folder / "quick", "quick", seed=0, show_progress=False)

    return _built_once(tmp_path_factory, "bench", build) / "quick"


@pytest.fixture(scope="session")
def quick_detector(quick_bench, tmp_path_factory) -> Path:
    """A tiny detector briefly trained on the quick benchmark, so its RPN finds objects."""

    def build(folder):
        rc = call_main("train", "--data", quick_bench, "--out", folder / "tiny.pth", "--iters", "30",
                       "--batch-size", "4", "--warmup", "5", "--lr", "0.02")
        assert rc == 0

    return _built_once(tmp_path_factory, "det", build) / "tiny.pth"


def _quick_cache(tmp_path_factory, bench, detector, split: str) -> Path:
    def build(folder):
        rc = call_main("extract", "--checkpoint", detector, "--data", bench, "--split", split,
                       "--out", folder / f"{split}.zarr")
        assert rc == 0

    return _built_once(tmp_path_factory, f"{split}_cache", build) / f"{split}.zarr"


@pytest.fixture(scope="session")
def quick_val_cache(quick_bench, quick_detector, tmp_path_factory) -> Path:
    """The quick benchmark's val cache alone (31 images): for tests that need a cache, not the train rows."""
    return _quick_cache(tmp_path_factory, quick_bench, quick_detector, "val")


@pytest.fixture(scope="session")
def quick_caches(quick_bench, quick_detector, quick_val_cache, tmp_path_factory) -> dict:
    """Feature caches of the quick benchmark's train and val splits (default extraction flags)."""
    return {"train": _quick_cache(tmp_path_factory, quick_bench, quick_detector, "train"), "val": quick_val_cache}


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


#: The slowest test files, slowest first. ``make test`` hands files to its two workers in collection order
#: (``--dist loadfile --no-loadscope-reorder``): longest first keeps their finishing times close, and the
#: order gives the second worker files that need none of the shared artefacts (the demo, the benchmark
#: smoke tests) while the first one builds them.
SLOWEST_FIRST = ("calibrate/test_calibrate.py", "cli/test_demo.py", "infer/test_infer.py",
                 "benchmarks/test_scale_smoke.py", "extract/test_extract.py", "detector/test_framework_references.py",
                 "detector/test_train.py", "detector/test_converted_pipeline.py", "detector/test_detector.py",
                 "detector/test_convert.py", "evaluate/test_evaluate.py", "adversarial/test_disk_and_locks.py",
                 "data/test_synthetic.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.path.as_posix()
        return next((i for i, name in enumerate(SLOWEST_FIRST) if path.endswith(name)), len(SLOWEST_FIRST))

    items.sort(key=rank)  # stable: the other files, and the tests within a file, keep their order
