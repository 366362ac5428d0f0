"""Mask R-CNN builders on torchvision's detection machinery; nothing is ever downloaded.

``build(arch, num_classes, class_agnostic=False, **kw)`` with ``num_classes`` = C
foreground classes (the model has C + 1 outputs, 0 = background):

- ``r50_fpn``: ``maskrcnn_resnet50_fpn``'s architecture (the paper's model): ResNet-50
  with frozen BatchNorm + FPN-256, box head ``TwoMLPHead`` 12544 -> 1024 -> 1024.
  ImageNet backbone weights only from a local file (``backbone_weights=PATH``);
  ``pixel_norm="detectron2"`` normalises as detectron2 (mean on 0-255, std 1);
  ``stride_in_1x1=True`` puts each stage's stride in its first 1x1 conv, as the MSRA
  ResNet that detectron2 and mmdetection's ``caffe`` style use (for converted detectors);
  ``anchors="detectron2"`` uses :mod:`simcal.detector.anchors` (unrounded, fixed strides);
  ``roi_align="detectron2"`` pools with ``aligned=True``, ``sampling_ratio=0``
  (:mod:`simcal.detector.aligned_pooler`); ``small_boxes="detectron2"`` drops only empty proposals and
  detections, where torchvision drops those under 1e-3 / 1e-2 pixels; ``resize="detectron2"`` rounds the
  test-time image size half up and resizes the 8-bit image with PIL (``resize="mmdet"``: the same size,
  OpenCV's bilinear, :mod:`simcal.detector.opencv_resize`), and ``paste_masks="detectron2"``
  pastes masks with ``grid_sample`` (:mod:`simcal.detector.detectron2_transform`).
  mmdetection v1 (the SimCal authors' release) with the value ``"mmdet1"``: ``anchors`` (v1's rounded
  anchors, :mod:`simcal.detector.legacy_anchors`), ``roi_align`` (v1's levels and RoIAlign,
  :mod:`simcal.detector.legacy_pooler`), ``boxes`` (v1's "+1" box decoding, RPN, NMS and detection
  post-processing, :mod:`simcal.detector.legacy_boxes`), ``resize`` (v1's size, 8-bit resize and one scale
  factor) and ``paste_masks`` (:mod:`simcal.detector.mmdet1_transform`); ``boxes`` and ``resize`` go
  together (the post-processing needs the factor), ``paste_masks="mmdet1"`` needs them.
- ``tiny_cascade``, ``r50_cascade``: the same with Cascade R-CNN's three box stages
  (:mod:`simcal.detector.cascade`); box regression is class-agnostic in every stage, as in Cascade R-CNN.
- ``tiny``: :mod:`simcal.detector.tiny_backbone` + FPN-64, anchors 8-64 px, 128-px
  images, RoIAlign ``sampling_ratio=1`` with ``canonical_scale=64`` (small RoIs spread
  over the FPN levels), box head 3136 -> 256 -> 256, 64 RoIs per image (docs/design.md §8.1),
  mask head 2 x 32-channel convs.

Both use LVIS test settings by default: score threshold 1e-4, NMS 0.5, 300
detections per image (``box_score_thresh``, ``box_nms_thresh``,
``box_detections_per_img`` override them). ``class_agnostic=True`` shares one box
regressor and one mask channel across classes (:mod:`simcal.detector.class_agnostic`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from simcal.core.names import ARCHS, CASCADE_OF

LVIS_TEST_SETTINGS = {"box_score_thresh": 1e-4, "box_nms_thresh": 0.5, "box_detections_per_img": 300}


def _tiny(num_classes: int, **kw: Any) -> nn.Module:
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    from simcal.detector.tiny_backbone import TinyBackboneWithFPN

    fpn = kw.pop("fpn_channels", 64)
    rep = kw.pop("representation_size", 256)
    backbone = TinyBackboneWithFPN(out_channels=fpn)
    names = ["0", "1", "2", "3"]
    settings = dict(
        min_size=128, max_size=128,
        rpn_anchor_generator=AnchorGenerator(((8,), (16,), (32,), (64,)), ((0.5, 1.0, 2.0),) * 4),
        rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=600, rpn_post_nms_top_n_test=300,
        rpn_batch_size_per_image=128,
        box_roi_pool=MultiScaleRoIAlign(names, 7, sampling_ratio=1, canonical_scale=64),
        box_head=TwoMLPHead(fpn * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, num_classes + 1),
        box_batch_size_per_image=64,
        mask_roi_pool=MultiScaleRoIAlign(names, 14, sampling_ratio=1, canonical_scale=64),
        # 32-channel mask head: at 64 channels the mask branch's convolutions dominate a CPU step
        mask_head=MaskRCNNHeads(fpn, [32, 32], 1),
        mask_predictor=MaskRCNNPredictor(32, 32, num_classes + 1),
    )
    settings.update(LVIS_TEST_SETTINGS)
    settings.update(kw)
    # Custom predictors: torchvision wants num_classes=None then.
    return MaskRCNN(backbone, num_classes=None, **settings)


def _load_backbone_weights(body: nn.Module, path: str | os.PathLike) -> None:
    from simcal.core.errors import input_error

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise input_error(path, "does not exist", "pass a local ResNet-50 ImageNet state_dict file")
    except Exception as e:  # corrupt, truncated, or not a torch file
        raise input_error(path, f"is not a readable torch state_dict ({type(e).__name__})")
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    missing, unexpected = body.load_state_dict({k: v for k, v in sd.items() if not k.startswith("fc.")},
                                               strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing:
        raise input_error(path, f"is not a ResNet-50 state_dict (missing {len(missing)} keys, e.g. {missing[0]!r})")


def _move_stride_to_1x1(body: nn.Module) -> None:
    """The original MSRA ResNet (detectron2's ``STRIDE_IN_1X1=True``, mmdetection's ``style='caffe'``) strides in
    the first 1x1 conv of a stage, torchvision's in the 3x3: same shapes and weights, other features."""
    for layer in (body.layer2, body.layer3, body.layer4):
        layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)


