"""Hostile flags, sweep grids and outputs: each refused in one line with exit code 2, before any work.

Numbers follow one rule table (simcal/core/checks.py) whether they come from a flag, a calibration
grid or an inference variants file; NaN and infinities never pass. Training that diverges anyway
(a finite but absurd learning rate) stops with one sentence and writes no head.
"""

import json

import pytest


def _one_line(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


FLAG_CASES = [
    ("calibrate", ["--lr", "nan"], "argument --lr: must be a finite number > 0, not 'nan'"),
    ("calibrate", ["--lr", "inf"], "argument --lr: must be a finite number > 0"),
    ("calibrate", ["--lr", "-1"], "argument --lr: must be a finite number > 0"),
    ("calibrate", ["--bg-ratio", "nan"], "argument --bg-ratio: must be a finite number >= 0"),
    ("calibrate", ["--classes-per-batch", "0"], "argument --classes-per-batch: must be an integer >= 1"),
    ("calibrate", ["--images-per-class", "0"], "argument --images-per-class: must be an integer >= 1"),
    ("calibrate", ["--steps", "1.5"], "argument --steps: must be an integer >= 1"),
    ("calibrate", ["--lr-steps", "0.5,nan"], "argument --lr-steps: must be a comma-separated list"),
    ("calibrate", ["--seed", "-3"], "argument --seed: must be an integer >= 0"),
    ("infer", ["--T", "-1"], "argument --T: must be a finite number >= 0"),
    ("infer", ["--T", "nan"], "argument --T: must be a finite number >= 0"),
    ("infer", ["--gamma", "nan"], "argument --gamma: must be a finite number >= 0"),
    ("infer", ["--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    ("infer", ["--max-dets", "0"], "argument --max-dets: must be an integer >= 1"),
    ("extract", ["--fg-iou", "0"], "argument --fg-iou: must be a finite number > 0 and <= 1"),
    ("extract", ["--fg-per-gt", "-2"], "argument --fg-per-gt: must be an integer >= 1"),
    ("train", ["--lr", "nan"], "argument --lr: must be a finite number > 0"),
    ("train", ["--flip", "1.5"], "argument --flip: must be a finite number >= 0 and <= 1"),
    ("train", ["--iters", "0"], "argument --iters: must be an integer >= 1"),
    ("evaluate", ["--max-dets", "-5"], "argument --max-dets: must be an integer >= 1"),
]
REQUIRED = {"calibrate": ["--cache", "c.zarr", "--out", "h.pth"], "infer": ["--checkpoint", "d.pth", "--out", "r.json"],
            "extract": ["--checkpoint", "d.pth", "--out", "c.zarr"], "train": ["--out", "d.pth"],
            "evaluate": ["--gt", "g.json", "--results", "r.json"]}


@pytest.mark.parametrize("command, flags, message", FLAG_CASES, ids=[f"{c}{' '.join(f)}" for c, f, _ in FLAG_CASES])
def test_bad_numeric_flags_are_one_line(cli, tmp_path, command, flags, message):
    r = cli(command, *REQUIRED[command], *flags)
    _one_line(r, message, f"see 'simcal {command} --help'")
    assert not any(tmp_path.iterdir())


GRID_CASES = [
    ({"head": []}, "has an empty list for 'head'"),
    ([], "holds no grid"),
    ({"steps": [100, "abc"]}, "steps must be an integer >= 1, not 'abc'"),
    ({"steps": [0]}, "steps must be an integer >= 1, not 0"),
    ({"seed": [1.5]}, "seed must be an integer >= 0"),
    ({"head": ["9fc"]}, "has head '9fc', which is not one of"),
    ({"loss": [["ce"]]}, "has loss ['ce'], which is not one of"),
    ({"lr": [0.1]}, "has unknown keys ['lr']"),
]


@pytest.mark.parametrize("grid, message", GRID_CASES, ids=[m.split(",")[0] for _, m in GRID_CASES])
def test_bad_sweep_grids_are_refused_before_the_cache_is_read(cli, tmp_path, grid, message):
    """The cache does not even exist: the grid is read first."""
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    r = cli("calibrate", "--cache", tmp_path / "missing.zarr", "--sweep", tmp_path / "grid.json",
            "--out", tmp_path / "sweep")
    _one_line(r, "grid.json", message)
    assert not (tmp_path / "sweep").exists()


def test_outputs_of_the_wrong_kind_are_refused_before_work(cli, tmp_path):
    (tmp_path / "dir.pth").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "grid.json").write_text(json.dumps({"head": ["3fc_ft"]}))
    missing = tmp_path / "missing.zarr"  # never opened: the output is checked first
    _one_line(cli("calibrate", "--cache", missing, "--out", tmp_path / "dir.pth"), "dir.pth: is a folder")
    _one_line(cli("calibrate", "--cache", missing, "--sweep", tmp_path / "grid.json", "--out", tmp_path / "file"),
              "file: is a file, and --out with --sweep names a folder")
    _one_line(cli("calibrate", "--cache", missing, "--sample-only", "--stats", tmp_path / "dir.pth"),
              "dir.pth: is a folder")
    _one_line(cli("calibrate", "--cache", missing, "--preload", "gpu", "--out", tmp_path / "h.pth", "--device", "cpu"),
              "--preload gpu needs a CUDA device")


def test_diverging_calibration_writes_no_head(cli, quick_val_cache, tmp_path):
    out = tmp_path / "h.pth"
    r = cli("calibrate", "--cache", quick_val_cache, "--steps", "60", "--lr", "1e30", "--out", out)
    _one_line(r, "calibration diverged", "no head was written", "lower --lr")
    assert list(tmp_path.iterdir()) == []  # no head, no log, no manifest, no temporary file


@pytest.mark.parametrize("command, args", [
    ("train", ["--data", "d"]), ("infer", ["--checkpoint", "d.pth", "--data", "d"]),
    ("evaluate", ["--gt", "g.json", "--results", "r.json", "--train-ann", "t.json"]),
])
def test_a_file_output_that_is_a_folder_is_refused_first(cli, tmp_path, command, args):
    """Inputs that do not exist are never opened: the output is checked before anything runs."""
    (tmp_path / "taken").mkdir()
    r = cli(command, *args, "--out", tmp_path / "taken")
    _one_line(r, "taken: is a folder, and --out names a file")
