"""simcal convert --from detectron2: a model-zoo-style file becomes a checkpoint every stage loads."""

import pickle

import torch

from simcal.detector.checkpoint import load_checkpoint
from simcal.detector.convert import DETECTRON2_BEHAVIOUR
from tests.detector.test_from_detectron2 import detectron2_r50_fpn
from tests.helpers import tiny_lvis, write_json


def _zoo_file(path, k):
    weights = {name: t.numpy() for name, t in detectron2_r50_fpn(k=k).items()}
    path.write_bytes(pickle.dumps({"model": weights, "__author__": "Detectron2 Model Zoo"}, protocol=2))
    return path


def _one_line(r, *words):
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def test_detectron2_zoo_file_converts_and_loads(cli, tmp_path):
    ann = write_json(tmp_path / "train.json", tiny_lvis())  # 3 categories, ids 3, 7, 9
    src = _zoo_file(tmp_path / "model_final.pkl", k=3)
    out = tmp_path / "converted.pth"
    r = cli("convert", "--from", "detectron2", src, "--ann", ann, "--out", out)
    assert r.returncode == 0, r.stderr
    model, ck = load_checkpoint(out)
    assert ck["arch"] == "r50_fpn" and ck["builder_kwargs"] == {"class_agnostic": False, **DETECTRON2_BEHAVIOUR}
    assert [c["id"] for c in ck["category_stats"]] == [3, 7, 9]
    assert ck["train_args"]["source_framework"] == "detectron2" and ck["train_args"]["__author__"]
    d2_cls = detectron2_r50_fpn(k=3)["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, torch.cat([d2_cls[3:], d2_cls[:3]]))
    assert model.transform.image_std == [1 / 255] * 3 and model.backbone.body.layer4[0].conv1.stride == (2, 2)


def test_conversion_refusals_are_one_sentence(cli, tmp_path):
    ann = write_json(tmp_path / "train.json", tiny_lvis())
    src = _zoo_file(tmp_path / "model_final.pkl", k=5)
    out = tmp_path / "c.pth"
    _one_line(cli("convert", "--from", "detectron2", src, "--ann", ann, "--out", out),
              "model_final.pkl: scores 5 classes", "has 3 categories")
    torch.save({"meta": {}, "state_dict": {"w": torch.ones(1)}}, tmp_path / "mm.pth")
    _one_line(cli("convert", "--from", "mmdet", tmp_path / "mm.pth", "--ann", ann, "--out", out),
              "--from mmdet is not converted yet")
    three = _zoo_file(tmp_path / "three.pkl", k=3)
    _one_line(cli("convert", "--from", "detectron2", three, "--ann", ann, "--out", out, "--class-agnostic", "on"),
              "three.pkl: has per-class box and mask heads")
    assert not out.exists()
