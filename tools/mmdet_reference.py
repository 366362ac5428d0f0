"""Run mmdetection 3.x itself on seeded weights and images; write what it detects as a test fixture.

The mmdetection counterpart of tools/detectron2_reference.py: ``tests/detector/test_framework_references.py``
regenerates the same weights (:func:`tools.reference_inputs.mmdet_weights`) and images, converts the
weights with ``simcal convert --from mmdet`` and matches its detections to the ones recorded here.

It needs a Python where mmdetection 3.x runs with mmcv's compiled CPU ops (mmcv 2.1.0 built from its
source distribution with ``MMCV_WITH_OPS=1 FORCE_CUDA=0``; about 26 minutes on 2 cores)::

    python -m venv /tmp/mm && /tmp/mm/bin/pip install torch==2.13.0 'setuptools<70' mmengine==0.10.7
    MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=2 /tmp/mm/bin/pip install --no-build-isolation mmcv==2.1.0
    /tmp/mm/bin/pip install mmdet==3.3.0
    /tmp/mm/bin/python tools/mmdet_reference.py --out tests/fixtures/mmdet_reference.json

The model is mmdetection's LVIS v1 R50-FPN Mask R-CNN config
(``lvis/mask-rcnn_r50_fpn_sample1e-3_ms-1x_lvis-v1.py``: score threshold 1e-4, its test pipeline's
keep-ratio ``Resize``) with a small class count, test scale and detection cap so the test runs quickly;
images go in as BGR arrays (``LoadImageFromNDArray``), as mmcv's loader would give them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.reference_inputs import detection_record, images, mmdet_weights  # noqa: E402

#: What the fixture was made with; the test reads the same values from the fixture.
SETTINGS = {"weights_seed": 0, "image_seed": 1, "num_classes": 8, "sizes": [[240, 320], [300, 200], [257, 391]],
            "min_size_test": 320, "max_size_test": 533, "detections_per_image": 100}
CONFIG = "lvis/mask-rcnn_r50_fpn_sample1e-3_ms-1x_lvis-v1.py"


def build(settings: dict, agnostic: bool):
    """mmdetection's model and test pipeline for the fixture's settings (``agnostic``: class-agnostic box
    regression and masks, ``reg_class_agnostic`` and ``class_agnostic``)."""
    import os

    import mmdet
    from mmcv.transforms import Compose
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    cfg = Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", CONFIG))
    cfg.model.backbone.init_cfg = None
    cfg.model.roi_head.bbox_head.num_classes = settings["num_classes"]
    cfg.model.roi_head.mask_head.num_classes = settings["num_classes"]
    cfg.model.roi_head.bbox_head.reg_class_agnostic = agnostic
    cfg.model.roi_head.mask_head.class_agnostic = agnostic
    cfg.model.test_cfg.rcnn.max_per_img = settings["detections_per_image"]
    steps = [dict(type="LoadImageFromNDArray")]
    for step in cfg.test_pipeline:
        if step["type"] in ("LoadImageFromFile", "LoadAnnotations"):
            continue
        if step["type"] == "Resize":
            step = {**step, "scale": (settings["max_size_test"], settings["min_size_test"])}
        steps.append(step)
    return MODELS.build(cfg.model).eval(), Compose(steps)


def detect(model, pipeline, settings: dict) -> list:
    """mmdetection's ``DetDataSample`` per test image (``test_step``: preprocessor, model, rescale)."""
    import torch
    from mmengine.dataset import pseudo_collate

    out = []
    for n, rgb in enumerate(images(settings["image_seed"], tuple(map(tuple, settings["sizes"])))):
        data = pseudo_collate([pipeline({"img": np.ascontiguousarray(rgb[:, :, ::-1]), "img_id": n})])
        with torch.no_grad():
            out.append(model.test_step(data)[0])
    return out


def centring_bias(model, pipeline, settings: dict) -> list[float]:
    """Minus each class's mean logit over the RoIs the test images give (the bias of a first pass is 0)."""
    import torch

    logits: list = []
    hook = model.roi_head.bbox_head.fc_cls.register_forward_hook(lambda m, i, o: logits.append(o))
    detect(model, pipeline, settings)
    hook.remove()
    return [round(-float(v), 4) for v in torch.cat(logits).mean(0)]


def run(settings: dict, agnostic: bool) -> list[dict]:
    """mmdetection's detections of the fixture's images; sets the classifier bias it used in ``settings``."""
    model, pipeline = build(settings, agnostic)
    weights = mmdet_weights(settings["weights_seed"], settings["num_classes"], agnostic)
    weights["roi_head.bbox_head.fc_cls.bias"].zero_()
    model.load_state_dict(weights, strict=True)
    bias = "class_agnostic_cls_bias" if agnostic else "cls_bias"
    settings[bias] = centring_bias(model, pipeline, settings)
    model.load_state_dict(mmdet_weights(settings["weights_seed"], settings["num_classes"], agnostic, settings[bias]),
                          strict=True)
    return [detection_record(sample.metainfo["img_shape"], sample.pred_instances.bboxes.numpy(),
                             sample.pred_instances.scores.numpy(), sample.pred_instances.labels.numpy(),
                             sample.pred_instances.masks.numpy())
            for sample in detect(model, pipeline, settings)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="fixture JSON to write")
    args = parser.parse_args()
    import cv2
    import mmcv
    import mmdet
    import mmengine
    import torch

    settings = dict(SETTINGS)
    per_class, agnostic = run(settings, False), run(settings, True)
    versions = {"mmdet": mmdet.__version__, "mmcv": mmcv.__version__, "mmengine": mmengine.__version__,
                "torch": torch.__version__, "opencv": cv2.__version__, "config": CONFIG}
    fixture = {"settings": settings, "made_with": versions, "per_class": per_class, "class_agnostic": agnostic}
    Path(args.out).write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
