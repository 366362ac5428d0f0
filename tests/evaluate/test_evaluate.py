"""simcal evaluate: the fast backend equals LVISEval, AP1-AP4 bins, bad input, tables, compare."""

from __future__ import annotations

import copy
import json
import math
from collections import Counter

import numpy as np
import pytest

from simcal.data.annotations import parse_annotations
from simcal.evaluate.evaluator import LVISEvaluator, evaluate_results
from simcal.evaluate.lvis_reference import numpy_aliases
from simcal.evaluate.protocol import METRIC_KEYS
from simcal.evaluate.synthetic_cases import CaseSpec, make_case, uncompressed_rle
from tests.helpers import run_simcal

TOL = 1e-4
LVIS_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def _ann(doc: dict, name: str):
    return parse_annotations(json.dumps(doc).encode(), name)


def _both(gt, res, train, **kw):
    fast = evaluate_results(gt, copy.deepcopy(res), train, backend="fast", **kw)
    ref = evaluate_results(gt, copy.deepcopy(res), train, backend="lvis", **kw)
    return fast, ref


def _assert_same(fast, ref):
    assert fast.metrics.keys() == ref.metrics.keys()
    for t in fast.metrics:
        for k in METRIC_KEYS:
            assert abs(fast.metrics[t][k] - ref.metrics[t][k]) <= TOL, (t, k, fast.metrics[t][k], ref.metrics[t][k])
        # stronger than required: the whole precision array agrees
        assert np.abs(fast.precision[t] - ref.precision[t]).max() < 1e-9
        for a, b in zip(fast.per_class, ref.per_class):
            assert abs(a[f"AP_{t}"] - b[f"AP_{t}"]) <= TOL


