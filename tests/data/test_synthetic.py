"""The synthetic long-tail benchmark: format, long-tail design, determinism, safe writes."""

import json
from collections import Counter

import numpy as np
import pytest

from simcal.data import InputError, category_statistics, load_annotations
from simcal.data.synthetic import PRESETS, class_table, max_dets_for, synthesize


def _load(bench, split):
    return load_annotations(bench / "annotations" / f"{split}.json")


def test_default_preset_design_meets_the_spec():
    cfg = PRESETS["default"]
    classes = class_table(cfg, np.random.default_rng([0, 0]))
    by_bin = Counter(c["design_bin"] for c in classes)
    assert min(by_bin[b] for b in (1, 2, 3, 4)) >= 8
    counts = [c["train_count"] for c in classes]
    assert min(counts) <= 3 and max(counts) >= 1000
    assert cfg.val_per_class >= 15
    # Every tail class has a head-class look-alike sharing its shape and one sharing its colour.
    head = [c for c in classes if c["design_bin"] == 4]
    for c in classes:
        if c["design_bin"] == 1:
            assert any(h["shape"] == c["shape"] for h in head)
            assert any(h["colour"] == c["colour"] for h in head)
    assert max_dets_for(len(classes)) == 10 and max_dets_for(1230) == 300


def test_presets_are_the_registered_names_and_smoke_is_quick_with_a_small_val():
    from dataclasses import replace

    from simcal.core.names import SYNTH_PRESETS

    assert tuple(PRESETS) == tuple(SYNTH_PRESETS)
    assert PRESETS["smoke"] == replace(PRESETS["quick"], val_per_class=2)


def test_quick_benchmark_is_valid_lvis_and_long_tailed(quick_bench):
    train, val = _load(quick_bench, "train"), _load(quick_bench, "val")
    cfg = PRESETS["quick"]
    stats = category_statistics(train)
    # Exact train counts as designed (no object is lost when an image is full).
    designed = {c["id"]: c["train_count"] for c in class_table(cfg, np.random.default_rng([0, 0]))}
    assert {c["id"]: c["instance_count"] for c in stats} == designed
    assert Counter(c["bin"] for c in stats) == {1: 3, 2: 3, 3: 3, 4: 3}
    assert Counter(a["category_id"] for a in val.annotations) == {c["id"]: cfg.val_per_class for c in stats}
    # Category metadata written by the generator agrees with statistics recomputed from the file.
    for c, s in zip(train.categories, stats):
        assert (c["frequency"], c["image_count"], c["instance_count"]) == (s["frequency"], s["image_count"],
                                                                          s["instance_count"])
    assert val.categories == train.categories  # val carries the train frequency, as LVIS does
    assert train.info["max_dets_per_image"] == 10
    assert not set(i["id"] for i in train.images) & set(i["id"] for i in val.images)


def test_negatives_masks_and_boxes_agree(quick_bench):
    from pycocotools import mask as mask_utils

    ann = _load(quick_bench, "val")
    all_ids = {c["id"] for c in ann.categories}
    for img in ann.images[:50]:
        anns = ann.annotations_of(img["id"])
        present = {a["category_id"] for a in anns}
        assert set(img["neg_category_ids"]) == all_ids - present
        assert img["not_exhaustive_category_ids"] == []
        assert (quick_bench / "images" / "val" / img["file_name"]).is_file()
        for a in anns:
            m = mask_utils.decode(a["segmentation"])
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert a["area"] == m.sum()


def test_lvis_package_reads_it(quick_bench):
    # Loading needs no np.float alias (lvis 0.5.3 uses it only in LVISEval, where
    # simcal.evaluate.lvis_reference.numpy_aliases provides it for the call): none is set here.
    from lvis import LVIS

    gt = LVIS(str(quick_bench / "annotations" / "val.json"))
    assert len(gt.get_img_ids()) == len(_load(quick_bench, "val").images)
    assert sorted(gt.get_cat_ids()) == sorted(c["id"] for c in _load(quick_bench, "val").categories)
    assert "float" not in np.__dict__  # nothing leaks into the tests that run after this one


def test_same_seed_same_bytes_other_seed_differs(quick_bench, tmp_path):
    again, created = synthesize(tmp_path / "again", "quick", seed=0, show_progress=False)
    assert created
    for rel in ("annotations/train.json", "annotations/val.json", "images/train/00000001.png",
                "images/val/01000007.png"):
        assert (again / rel).read_bytes() == (quick_bench / rel).read_bytes(), rel
    other, _ = synthesize(tmp_path / "other", "quick", seed=1, show_progress=False)
    assert (other / "annotations/train.json").read_bytes() != (quick_bench / "annotations/train.json").read_bytes()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # nothing half-written left behind


def test_reuse_refuse_and_overwrite(quick_bench, tmp_path, cli):
    assert synthesize(quick_bench, "quick", seed=0, show_progress=False) == (quick_bench, False)
    with pytest.raises(InputError, match="seed 0; pass --overwrite"):
        synthesize(quick_bench, "quick", seed=3, show_progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    r = cli("data", "synth", "--out", tmp_path / "mine", "--preset", "quick")
    assert r.returncode == 2 and "exists and is not a finished synthetic benchmark" in r.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_synth_cli_prints_statistics(tmp_path, cli):
    r = cli("data", "synth", "--out", tmp_path / "b", "--preset", "quick", "--seed", "5")
    assert r.returncode == 0, r.stderr
    assert "| classes | 3 | 3 | 3 | 3 |" in r.stdout
    info = json.loads((tmp_path / "b" / "annotations" / "train.json").read_text())["info"]
    assert (info["preset"], info["seed"]) == ("quick", 5)
