"""``simcal convert --from detectron2`` against detectron2 itself (fixture from tools/detectron2_reference.py).

detectron2 ran once on seeded weights and images and recorded its detections; here the same weights
and images are regenerated from the seeds, converted, and run through our model. Every detectron2
detection must have a match of the same class with box IoU >= 0.99 and score within 1e-4, the two
detection lists must be the same length, the masks must agree (pooled IoU >= 0.98) and every pixel on
which they differ must be a tie at the 0.5 threshold (our probability within 1e-3 of it: a 23-pixel
mask can lose 4 % IoU to one such pixel).

The per-class model is read from a model-zoo ``.pkl`` (protocol 2, as the zoo's), the class-agnostic
one from a Checkpointer ``.pth``; the class-agnostic model is checked on the first image only, to
keep the test short (the fixture holds all three).
"""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from simcal.detector.checkpoint import load_checkpoint
from tests.helpers import write_json
from tools.reference_inputs import detectron2_weights, images

FIXTURE = json.loads((Path(__file__).parent.parent / "fixtures" / "detectron2_reference.json").read_text())
SETTINGS = FIXTURE["settings"]


def _annotations(k: int) -> dict:
    """An LVIS file whose categories are ids 1..K, as detectron2's LVIS loader expects."""
    return {"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
            "annotations": [{"id": c, "image_id": 1, "category_id": c, "bbox": [1, 1, 4, 4], "area": 16,
                             "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]], "iscrowd": 0} for c in range(1, k + 1)],
            "categories": [{"id": c, "name": f"c{c}", "frequency": "f"} for c in range(1, k + 1)]}


def _converted(cli, tmp_path, agnostic: bool):
    bias = SETTINGS["class_agnostic_cls_bias" if agnostic else "cls_bias"]
    weights = detectron2_weights(SETTINGS["weights_seed"], SETTINGS["num_classes"], agnostic, cls_bias=bias)
    if agnostic:
        src = tmp_path / "model_0004999.pth"
        torch.save({"model": weights, "iteration": 4999}, src)
    else:
        src = tmp_path / "model_final.pkl"
        src.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in weights.items()}, "__author__": "test"},
                                     protocol=2))
    ann = write_json(tmp_path / "train.json", _annotations(SETTINGS["num_classes"]))
    out = tmp_path / "converted.pth"
    r = cli("convert", "--from", "detectron2", src, "--ann", ann, "--out", out)
    assert r.returncode == 0, r.stderr
    model, _ = load_checkpoint(out)
    model.transform.min_size, model.transform.max_size = (SETTINGS["min_size_test"],), SETTINGS["max_size_test"]
    model.roi_heads.detections_per_img = SETTINGS["detections_per_image"]
    return model.eval()


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M)."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def _match(ref: dict, det: dict, size: tuple[int, int]) -> dict:
    """Greedy one-to-one matching of detectron2's detections (best first) to ours: same class, best box IoU."""
    from pycocotools import mask as mask_utils

    boxes, scores = det["boxes"].numpy().astype(float), det["scores"].numpy().astype(float)
    labels = det["labels"].numpy() - 1  # our label j + 1 is detectron2's class j
    probs = det["masks"][:, 0].numpy()
    ref_boxes = np.asarray(ref["boxes"], dtype=float).reshape(-1, 4)
    iou = _iou(ref_boxes, boxes) if len(boxes) else np.zeros((len(ref_boxes), 0))
    iou[np.asarray(ref["classes"])[:, None] != labels[None]] = -1
    used = np.zeros(len(boxes), bool)
    box_iou, score_diff, mask_iou, inter, union, off_tie = [], [], [], 0, 0, 0.0
    for i in range(len(ref_boxes)):
        cand = np.where(used, -1, iou[i])
        j = int(cand.argmax()) if len(cand) else -1
        if j < 0 or cand[j] < 0:
            box_iou.append(0.0)
            continue
        used[j] = True
        box_iou.append(float(cand[j]))
        score_diff.append(abs(scores[j] - ref["scores"][i]))
        rm = mask_utils.decode({"size": list(size), "counts": ref["masks"][i]}).astype(bool)
        ours = probs[j] >= 0.5  # detectron2's threshold (mask_ops.paste_masks_in_image)
        i_n, u_n = int((rm & ours).sum()), int((rm | ours).sum())
        inter, union = inter + i_n, union + u_n
        mask_iou.append(i_n / u_n if u_n else 1.0)
        off_tie = max([off_tie, *np.abs(probs[j][rm != ours] - 0.5)])
    return {"count": (len(ref_boxes), len(boxes)), "min_box_iou": min(box_iou),
            "max_score_diff": max(score_diff), "pooled_mask_iou": inter / union, "min_mask_iou": min(mask_iou),
            "max_prob_off_threshold_where_masks_differ": off_tie}


@pytest.mark.parametrize("variant", ["per_class", "class_agnostic"])
def test_converted_detectron2_model_reproduces_detectron2(cli, tmp_path, variant):
    model = _converted(cli, tmp_path, variant == "class_agnostic")
    sizes = tuple(map(tuple, SETTINGS["sizes"]))[: 1 if variant == "class_agnostic" else None]
    for rgb, ref in zip(images(SETTINGS["image_seed"], sizes), FIXTURE[variant]):
        x = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
        with torch.no_grad():
            det = model([x])[0]
        m = _match(ref, det, rgb.shape[:2])
        assert m["count"][0] == m["count"][1], m
        assert m["min_box_iou"] >= 0.99 and m["max_score_diff"] <= 1e-4, m
        assert m["pooled_mask_iou"] >= 0.98 and m["max_prob_off_threshold_where_masks_differ"] <= 1e-3, m
