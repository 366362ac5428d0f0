"""Loading and validating LVIS/COCO annotation files; the category mapping."""

import json
import re

import pytest

from simcal.data import CategoryMapping, InputError, load_annotations
from tests.helpers import run_simcal, write_json


def test_valid_file_loads_with_contiguous_mapping(tmp_path, tiny_doc):
    ann = load_annotations(write_json(tmp_path / "a.json", tiny_doc))
    assert ann.is_lvis
    assert ann.mapping.ids == (3, 7, 9)  # ascending category id -> labels 1..C
    assert ann.mapping.to_contiguous(3) == 1 and ann.mapping.to_contiguous(9) == 3
    assert ann.mapping.to_category_id(2) == 7
    with pytest.raises(KeyError):
        ann.mapping.to_category_id(0)  # background has no category
    assert [a["id"] for a in ann.annotations_of(1)] == [10, 11]
    assert ann.annotations_of(99) == []
    assert ann.image_path(ann.image(2), tmp_path) == tmp_path / "sub" / "b.png"
    assert ann.fingerprint.startswith("sha256:") and len(ann.fingerprint) == 71


def test_mapping_serializes_round_trip():
    m = CategoryMapping.from_categories([{"id": 40, "name": "b"}, {"id": 2, "name": "a"}])
    d = json.loads(json.dumps(m.to_dict()))
    assert CategoryMapping.from_dict(d) == m
    assert m.num_classes == 2 and m.names == ("a", "b")


def test_lvis_v1_file_name_from_coco_url(tmp_path, tiny_doc):
    for img in tiny_doc["images"]:
        del img["file_name"]
        img["coco_url"] = f"http://images.cocodataset.org/train2017/{img['id']:012d}.jpg"
    ann = load_annotations(write_json(tmp_path / "v1.json", tiny_doc))
    assert ann.image(1)["file_name"] == "train2017/000000000001.jpg"


def test_coco_file_with_crowd_rle_loads(tmp_path, tiny_doc):
    for img in tiny_doc["images"]:
        img.pop("neg_category_ids", None)
        img.pop("not_exhaustive_category_ids", None)
    ann = load_annotations(write_json(tmp_path / "coco.json", tiny_doc))
    assert not ann.is_lvis
    assert len(ann.annotations) == 5


