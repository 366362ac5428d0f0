"""The one CLI: commands, lazy imports, help texts, the demo."""

import json
import subprocess
import sys

import pytest
from conftest import run_simcal

COMMANDS = ("data", "train", "extract", "cache", "calibrate", "infer", "evaluate", "demo")


def test_help_lists_every_command():
    r = run_simcal("--help")
    assert r.returncode == 0
    for c in COMMANDS:
        assert f"\n    {c}" in r.stdout


def test_help_imports_no_heavy_library():
    code = ("import sys; from simcal.cli import get_args_parser; get_args_parser(); "
            "print(sorted(m for m in ('torch', 'numpy', 'zarr', 'matplotlib', 'pycocotools') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_names_inputs_and_outputs(command):
    r = run_simcal(command, "--help")
    assert r.returncode == 0, r.stderr
    assert f"simcal {command}" in r.stdout
    text = r.stdout.lower()
    assert "input" in text or "--ann" in text or "--gt" in text
    assert "output" in text or "--out" in text or "writes" in text


def test_unknown_command_is_exit_2():
    assert run_simcal("frobnicate").returncode == 2


def test_demo_runs_what_exists(tmp_path):
    out = tmp_path / "demo"
    r = run_simcal("demo", "--preset", "quick", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "## Table 3" in report and "dual head (sel)" in report and "[6/6]" in report
    assert (out / "train_instances.png").read_bytes()[:4] == b"\x89PNG"
    assert '"preset": "quick"' in (out / "config.json").read_text()
    summary = json.loads((out / "summary.json").read_text())
    for key in ("baseline", "calibrated", "dual_sel", "dual_avg", "baseline_300", "dual_sel_300"):
        assert set(summary[key]["segm"]) >= {"AP", "AP1", "AP2", "AP3", "AP4", "APr", "APc", "APf"}
    assert 0 <= summary["baseline"]["segm"]["AP"] <= 1
    # A second run reuses the detector and the predictions.
    r2 = run_simcal("demo", "--preset", "quick", "--out", out)
    assert r2.returncode == 0 and "reusing" in r2.stderr
    again = json.loads((out / "summary.json").read_text())["baseline"]
    assert (again["bbox"], again["segm"]) == (summary["baseline"]["bbox"], summary["baseline"]["segm"])