def _r50_fpn(num_classes: int, **kw: Any) -> nn.Module:
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import misc as misc_nn_ops

    weights = kw.pop("backbone_weights", None)
    trainable = kw.pop("trainable_backbone_layers", 3)
    if kw.pop("pixel_norm", "torchvision") == "detectron2":  # 0-255 input minus its mean, std 1 (RGB order)
        kw.setdefault("image_mean", [123.675 / 255, 116.28 / 255, 103.53 / 255])
        kw.setdefault("image_std", [1 / 255] * 3)
    stride_in_1x1 = kw.pop("stride_in_1x1", False)
    body = resnet50(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d)
    if stride_in_1x1:
        _move_stride_to_1x1(body)
    if weights:
        _load_backbone_weights(body, weights)
    backbone = _resnet_fpn_extractor(body, trainable)
    settings = dict(LVIS_TEST_SETTINGS)
    anchors = kw.pop("anchors", "torchvision")
    if anchors == "detectron2":  # unrounded cell anchors, fixed strides 4..64 (detector/anchors.py)
        from simcal.detector.anchors import FixedStrideAnchorGenerator

        settings["rpn_anchor_generator"] = FixedStrideAnchorGenerator(((32,), (64,), (128,), (256,), (512,)),
                                                                      ((0.5, 1.0, 2.0),) * 5)
    elif anchors == "mmdet1":  # v1's rounded anchors at fixed strides (detector/legacy_anchors.py)
        from simcal.detector.legacy_anchors import Mmdet1AnchorGenerator

        settings["rpn_anchor_generator"] = Mmdet1AnchorGenerator()
    elif anchors != "torchvision":
        raise ValueError(f"unknown anchors {anchors!r}; choose from torchvision, detectron2, mmdet1")
    pooling = kw.pop("roi_align", "torchvision")
    if pooling == "detectron2":  # ROIAlignV2: aligned=True, adaptive sampling (detector/aligned_pooler.py)
        from simcal.detector.aligned_pooler import AlignedMultiScaleRoIAlign

        levels = ["0", "1", "2", "3"]
        settings["box_roi_pool"] = AlignedMultiScaleRoIAlign(levels, output_size=7, sampling_ratio=0)
        settings["mask_roi_pool"] = AlignedMultiScaleRoIAlign(levels, output_size=14, sampling_ratio=0)
    elif pooling == "mmdet1":  # v1's levels and RoIAlign, sample_num 2 (detector/legacy_pooler.py)
        from simcal.detector.legacy_pooler import Mmdet1MultiScaleRoIAlign

        levels = ["0", "1", "2", "3"]
        settings["box_roi_pool"] = Mmdet1MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2)
        settings["mask_roi_pool"] = Mmdet1MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2)
    elif pooling != "torchvision":
        raise ValueError(f"unknown roi_align {pooling!r}; choose from torchvision, detectron2, mmdet1")
    settings.update(kw)
    return MaskRCNN(backbone, num_classes=num_classes + 1, **settings)