@pytest.fixture(scope="module")
def case():
    """A generated case with every special case of the LVIS protocol (see evaluate/synthetic_cases.py)."""
    gt, train, res = make_case(CaseSpec(num_images=36, num_categories=28, dets_per_image=(15, 380)), seed=3)
    for r in res[:: len(res) // 6][:6]:  # zero-area boxes: LVIS drops them after the cap
        r["bbox"][2] = 0.0
    gt["annotations"][3]["iscrowd"] = 1  # LVIS ignores iscrowd: an ordinary instance
    return gt, train, res


@pytest.fixture(scope="module")
def case_files(case, tmp_path_factory):
    d = tmp_path_factory.mktemp("evalcase")
    gt, train, res = case
    for name, doc in (("gt.json", gt), ("train.json", train), ("res.json", res)):
        (d / name).write_text(json.dumps(doc))
    return d


def test_generated_case_covers_the_protocol(case):
    gt, train, res = case
    per_img = Counter(r["image_id"] for r in res)
    assert max(per_img.values()) > 300  # the cap bites
    assert any(im["not_exhaustive_category_ids"] for im in gt["images"])
    assert any(im["neg_category_ids"] for im in gt["images"])
    val_cats = {a["category_id"] for a in gt["annotations"]}
    assert len(val_cats) < len(gt["categories"])  # classes absent from val
    pos = {}
    for a in gt["annotations"]:
        pos.setdefault(a["image_id"], set()).add(a["category_id"])
    neg = {im["id"]: set(im["neg_category_ids"]) for im in gt["images"]}
    unannotated = [r for r in res if r["category_id"] not in pos.get(r["image_id"], set()) | neg[r["image_id"]]]
    assert unannotated  # federated: these must be dropped, not counted as false positives
    assert any(r["bbox"][2] == 0 for r in res) and any(a.get("iscrowd") for a in gt["annotations"])
    assert all(isinstance(r["segmentation"]["counts"], str) for r in res)  # compressed RLE
    assert any(isinstance(a["segmentation"]["counts"], list) for a in gt["annotations"])  # uncompressed RLE
    areas = [a["area"] for a in gt["annotations"]]
    assert min(areas) < 32**2 and max(areas) > 96**2 and any(32**2 < x < 96**2 for x in areas)


@pytest.mark.parametrize("max_dets", [300, 12])
def test_backends_agree_on_every_metric(case, max_dets):
    gt, train, res = case
    G, T = _ann(gt, "gt.json"), _ann(train, "train.json")
    fast, ref = _both(G, res, T, iou_types=("bbox", "segm"), max_dets=max_dets)
    _assert_same(fast, ref)
    # the chunked path (LVIS scale: categories a few at a time, only those present in val) is exact too
    chunked = evaluate_results(
        G, copy.deepcopy(res), T, ("bbox", "segm"), backend="fast", max_dets=max_dets, cat_chunk=5
    )
    _assert_same(chunked, ref)
    for t in ("bbox", "segm"):
        assert 0.05 < fast.metrics[t]["AP"] < 0.95  # a case with signal, not all zeros
        # and each backend's own summary agrees with the one computed from its precision array
        for k in LVIS_KEYS:
            assert abs(fast.native[t][k] - fast.metrics[t][k]) <= 1e-12
            assert abs(ref.native[t][k] - ref.metrics[t][k]) <= 1e-12


def test_backends_agree_with_tied_scores_and_coco_lt_bins(tmp_path):
    gt, train, res = make_case(CaseSpec(num_images=20, num_categories=16, dets_per_image=(10, 60)), seed=11)
    for r in res:  # many equal scores: ties are broken the same way (stable sorts, file order)
        r["score"] = round(r["score"], 1)
    G, T = _ann(gt, "gt.json"), _ann(train, "train.json")
    fast, ref = _both(G, res, T, iou_types=("bbox", "segm"), max_dets=15, bins="coco-lt")
    _assert_same(fast, ref)
    # uncompressed RLE masks and numpy-free ints take the record-by-record path: same numbers
    res2 = copy.deepcopy(res)
    for r in res2[::7]:
        r["segmentation"] = uncompressed_rle(r["segmentation"])
    again = evaluate_results(G, res2, T, ("bbox", "segm"), backend="fast", max_dets=15, bins="coco-lt")
    for t in again.metrics:
        assert again.metrics[t] == fast.metrics[t]
    # ties across the cap boundary too: LVISEval on the raw files with the same cap
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    for t in ("bbox", "segm"):
        raw = _lvis_eval(tmp_path / "gt.json", tmp_path / "res.json", t, max_dets=15)
        for k in LVIS_KEYS:
            assert abs(fast.metrics[t][k] - raw[k]) <= TOL, (t, k)


def test_mask_only_results_use_mask_area_like_lvis(case, tmp_path):
    gt, train, res = case
    res = [{k: v for k, v in r.items() if k != "bbox"} for r in res[:3000]]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    G, T = _ann(gt, "gt.json"), _ann(train, "train.json")
    fast, ref = _both(G, res, T, iou_types=("segm",), max_dets=300)
    _assert_same(fast, ref)
    raw = _lvis_eval(tmp_path / "gt.json", tmp_path / "res.json", "segm")
    for k in LVIS_KEYS:
        assert abs(fast.metrics["segm"][k] - raw[k]) <= TOL, k


def test_coco_format_ground_truth_agrees_and_is_exhaustive():
    gt, train, res = make_case(CaseSpec(num_images=16, num_categories=10, dets_per_image=(5, 40)), seed=5)
    for im in gt["images"]:
        del im["neg_category_ids"], im["not_exhaustive_category_ids"]
    for c in gt["categories"]:
        del c["frequency"]
    G, T = _ann(gt, "gt.json"), _ann(train, "train.json")
    fast, ref = _both(G, res, T, iou_types=("bbox",), max_dets=100)
    _assert_same(fast, ref)
    assert any("exhaustive" in w for w in fast.warnings) and any("frequencies from" in w for w in fast.warnings)


def _lvis_eval(gt_path, res_path, iou_type, max_dets=300, cat_ids=None):
    with numpy_aliases():
        from lvis import LVIS, LVISEval, LVISResults

        g = LVIS(str(gt_path))
        r = LVISResults(g, str(res_path), max_dets=max_dets)
        e = LVISEval(g, r, iou_type)
        if cat_ids is not None:
            e.params.cat_ids = sorted(cat_ids)
        e.run()
        return e.results


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_fast_backend_equals_lvis_eval_run_on_the_raw_files(case, case_files, iou_type):
    """LVISEval on the user's files as they are (its own cap, areas, RLE handling) = our fast path."""
    gt, train, res = case
    ref = _lvis_eval(case_files / "gt.json", case_files / "res.json", iou_type)
    ours = evaluate_results(
        _ann(gt, "gt.json"), copy.deepcopy(res), _ann(train, "t.json"), (iou_type,), backend="fast", max_dets=300
    ).metrics[iou_type]
    for k in LVIS_KEYS:
        assert abs(ours[k] - ref[k]) <= TOL, (k, ours[k], ref[k])


def test_ap_bins_equal_lvis_eval_restricted_to_each_bin(case, case_files):
    """Independent AP1-AP4: bins from a plain count of train instances, AP from LVISEval on those classes only."""
    gt, train, res = case
    counts = Counter(a["category_id"] for a in train["annotations"])
    val_cats = {a["category_id"] for a in gt["annotations"]}
    ours = evaluate_results(
        _ann(gt, "gt.json"), copy.deepcopy(res), _ann(train, "t.json"), ("segm",), backend="fast", max_dets=300
    ).metrics["segm"]
    seen = 0
    for b, (lo, hi) in enumerate([(0, 10), (10, 100), (100, 1000), (1000, math.inf)], start=1):
        cats = [c["id"] for c in gt["categories"] if lo <= counts[c["id"]] < hi]
        if not set(cats) & val_cats:
            assert ours[f"AP{b}"] == -1
            continue
        seen += 1
        ref = _lvis_eval(case_files / "gt.json", case_files / "res.json", "segm", cat_ids=cats)
        assert abs(ours[f"AP{b}"] - ref["AP"]) <= 1e-9, b
    assert seen >= 3


def test_ap_bins_by_hand():
    """Two images, three classes; every AP computable on paper."""
    img = lambda i, neg: {
        "id": i,
        "file_name": f"{i}.png",
        "height": 100,
        "width": 100,  # noqa: E731
        "neg_category_ids": neg,
        "not_exhaustive_category_ids": [],
    }
    gt = {
        "images": [img(1, [3]), img(2, []), img(3, [])],
        "categories": [
            {"id": 1, "name": "a", "frequency": "r"},
            {"id": 2, "name": "b", "frequency": "f"},
            {"id": 3, "name": "c", "frequency": "c"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 40, 40], "area": 1600},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10], "area": 100},
        ],
    }
    train = copy.deepcopy(gt)
    train["annotations"] = (
        [{"id": i, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]} for i in range(1, 6)]  # 5 -> bin 1
        + [{"id": 100 + i, "image_id": 2, "category_id": 2, "bbox": [0, 0, 5, 5]} for i in range(1500)]  # bin 4
        + [{"id": 9000 + i, "image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5]} for i in range(50)]  # bin 2
    )
    res = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},  # a: TP -> AP 1
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 30, 30], "score": 0.95},  # b: FP first
        {"image_id": 1, "category_id": 2, "bbox": [50, 50, 40, 40], "score": 0.8},  # b: TP
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.7},  # b: TP -> P = 1/2, 2/3
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 9, 9], "score": 0.5},  # c: negative in image 1, no GT
        {
            "image_id": 2,
            "category_id": 1,
            "bbox": [0, 0, 9, 9],
            "score": 0.99,
        },  # a in image 2: not annotated -> dropped
        {"image_id": 3, "category_id": 2, "bbox": [0, 0, 9, 9], "score": 0.99},  # image 3 has no GT at all: dropped
    ]
    G, T = _ann(gt, "gt.json"), _ann(train, "train.json")
    for backend in ("fast", "lvis"):
        m = evaluate_results(G, copy.deepcopy(res), T, ("bbox",), backend=backend, max_dets=300).metrics["bbox"]
        # class b: 2 GT; sorted dets FP(0.95), TP(0.8), TP(0.7): precision 0, 1/2, 2/3; recall 0, .5, 1
        # interpolated precision is 2/3 at every recall point 0..1 -> AP_b = 2/3 at every IoU threshold
        ap_b = 2 / 3
        assert m["AP1"] == pytest.approx(1.0) and m["APr"] == pytest.approx(1.0)
        assert m["AP4"] == pytest.approx(ap_b) and m["APf"] == pytest.approx(ap_b)
        assert m["AP2"] == -1 and m["AP3"] == -1 and m["APc"] == -1  # class c has no val instance
        assert m["AP"] == pytest.approx((1.0 + ap_b) / 2)


