"""Category statistics: LVIS frequency rule, the paper's instance bins, `simcal data stats`."""

import json
from collections import Counter

import pytest

from simcal.data import category_statistics, frequency_of, instance_bin, load_annotations
from simcal.data.statistics import bin_labels
from tests.helpers import ROOT, write_json


def test_frequency_rule_reproduces_lvis_v1_split():
    cats = json.loads((ROOT / "benchmarks" / "data" / "lvis_v1_categories.json").read_text())
    assert len(cats) == 1203
    ours = [frequency_of(c["image_count"]) for c in cats]
    assert Counter(ours) == {"r": 337, "c": 461, "f": 405}
    assert ours == [c["frequency"] for c in cats]  # every single category, not just the totals


@pytest.mark.parametrize(
    "scheme,count,expected",
    [("lvis", 0, 1), ("lvis", 9, 1), ("lvis", 10, 2), ("lvis", 99, 2), ("lvis", 100, 3), ("lvis", 999, 3),
     ("lvis", 1000, 4), ("coco-lt", 19, 1), ("coco-lt", 20, 2), ("coco-lt", 399, 2), ("coco-lt", 400, 3),
     ("coco-lt", 7999, 3), ("coco-lt", 8000, 4), ("lvis", 1, 1), ("lvis", 11, 2), ("lvis", 10**6, 4),
     ("coco-lt", 0, 1), ("coco-lt", 21, 2), ("coco-lt", 401, 3), ("coco-lt", 10**6, 4)],
)
def test_instance_bin_edges(scheme, count, expected):
    """The one test of the bin edges (data statistics and the evaluator's AP1-AP4 share instance_bin)."""
    assert instance_bin(count, scheme) == expected
    if scheme == "lvis":
        assert instance_bin(count) == expected  # lvis is the default scheme


def test_bin_labels_and_unknown_scheme():
    assert bin_labels("lvis") == {1: "<10", 2: "10-100", 3: "100-1000", 4: ">=1000"}
    assert bin_labels("coco-lt") == {1: "<20", 2: "20-400", 3: "400-8000", 4: ">=8000"}
    with pytest.raises(ValueError, match="unknown bin scheme 'coco'"):
        instance_bin(5, "coco")


def test_frequency_edges():
    assert [frequency_of(n) for n in (0, 10, 11, 100, 101)] == ["r", "r", "c", "c", "f"]


def test_category_statistics_counts_from_annotations(tmp_path, tiny_doc):
    # The file's own 'frequency' fields say 'r' for all: statistics must be recomputed, not copied.
    for k in range(200):
        tiny_doc["images"].append({"id": 100 + k, "file_name": f"x{k}.png", "height": 20, "width": 30})
        for j in range(6):
            tiny_doc["annotations"].append({"id": 1000 + 10 * k + j, "image_id": 100 + k, "category_id": 7,
                                            "bbox": [1, 1, 2, 2]})
    stats = {c["id"]: c for c in category_statistics(load_annotations(write_json(tmp_path / "a.json", tiny_doc)))}
    assert (stats[3]["instance_count"], stats[3]["image_count"], stats[3]["bin"]) == (3, 2, 1)
    # category 9: one instance plus one crowd region, which is not an instance
    assert (stats[9]["instance_count"], stats[9]["image_count"]) == (1, 1)
    assert (stats[7]["instance_count"], stats[7]["image_count"], stats[7]["frequency"], stats[7]["bin"]) == (
        1200, 200, "f", 4)


def test_stats_json_and_plot(tmp_path, tiny_doc, cli):
    path = write_json(tmp_path / "a.json", tiny_doc)
    png = tmp_path / "plots" / "dist.png"
    r = cli("data", "stats", "--ann", path, "--json", "--plot", png)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["num_images"] == 3 and doc["num_instances"] == 4
    assert doc["frequency"] == {"r": 3, "c": 0, "f": 0}
    assert doc["bins"] == {"1": 3, "2": 0, "3": 0, "4": 0}
    assert [c["id"] for c in doc["categories"]] == [3, 7, 9]
    assert set(doc["categories"][0]) >= {"id", "name", "instance_count", "image_count", "frequency", "bin"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_table_and_coco_lt_bins(tmp_path, tiny_doc, cli):
    path = write_json(tmp_path / "a.json", tiny_doc)
    r = cli("data", "stats", "--ann", path, "--bins", "coco-lt")
    assert r.returncode == 0, r.stderr
    assert "| instance bin (coco-lt) | 1 (<20) | 2 (20-400) | 3 (400-8000) | 4 (>=8000) |" in r.stdout
    assert "| 3 | apple | 3 | 2 | r | 1 |" in r.stdout
