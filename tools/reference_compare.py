"""A converted detector against the detections its source framework recorded (tools/detectron2_reference.py,
tools/mmdet_reference.py).

:func:`convert_reference` (detectron2) and :func:`convert_mmdet_reference` regenerate a fixture's weights
from its seeds, write them in the source's file format and convert them with ``simcal convert``
(:data:`REFERENCES` pairs each with its fixture); :func:`run_reference` runs the converted model
on the fixture's images and :func:`match_detections` compares each image's detections with the
recorded ones. Used by ``tests/detector/test_framework_references.py`` and
``benchmarks/conversion_agreement.py``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from tools.reference_inputs import detectron2_weights, images, mmdet_weights

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "detectron2_reference.json"
MMDET_FIXTURE = FIXTURE.with_name("mmdet_reference.json")


def load_fixture(path: Path = FIXTURE) -> dict[str, Any]:
    return json.loads(path.read_text())


def _annotations(k: int) -> dict:
    """An LVIS file whose categories are ids 1..K, as detectron2's LVIS loader expects."""
    return {"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
            "annotations": [{"id": c, "image_id": 1, "category_id": c, "bbox": [1, 1, 4, 4], "area": 16,
                             "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]], "iscrowd": 0} for c in range(1, k + 1)],
            "categories": [{"id": c, "name": f"c{c}", "frequency": "f"} for c in range(1, k + 1)]}


def _convert(source: str, src: Path, settings: dict[str, Any], work: Path) -> torch.nn.Module:
    """``simcal convert --from SOURCE`` of ``src`` for classes 1..K at the fixture's test size, loaded, capped."""
    from simcal.cli import main
    from simcal.detector.checkpoint import load_checkpoint

    ann = work / "train.json"
    ann.write_text(json.dumps(_annotations(settings["num_classes"])))
    out = work / "converted.pth"
    size = [str(settings["min_size_test"]), str(settings["max_size_test"])]
    rc = main(["convert", "--from", source, str(src), "--ann", str(ann), "--out", str(out), "--test-size", *size])
    if rc != 0:
        raise RuntimeError(f"simcal convert exited {rc}")
    model, _ = load_checkpoint(out)
    model.roi_heads.detections_per_img = settings["detections_per_image"]
    return model.eval()


def convert_reference(settings: dict[str, Any], agnostic: bool, work: Path) -> torch.nn.Module:
    """The fixture's detectron2 weights -> ``simcal convert`` -> our model at the fixture's test settings.

    The per-class model goes through a model-zoo ``.pkl`` (protocol 2, as the zoo's), the class-agnostic
    one through a Checkpointer ``.pth``, so both of detectron2's file formats are read.
    """
    bias = settings["class_agnostic_cls_bias" if agnostic else "cls_bias"]
    weights = detectron2_weights(settings["weights_seed"], settings["num_classes"], agnostic, cls_bias=bias)
    if agnostic:
        src = work / "model_0004999.pth"
        torch.save({"model": weights, "iteration": 4999}, src)
    else:
        src = work / "model_final.pkl"
        src.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in weights.items()}, "__author__": "test"},
                                     protocol=2))
    return _convert("detectron2", src, settings, work)


def convert_mmdet_reference(settings: dict[str, Any], agnostic: bool, work: Path) -> torch.nn.Module:
    """The mmdetection fixture's weights, as an mmdetection 3.x checkpoint (``meta`` with the class names,
    ``state_dict``) -> ``simcal convert --from mmdet`` -> our model at the fixture's test settings."""
    k = settings["num_classes"]
    bias = settings["class_agnostic_cls_bias" if agnostic else "cls_bias"]
    weights = mmdet_weights(settings["weights_seed"], k, agnostic, cls_bias=bias)
    src = work / "mask-rcnn_r50_fpn.pth"
    torch.save({"meta": {"mmdet_version": "3.3.0", "dataset_meta": {"classes": [f"c{c}" for c in range(1, k + 1)]}},
                "state_dict": weights}, src)
    return _convert("mmdet", src, settings, work)


#: source framework -> (its fixture, (settings, class-agnostic, work dir) -> the converted model)
REFERENCES = {"detectron2": (FIXTURE, convert_reference), "mmdet": (MMDET_FIXTURE, convert_mmdet_reference)}


def run_reference(model: torch.nn.Module, settings: dict[str, Any], count: int | None = None
                  ) -> Iterator[tuple[tuple[int, int], dict[str, torch.Tensor]]]:
    """((H, W), our detections) for the fixture's first ``count`` images (all by default)."""
    sizes = tuple(map(tuple, settings["sizes"]))[:count]
    for rgb in images(settings["image_seed"], sizes):
        with torch.no_grad():
            yield rgb.shape[:2], model([torch.from_numpy(rgb).permute(2, 0, 1).float() / 255])[0]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M)."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], axis=1), np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None] - inter)


def match_detections(ref: dict[str, Any], det: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, Any]:
    """Greedy one-to-one matching of the recorded detections (best first) to ours: same class, best box IoU.

    Our label j + 1 is detectron2's class j. Masks are binarised at detectron2's ``>= 0.5``;
    ``max_prob_off_threshold_where_masks_differ`` is how far from 0.5 our probability is on the pixels
    where the two masks differ (0 when they differ only by ties at the threshold).
    """
    from pycocotools import mask as mask_utils

    boxes, scores = det["boxes"].numpy().astype(float), det["scores"].numpy().astype(float)
    labels, probs = det["labels"].numpy() - 1, det["masks"][:, 0].numpy()
    ref_boxes = np.asarray(ref["boxes"], dtype=float).reshape(-1, 4)
    iou = _iou(ref_boxes, boxes) if len(boxes) else np.zeros((len(ref_boxes), 0))
    iou[np.asarray(ref["classes"])[:, None] != labels[None]] = -1
    used = np.zeros(len(boxes), bool)
    box_iou, score_diff, mask_iou, inter, union, off_tie = [], [0.0], [1.0], 0, 0, 0.0
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
        ours = probs[j] >= 0.5
        i_n, u_n = int((rm & ours).sum()), int((rm | ours).sum())
        inter, union = inter + i_n, union + u_n
        mask_iou.append(i_n / u_n if u_n else 1.0)
        off_tie = max([off_tie, *np.abs(probs[j][rm != ours] - 0.5)])
    return {"detections": len(ref_boxes), "ours": len(boxes), "min_box_iou": min(box_iou, default=1.0),
            "max_score_diff": float(max(score_diff)), "pooled_mask_iou": inter / union if union else 1.0,
            "min_mask_iou": min(mask_iou), "max_prob_off_threshold_where_masks_differ": float(off_tie)}