def test_empty_results_give_zeros_with_a_warning(case_files, tmp_path, cli):
    (tmp_path / "empty.json").write_text("[]")
    r = cli(
        "evaluate",
        "--gt",
        case_files / "gt.json",
        "--results",
        tmp_path / "empty.json",
        "--train-ann",
        case_files / "train.json",
        "--out",
        tmp_path / "m.json",
    )
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and "empty" in r.stderr
    doc = json.loads((tmp_path / "m.json").read_text())
    assert list(doc) == ["bbox", "config"]
    assert all(doc["bbox"][k] in (0.0, -1.0) for k in METRIC_KEYS) and doc["bbox"]["AP"] == 0.0


def _bad(cli, case_files, tmp_path, results_text, *extra):
    p = tmp_path / "bad.json"
    p.write_text(results_text)
    r = cli(
        "evaluate",
        "--gt",
        case_files / "gt.json",
        "--results",
        p,
        "--train-ann",
        case_files / "train.json",
        "--out",
        tmp_path / "m.json",
        *extra,
    )
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("simcal evaluate: error")]
    assert len(lines) == 1, r.stderr
    assert not (tmp_path / "m.json").exists()
    return lines[0]


def test_bad_results_are_one_sentence_exit_2(case, case_files, tmp_path, cli):
    gt = case[0]
    img, cat = gt["images"][0]["id"], gt["categories"][0]["id"]
    good = {"image_id": img, "category_id": cat, "bbox": [1, 1, 5, 5], "score": 0.5}
    assert "not a list" in _bad(cli, case_files, tmp_path, json.dumps({"image_id": img}))
    assert "image id 99999" in _bad(cli, case_files, tmp_path, json.dumps([good, {**good, "image_id": 99999}]))
    assert "category id 424242" in _bad(cli, case_files, tmp_path, json.dumps([{**good, "category_id": 424242}]))
    msg = _bad(cli, case_files, tmp_path, json.dumps([good]), "--iou-type", "segm")
    assert "segmentation" in msg and "result 0" in msg
    assert "non-finite score" in _bad(
        cli,
        case_files,
        tmp_path,
        '[{"image_id": %d, "category_id": %d, "bbox": [1, 1, 5, 5], "score": NaN}]' % (img, cat),
    )
    assert "not valid JSON" in _bad(cli, case_files, tmp_path, "[{")
    h, w = gt["images"][0]["height"], gt["images"][0]["width"]
    broken = {**good, "segmentation": {"size": [h, w], "counts": "garbage!!"}}
    assert "result 1 has a malformed RLE mask" in _bad(
        cli,
        case_files,
        tmp_path,
        json.dumps([{**good, "segmentation": {"size": [h, w], "counts": [h * w]}}, broken]),
        "--iou-type",
        "segm",
    )
    assert "mask size [3, 3]" in _bad(
        cli,
        case_files,
        tmp_path,
        json.dumps([{**good, "segmentation": {"size": [3, 3], "counts": [9]}}]),
        "--iou-type",
        "segm",
    )
    assert "no score" in _bad(cli, case_files, tmp_path, json.dumps([{k: v for k, v in good.items() if k != "score"}]))
    r = cli(
        "evaluate",
        "--gt",
        case_files / "gt.json",
        "--results",
        tmp_path / "nope.json",
        "--train-ann",
        case_files / "train.json",
    )
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = run_simcal("evaluate", "--results", case_files / "res.json")  # the real exit-code path of 'simcal evaluate'
    assert r.returncode == 2 and "missing --gt, --train-ann" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("simcal evaluate: error: ")
    assert "argument --max-dets: must be an integer >= 1" in _bad(
        cli, case_files, tmp_path, json.dumps([good]), "--max-dets", "0"
    )


