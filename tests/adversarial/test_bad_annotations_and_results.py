"""Hostile annotation and results files: each is refused by 'simcal evaluate' in one sentence with exit code 2.

Every bad input is made at test time from the tiny LVIS-style file (``tiny_doc``):
one mutation of the ground truth, the training file or the results, written to
``tmp_path``. Before these checks existed such inputs were scored silently,
crashed with a traceback, or killed the process inside pycocotools' C code.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from simcal.core.errors import InputError
from simcal.data.annotations import load_annotations
from tests.helpers import write_json

H, W = 20, 30  # every image of tiny_doc


def rle_string(stored: list[int]) -> str:
    """The COCO compressed-RLE string of the *stored* values (runs from the fourth on are deltas), as
    pycocotools' ``rleToString`` writes them; lets a test write counts no encoder would."""
    out = []
    for x in stored:
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr(48 + (c | (0x20 if more else 0))))
    return "".join(out)


def mask_rle(height: int = H, width: int = W) -> dict:
    """A real compressed RLE of a small rectangle, from pycocotools."""
    from pycocotools import mask as mask_utils

    m = np.zeros((height, width), dtype=np.uint8, order="F")
    m[2:6, 1:6] = 1
    rle = mask_utils.encode(m)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def good_results() -> list[dict]:
    """Valid results for tiny_doc: one detection per annotated image, with box and mask."""
    return [
        {"image_id": img, "category_id": cat, "bbox": [1.0, 2.0, 5.0, 4.0], "score": 0.9, "segmentation": mask_rle()}
        for img, cat in ((1, 3), (2, 9), (5, 9))
    ]


def _counts(seg_counts):
    """A mutation setting the counts of result 0's mask."""
    return lambda d: d["results"][0]["segmentation"].update(counts=seg_counts)


def _set(where, index, **kv):
    return lambda d: d[where][index].update(**kv)


def _gt_ann(index, **kv):
    return lambda d: d["gt"]["annotations"][index].update(**kv)


def _gt_img(index, **kv):
    return lambda d: d["gt"]["images"][index].update(**kv)


# case id -> (mutation of {"gt", "train", "results"}, words the one line must contain)
CASES = {
    # RLE in results
    "res_rle_sum_below": (_counts(rle_string([100, 50])), ["result 0", "add up to 150", "600"]),
    "res_rle_sum_above": (_counts(rle_string([500, 200])), ["result 0", "add up to 700", "600"]),
    "res_rle_bad_chars": (_counts("ab{|}~"), ["result 0", "malformed RLE", "character outside"]),
    "res_rle_truncated": (_counts(rle_string([0, 600])[:-1]), ["result 0", "truncated"]),
    "res_rle_overflow": (_counts("PPPPPPPPPPPPP1"), ["result 0", "overflow"]),
    "res_rle_negative_run": (_counts(rle_string([-5, 605])), ["result 0", "negative run"]),
    "res_rle_negative_delta": (_counts(rle_string([10, 20, 30, -25, 520])), ["result 0", "negative run"]),
    "res_rle_empty": (_counts(""), ["result 0", "empty counts"]),
    "res_rle_later_result": (
        lambda d: d["results"][2]["segmentation"].update(counts=rle_string([599])), ["result 2", "add up to 599"]
    ),
    # polygons and boxes in results
    "res_polygon_huge": (_set("results", 0, segmentation=[[1e9, 1, 5, 1, 5, 5]]), ["result 0", "outside the 30x20"]),
    "res_polygon_nan": (_set("results", 0, segmentation=[[float("nan"), 1, 5, 1, 5, 5]]), ["result 0", "non-finite"]),
    "res_polygon_short": (_set("results", 0, segmentation=[[1, 1, 5, 1]]), ["result 0", "bad polygon"]),
    "res_box_far_outside": (_set("results", 1, bbox=[1e9, 0.0, 5.0, 5.0]), ["result 1", "bbox", "outside"]),
    # ids in results
    "res_image_id_list": (_set("results", 0, image_id=[1]), ["result 0", "non-integer image_id"]),
    "res_category_id_float": (_set("results", 0, category_id=3.0), ["result 0", "non-integer category_id"]),
    "res_category_id_bool": (_set("results", 1, category_id=True), ["result 1", "non-integer category_id"]),
    "res_deep_nesting": (lambda d: d.update(results="[" * 100_000 + "]" * 100_000), ["results.json", "too deeply"]),
    # ground truth
    "gt_rle_sum_below": (
        lambda d: d["gt"]["annotations"][2].update(segmentation={"size": [H, W], "counts": rle_string([100, 50])}),
        ["gt.json", "annotation 12", "add up to 150"],
    ),
    "gt_rle_garbage": (
        lambda d: d["gt"]["annotations"][2].update(segmentation={"size": [H, W], "counts": "garbage!!"}),
        ["annotation 12", "character outside"],
    ),
    "gt_rle_list_sum": (
        lambda d: d["gt"]["annotations"][2].update(segmentation={"size": [H, W], "counts": [0, 6000]}),
        ["annotation 12", "add up to 6000"],
    ),
    "gt_polygon_huge": (
        _gt_ann(0, segmentation=[[1e300, 2, 6, 2, 6, 6, 1, 6]]), ["annotation 10", "image 1", "outside the 30x20"]
    ),
    "gt_box_far_outside": (_gt_ann(1, bbox=[1e6, 2, 5, 4]), ["annotation 11", "bbox", "outside"]),
    "gt_area_nan": (_gt_ann(0, area=float("nan")), ["annotation 10", "area nan"]),
    "gt_area_negative": (_gt_ann(0, area=-20), ["annotation 10", "area -20"]),
    "gt_iscrowd_2": (_gt_ann(0, iscrowd=2), ["annotation 10", "iscrowd 2", "0 or 1"]),
    "gt_iscrowd_string": (_gt_ann(0, iscrowd="yes"), ["annotation 10", "iscrowd 'yes'"]),
    "gt_neg_is_annotated": (_gt_img(0, neg_category_ids=[7, 3]), ["image 1", "category 3", "neg_category_ids"]),
    "gt_no_categories": (
        lambda d: d["gt"].update(categories=[], annotations=[]), ["gt.json", "empty 'categories'"]
    ),
    "gt_image_id_list": (_gt_ann(0, image_id=[1]), ["annotation 10", "image_id [1]", "not an integer"]),
    "gt_category_id_object": (_gt_ann(0, category_id={"id": 3}), ["annotation 10", "category_id", "not an integer"]),
    "gt_category_id_bool": (_gt_ann(0, category_id=True), ["annotation 10", "category_id True"]),
    "gt_image_id_float": (_gt_ann(0, image_id=1.0), ["annotation 10", "image_id 1.0"]),
    "gt_neg_nested": (_gt_img(0, neg_category_ids=[[7]]), ["image 1", "'neg_category_ids' holds [7]"]),
    "gt_not_exhaustive_str": (
        _gt_img(1, not_exhaustive_category_ids=["3"]), ["image 2", "'not_exhaustive_category_ids' holds '3'"]
    ),
    "gt_deep_nesting": (lambda d: d.update(gt="[" * 100_000 + "]" * 100_000), ["gt.json", "too deeply"]),
    # training annotations
    "train_no_annotations": (lambda d: d["train"].update(annotations=[]), ["train.json", "no annotations"]),
}


