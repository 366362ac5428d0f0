"""A cascade detector through the pipeline: per-stage caches (extract --stage), heads bound to their stage,
per-stage dual-head inference, and the refusals around them."""

import json

import numpy as np
import pytest
import torch

from simcal.data import category_statistics, load_annotations
from simcal.detector.builders import build
from simcal.detector.checkpoint import category_mapping, load_checkpoint, make_checkpoint, save_checkpoint
from simcal.extract.schema import Cache
from tests.helpers import call_main


@pytest.fixture(scope="module")
def cascade(quick_bench, quick_detector, tmp_path_factory):
    """A tiny_cascade checkpoint whose backbone, RPN, stage-0 box head and classifier are the trained quick
    detector's (so its proposals find objects); stages 1 and 2 are freshly initialised."""
    trained, ck = load_checkpoint(quick_detector)
    torch.manual_seed(0)
    model = build("tiny_cascade", len(ck["categories"]["ids"]))
    own = model.state_dict()
    shared = {k: v for k, v in trained.state_dict().items() if k in own and own[k].shape == v.shape}
    assert "roi_heads.box_predictor.cls_score.weight" in shared
    model.load_state_dict(shared, strict=False)
    stats = category_statistics(load_annotations(quick_bench / "annotations" / "train.json"))
    doc = make_checkpoint(model, "tiny_cascade", {}, category_mapping(ck["categories"]), stats,
                          ck["annotation_fingerprint"], {}, 0)
    path = tmp_path_factory.mktemp("cascade") / "cascade.pth"
    save_checkpoint(doc, path)
    return path


def _few(quick_bench, tmp_path, n=6):
    doc = json.loads((quick_bench / "annotations" / "val.json").read_text())
    keep = {im["id"] for im in doc["images"][:n]}
    doc["images"] = [im for im in doc["images"] if im["id"] in keep]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in keep]
    (tmp_path / "few.json").write_text(json.dumps(doc))
    return ("--ann", tmp_path / "few.json", "--images", quick_bench / "images" / "val")


@pytest.fixture(scope="module")
def stage_caches(cascade, quick_bench, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stages")
    few = _few(quick_bench, tmp)
    out = {}
    for t in (0, 1):
        out[t] = tmp / f"s{t}.zarr"
        assert call_main("extract", "--checkpoint", cascade, *few, "--stage", t, "--out", out[t]) == 0
    return out


def test_each_stage_cache_has_its_rois_labels_and_classifier(cascade, stage_caches):
    model, _ = load_checkpoint(cascade)
    for t, path in stage_caches.items():
        cache = Cache(path)
        params = cache.attrs["params"]
        assert params["stage"] == t and params["fg_iou"] == [0.5, 0.6][t]
        labels, ious = np.asarray(cache["labels"][:]), np.asarray(cache["ious"][:])
        assert (ious[labels > 0] >= params["fg_iou"]).all() and (ious[labels == 0] < params["fg_iou"]).all()
        head = cache.detector_head()
        _, predictor = model.roi_heads.stage(t)
        assert np.array_equal(head["cls_score.weight"], predictor.cls_score.weight.detach().numpy())
    # stage 1's proposals are stage 0's regressed: other boxes, the GT rows aside
    rows = [Cache(stage_caches[t]) for t in (0, 1)]
    boxes = [np.asarray(c["boxes"][:])[~np.asarray(c["is_gt"][:])] for c in rows]
    assert not np.array_equal(boxes[0][:20], boxes[1][:20])


def test_stage_flags_are_checked_against_the_detector(cascade, quick_detector, quick_bench, tmp_path, cli):
    few = _few(quick_bench, tmp_path, 2)
    r = cli("extract", "--checkpoint", cascade, *few, "--out", tmp_path / "a.zarr")
    assert r.returncode == 2 and "is a cascade detector (tiny_cascade) with 3 box stages" in r.stderr
    assert "--stage" in r.stderr
    r = cli("extract", "--checkpoint", cascade, *few, "--stage", "3", "--out", tmp_path / "a.zarr")
    assert r.returncode == 2 and "--stage 3 does not exist" in r.stderr and "stages 0 to 2" in r.stderr
    r = cli("extract", "--checkpoint", quick_detector, *few, "--stage", "1", "--out", tmp_path / "b.zarr")
    assert r.returncode == 2 and "is a tiny detector, which has one box stage" in r.stderr
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_stage_heads_score_the_cascade_and_are_bound_to_their_stage(cascade, stage_caches, quick_bench, tmp_path,
                                                                     cli):
    heads = {}
    for t, cache in stage_caches.items():
        heads[t] = tmp_path / f"h{t}.pth"
        assert call_main("calibrate", "--cache", cache, "--head", "3fc_ft", "--steps", "5", "--out", heads[t]) == 0
    few = _few(quick_bench, tmp_path, 2)
    variants = [{"name": "orig"}, {"name": "cal1", "mode": "cal", "stage_heads": [None, str(heads[1]), None]},
                {"name": "sel01", "mode": "sel", "stage_heads": [str(heads[0]), str(heads[1]), None]}]
    (tmp_path / "v.json").write_text(json.dumps(variants))
    r = cli("infer", "--checkpoint", cascade, *few, "--sweep", tmp_path / "v.json", "--out", tmp_path / "inf")
    assert r.returncode == 0, r.stderr
    res = {v["name"]: json.loads((tmp_path / "inf" / v["name"] / "results.json").read_text()) for v in variants}
    assert res["orig"] and [d["score"] for d in res["cal1"]] != [d["score"] for d in res["orig"]]
    # the single-run form: one file or 'orig' per stage, in order
    r = cli("infer", "--checkpoint", cascade, *few, "--mode", "cal", "--head-ckpt", "orig", heads[1], "orig",
            "--out", tmp_path / "single.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "single.json").read_text()) == res["cal1"]
    # refusals: one head for three stages, a head on another stage, a post-hoc rule
    for argv, message in (
        (("--head-ckpt", heads[1]), "with 3 box stages, and this run gives one head"),
        (("--head-ckpt", heads[1], "orig", "orig"), "was calibrated on stage 1's cache, and is given for stage 0"),
        (("--head-ckpt", "orig", heads[1]), "has 3 box stages, and this run gives 2 stage heads"),
        (("--mode", "orig", "--posthoc", "norcal"), "asks for norcal, which SimCal defines for one-stage"),
    ):
        r = cli("infer", "--checkpoint", cascade, *few, *argv, "--out", tmp_path / "x.json")
        assert r.returncode == 2 and message in r.stderr, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1


def test_a_one_stage_detector_refuses_stage_heads(quick_detector, quick_bench, tmp_path, cli):
    (tmp_path / "v.json").write_text(json.dumps([{"name": "x", "mode": "cal", "stage_heads": [None, "h.pth"]}]))
    few = _few(quick_bench, tmp_path, 2)
    r = cli("infer", "--checkpoint", quick_detector, *few, "--sweep", tmp_path / "v.json", "--out", tmp_path / "o")
    assert r.returncode == 2 and "with one box stage, and variant 'x' gives stage_heads" in r.stderr
    (tmp_path / "w.json").write_text(json.dumps([{"name": "x", "mode": "cal", "stage_heads": [None, None]}]))
    r = cli("infer", "--checkpoint", quick_detector, *few, "--sweep", tmp_path / "w.json", "--out", tmp_path / "o")
    assert r.returncode == 2 and "stage_heads names no head" in r.stderr
