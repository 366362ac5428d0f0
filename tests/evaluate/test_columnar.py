"""The columnar detections (evaluate/detections.py) and the fast backend fed from them.

The records built from the columns equal the per-detection dicts of the LVISResults
rules written out plainly here (cap with ties in file order, box area, ``0 < area``,
ids in order), and both backends agree on a case with the edge cases of that path:
an empty image, detections of a category absent from an image (dropped) or absent
from the whole ground truth (kept where negative), ties across the cap, zero areas.
"""

from __future__ import annotations

import copy
import gc
import json
import math

import numpy as np
import pytest

from simcal.data.annotations import parse_annotations
from simcal.evaluate.evaluator import evaluate_results
from simcal.evaluate.gcpause import gc_paused
from simcal.evaluate.inputs import prepare_results
from simcal.evaluate.protocol import METRIC_KEYS
from simcal.evaluate.synthetic_cases import CaseSpec, make_case

CAP = 12


def _ann(doc: dict, name: str):
    return parse_annotations(json.dumps(doc).encode(), name)


def _dict_records(results: list[dict], images: dict[int, dict], max_dets: int, iou_type: str) -> list[dict]:
    """The per-detection dicts, one result at a time: LVISResults' cap and area, ids 1..N."""
    by_image: dict[int, list] = {}
    for i, r in enumerate(results):
        by_image.setdefault(r["image_id"], []).append((i, r))
    out = []
    for img in sorted(by_image):
        ranked = sorted(by_image[img], key=lambda ir: -ir[1]["score"])[:max_dets]  # stable: ties in file order
        for _, r in ranked:
            d = {"image_id": img, "category_id": r["category_id"], "score": float(r["score"]),
                 "bbox": [float(v) for v in r["bbox"]]}
            if iou_type == "segm":
                im = images[img]
                d["segmentation"] = {"size": [im["height"], im["width"]], "counts": r["segmentation"]["counts"]}
            d["area"] = d["bbox"][2] * d["bbox"][3]
            out.append(d)
    out = [d for d in out if 0 < d["area"] < math.inf]
    for k, d in enumerate(out):
        d["id"], d["iscrowd"] = k + 1, 0
    return out


@pytest.fixture(scope="module")
def edge_case():
    """A generated case plus: an empty image, a category without ground truth, ties across the cap, zero areas."""
    gt, train, res = make_case(CaseSpec(num_images=14, num_categories=9, dets_per_image=(4, 30)), seed=5)
    new_cat = max(c["id"] for c in gt["categories"]) + 1
    cat = {"id": new_cat, "name": "absent", "frequency": "r", "synset": "absent.n.01"}
    gt["categories"].append(dict(cat))
    train["categories"].append(dict(cat))
    train["annotations"].append({**train["annotations"][0], "id": 10**6, "category_id": new_cat})
    empty = max(im["id"] for im in gt["images"]) + 1
    gt["images"].append({**gt["images"][0], "id": empty, "neg_category_ids": [], "not_exhaustive_category_ids": []})
    first = gt["images"][0]
    first["neg_category_ids"] = sorted(set(first["neg_category_ids"]) | {new_cat})
    extra = []
    for im in gt["images"][:3]:  # the new category: kept in image 0 (negative there), dropped in the others
        for r in [r for r in res if r["image_id"] == im["id"]][:3]:
            extra.append({**copy.deepcopy(r), "category_id": new_cat, "score": 0.95})
    res.extend(extra)
    busiest = max({r["image_id"] for r in res}, key=lambda i: sum(r["image_id"] == i for r in res))
    for r in [r for r in res if r["image_id"] == busiest]:
        r["score"] = 0.5  # every score tied, more detections than the cap
    for r in res[3::17]:
        r["bbox"][2] = 0.0  # zero area: left out after the cap
    return gt, train, res, {"empty": empty, "new_cat": new_cat, "busiest": busiest}


def test_columns_give_the_records_of_the_dict_rules(edge_case):
    gt, _, res, marks = edge_case
    assert sum(r["image_id"] == marks["busiest"] for r in res) > CAP
    G = _ann(gt, "gt.json")
    images = {im["id"]: im for im in gt["images"]}
    dets = prepare_results(copy.deepcopy(res), G, ("bbox", "segm"), CAP)
    for t in ("bbox", "segm"):
        want = _dict_records(res, images, CAP, t)
        assert dets.for_iou_type(t, with_ids=True) == want
        bare = [{k: v for k, v in d.items() if k not in ("id", "iscrowd", "area")} for d in want]
        assert dets.for_iou_type(t, with_ids=False) == bare
    rows = np.array([2, 5, 7])
    assert dets.for_iou_type("segm", with_ids=True, rows=rows) == [want[i] for i in rows]
    assert dets.num_zero_area > 0 and dets.num_images_capped >= 1


@pytest.mark.parametrize("cat_chunk", [None, 2])
def test_backends_agree_on_the_edge_case(edge_case, cat_chunk):
    gt, train, res, _ = edge_case
    G, T = _ann(gt, "gt.json"), _ann(train, "train.json")
    kw = dict(iou_types=("bbox", "segm"), max_dets=CAP)
    fast = evaluate_results(G, copy.deepcopy(res), T, backend="fast", cat_chunk=cat_chunk, **kw)
    ref = evaluate_results(G, copy.deepcopy(res), T, backend="lvis", **kw)
    for t in ("bbox", "segm"):
        assert np.abs(fast.precision[t] - ref.precision[t]).max() < 1e-9
        for k in METRIC_KEYS:
            assert fast.metrics[t][k] == pytest.approx(ref.metrics[t][k], abs=1e-12), (t, k)
        assert 0.05 < fast.metrics[t]["AP"] < 0.95


def test_prepared_detections_can_be_passed_instead_of_the_records(edge_case):
    gt, train, res, _ = edge_case
    G, T = _ann(gt, "gt.json"), _ann(train, "train.json")
    dets = prepare_results(copy.deepcopy(res), G, ("bbox", "segm"), CAP)
    a = evaluate_results(G, dets, T, max_dets=CAP)
    b = evaluate_results(G, copy.deepcopy(res), T, max_dets=CAP)
    assert a.metrics == b.metrics and a.config["iou_types"] == ["bbox", "segm"]


def test_gc_pause_restores_the_collector():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()
