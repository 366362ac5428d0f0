"""Hostile detector checkpoints and head files: each is refused in one sentence, exit code 2, nothing written.

The files load safely (plain tensors and containers) but lie about themselves: malformed
categories, missing keys, wrong types, sizes the weights do not back, non-finite weights,
a weight edit that keeps the old fingerprint. A valid tiny detector and head are made once
per module, each case edits a copy of their loaded dicts.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_lvis

SD = "state_dict"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A 3-image dataset, a random tiny detector on its 3 categories and a ``2fc_rand`` head bound to it."""
    from PIL import Image

    from simcal.calibrate.heads import build_head
    from simcal.calibrate.trainer import CalibConfig, DetectorSpec, head_checkpoint, save_head
    from simcal.data import category_statistics, load_annotations
    from simcal.detector.builders import build
    from simcal.detector.checkpoint import make_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("adversarial")
    doc = tiny_lvis()
    for im in doc["images"]:
        (root / "images" / im["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (im["width"], im["height"]), (90, 120, 60)).save(root / "images" / im["file_name"])
    ann_path = root / "ann.json"
    ann_path.write_text(json.dumps(doc))
    ann = load_annotations(ann_path)
    torch.manual_seed(0)
    model = build("tiny", ann.mapping.num_classes).eval()
    det = make_checkpoint(model, "tiny", {}, ann.mapping, category_statistics(ann), ann.fingerprint, {}, 0)
    save_checkpoint(det, root / "det.pth")
    spec = DetectorSpec(model, det, str(root / "det.pth"), ann.fingerprint)
    cfg = CalibConfig(head="2fc_rand", steps=1)
    head = build_head(cfg.head, spec.dim, ann.mapping.num_classes, 256)
    save_head(head_checkpoint(head, cfg, spec, {"steps": 1}), root / "head.pth")
    return {"root": root, "ann": ann_path, "images": root / "images",
            "det": torch.load(root / "det.pth", weights_only=True),
            "head": torch.load(root / "head.pth", weights_only=True)}


def _set(key, value):
    def edit(d):
        d[key] = value
        return d
    return edit


def _drop(key):
    def edit(d):
        del d[key]
        return d
    return edit


def _tensor(name, fn):
    """Replace state-dict tensor ``name`` by ``fn(tensor)``."""
    def edit(d):
        d[SD][name] = fn(d[SD][name].clone())
        return d
    return edit


def _entry(name, value):
    """Set state-dict entry ``name`` to ``value`` (None: remove it)."""
    def edit(d):
        if value is None:
            del d[SD][name]
        else:
            d[SD][name] = value
        return d
    return edit


def _poke(value):
    def fn(t):
        t.view(-1)[0] = value
        return t
    return fn


def _extra_category(d):
    """A detector checkpoint declaring a 4th category its weights were not made for."""
    d["categories"]["ids"].append(11)
    d["categories"]["names"].append("extra")
    d["category_stats"].append({**d["category_stats"][0], "id": 11, "name": "extra"})
    return d


def _head_for_four_classes(d):
    """A self-consistent head for 4 categories, with the detector's (3-category) fingerprint."""
    d["categories"].append({**d["categories"][0], "id": 11, "name": "extra"})
    d["head_kwargs"]["num_classes"] = 4
    d[SD]["cls_score.weight"] = torch.cat([d[SD]["cls_score.weight"], torch.zeros(1, 256)])
    d[SD]["cls_score.bias"] = torch.cat([d[SD]["cls_score.bias"], torch.zeros(1)])
    return d


def _ids(value):
    def edit(d):
        d["categories"]["ids"] = value
        return d
    return edit


def _stat(k, key, value):
    def edit(d):
        d["category_stats"][k][key] = value
        return d
    return edit


def _head_kw(key, value):
    def edit(d):
        d["head_kwargs"][key] = value
        return d
    return edit


FC6 = "roi_heads.box_head.fc6.weight"
CLS_B = "roi_heads.box_predictor.cls_score.bias"

# (id, which file is edited, edit of its loaded dict, words the one-line refusal must hold)
CASES = [
    ("det-plain-tensor", "det", lambda d: torch.zeros(3), "is not a SimCal detector checkpoint (a Tensor, not a dict)"),
    ("det-list", "det", lambda d: [d["arch"]], "is not a SimCal detector checkpoint (a list, not a dict)"),
    ("det-categories-list", "det", _set("categories", [{"id": 3, "name": "apple"}]), "'categories' of type list"),
    ("det-category-id-str", "det", _ids(["3", 7, 9]), "not an integer id and a string name"),
    ("det-duplicate-ids", "det", _ids([3, 3, 9]), "category ids that repeat or are not ascending"),
    ("det-count-vs-weights", "det", _extra_category, "weights do not match its arch 'tiny' with 4 categories"),
    ("det-no-category-stats", "det", _drop("category_stats"), "missing 'category_stats'"),
    ("det-stats-count", "det", lambda d: _set("category_stats", d["category_stats"][:2])(d),
     "2 'category_stats' entries that do not follow its 3 categories"),
    ("det-stats-negative", "det", _stat(1, "instance_count", -1), "instance_count must be an integer >= 0"),
    ("det-stats-id-float", "det", _stat(0, "id", 3.0), "'category_stats[0].id' of type float"),
    ("det-unknown-arch", "det", _set("arch", "r101_fpn"), "unknown arch 'r101_fpn'"),
    ("det-kwargs-list", "det", _set("builder_kwargs", [1]), "'builder_kwargs' of type list"),
    ("det-kwargs-tensor", "det", _set("builder_kwargs", {"class_agnostic": torch.ones(1)}),
     "builder_kwargs entry 'class_agnostic'"),
    ("det-names-a-file", "det", _set("builder_kwargs", {"backbone_weights": "/etc/passwd"}),
     "builder_kwargs entry 'backbone_weights' (a file to read)"),
    ("det-declared-size", "det", _set("builder_kwargs", {"representation_size": 100000}),
     f"'{FC6}' is torch.float32 (256, 3136), it needs torch.float32 (100000, 3136)"),
    ("det-wrong-shape", "det", _tensor(FC6, lambda t: t[:10]), f"'{FC6}' is torch.float32 (10, 3136)"),
    ("det-int-weights", "det", _tensor(FC6, lambda t: t.long()), f"'{FC6}' is torch.int64"),
    ("det-missing-key", "det", _entry(CLS_B, None), f"lacks tensor '{CLS_B}'"),
    ("det-extra-key", "det", _entry("extra.weight", torch.zeros(2)), "unexpected tensor 'extra.weight'"),
    ("det-state-dict-list", "det", _set(SD, [torch.zeros(1)]), "'state_dict' of type list"),
    ("det-state-value-float", "det", _entry(CLS_B, 1.0), f"entry '{CLS_B}' that is not a dense"),
    ("det-nan", "det", _tensor("roi_heads.box_head.fc7.weight", _poke(float("nan"))),
     "non-finite weights (NaN or inf) in 'roi_heads.box_head.fc7.weight'"),
    ("det-inf", "det", _tensor(CLS_B, _poke(float("inf"))), f"non-finite weights (NaN or inf) in '{CLS_B}'"),
    ("det-weights-edited-fingerprint-kept", "det", _tensor(CLS_B, lambda t: t + 1),
     "head.pth: was calibrated on features of another detector than"),
    ("head-plain-tensor", "head", lambda d: torch.zeros(3), "is not a SimCal head checkpoint"),
    ("head-unknown-head", "head", _set("head", "5fc_rand"), "unknown head '5fc_rand'"),
    ("head-no-kwargs", "head", _drop("head_kwargs"), "has no 'head_kwargs'"),
    ("head-kwargs-str", "head", _head_kw("dim", "3136"), "head_kwargs dim must be an integer >= 1, not '3136'"),
    ("head-kwargs-extra", "head", _head_kw("depth", 3), "has head_kwargs ['depth', 'dim', 'hidden', 'num_classes']"),
    ("head-declared-hidden", "head", _head_kw("hidden", 100000),
     "'fc6.weight' is torch.float32 (256, 3136), it needs torch.float32 (100000, 3136)"),
    ("head-wrong-shape", "head", _tensor("cls_score.weight", lambda t: t[:2]), "'cls_score.weight' is torch.float32"),
    ("head-missing-key", "head", _entry("fc6.bias", None), "lacks tensor 'fc6.bias'"),
    ("head-extra-key", "head", _entry("fc7.weight", torch.zeros(1)), "unexpected tensor 'fc7.weight'"),
    ("head-state-dict-int", "head", _set(SD, 3), "'state_dict' of type int"),
    ("head-no-categories", "head", _drop("categories"), "has no 'categories'"),
    ("head-categories-ints", "head", _set("categories", [3, 7, 9]), "not a non-empty list of per-class dicts"),
    ("head-no-config", "head", _drop("config"), "has no 'config'"),
    ("head-four-classes", "head", _head_for_four_classes,
     "head.pth: scores 4 categories from 3136-d features, but"),
    ("head-nan", "head", _tensor("fc6.weight", _poke(float("nan"))), "non-finite weights (NaN or inf) in 'fc6.weight'"),
    ("head-fingerprint-edited", "head", _set("detector_fingerprint", "sha256:" + "0" * 64),
     "head.pth: was calibrated on features of another detector than"),
]


def _infer(cli, world, tmp_path, det: Path, head: Path):
    return cli("infer", "--checkpoint", det, "--head-ckpt", head, "--mode", "sel", "--ann", world["ann"],
               "--images", world["images"], "--out", tmp_path / "out.json", "--device", "cpu", "--batch-size", "3")


def test_valid_files_run(world, tmp_path, cli):
    """The untouched detector and head pass the same checks the hostile copies fail."""
    torch.save(world["det"], tmp_path / "det.pth")
    torch.save(world["head"], tmp_path / "head.pth")
    r = _infer(cli, world, tmp_path, tmp_path / "det.pth", tmp_path / "head.pth")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.json").exists()


@pytest.mark.parametrize("which, edit, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_file_is_refused_in_one_sentence(world, tmp_path, cli, which, edit, words):
    files = {}
    for name in ("det", "head"):
        doc = copy.deepcopy(world[name])
        torch.save(edit(doc) if name == which else doc, tmp_path / f"{name}.pth")
        files[name] = tmp_path / f"{name}.pth"
    r = _infer(cli, world, tmp_path, files["det"], files["head"])
    assert r.returncode == 2, r.stderr[-2000:]
    assert words in r.stderr and f"{which}.pth" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out.json").exists()


def test_every_stage_reads_detectors_through_the_same_checks(world, tmp_path, cli):
    """extract (and calibrate --source online) load the detector the same way infer does."""
    doc = _tensor(FC6, _poke(float("nan")))(copy.deepcopy(world["det"]))
    torch.save(doc, tmp_path / "det.pth")
    r = cli("extract", "--checkpoint", tmp_path / "det.pth", "--ann", world["ann"], "--images", world["images"],
            "--out", tmp_path / "c.zarr", "--device", "cpu")
    assert r.returncode == 2 and f"non-finite weights (NaN or inf) in '{FC6}'" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "c.zarr").exists()


def test_fingerprint_comes_from_the_weights_not_the_file(world, tmp_path):
    """A checkpoint's stored fingerprint is replaced by the one of the weights it holds."""
    from simcal.detector.checkpoint import read_checkpoint

    doc = copy.deepcopy(world["det"])
    real = doc["detector_fingerprint"]
    doc["detector_fingerprint"] = "sha256:" + "1" * 64
    torch.save(doc, tmp_path / "det.pth")
    assert read_checkpoint(tmp_path / "det.pth")["detector_fingerprint"] == real
