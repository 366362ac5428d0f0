"""Dual-head scoring (paper Eq. 2) against hand-computed values, and inference through the detector."""

import json

import pytest
import torch

from simcal.calibrate.trainer import CalibConfig, head_checkpoint, save_head, train_head
from simcal.extract.schema import Cache
from simcal.infer.scoring import PropsGT, combine, logit_adjust, make_score_fn, norcal, rare_mask, tau_norm_logits
from tests.helpers import call_main_one_thread, run_simcal, torchrun_simcal


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
        lin.weight.copy_(torch.tensor([[3.0, 4.0], [3.0, 4.0], [0.6, 0.8]]))  # row norms 5, 5, 1
        lin.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    normed = torch.nn.Linear(2, 3)
    with torch.no_grad():  # tau = 1: foreground rows divided by their norm, background row and biases kept
        normed.weight.copy_(torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.6, 0.8]]))
        normed.bias.copy_(lin.bias)
    assert torch.allclose(tau_norm_logits(lin(x), lin, 1.0), normed(x), atol=1e-6)


def test_props_gt_classifies_proposals_by_their_ground_truth_box():
    oracle = PropsGT()
    proposals = [torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 6], [50, 50, 60, 60]]), torch.tensor([[0.0, 0, 4, 4]])]
    gt = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [48, 48, 60, 60]]), "labels": torch.tensor([2, 1])},
          {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    oracle.bind(proposals, gt)
    logits = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 5.0, 0.0]])
    p = torch.softmax(logits, dim=1)
    q = oracle(logits, torch.zeros(4, 1))
    # IoUs: row 0 -> box 0 (1.0), row 1 -> box 0 (0.6), row 2 -> box 1 (100/144 = 0.69), row 3: no GT
    expected = torch.zeros(4, 3)
    expected[:, 0] = p[:, 0]
    expected[0, 2], expected[1, 2], expected[2, 1] = 1 - p[0, 0], 1 - p[1, 0], 1 - p[2, 0]
    assert torch.allclose(q, expected)


def test_untrained_3fc_ft_head_reproduces_the_detector(quick_caches, quick_detector, few_val, tmp_path, cli):
    """3fc_ft starts as the detector's classifier, so every mode must give the baseline's detections (50 per image
    at most: pasting 300 masks per image would make the test ~4x slower for nothing it checks)."""
    cache = Cache(quick_caches["train"])
    cfg = CalibConfig(head="3fc_ft", steps=1, lr=0.0)
    head, info = train_head(cache, cfg)
    save_head(head_checkpoint(head, cfg, cache, info), tmp_path / "h.pth")
    outs = {}
    for mode in ("orig", "sel", "cal", "avg"):
        out = tmp_path / f"{mode}.json"
        extra = [] if mode == "orig" else ["--head-ckpt", tmp_path / "h.pth"]
        r = cli("infer", "--checkpoint", quick_detector, *few_val, "--mode", mode, "--max-dets", "50", "--out", out,
                *extra)
        assert r.returncode == 0, r.stderr
        outs[mode] = json.loads(out.read_text())
    base = outs["orig"]
    assert (
        len(base) > 0 and max(sum(1 for d in base if d["image_id"] == i) for i in {d["image_id"] for d in base}) == 50
    )
    for mode in ("sel", "cal", "avg"):
        assert len(outs[mode]) == len(base)
        for a, b in zip(base, outs[mode]):
            assert a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]
            assert a["bbox"] == b["bbox"] and a["score"] == pytest.approx(b["score"], rel=1e-4, abs=1e-6)
    assert "counts" in base[0]["segmentation"]


