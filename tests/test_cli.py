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


def test_demo_runs_the_whole_paper_and_resumes(tmp_path):
    """--preset quick end to end: every report section and summary key, figures as PNG, reuse on re-run."""
    out = tmp_path / "demo"
    r = run_simcal("demo", "--preset", "quick", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    report = (out / "report.md").read_text()
    for section in ("## Checks", "## Table 3", "## Table 5", "## Fig. 4a", "## Fig. 4b", "## Fig. 4c", "## Table 4",
                    "props-gt (upper bound)", "NorCal", "tau-norm", "## Calibration from the cache",
                    "proposal accuracy on the val cache", "| acc_bin1 |", "## Wall-clock"):
        assert section in report, section
    for png in ("train_instances.png", "fig4a_steps.png", "fig4b_heads.png", "fig4c_T.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in report
    assert '"preset": "quick"' in (out / "config.json").read_text()
    summary = json.loads((out / "summary.json").read_text())
    keys = ("baseline", "calibrated", "dual_sel", "dual_avg", "head_2fc_rand", "head_3fc_rand", "head_3fc_ft",
            "head_2fc_ncm", "props_gt", "norcal", "logit_adjust", "tau_norm", "baseline_300", "dual_sel_300",
            "decoupled_cm", "decoupled_is", "T_10", "steps_50")
    for key in keys:
        for t in ("bbox", "segm"):
            assert set(summary[key][t]) >= {"AP", "AP1", "AP2", "AP3", "AP4", "APr", "APc", "APf"}, key
    assert summary["dual_sel"]["config"]["max_dets_per_image"] == 10
    assert summary["dual_sel_300"]["config"]["max_dets_per_image"] == 300
    assert summary["calibration_speed"]["speedup"] > 0 and summary["timings"]
    assert 0 <= summary["baseline"]["segm"]["AP"] <= 1
    # The post-hoc and props-gt rows are not the baseline under another name.
    assert summary["props_gt"]["segm"]["AP"] != summary["baseline"]["segm"]["AP"]
    # A second run reuses the detector, the heads and the predictions.
    r2 = run_simcal("demo", "--preset", "quick", "--out", out)
    assert r2.returncode == 0 and "reusing" in r2.stderr
    assert "reusing 22 finished variant(s)" in r2.stderr
    again = json.loads((out / "summary.json").read_text())
    assert again["baseline"]["segm"] == summary["baseline"]["segm"] and again["tau_norm"] == summary["tau_norm"]
