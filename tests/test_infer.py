"""Dual-head scoring (paper Eq. 2) against hand-computed values, and inference through the detector."""

import json

import pytest
import torch
from conftest import run_simcal

from simcal.calibrate.trainer import CalibConfig, head_checkpoint, save_head, train_head
from simcal.extract.schema import Cache
from simcal.infer.scoring import combine, logit_adjust, make_score_fn, norcal, rare_mask, tau_normalize_


def test_sel_takes_calibrated_columns_of_rare_classes_without_renormalising():
    p_orig = torch.tensor([[0.5, 0.3, 0.1, 0.1]])  # background, classes 1..3
    p_cal = torch.tensor([[0.2, 0.1, 0.3, 0.4]])
    counts = [5000, 40, 300]  # N_1 > T, N_2 <= T, N_3 = T (Eq. 2: <=)
    rare = rare_mask(counts, 300)
    assert rare.tolist() == [False, False, True, True]
    sel = combine(p_orig, p_cal, "sel", rare)
    assert sel[0].tolist() == pytest.approx([0.5, 0.3, 0.3, 0.4])  # sums to 1.5: not renormalised
    assert combine(p_orig, p_cal, "avg", rare)[0].tolist() == pytest.approx([0.35, 0.2, 0.2, 0.25])
    assert combine(p_orig, p_cal, "cal", rare) is p_cal and combine(p_orig, p_cal, "orig", rare) is p_orig


def test_posthoc_scores_by_hand():
    p = torch.tensor([[0.4, 0.4, 0.2]])
    n = torch.tensor([0.0, 100.0, 1.0])
    q = norcal(p, n, 0.5)  # class 1 / 10, class 2 / 1, background kept, renormalised
    assert q[0].tolist() == pytest.approx([0.4 / 0.64, 0.04 / 0.64, 0.2 / 0.64])
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    prior = torch.tensor([1.0, 100 / 101, 1 / 101])
    expected = torch.softmax(logits - torch.tensor([0.0, prior[1].log(), prior[2].log()]), dim=1)
    assert torch.allclose(logit_adjust(logits, n, 1.0), expected)
    lin = torch.nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0], [3.0, 4.0], [0.6, 0.8]]))
    tau_normalize_(lin, 1.0)
    assert lin.weight.flatten().tolist() == pytest.approx([3.0, 4.0, 0.6, 0.8, 0.6, 0.8])


def test_untrained_3fc_ft_head_reproduces_the_detector(quick_caches, quick_detector, quick_bench, tmp_path):
    """3fc_ft starts as the detector's classifier, so every mode must give the baseline's detections."""
    cache = Cache(quick_caches["train"])
    cfg = CalibConfig(head="3fc_ft", steps=1, lr=0.0)
    head, info = train_head(cache, cfg)
    save_head(head_checkpoint(head, cfg, cache, info), tmp_path / "h.pth")
    outs = {}
    for mode in ("orig", "sel", "cal", "avg"):
        out = tmp_path / f"{mode}.json"
        extra = [] if mode == "orig" else ["--head", tmp_path / "h.pth"]
        r = run_simcal("infer", "--checkpoint", quick_detector, "--data", quick_bench, "--split", "val",
                       "--mode", mode, "--out", out, *extra)
        assert r.returncode == 0, r.stderr
        outs[mode] = json.loads(out.read_text())
    base = outs["orig"]
    assert len(base) > 0 and max(sum(1 for d in base if d["image_id"] == i) for i in {d["image_id"] for d in base}) <= 300
    for mode in ("sel", "cal", "avg"):
        assert len(outs[mode]) == len(base)
        for a, b in zip(base, outs[mode]):
            assert a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]
            assert a["bbox"] == b["bbox"] and a["score"] == pytest.approx(b["score"], rel=1e-4, abs=1e-6)
    assert "counts" in base[0]["segmentation"]


def test_score_fn_is_none_for_the_plain_detector():
    assert make_score_fn([10, 20], "orig") is None
    with pytest.raises(ValueError, match="needs a calibrated head"):
        make_score_fn([10, 20], "sel")


def test_head_from_another_detector_is_refused(quick_caches, quick_bench, tmp_path):
    cache = Cache(quick_caches["train"])
    cfg = CalibConfig(head="linear", steps=1)
    head, info = train_head(cache, cfg)
    ck = head_checkpoint(head, cfg, cache, info)
    ck["detector_fingerprint"] = "sha256:someone-else"
    save_head(ck, tmp_path / "foreign.pth")
    from simcal.detector.builders import build
    from simcal.detector.checkpoint import make_checkpoint, save_checkpoint
    from simcal.data import load_annotations, category_statistics

    ann = load_annotations(quick_bench / "annotations" / "train.json")
    torch.manual_seed(0)
    det = make_checkpoint(build("tiny", 12), "tiny", {}, ann.mapping, category_statistics(ann), ann.fingerprint, {}, 0)
    save_checkpoint(det, tmp_path / "det.pth")
    r = run_simcal("infer", "--checkpoint", tmp_path / "det.pth", "--head", tmp_path / "foreign.pth",
                   "--data", quick_bench, "--out", tmp_path / "r.json")
    assert r.returncode == 2 and "was calibrated on features of another detector" in r.stderr
    assert not (tmp_path / "r.json").exists()
