"""Run detectron2 itself on seeded weights and images; write what it detects as a test fixture.

The fixture lets ``tests/detector/test_framework_references.py`` check, without detectron2, that
``simcal convert --from detectron2`` reproduces detectron2's detections: the test regenerates the same
weights and images from the seeds (:mod:`tools.reference_inputs`), converts the weights, runs the
converted model and matches its boxes, scores and masks to the ones recorded here.

It needs a Python where ``import detectron2`` works; detectron2's compiled ops are not needed on CPU
(R50-FPN Mask R-CNN uses torchvision's RoIAlign and NMS). One way, from a detectron2 source tree::

    python -m venv /tmp/d2 && /tmp/d2/bin/pip install torch torchvision pillow pycocotools \\
        'fvcore>=0.1.5,<0.1.6' 'iopath>=0.1.7,<0.1.10' 'omegaconf>=2.1,<2.4' yacs termcolor tabulate cloudpickle
    PYTHONPATH=/path/to/detectron2:. /tmp/d2/bin/python tools/detectron2_reference.py \\
        --out tests/fixtures/detectron2_reference.json \\
        --detectron2-commit "$(git -C /path/to/detectron2 rev-parse HEAD)"

The model is detectron2's LVIS R50-FPN Mask R-CNN config (``Base-RCNN-FPN.yaml`` +
``LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml``: ROIAlignV2, MSRA ResNet, BGR input,
score threshold 1e-4) with a small class count, test size and detection cap so the test runs quickly.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.reference_inputs import detection_record, detectron2_weights, images  # noqa: E402

#: What the fixture was made with; the test reads the same values from the fixture.
SETTINGS = {"weights_seed": 0, "image_seed": 1, "num_classes": 8, "sizes": [[240, 320], [300, 200], [257, 391]],
            "min_size_test": 320, "max_size_test": 533, "detections_per_image": 100}


def config(settings: dict, agnostic: bool):
    from detectron2.config import get_cfg

    cfg = get_cfg()  # defaults: R50 MSRA (STRIDE_IN_1X1), BGR, PIXEL_STD 1, ROIAlignV2, sampling ratio 0
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = settings["num_classes"]
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 1e-4
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = agnostic
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 4
    cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
    cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = agnostic
    cfg.INPUT.MIN_SIZE_TEST = settings["min_size_test"]
    cfg.INPUT.MAX_SIZE_TEST = settings["max_size_test"]
    cfg.TEST.DETECTIONS_PER_IMAGE = settings["detections_per_image"]
    return cfg


def load(model, weights: dict) -> None:
    """Through detectron2's own model-zoo .pkl loader, refusing anything it would only log."""
    from detectron2.checkpoint import DetectionCheckpointer

    with tempfile.TemporaryDirectory() as tmp:
        pkl = Path(tmp) / "model_final.pkl"
        pkl.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in weights.items()},
                                      "__author__": "SimCal reference"}, protocol=2))
        checkpointer = DetectionCheckpointer(model)
        incompatible = checkpointer._load_model(checkpointer._load_file(str(pkl)))
    bad = incompatible.missing_keys + incompatible.unexpected_keys + incompatible.incorrect_shapes
    if bad:  # detectron2 only logs these; a reference must load every weight
        raise SystemExit(f"detectron2 did not load the weights exactly: {bad[:5]}")


def detect(model, settings: dict) -> list[tuple[dict, object]]:
    """(resized image, detectron2 Instances) per test image, through DefaultPredictor's steps."""
    import torch
    from detectron2.data import transforms as T

    aug = T.ResizeShortestEdge([settings["min_size_test"]] * 2, settings["max_size_test"])
    out = []
    for rgb in images(settings["image_seed"], tuple(map(tuple, settings["sizes"]))):
        bgr = rgb[:, :, ::-1]
        resized = aug.get_transform(bgr).apply_image(bgr)
        with torch.no_grad():
            inst = model([{"image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
                           "height": rgb.shape[0], "width": rgb.shape[1]}])[0]["instances"]
        out.append((resized, inst))
    return out


def centring_bias(model, settings: dict) -> list[float]:
    """Minus each class's mean logit over the RoIs the test images give (the bias of a first pass is 0)."""
    logits: list = []
    hook = model.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: logits.append(o[0]))
    detect(model, settings)
    hook.remove()
    import torch

    return [round(-float(v), 4) for v in torch.cat(logits).mean(0)]


def run(settings: dict, agnostic: bool) -> list[dict]:
    from detectron2.modeling import build_model
    model = build_model(config(settings, agnostic)).eval()
    args = (settings["weights_seed"], settings["num_classes"], agnostic)
    weights = detectron2_weights(*args)
    weights["roi_heads.box_predictor.cls_score.bias"].zero_()
    load(model, weights)
    key = "class_agnostic_cls_bias" if agnostic else "cls_bias"
    settings[key] = centring_bias(model, settings)
    load(model, detectron2_weights(*args, cls_bias=settings[key]))
    proposals: list = []
    model.proposal_generator.register_forward_hook(lambda m, i, o: proposals.append(o[0][0]))
    out = []
    for n, (resized, inst) in enumerate(detect(model, settings)):
        record = detection_record(resized.shape[:2], inst.pred_boxes.tensor.numpy(), inst.scores.numpy(),
                                  inst.pred_classes.numpy(), inst.pred_masks.numpy())
        top = proposals[n].proposal_boxes.tensor[:20].numpy()
        out.append({"resized": record.pop("resized"), "proposals": np.round(top.astype(float), 4).tolist(), **record})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="fixture JSON to write")
    parser.add_argument("--detectron2-commit", default="", help="the detectron2 commit, recorded in the fixture")
    args = parser.parse_args()
    import detectron2
    import PIL
    import torch

    settings = dict(SETTINGS)
    per_class, agnostic = run(settings, agnostic=False), run(settings, agnostic=True)
    versions = {"detectron2": detectron2.__version__, "detectron2_commit": args.detectron2_commit,
                "torch": torch.__version__, "pillow": PIL.__version__}
    fixture = {"settings": settings, "made_with": versions,
               "per_class": per_class, "class_agnostic": agnostic}
    Path(args.out).write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
