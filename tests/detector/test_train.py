"""`simcal train`: outputs, resume after kill -9, long-tail flags, torchrun data-parallel, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from simcal.detector.checkpoint import load_checkpoint
from tests.helpers import call_main, run_simcal, torchrun_simcal

FAST = ["--arch", "tiny", "--batch-size", "2", "--warmup", "2", "--log-every", "1"]


def test_short_run_writes_checkpoint_log_and_config(quick_bench, tmp_path, cli):
    def _train(bench, out, *extra):
        return cli("train", "--data", bench, "--out", out, *FAST, *extra)

    out = tmp_path / "tiny.pth"
    r = _train(quick_bench, out, "--iters", "4", "--checkpoint-every", "2", "--sampler", "repeat_factor",
               "--rfs-t", "0.1", "--cls-loss", "reweight")
    assert r.returncode == 0, r.stderr
    model, ck = load_checkpoint(out)
    assert ck["iteration"] == 4 and ck["train_args"]["cls_loss"] == "reweight"
    assert [c["instance_count"] for c in ck["category_stats"]][:3] == [2, 14, 101]
    log = [json.loads(line) for line in (tmp_path / "tiny.pth.log.jsonl").read_text().splitlines()]
    assert [rec["iter"] for rec in log] == [1, 2, 3, 4] and all("loss_classifier" in rec for rec in log)
    assert log[0]["lr"] < log[1]["lr"] < log[2]["lr"] == 0.02 and log[3]["lr"] < 0.02  # warm-up, then x0.1
    cfg = json.loads((tmp_path / "tiny.pth.config.json").read_text())
    n_images = len(json.loads((quick_bench / "annotations" / "train.json").read_text())["images"])
    assert cfg["cls_loss_config"]["name"] == "reweight" and cfg["repeat_factor_images"] > n_images
    assert not (tmp_path / "tiny.pth.resume.pth").exists()
    # A finished run is not redone; an existing output is not overwritten by accident.
    again = _train(quick_bench, out, "--iters", "4", "--resume", "--sampler", "repeat_factor", "--rfs-t", "0.1",
                   "--cls-loss", "reweight")
    assert again.returncode == 0 and "already trained" in again.stdout
    clash = _train(quick_bench, out, "--iters", "4")
    assert clash.returncode == 2 and "already exists" in clash.stderr and "Traceback" not in clash.stderr


@pytest.mark.slow
def test_resume_after_kill_gives_the_same_weights(quick_bench, tmp_path, cli):
    # killed once the first resume point (iteration 2) is on disk, resumed for the other two
    args = ["--iters", "4", "--checkpoint-every", "2"]
    ref = tmp_path / "ref.pth"
    assert call_main("train", "--data", quick_bench, "--out", ref, *FAST, *args) == 0
    out = tmp_path / "killed.pth"
    resume = tmp_path / "killed.pth.resume.pth"
    p = subprocess.Popen([sys.executable, "-m", "simcal", "train", "--data", str(quick_bench), "--out", str(out),
                          *FAST, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not resume.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert resume.exists() and not out.exists()
    r = cli("train", "--data", quick_bench, "--out", out, *FAST, *args, "--resume")
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stdout
    a, b = torch.load(ref, weights_only=True), torch.load(out, weights_only=True)
    assert a["detector_fingerprint"] == b["detector_fingerprint"]


@pytest.mark.slow
def test_torchrun_two_process_gloo(quick_bench, tmp_path):
    out = tmp_path / "ddp.pth"
    r = torchrun_simcal("train", "--data", quick_bench, "--out", out, "--arch", "tiny", "--batch-size", "4",
                        "--iters", "3", "--warmup", "1", "--checkpoint-every", "2", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    _, ck = load_checkpoint(out)
    assert ck["iteration"] == 3
    assert json.loads((tmp_path / "ddp.pth.config.json").read_text())["world_size"] == 2


def test_bad_training_input_is_one_sentence(tmp_path, quick_bench, cli):
    # the real exit-code path of 'simcal train', through a process; the other refusals run in-process
    r = run_simcal("train", "--data", tmp_path / "nothing", "--out", tmp_path / "x.pth")
    assert r.returncode == 2 and "has no annotations/train.json" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("simcal train: error: ")
    r = cli("train", "--out", tmp_path / "x.pth")
    assert r.returncode == 2 and "no training data given" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("train", "--data", quick_bench, "--out", tmp_path / "x.pth", "--backbone-weights", "w.pth")
    assert r.returncode == 2 and "applies to --arch r50_fpn and r50_cascade only" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.pth").exists()