BAD_CASES = {
    "truncated": (None, "not valid JSON"),
    "not_object": (lambda d: [d], "top level is not a JSON object"),
    "missing_annotations": (lambda d: d.pop("annotations"), "missing top-level key 'annotations'"),
    "duplicate_image": (lambda d: d["images"].append(dict(d["images"][0])), "duplicate id 1 in 'images'"),
    "duplicate_ann": (lambda d: d["annotations"].append(dict(d["annotations"][0])), "duplicate id 10 in 'annotations'"),
    "duplicate_cat": (lambda d: d["categories"].append({"id": 3, "name": "x"}), "duplicate id 3 in 'categories'"),
    "unknown_category": (lambda d: d["annotations"][0].update(category_id=42), "unknown category id 42"),
    "unknown_image": (lambda d: d["annotations"][1].update(image_id=77), "unknown image id 77"),
    "zero_width_box": (lambda d: d["annotations"][0].update(bbox=[1, 2, 0, 4]), "non-positive box size"),
    "negative_height_box": (lambda d: d["annotations"][0].update(bbox=[1, 2, 3, -1]), "non-positive box size"),
    "odd_polygon": (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5, 6, 7]]), "bad polygon"),
    "rle_size": (lambda d: d["annotations"][2]["segmentation"].update(size=[10, 10]), "RLE size"),
    "seg_type": (lambda d: d["annotations"][0].update(segmentation="mask.png"), "neither polygons nor RLE"),
    "neg_unknown": (
        lambda d: d["images"][0].update(neg_category_ids=[7, 1000]),
        "'neg_category_ids' names unknown category id 1000",
    ),
    "not_exhaustive_unknown": (
        lambda d: d["images"][1].update(not_exhaustive_category_ids=[5]),
        "'not_exhaustive_category_ids' names unknown category id 5",
    ),
    "absolute_file_name": (lambda d: d["images"][0].update(file_name="/etc/passwd"), "is an absolute path"),
    "escaping_file_name": (lambda d: d["images"][1].update(file_name="sub/../../secret.png"), "escapes the image root"),
    "missing_image_key": (lambda d: d["images"][0].pop("height"), "missing key 'height'"),
    "missing_bbox": (lambda d: d["annotations"][0].pop("bbox"), "missing key 'bbox'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_file_is_one_sentence_and_exit_2(tmp_path, tiny_doc, cli, case):
    mutate, expected = BAD_CASES[case]
    path = tmp_path / f"{case}.json"
    if mutate is None:
        path.write_text(json.dumps(tiny_doc)[:200])
    else:
        out = mutate(tiny_doc)
        write_json(path, out if case == "not_object" else tiny_doc)
    with pytest.raises(InputError, match=re.escape(expected)):
        load_annotations(path)
    r = cli("data", "stats", "--ann", path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(path) in lines[0] and expected in lines[0]
    assert r.stdout == ""


def test_missing_file_is_exit_2(tmp_path):
    """The real exit-code path of 'simcal data' (a subprocess); the refusals above run in-process."""
    r = run_simcal("data", "stats", "--ann", tmp_path / "nope.json")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simcal data: error: ") and str(tmp_path / "nope.json") in lines[0]
    assert r.stdout == ""


def _bulk_doc(n: int = 300) -> dict:
    """A valid LVIS-style file with many annotations: boxes, polygons, areas, crowd flags, one RLE region."""
    import random

    rnd = random.Random(0)
    images = [{"id": i, "file_name": f"{i}.png", "height": 40 + i % 7, "width": 50 + i % 5,
               "neg_category_ids": [], "not_exhaustive_category_ids": []} for i in range(1, 21)]
    anns = []
    for k in range(n):
        im = images[k % 20]
        x, y = rnd.uniform(0, 20), rnd.uniform(0, 20)
        a = {"id": k + 1, "image_id": im["id"], "category_id": 1 + k % 3, "bbox": [x, y, 5.5, 4]}
        if k % 3:
            a["segmentation"] = [[x, y, x + 5, y, x + 5, y + 4] + ([x, y + 4] if k % 2 else [])]
        if k % 4:
            a["area"] = 12 if k % 5 else 12.5
        if k % 6 == 0:
            a["iscrowd"] = 0
        anns.append(a)
    im = images[anns[7]["image_id"] - 1]
    anns[7]["segmentation"] = {"size": [im["height"], im["width"]], "counts": [0, im["height"] * im["width"]]}
    cats = [{"id": c, "name": f"c{c}", "frequency": "f"} for c in (1, 2, 3)]
    return {"images": images, "annotations": anns, "categories": cats}


MUTATIONS = [
    ("bbox", None), ("bbox", [1, 2, 3]), ("bbox", [1, 2, 3, True]), ("bbox", [1, 2, float("nan"), 3]),
    ("bbox", [1, 2, 0, 3]), ("bbox", [1, 2, 500, 3]), ("bbox", "box"), ("image_id", 999), ("image_id", 1.0),
    ("category_id", 9), ("category_id", True), ("area", -1), ("area", "12"), ("area", float("inf")),
    ("iscrowd", 2), ("iscrowd", True), ("segmentation", []), ("segmentation", [[1, 2, 3, 4]]),
    ("segmentation", [[1, 2, 3, 4, 5]]), ("segmentation", [[1, 2, 3, 4, 5, None]]),
    ("segmentation", [[1, 2, 3, 4, 5, False]]), ("segmentation", [[1, 2, 3, 4, 5, 1e9]]),
    ("segmentation", [[1, 2, 3, 4, 5, float("-inf")]]), ("segmentation", [[-100, 2, 3, 4, 5, 6]]),
    ("segmentation", "poly"), ("segmentation", {"size": [1, 1], "counts": [1]}),
    ("segmentation", {"size": [40, 50], "counts": "0"}),
]


@pytest.mark.parametrize("key,value", MUTATIONS, ids=[f"{k}={v!r}" for k, v in MUTATIONS])
def test_bulk_checks_refuse_exactly_as_record_by_record(tmp_path, monkeypatch, key, value):
    """The bulk pass over annotations accepts only what the record-by-record pass accepts, and a refused file
    gets the record-by-record message (two bad records: the first in file order is named)."""
    import simcal.data.annotations as A

    for at in (5, 250):
        doc = _bulk_doc()
        for k in (at, at + 31):
            if value is None:
                doc["annotations"][k].pop(key, None)
            else:
                doc["annotations"][k][key] = value
        path = tmp_path / "a.json"
        path.write_text(json.dumps(doc))
        errors = []
        for bulk in (True, False):
            if not bulk:
                monkeypatch.setattr(A, "_instances_in_bulk", lambda *a: None)
            try:
                load_annotations(path)
                errors.append(None)
            except InputError as e:
                errors.append(str(e))
            monkeypatch.undo()
        assert errors[0] == errors[1], (key, value, errors)
        assert errors[0] is not None, (key, value)


def test_a_valid_file_passes_in_bulk(tmp_path, monkeypatch):
    import simcal.data.annotations as A

    path = tmp_path / "a.json"
    path.write_text(json.dumps(_bulk_doc()))
    monkeypatch.setattr(A, "_check_annotation", lambda *a: pytest.fail("the record-by-record pass ran"))
    ann = load_annotations(path)
    assert len(ann.annotations) == 300 and len(ann.annotations_of(1)) == 15