def test_sweep_equals_single_runs_and_resumes(quick_caches, quick_detector, few_val, tmp_path, cli):
    """One backbone pass for many variants must give each variant's single-run detections, byte for byte."""
    cache = Cache(quick_caches["train"])
    cfg = CalibConfig(head="2fc_rand", steps=20)
    head, info = train_head(cache, cfg)
    save_head(head_checkpoint(head, cfg, cache, info), tmp_path / "h.pth")
    h = str(tmp_path / "h.pth")
    variants = [  # capped below the default 300: masks are what inference spends its time on
        {"name": "orig", "max_dets": 40},
        {"name": "sel", "mode": "sel", "head_ckpt": h, "max_dets": 40},
        {"name": "avg5", "mode": "avg", "head_ckpt": h, "max_dets": 5, "T": 50},
        {"name": "tau", "posthoc": "tau_norm", "gamma": 0.5, "max_dets": 40},
        {"name": "gt", "props_gt": True, "max_dets": 7},
    ]
    (tmp_path / "v.json").write_text(json.dumps(variants))
    common = ("--checkpoint", quick_detector, *few_val)
    r = cli("infer", *common, "--sweep", tmp_path / "v.json", "--out", tmp_path / "sweep")
    assert r.returncode == 0, r.stderr
    # (orig against torchvision's own forward: test_variants_equal_torchvision_forward_with_the_score_hook)
    singles = {
        "sel": ["--mode", "sel", "--head-ckpt", h, "--max-dets", "40"],
        "avg5": ["--mode", "avg", "--head-ckpt", h, "--max-dets", "5", "--T", "50"],
        "tau": ["--posthoc", "tau_norm", "--gamma", "0.5", "--max-dets", "40"],
        "gt": ["--props-gt", "--max-dets", "7"],
    }
    for name, flags in singles.items():
        one = tmp_path / f"{name}.json"
        r = cli("infer", *common, "--mode", "orig", *flags, "--out", one)
        assert r.returncode == 0, r.stderr
        assert one.read_bytes() == (tmp_path / "sweep" / name / "results.json").read_bytes(), name
    per_image = {}
    for d in json.loads((tmp_path / "avg5.json").read_text()):
        per_image[d["image_id"]] = per_image.get(d["image_id"], 0) + 1
    assert max(per_image.values()) == 5
    assert (tmp_path / "gt.json").read_bytes() != (tmp_path / "sweep" / "orig" / "results.json").read_bytes()
    r = cli("infer", *common, "--sweep", tmp_path / "v.json", "--out", tmp_path / "sweep")
    assert r.returncode == 0 and "reusing 5 finished variant(s)" in r.stdout, r.stdout


def test_variants_equal_torchvision_forward(quick_caches, quick_detector, quick_bench, tmp_path):
    """forward_variants mirrors RoIHeads.forward: its plain variant is model(images)'s output, and a score_fn
    that recomputes the detector's own softmax from the tap it is given (so the tap is the box head's input)
    gives the same detections, byte for byte; a calibrated head's scores (mode cal: every column) give others."""
    from torch.utils.data import DataLoader, Subset

    from simcal.calibrate.trainer import load_head
    from simcal.data.annotations import load_annotations
    from simcal.data.detection_dataset import DetectionDataset, collate
    from simcal.detector.checkpoint import load_checkpoint
    from simcal.detector.predict import predict
    from simcal.infer.variants import predict_variants

    cache = Cache(quick_caches["train"])
    cfg = CalibConfig(head="3fc_rand", steps=20)
    head, info = train_head(cache, cfg)
    save_head(head_checkpoint(head, cfg, cache, info), tmp_path / "h.pth")
    head = load_head(tmp_path / "h.pth")[0].eval()
    model, ck = load_checkpoint(quick_detector, "cpu")
    heads = model.roi_heads
    heads.detections_per_img = 50  # the variants' cap below; masks are the time
    ann = load_annotations(quick_bench / "annotations" / "val.json")
    ds = Subset(DetectionDataset(ann, quick_bench / "images" / "val", with_masks=False), range(6))
    counts = [c["instance_count"] for c in ck["category_stats"]]

    def own(logits, tap):
        return torch.softmax(heads.box_predictor(heads.box_head(tap))[0], -1)

    fns = {"orig": None, "own": own, "cal": make_score_fn(counts, "cal", head, 300)}
    got = predict_variants(
        model, DataLoader(ds, batch_size=3, collate_fn=collate), ann.mapping, {k: (fn, 50) for k, fn in fns.items()}
    )
    ref = predict(model, DataLoader(ds, batch_size=3, collate_fn=collate), ann.mapping)
    assert len(ref) > 0 and got["orig"] == ref and got["own"] == ref
    assert [d["score"] for d in got["cal"]] != [d["score"] for d in ref]