def build(arch: str, num_classes: int, class_agnostic: bool = False, **kw: Any) -> nn.Module:
    """A torchvision ``MaskRCNN`` with :class:`LongTailRoIHeads`; see the module docstring."""
    from simcal.detector.class_agnostic import AgnosticFastRCNNPredictor, AgnosticMaskRCNNPredictor
    from simcal.detector.roi_heads import LongTailRoIHeads

    small_boxes, resize = kw.pop("small_boxes", "torchvision"), kw.pop("resize", "torchvision")
    paste, boxes = kw.pop("paste_masks", "torchvision"), kw.pop("boxes", "torchvision")
    _check_switches(small_boxes=small_boxes, resize=resize, paste_masks=paste, boxes=boxes)
    base = CASCADE_OF.get(arch, arch)
    if base == "tiny":
        model = _tiny(num_classes, **kw)
    elif base == "r50_fpn":
        model = _r50_fpn(num_classes, **kw)
    else:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    heads = model.roi_heads
    if class_agnostic or arch in CASCADE_OF:
        rep = heads.box_predictor.cls_score.in_features
        heads.box_predictor = AgnosticFastRCNNPredictor(rep, num_classes + 1)
    if class_agnostic:
        mp = heads.mask_predictor
        heads.mask_predictor = AgnosticMaskRCNNPredictor(mp.conv5_mask.in_channels, mp.conv5_mask.out_channels,
                                                         num_classes + 1)
    # detectron2 drops only empty boxes (Boxes.nonempty(): width and height > 0); mmdetection v1 keeps every box
    rules = ({"min_box_size": None, "drop_empty": True} if small_boxes == "detectron2" else {})
    model.roi_heads = LongTailRoIHeads.like(model.roi_heads, convention=boxes, **rules)
    if arch in CASCADE_OF:
        if boxes != "torchvision":
            raise ValueError(f"{arch} decodes boxes with its stages' own coders; leave boxes unset")
        from simcal.detector.cascade import CascadeRoIHeads

        model.roi_heads = CascadeRoIHeads.like(model.roi_heads, convention=boxes, **rules)
    if small_boxes == "detectron2":  # torchvision's RPN keeps w >= min_size: the smallest positive float: w > 0
        model.rpn.min_size = torch.finfo(torch.float32).tiny
    if resize in ("detectron2", "mmdet") or paste == "detectron2":  # detector/detectron2_transform.py
        from simcal.detector.detectron2_transform import Detectron2Transform

        eight_bit = {"detectron2": "pil", "mmdet": "opencv"}.get(resize)
        model.transform = Detectron2Transform.like(model.transform, eight_bit=eight_bit,
                                                   grid_paste=paste == "detectron2")
    if boxes == "mmdet1":  # detector/legacy_boxes.py: v1's box coder and proposals, its detections' NMS
        from simcal.detector.legacy_boxes import RCNN_STDS, Mmdet1BoxCoder, Mmdet1RPN

        model.rpn = Mmdet1RPN.like(model.rpn)
        model.roi_heads.box_coder = Mmdet1BoxCoder(RCNN_STDS)
    if resize == "mmdet1":  # detector/mmdet1_transform.py
        from simcal.detector.mmdet1_transform import Mmdet1Transform

        model.transform = Mmdet1Transform(model.transform, paste_masks=paste == "mmdet1")
    return model


#: The values each framework switch of build() takes.
SWITCHES = {"small_boxes": ("torchvision", "detectron2"), "resize": ("torchvision", "detectron2", "mmdet", "mmdet1"),
            "paste_masks": ("torchvision", "detectron2", "mmdet1"), "boxes": ("torchvision", "mmdet1")}


def _check_switches(**switches: str) -> None:
    """Known values, and the mmdetection v1 switches that only work together."""
    for name, value in switches.items():
        if value not in SWITCHES[name]:
            raise ValueError(f"unknown {name} {value!r}; choose from {', '.join(SWITCHES[name])}")
    boxes, resize, paste = switches["boxes"], switches["resize"], switches["paste_masks"]
    if (boxes == "mmdet1") != (resize == "mmdet1"):
        raise ValueError("boxes='mmdet1' and resize='mmdet1' go together: mmdetection v1 maps its detections to "
                         "the original image by the resize's one scale factor before its NMS")
    if paste == "mmdet1" and resize != "mmdet1":
        raise ValueError("paste_masks='mmdet1' needs resize='mmdet1' and boxes='mmdet1' (mmdetection v1's boxes)")
    if resize == "mmdet1" and paste == "detectron2":
        raise ValueError("paste_masks='detectron2' does not go with resize='mmdet1'; use 'mmdet1' or 'torchvision'")
    if boxes == "mmdet1" and switches["small_boxes"] != "torchvision":
        raise ValueError("boxes='mmdet1' keeps every box, as mmdetection v1 does; leave small_boxes unset")