def _write(path, doc):
    if isinstance(doc, str):
        path.write_text(doc)
    else:
        write_json(path, doc)
    return path


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_evaluate_refuses_in_one_sentence(tmp_path, tiny_doc, cli, case):
    mutate, words = CASES[case]
    docs = {"gt": tiny_doc, "train": json.loads(json.dumps(tiny_doc)), "results": good_results()}
    mutate(docs)
    paths = {k: _write(tmp_path / f"{k}.json", v) for k, v in docs.items()}
    out = tmp_path / "metrics.json"
    r = cli("evaluate", "--gt", paths["gt"], "--results", paths["results"], "--train-ann", paths["train"],
            "--iou-type", "both", "--out", out)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simcal evaluate: error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not out.exists() and not (tmp_path / "metrics.json.manifest.json").exists()


def test_the_unmutated_inputs_are_scored(tmp_path, tiny_doc, cli):
    """The cases above differ from a valid evaluation by their one mutation only."""
    docs = {"gt": tiny_doc, "train": tiny_doc, "results": good_results()}
    paths = {k: _write(tmp_path / f"{k}.json", v) for k, v in docs.items()}
    r = cli("evaluate", "--gt", paths["gt"], "--results", paths["results"], "--train-ann", paths["train"],
            "--iou-type", "both", "--out", tmp_path / "m.json")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.json").exists()


def test_rle_encoder_of_the_tests_matches_pycocotools():
    """rle_string writes what pycocotools writes, so the hostile strings above differ only where meant to."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    m = np.asfortranarray((rng.random((H, W)) < 0.4).astype(np.uint8))
    flat = m.flatten(order="F")
    runs, value, length = [], 0, 0
    for v in flat.tolist():
        if v != value:
            runs.append(length)
            value, length = v, 0
        length += 1
    runs.append(length)
    stored = [r - runs[i - 2] if i > 2 else r for i, r in enumerate(runs)]
    assert rle_string(stored) == mask_utils.encode(m)["counts"].decode("ascii")


def test_symlink_out_of_the_image_root_is_refused(tmp_path, tiny_doc):
    from simcal.data.detection_dataset import DetectionDataset

    root, outside = tmp_path / "images", tmp_path / "secret"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "b.png").write_bytes(b"not an image")
    for name in ("a.png", "c.png"):
        (root / name).write_bytes(b"")
    os.symlink(outside / "b.png", root / "sub" / "b.png")
    ann = load_annotations(write_json(tmp_path / "a.json", tiny_doc))
    ds = DetectionDataset(ann, root)
    for call in (ds.check_files, lambda: ds[1]):
        with pytest.raises(InputError) as e:
            call()
        msg = str(e.value)
        assert len(msg.splitlines()) == 1 and str(root / "sub" / "b.png") in msg and "outside the image root" in msg


def test_symlinked_folder_out_of_the_image_root_is_refused(tmp_path, tiny_doc):
    root, outside = tmp_path / "images", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "sub")
    ann = load_annotations(write_json(tmp_path / "a.json", tiny_doc))
    with pytest.raises(InputError, match="outside the image root"):
        ann.image_path(ann.image(2), root)
    assert ann.image_path(ann.image(1), root) == root / "a.png"  # a plain name stays allowed
    # a root that is itself a link is fine: only links inside it are followed out
    os.symlink(root, tmp_path / "link_root")
    assert ann.image_path(ann.image(1), tmp_path / "link_root") == tmp_path / "link_root" / "a.png"