def test_cli_on_the_synthetic_benchmark(quick_bench, tmp_path, cli):
    """End to end: default cap from info.max_dets_per_image, both IoU types, per-class CSV, compare."""
    gt = json.loads((quick_bench / "annotations" / "val.json").read_text())
    rng = np.random.default_rng(0)
    res = []
    for a in gt["annotations"]:
        seg = a["segmentation"]
        for k in range(2):
            res.append(
                {
                    "image_id": a["image_id"],
                    "category_id": a["category_id"] if k == 0 else 1 + int(rng.integers(12)),
                    "bbox": [v + float(rng.normal(0, 0.8)) for v in a["bbox"]],
                    "score": float(rng.random()),
                    "segmentation": seg,
                }
            )
    (tmp_path / "res.json").write_text(json.dumps(res))
    args = [
        "evaluate",
        "--gt",
        quick_bench / "annotations" / "val.json",
        "--results",
        tmp_path / "res.json",
        "--train-ann",
        quick_bench / "annotations" / "train.json",
    ]
    r = cli(*args, "--out", tmp_path / "out" / "m.json", "--per-class", tmp_path / "out" / "pc.csv")
    assert r.returncode == 0, r.stderr
    cap = gt["info"]["max_dets_per_image"]
    assert f"evaluation cap: {cap} detections per image" in r.stdout
    assert "| AP (%) | AP1 | AP2 | AP3 | AP4 | APr | APc | APf | AP |" in r.stdout
    assert "| box |" in r.stdout and "| mask |" in r.stdout
    doc = json.loads((tmp_path / "out" / "m.json").read_text())
    assert set(doc) == {"bbox", "segm", "config"} and list(doc["segm"]) == list(METRIC_KEYS)
    assert doc["config"]["max_dets_per_image"] == cap and doc["config"]["backend"] == "fast"
    assert all(-1 <= v <= 1 for t in ("bbox", "segm") for v in doc[t].values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "m.json",
        "m.json.manifest.json",
        "pc.csv",
    ]  # no temp
    rows = (tmp_path / "out" / "pc.csv").read_text().splitlines()
    assert rows[0].startswith(
        "category_id,name,train_instances,train_images,bin,frequency,val_instances,AP_bbox,AP_segm"
    )
    assert len(rows) == 1 + len(gt["categories"])

    r2 = cli(*args, "--backend", "lvis", "--max-dets", "300", "--iou-type", "segm", "--out", tmp_path / "ref.json")
    assert r2.returncode == 0, r2.stderr
    assert "evaluation cap: 300 detections per image (--max-dets)" in r2.stdout
    ref = json.loads((tmp_path / "ref.json").read_text())
    assert list(ref) == ["segm", "config"] and ref["config"]["max_dets_per_image"] == 300

    r3 = cli("evaluate", "--compare", tmp_path / "out" / "m.json", tmp_path / "ref.json", "--labels", "cap10", "cap300")
    assert r3.returncode == 0, r3.stderr
    assert "| cap10 |" in r3.stdout and "| cap300 |" in r3.stdout and "different detection caps" in r3.stdout
    seg_rows = r3.stdout.split("mask AP (%)")[1]
    assert f"{100 * doc['segm']['AP1']:.1f}" in seg_rows.split("| cap10 |")[1].splitlines()[0]
    assert "box AP (%)" in r3.stdout and "| cap300 |" not in r3.stdout.split("mask AP (%)")[0]
    r4 = cli("evaluate", "--compare", tmp_path / "res.json")
    assert r4.returncode == 2 and "no 'bbox' or 'segm' metrics" in r4.stderr and "Traceback" not in r4.stderr


