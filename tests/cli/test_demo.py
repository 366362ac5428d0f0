"""simcal demo --preset smoke: the whole pipeline end to end, through a real process, and its resume."""

import json
import statistics

import pytest

from tests.helpers import run_simcal


@pytest.mark.slow
def test_demo_runs_the_whole_paper_and_resumes(tmp_path, cli):
    """--preset smoke --with table2,table6 end to end: every report section and summary key, figures as PNG, reuse
    on re-run."""
    out = tmp_path / "demo"
    r = run_simcal("demo", "--preset", "smoke", "--with", "table2,table6", "--out", out, timeout=1800)  # hang guard
    assert r.returncode == 0, r.stderr[-3000:]
    report = (out / "report.md").read_text()
    for section in ("## Checks", "## Table 3", "## Table 5", "## Fig. 4a", "## Fig. 4b", "## Fig. 4c", "## Table 4",
                    "props-gt (upper bound)", "NorCal", "tau-norm", "## Calibration from the cache",
                    "proposal accuracy on the val cache", "| acc_bin1 |", "## Table 2", "| AP1 end to end |",
                    "## Calibration seeds: mean ± std", "| sel vs avg (Table 5) | AP |", "## Wall-clock",
                    "## Table 6", "| calibrate every stage (dual head, sel) |", "| every stage >= last stage on AP1 |",
                    "Every stage vs last stage on AP1:"):
        assert section in report, section
    for png in ("train_instances.png", "fig4a_steps.png", "fig4b_heads.png", "fig4c_T.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in report
    assert '"preset": "smoke"' in (out / "config.json").read_text()
    summary = json.loads((out / "summary.json").read_text())
    keys = ("baseline", "calibrated", "dual_sel", "dual_avg", "head_2fc_rand", "head_3fc_rand", "head_3fc_ft",
            "head_2fc_ncm", "props_gt", "norcal", "logit_adjust", "tau_norm", "baseline_300", "dual_sel_300",
            "decoupled_cm", "decoupled_is", "T_10", "steps_20", "table2_cm", "table2_lr", "table2_fl", "table2_is",
            "cascade_baseline", "cascade_cal_last", "cascade_cal_all", "cascade_is")
    for key in keys:
        for t in ("bbox", "segm"):
            assert set(summary[key][t]) >= {"AP", "AP1", "AP2", "AP3", "AP4", "APr", "APc", "APf"}, key
    for key in ("calibrated", "dual_sel", "dual_avg", "head_2fc_ncm", "decoupled_is", "cascade_cal_last",
                "cascade_cal_all"):  # 3 calibration seeds
        runs = [summary[key], summary[f"{key}.seed1"], summary[f"{key}.seed2"]]
        ap = [r["segm"]["AP1"] for r in runs]
        assert summary[f"{key}_mean"]["segm"]["AP1"] == pytest.approx(sum(ap) / 3)
        assert summary[f"{key}_std"]["segm"]["AP1"] == pytest.approx(statistics.stdev(ap))
    assert summary["dual_sel"]["config"]["max_dets_per_image"] == 10
    assert summary["dual_sel_300"]["config"]["max_dets_per_image"] == 300
    assert summary["calibration_speed"]["speedup"] > 0 and summary["timings"]
    assert 0 <= summary["baseline"]["segm"]["AP"] <= 1
    # The props-gt row is not the baseline under another name (its boxes: the smoke detector's masks score 0).
    assert summary["props_gt"]["bbox"] != summary["baseline"]["bbox"]
    # A second run (in-process: the first was the real process) reuses the detector, the heads and the predictions.
    r2 = cli("demo", "--preset", "smoke", "--with", "table2,table6", "--out", out)
    assert r2.returncode == 0 and "reusing" in r2.stdout
    assert "reusing 42 finished variant(s)" in r2.stdout and "reusing 7 finished variant(s)" in r2.stdout
    # Table 6's calibrated rows are not the cascade baseline under another name: their heads are the stages'.
    variants = json.loads((out / "infer" / "cascade_variants.json").read_text())
    stage_heads = {v["name"]: v.get("stage_heads") for v in variants}
    assert stage_heads["cascade_cal_last"][:2] == [None, None] and all(stage_heads["cascade_cal_all"])
    assert summary["cascade_cal_all"]["config"]["max_dets_per_image"] == 10
    again = json.loads((out / "summary.json").read_text())
    assert again["baseline"]["segm"] == summary["baseline"]["segm"] and again["tau_norm"] == summary["tau_norm"]


def test_unknown_extra_part_is_one_sentence(tmp_path, cli):
    r = cli("demo", "--preset", "smoke", "--with", "table2,table9", "--out", tmp_path / "demo")
    assert r.returncode == 2 and "--with names unknown parts ['table9']" in r.stderr and "table2" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "demo").exists()
