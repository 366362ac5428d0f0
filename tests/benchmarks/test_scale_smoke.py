"""Smoke runs of the LVIS-scale benchmarks' --quick modes: they run end to end and report what they promise."""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

#: The keys benchmarks/lvis_scale.py promises in its last line (docs/scale.md reads them).
LVIS_SCALE_KEYS = (
    "version", "classes", "rows", "gb", "write_gb_s", "write_peak_rss_mb", "verify_s", "verify_peak_rss_mb",
    "steps_s_ram", "steps_s_store_warm", "steps_s_store_cold", "steps_s_int8", "disk_seq_gb_s", "disk_rand_gb_s",
    "bytes_per_step", "calib_peak_rss_mb", "sweep6_s", "sampler_batches_s", "cache_dir", "consolidate_gb_s",
    "rows_per_image_full", "bytes_per_row", "lvis_train_images", "memory", "cold_store", "sizes",
)


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _render(records):
    sys.path.insert(0, str(ROOT))
    from benchmarks.render_scale import render_scale

    return render_scale(records)


def _record(name, figures):
    return {"benchmark": name, "command": "cmd", "commit": "abc", "date": "2026-01-01", "machine": "m",
            "figures": figures}


@pytest.mark.slow
def test_lvis_scale_quick(tmp_path):
    out = tmp_path / "scale"
    r = subprocess.run([sys.executable, ROOT / "benchmarks" / "lvis_scale.py", "--quick", "--out", out],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    fig = _last_json(r.stdout)
    missing = [k for k in LVIS_SCALE_KEYS if k not in fig]
    assert not missing, missing
    assert fig["classes"] == 1203 and fig["lvis_bins"] == [175, 414, 363, 251] and fig["lvis_rcf"] == [337, 461, 405]
    assert fig["gb"] <= 0.3 and fig["rows"] > 10_000 and fig["classes_with_rows"] == 1203
    for k in ("steps_s_ram", "steps_s_store_warm", "steps_s_store_cold", "steps_s_int8", "sampler_batches_s"):
        assert fig[k] > 0, k
    acc, chance = fig["sweep6_acc"], fig["chance_fg_acc"]
    assert acc["2fc_ncm_ce"]["fg_acc"] > 20 * chance  # class means learnt from the cache's rows alone
    assert acc["3fc_ft_ce"]["fg_acc"] > 20 * chance and acc["3fc_ft_ce"]["bg_acc"] > 0.5
    assert fig["int8_rows"] == fig["rows"]  # int8 holds the same rows
    assert sorted(p.name for p in out.iterdir()) == []  # everything it wrote is gone
    # named as a full run's record, it fills the scale page's tables and every CPU estimate
    page = _render([_record("lvis_scale_v1", fig)])
    assert "## Measured: LVIS v1 simulation" in page and "Record `lvis_scale_v1`" in page and "| 0.05 GB |" in page
    cost = page[page.index("## Cost model"):]
    for row in ("| cache GB, float16", "| calibration min / 10k steps, CPU, RAM", "| `cache verify`, minutes",
                "| sweep of"):
        line = next(x for x in cost.splitlines() if x.startswith(row))
        assert "not measured yet" not in line, line
    gpu = next(x for x in cost.splitlines() if x.startswith("| extract hours"))
    assert "not measured yet (`E_gpu`)" in gpu  # the GPU figure has no record


@pytest.mark.slow
def test_eval_speed_lvis_scale_quick(tmp_path):
    r = subprocess.run([sys.executable, ROOT / "benchmarks" / "eval_speed.py", "--lvis-scale", "--quick",
                        "--workdir", tmp_path], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    fig = _last_json(r.stdout)
    assert fig["case"]["categories"] == 1230 and fig["case"]["images"] == 40
    assert fig["case"]["detections"] >= 40 * 300 and fig["max_dets"] == 300
    assert fig["max_metric_diff"] <= 1e-4 and fig["targets"]["holds"]["max_metric_diff"]
    for k in ("fast_s", "lvis_s", "fast_peak_rss_mb", "lvis_peak_rss_mb", "ratio", "rss_ratio"):
        assert fig[k] > 0, k


def test_scale_page_without_records_invents_nothing():
    page = _render([])
    assert page == _render([])  # the same bytes every time
    assert page.count("Not measured yet: run `") == 3
    cost = page[page.index("## Cost model"):]
    for line in cost.splitlines():
        if line.startswith("| ") and "`" in line and not line.startswith(("| train images", "| cached rows")):
            assert "not measured yet" in line or line.startswith("| name"), line  # no figure without its record


def test_forked_steps_report_exit_codes_output_and_memory(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.measure import Forker

    script = tmp_path / "step.py"
    script.write_text("import sys\nprint('args', sys.argv[1:])\nblob = bytearray(200 * 2**20)\n"
                      "blob[::4096] = b'x' * len(blob[::4096])\nsys.exit(int(sys.argv[1]))\n")
    broken = tmp_path / "broken.py"
    broken.write_text("raise ValueError('no such thing')\n")
    with Forker(["json"]) as f:
        runs = [f.run([script, code], tmp_path / f"{code}.log") for code in ("0", "3")]
        wall, rss, rc = f.run([broken], tmp_path / "broken.log")
    assert [r[2] for r in runs] == [0, 3] and rc == 1
    assert "args ['3']" in (tmp_path / "3.log").read_text()
    assert "ValueError: no such thing" in (tmp_path / "broken.log").read_text()
    assert runs[0][1] >= 200 and rss < runs[0][1] - 150  # each step's own peak: the 200 MiB of one is not the next's


def test_a_childs_peak_memory_is_its_own_not_the_measuring_process(tmp_path):
    """Linux counts the address space a child exec'd from in its peak RSS: spawned straight from a measuring
    process that holds 400 MiB, a 100 MiB step read 400+ MiB (the lvis_scale v0.5 record's 28 GB verify:
    588 MiB inside the benchmark, 143 MiB alone). run_child goes through a bare launcher."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.measure import run_child

    held = bytearray(400 * 2**20)
    held[::4096] = b"x" * len(held[::4096])
    step = "import sys; b = bytearray(100 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('ran'); sys.exit(3)"
    wall, rss, rc = run_child([sys.executable, "-c", step], tmp_path / "step.log")
    assert rc == 3 and "ran" in (tmp_path / "step.log").read_text()
    assert 100 <= rss < 300, rss
    del held
