"""Run a detector over a dataset and produce LVIS results (bbox + RLE segm).

One result per detection: ``{"image_id", "category_id", "bbox": [x, y, w, h],
"score", "segmentation": {"size": [h, w], "counts": str}}``, at most
``box_detections_per_img`` per image (300, the LVIS setting), masks binarised at 0.5.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from simcal.data.categories import CategoryMapping


def detections_to_results(
    det: dict[str, torch.Tensor], image_id: int, mapping: CategoryMapping, with_masks: bool = True
) -> list[dict[str, Any]]:
    """One image's torchvision output (boxes xyxy, labels 1..C, scores, masks (N,1,H,W)) -> LVIS records."""
    from pycocotools import mask as mask_utils

    boxes = det["boxes"].detach().cpu().numpy().astype(np.float64)
    scores = det["scores"].detach().cpu().numpy().astype(np.float64)
    labels = det["labels"].detach().cpu().numpy()
    out = []
    rles = None
    if with_masks and "masks" in det and len(labels):
        binary = (det["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    for k in range(len(labels)):
        x0, y0, x1, y1 = boxes[k]
        rec = {
            "image_id": int(image_id),
            "category_id": int(mapping.to_category_id(int(labels[k]))),
            "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
            "score": float(scores[k]),
        }
        if rles is not None:
            rec["segmentation"] = {"size": [int(s) for s in rles[k]["size"]],
                                   "counts": rles[k]["counts"].decode("ascii")}
        out.append(rec)
    return out


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    batches: Iterable[tuple[list[torch.Tensor], list[dict[str, Any]]]],
    mapping: CategoryMapping,
    device: torch.device | str = "cpu",
    progress: Any = None,
) -> list[dict[str, Any]]:
    """LVIS results for every image the batches yield (images at original size)."""
    model.eval()
    results: list[dict[str, Any]] = []
    for images, targets in batches:
        outputs = model([im.to(device) for im in images])
        for det, t in zip(outputs, targets):
            results.extend(detections_to_results(det, t["image_id"], mapping))
        if progress is not None:
            progress.update(len(images))
    return results
