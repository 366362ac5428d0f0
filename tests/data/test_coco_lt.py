"""The COCO-LT sampler on a COCO-format fixture the test generates."""

import json
from collections import Counter

import numpy as np

from simcal.data import instance_bin, load_annotations
from simcal.data.coco_lt import exponential_targets, sample_coco_lt
from tests.helpers import write_json


def test_default_targets_give_the_documented_bins():
    # 80 classes whose 20 largest have >= 8000 instances, like COCO 2017 train.
    counts = {cid: int(300_000 / (1 + cid) ** 0.9) + 8000 for cid in range(1, 81)}
    targets = exponential_targets(counts)
    ranked = sorted(counts, key=lambda c: -counts[c])
    assert [targets[c] for c in ranked[:20]] == [counts[c] for c in ranked[:20]]
    assert all(targets[a] >= targets[b] for a, b in zip(ranked, ranked[1:]))
    bins = Counter(instance_bin(t, "coco-lt") for t in targets.values())
    assert (bins[4], bins[3], bins[2], bins[1]) == (20, 29, 28, 3)


def _coco_fixture(seed=0, n_images=3000, n_classes=30):
    """Each image holds 1-4 instances of classes drawn from a mildly skewed distribution."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_classes + 1) ** 0.5
    p /= p.sum()
    images, anns = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "height": 100, "width": 100})
        for cid in rng.choice(n_classes, size=int(rng.integers(1, 5)), p=p) + 1:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(cid), "bbox": [1, 1, 10, 10],
                         "iscrowd": 0, "area": 100})
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, n_classes + 1)]
    return {"images": images, "annotations": anns, "categories": cats}


def test_sampler_follows_targets_and_is_deterministic(tmp_path):
    ann = load_annotations(write_json(tmp_path / "coco.json", _coco_fixture()))
    kw = dict(keep_head=3, n_high=600, n_low=2)
    doc, report = sample_coco_lt(ann, seed=1, **kw)
    doc2, _ = sample_coco_lt(ann, seed=1, **kw)
    assert doc == doc2
    cats = report["categories"]  # most frequent first
    # Tail classes (filled first) never exceed their targets; the head keeps most of its data.
    for c in cats[len(cats) // 2:]:
        assert c["sampled"] <= max(c["target"], 1), c
    assert cats[0]["sampled"] >= 0.3 * cats[0]["original"]
    # The long tail is real: sampled counts span two orders of magnitude and follow the ranking.
    sampled = np.array([c["sampled"] for c in cats])
    assert sampled[0] / max(sampled[-1], 1) > 100
    ranks = np.argsort(np.argsort(-sampled))
    assert np.corrcoef(ranks, np.arange(len(cats)))[0, 1] > 0.95
    # Whole images: every kept image keeps all its annotations.
    kept = {i["id"] for i in doc["images"]}
    assert sum(a["image_id"] in kept for a in ann.annotations) == len(doc["annotations"])
    assert sample_coco_lt(ann, seed=2, **kw)[0]["images"] != doc["images"]


def test_coco_lt_cli_writes_loadable_file(tmp_path, cli):
    src = write_json(tmp_path / "coco.json", _coco_fixture(n_images=800, n_classes=10))
    out = tmp_path / "lt" / "coco_lt.json"
    r = cli("data", "coco-lt", "--coco", src, "--out", out, "--keep-head", "2", "--n-high", "300",
                   "--n-low", "3")
    assert r.returncode == 0, r.stderr
    assert "COCO-LT bins" in r.stdout
    lt = load_annotations(out)
    assert 0 < len(lt.images) < 800
    assert json.loads(out.read_text())["info"]["seed"] == 0
