import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


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


@pytest.fixture
def tiny_doc():
    return copy.deepcopy(tiny_lvis())


def write_json(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))
    return path


def run_simcal(*args, cwd=None):
    """Run the real CLI in a subprocess (what a user sees: exit code, stdout, stderr)."""
    return subprocess.run([sys.executable, "-m", "simcal", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="session")
def quick_bench(tmp_path_factory) -> Path:
    """The quick synthetic benchmark, generated once per test session (~2 s)."""
    from simcal.data.synthetic import synthesize

    out, _ = synthesize(tmp_path_factory.mktemp("bench") / "quick", "quick", seed=0, show_progress=False)
    return out


@pytest.fixture(scope="session")
def quick_detector(quick_bench, tmp_path_factory) -> Path:
    """A tiny detector briefly trained on the quick benchmark (~10 s), so its RPN finds objects."""
    out = tmp_path_factory.mktemp("det") / "tiny.pth"
    r = run_simcal("train", "--data", quick_bench, "--out", out, "--iters", "30", "--batch-size", "4",
                   "--warmup", "5", "--lr", "0.02")
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def quick_caches(quick_bench, quick_detector, tmp_path_factory) -> dict:
    """Feature caches of the quick benchmark's train and val splits."""
    root = tmp_path_factory.mktemp("caches")
    out = {}
    for split in ("train", "val"):
        out[split] = root / f"{split}.zarr"
        r = run_simcal("extract", "--checkpoint", quick_detector, "--data", quick_bench, "--split", split,
                       "--out", out[split])
        assert r.returncode == 0, r.stderr
    return out
