"""The SimCal release's calibrated head file -> a head checkpoint bound to a converted detector
(calibrate/import_head.py).

The release saves its head with mmcv's save_checkpoint (``{"meta", "state_dict"}``) from ``simple3fc``
(``feat_classifier.fc1/fc2/fc_classifier``, ``cls_fc_bias`` optional) or ``simple2fc``
(``feat_extractor.fc1/fc2``), K + 1 outputs with background first. Small widths here (the checks are the
same at 12544 -> 1024); the end-to-end import at full size is in tests/detector/test_convert.py.
"""

import pytest
import torch

from simcal.calibrate.import_head import convert_head
from simcal.calibrate.trainer import validate_head
from simcal.core.errors import InputError

DIM, HIDDEN, K = 48, 16, 3


def _detector() -> dict:
    """The parts of a converted checkpoint the head is bound to."""
    stats = [{"id": i, "name": n, "instance_count": c, "image_count": 1, "frequency": "r"}
             for i, n, c in ((3, "apple", 5), (7, "kite", 120), (9, "zebra", 2))]
    return {"state_dict": {"roi_heads.box_head.fc6.weight": torch.zeros(HIDDEN, DIM)}, "category_stats": stats,
            "detector_fingerprint": "sha256:" + "d" * 64, "annotation_fingerprint": "sha256:" + "a" * 64}


def _save(path, weights, meta=None):
    torch.save({"meta": meta or {"mmcv_version": "0.2.14"}, "state_dict": weights}, path)
    return path


def _simple3fc(rows=K + 1, dim=DIM, bias=True, prefix=""):
    g = torch.Generator().manual_seed(0)
    shapes = {"fc1": (HIDDEN, dim), "fc2": (HIDDEN, HIDDEN), "fc_classifier": (rows, HIDDEN)}
    out = {}
    for layer, shape in shapes.items():
        out[f"{prefix}feat_classifier.{layer}.weight"] = torch.randn(shape, generator=g)
        if bias or layer != "fc_classifier":
            out[f"{prefix}feat_classifier.{layer}.bias"] = torch.randn(shape[0], generator=g)
    return out


def test_a_3fc_head_becomes_our_3fc_ft_bound_to_the_detector(tmp_path):
    weights = _simple3fc(prefix="module.")
    doc = convert_head(_save(tmp_path / "3fc_ft.pth", weights), _detector())
    validate_head(doc)
    assert doc["head"] == "3fc_ft" and doc["head_kwargs"] == {"dim": DIM, "num_classes": K, "hidden": HIDDEN}
    assert doc["detector_fingerprint"] == _detector()["detector_fingerprint"]
    assert [c["id"] for c in doc["categories"]] == [3, 7, 9]
    assert torch.equal(doc["state_dict"]["cls_score.weight"], weights["module.feat_classifier.fc_classifier.weight"])
    assert torch.equal(doc["state_dict"]["fc7.bias"], weights["module.feat_classifier.fc2.bias"])
    assert doc["train_info"]["head_sha256"] and doc["config"]["source_framework"] == "mmdet1"


def test_a_classifier_without_bias_and_a_2fc_head(tmp_path):
    doc = convert_head(_save(tmp_path / "nobias.pth", _simple3fc(bias=False)), _detector())
    assert not doc["state_dict"]["cls_score.bias"].any()  # simple3fc(cls_fc_bias=False): a zero bias is the same
    g = torch.Generator().manual_seed(1)
    two = {"feat_extractor.fc1.weight": torch.randn(HIDDEN, DIM, generator=g),
           "feat_extractor.fc1.bias": torch.zeros(HIDDEN),
           "feat_extractor.fc2.weight": torch.randn(K + 1, HIDDEN, generator=g),
           "feat_extractor.fc2.bias": torch.zeros(K + 1)}
    doc = convert_head(_save(tmp_path / "2fc.pth", two), _detector())
    validate_head(doc)
    assert doc["head"] == "2fc_rand" and sorted(doc["state_dict"]) == ["cls_score.bias", "cls_score.weight",
                                                                       "fc6.bias", "fc6.weight"]


@pytest.mark.parametrize("weights, words", [
    (_simple3fc(rows=K + 3), "scores 5 classes plus background, and the detector it is converted with scores 3"),
    (_simple3fc(dim=DIM + 1), "takes 49-d features, and the detector's RoI features are 48-d"),
    ({**_simple3fc(), "feat_classifier.fc3.weight": torch.zeros(1)},
     "has 1 weight(s) no 3fc_ft head of the release has: 'feat_classifier.fc3.weight'"),
    ({k: v for k, v in _simple3fc().items() if "fc2" not in k},
     "lacks 2 weight(s) of the release's 3fc_ft head: 'feat_classifier.fc2.weight', 'feat_classifier.fc2.bias'"),
    ({"backbone.conv1.weight": torch.zeros(1), "bbox_head.fc_cls.weight": torch.zeros(1)},
     "is not one calibrated head of the SimCal release (feat_classifier.* of simple3fc or feat_extractor.* of "
     "simple2fc): it has none of them ('backbone.conv1.weight', 'bbox_head.fc_cls.weight')"),
    ({**_simple3fc(), "feat_extractor.fc1.weight": torch.zeros(1)}, "it has both simple3fc and simple2fc weights"),
    ({**_simple3fc(), "feat_classifier.fc1.bias": torch.full((HIDDEN,), float("nan"))}, "non-finite"),
])
def test_heads_that_do_not_fit_are_one_sentence(tmp_path, weights, words):
    path = _save(tmp_path / "3fc_ft.pth", weights)
    with pytest.raises(InputError) as e:
        convert_head(path, _detector())
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and words in msg and len(msg.splitlines()) == 1, msg