@pytest.mark.slow
def test_torchrun_sharded_sweep_equals_one_process(quick_detector, few_val, tmp_path):
    """Images are sharded over processes; the merged, re-sorted output is the one-process output."""
    variants = [{"name": "orig", "max_dets": 20}, {"name": "gt", "props_gt": True, "max_dets": 30},
                {"name": "nc", "posthoc": "norcal", "gamma": 0.5, "max_dets": 30}]
    (tmp_path / "v.json").write_text(json.dumps(variants))
    # 8 images: every batch holds 2 images in both runs (float results depend on the batch size)
    base = ["infer", "--checkpoint", quick_detector, *few_val, "--sweep", tmp_path / "v.json", "--batch-size", "2",
            "--device", "cpu"]
    assert call_main_one_thread(*base, "--out", tmp_path / "one") == 0
    r = torchrun_simcal(*base, "--out", tmp_path / "ddp")
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("orig", "gt", "nc"):
        one = (tmp_path / "one" / name / "results.json").read_bytes()
        assert one == (tmp_path / "ddp" / name / "results.json").read_bytes(), name
    manifest = json.loads((tmp_path / "ddp" / "orig" / "results.json.manifest.json").read_text())
    assert manifest["record"]["world_size"] == 2


@pytest.mark.parametrize(
    "variants, message",
    [
        ([{"name": "a", "colour": "red"}], "variant 0 has unknown keys ['colour']"),
        ([{"name": "a"}, {"name": "a", "mode": "orig"}], "repeats the variant names ['a']"),
        ([{"name": "../up"}], "is not a plain folder name"),
        ([{"name": "a", "mode": "sel"}], "mode sel needs a calibrated head"),
        ([{"name": "a", "props_gt": True, "posthoc": "norcal"}], "props-gt replaces the classifier"),
        ([{"name": "a", "max_dets": 0}], "max_dets must be an integer >= 1, not 0"),
        ([{"name": "a", "T": "abc"}], "T must be a finite number >= 0, not 'abc'"),
        ([{"name": "a", "mode": ["sel"]}], "mode must be a string"),
        ({"name": "a"}, "must be a non-empty JSON list of objects"),
    ],
)
def test_bad_sweep_files_are_refused(quick_detector, quick_bench, tmp_path, cli, variants, message):
    (tmp_path / "v.json").write_text(json.dumps(variants))
    r = cli(
        "infer",
        "--checkpoint",
        quick_detector,
        "--data",
        quick_bench,
        "--sweep",
        tmp_path / "v.json",
        "--out",
        tmp_path / "o",
    )
    assert r.returncode == 2 and message in r.stderr and "v.json" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


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
    from simcal.data import category_statistics, load_annotations
    from simcal.detector.builders import build
    from simcal.detector.checkpoint import make_checkpoint, save_checkpoint

    ann = load_annotations(quick_bench / "annotations" / "train.json")
    torch.manual_seed(0)
    det = make_checkpoint(build("tiny", 12), "tiny", {}, ann.mapping, category_statistics(ann), ann.fingerprint, {}, 0)
    save_checkpoint(det, tmp_path / "det.pth")
    # the real exit-code path of 'simcal infer', through a process
    r = run_simcal(
        "infer",
        "--checkpoint",
        tmp_path / "det.pth",
        "--head-ckpt",
        tmp_path / "foreign.pth",
        "--data",
        quick_bench,
        "--out",
        tmp_path / "r.json",
    )
    assert r.returncode == 2 and "was calibrated on features of another detector" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("simcal infer: error: ")
    assert not (tmp_path / "r.json").exists()