def test_detectron2_style_evaluator_matches_the_function(case):
    gt, train, res = case
    G, T = _ann(gt, "gt.json"), _ann(train, "train.json")
    ev = LVISEvaluator(G, T, iou_types=("bbox", "segm"), max_dets=300)
    by_img = {}
    for r in copy.deepcopy(res):
        by_img.setdefault(r["image_id"], []).append(r)
    ids = sorted(by_img)
    for i in range(0, len(ids), 4):  # batches of 4 images, image_id taken from the inputs
        batch = ids[i : i + 4]
        ev.process(
            [{"image_id": k} for k in batch],
            [[{kk: v for kk, v in r.items() if kk != "image_id"} for r in by_img[k]] for k in batch],
        )
    got = ev.evaluate()
    want = evaluate_results(G, copy.deepcopy(res), T, ("bbox", "segm"), max_dets=300).metrics
    for t in want:
        for k in METRIC_KEYS:
            assert got[t][k] == pytest.approx(want[t][k], abs=1e-12)
    ev.reset()
    assert ev.results == []
    # outputs as arrays (xyxy boxes, like a model's), one image at a time
    for k in ids:
        rs = by_img[k]
        ev.process(
            [{"image_id": k}],
            [
                {
                    "boxes": np.array(
                        [
                            [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]]
                            for r in rs
                        ]
                    ),
                    "scores": np.array([r["score"] for r in rs]),
                    "category_ids": np.array([r["category_id"] for r in rs]),
                    "masks": [
                        {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()} for r in rs
                    ],
                }
            ],
        )
    got = ev.evaluate()
    for t in want:
        for k in METRIC_KEYS:
            assert got[t][k] == pytest.approx(want[t][k], abs=1e-9)
