"""A converted detectron2 detector through the whole pipeline: convert -> extract -> calibrate -> infer -> evaluate.

Seeded random detectron2 weights (tools/reference_inputs.py) for the quick benchmark's classes, at the
benchmark's 128-pixel image size, on its first 8 val images, 20 detections each (a random R50 mask
head on 300 per image is slow on CPU). Every stage accepts the converted checkpoint, the cache records
its fingerprint, and infer takes a head calibrated on that cache.
"""

import json
import pickle

import torch

from simcal.detector.convert import DETECTRON2_BEHAVIOUR
from tools.reference_inputs import detectron2_weights


def test_converted_detectron2_detector_runs_the_pipeline(cli, tmp_path, quick_bench, few_val):
    train_ann = quick_bench / "annotations" / "train.json"
    k = len(json.loads(train_ann.read_text())["categories"])
    src = tmp_path / "model_final.pkl"
    src.write_bytes(pickle.dumps({"model": {n: t.numpy() for n, t in detectron2_weights(3, k).items()},
                                  "__author__": "test"}, protocol=2))
    det, cache, head = tmp_path / "det.pth", tmp_path / "c.zarr", tmp_path / "head.pth"
    r = cli("convert", "--from", "detectron2", src, "--ann", train_ann, "--out", det, "--test-size", "128", "128")
    assert r.returncode == 0, r.stderr
    assert cli("extract", "--checkpoint", det, *few_val, "--out", cache).returncode == 0
    ck = torch.load(det, map_location="cpu", weights_only=True)
    assert ck["arch"] == "r50_fpn" and ck["train_args"]["source_framework"] == "detectron2"
    assert ck["builder_kwargs"] == {"class_agnostic": False, **DETECTRON2_BEHAVIOUR, "min_size": 128, "max_size": 128}
    ids = [c["id"] for c in json.loads(train_ann.read_text())["categories"]]
    assert [c["id"] for c in ck["category_stats"]] == sorted(ids)
    fingerprint = ck["detector_fingerprint"]
    info = cli("cache", "info", cache)
    assert info.returncode == 0 and fingerprint[:19] in info.stdout, info.stdout
    r = cli("calibrate", "--cache", cache, "--head", "3fc_ft", "--steps", "3", "--out", head)
    assert r.returncode == 0, r.stderr
    results, metrics = tmp_path / "sel.json", tmp_path / "m.json"
    r = cli("infer", "--checkpoint", det, "--head-ckpt", head, "--mode", "sel", *few_val, "--max-dets", "20",
            "--out", results)
    assert r.returncode == 0, r.stderr
    assert json.loads(results.read_text()), "no detections"
    r = cli("evaluate", "--gt", few_val[1], "--results", results, "--train-ann", train_ann, "--out", metrics)
    assert r.returncode == 0, r.stderr
    assert "AP" in json.loads(metrics.read_text()).get("bbox", json.loads(metrics.read_text()))
