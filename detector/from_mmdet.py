"""mmdetection v2/v3 R50-FPN Mask R-CNN weights in torchvision's layout: the renaming step of ``--from mmdet``.

Names follow :data:`RENAMES` (mmdetection modules: ``backbones/resnet.py``, ``necks/fpn.py``,
``dense_heads/rpn_head.py``, ``roi_heads/bbox_heads/{convfc_bbox_head,bbox_head}.py``,
``roi_heads/mask_heads/fcn_mask_head.py``). mmdetection's ResNet already uses torchvision's names
(``conv1``, ``bn1``, ``layer1..4``, ``downsample.0/1``); its ``ConvModule`` keeps the convolution as
``.conv``. K classes, shapes as stored:

    backbone.conv1.weight                (64, 3, 7, 7) RGB input  -> backbone.body.conv1.weight, unchanged
    backbone.layerL.B.{conv,bn}k.*        torchvision's shapes     -> backbone.body.layerL.B.*
    neck.lateral_convs.i.conv.*          (256, C_i, 1, 1)          -> backbone.fpn.inner_blocks.i.0.*
    neck.fpn_convs.i.conv.*              (256, 256, 3, 3)          -> backbone.fpn.layer_blocks.i.0.*
    rpn_head.rpn_conv.*                  (256, 256, 3, 3)          -> rpn.head.conv.0.0.*
    rpn_head.rpn_cls.*                   (3, 256, 1, 1)            -> rpn.head.cls_logits.*  (one sigmoid logit
                                                                      per anchor; anchor a = ratio (0.5, 1, 2)[a])
    rpn_head.rpn_reg.*                   (12, 256, 1, 1)           -> rpn.head.bbox_pred.*   (4 deltas per anchor)
    roi_head.bbox_head.shared_fcs.0/1.*  (1024, 12544), (1024, 1024) -> roi_heads.box_head.fc6/fc7.*
    roi_head.bbox_head.fc_cls.*          (K+1, 1024) background last -> cls_score, background first
    roi_head.bbox_head.fc_reg.*          (4K, 1024), or (4, 1024) with reg_class_agnostic -> bbox_pred
    roi_head.mask_head.convs.i.conv.*    (256, 256, 3, 3)          -> roi_heads.mask_head.i.0.*
    roi_head.mask_head.upsample.*        (256, 256, 2, 2) deconv   -> roi_heads.mask_predictor.conv5_mask.*
    roi_head.mask_head.conv_logits.*     (K, 256, 1, 1), or (1, ...) class-agnostic -> mask_fcn_logits

The class-dependent layers are then re-indexed exactly as detectron2's
(:func:`simcal.detector.from_detectron2.background_first`): both frameworks put background last in the
classifier and give the regressor and the mask predictor no background slot. mmdetection's label j is
the j-th category of its training file (``cat2label`` over the file's category ids), which is our
label j + 1 when the file lists its categories by ascending id, as LVIS and COCO do; convert.py checks
the class names a checkpoint carries against that order. The BatchNorm counters
(``num_batches_tracked``) are dropped: our frozen BatchNorm has none.

Only ``style='pytorch'`` ResNets (mmdetection's default: stride in the 3x3, RGB input with ImageNet
mean and std, torchvision's own layout) take these weights unchanged; what the training config says
is checked in :mod:`simcal.detector.mmdet_config`. A softmax RPN (``use_sigmoid=False``: two scores
per anchor, whose order changed in mmdetection 2.5) is refused.

The test behaviour that goes with the weights (``convert.MMDET_BEHAVIOUR``) matches mmdetection's up
to these approximations, each far below the tolerances reported for such conversions:

- box decoding: mmdetection clamps the log-size deltas dw, dh to +-log(1000/16), torchvision only
  from above; they differ only for boxes shrunk below 1.6 % of their anchor's or proposal's size;
- resize: mmcv's output size (``int(x * scale + 0.5)``) and OpenCV's fixed-point bilinear filter on the
  uint8 image, as opencv-python 5.0 and 4.14 compute it (:mod:`simcal.detector.opencv_resize`);
- small boxes: mmdetection drops proposals of zero width or height (``w > 0``), torchvision's filter
  at size 0 keeps them;
- RoI level: ``floor(log2(sqrt(area) / 56 + 1e-6))`` against torchvision's
  ``floor(4 + log2(sqrt(area) / 224) + 1e-6)``: the same levels except within 1e-6 of a level's edge;
- masks: mmdetection binarises at ``>= 0.5``, SimCal's results at ``> 0.5``; mmdetection v2 pools the
  mask RoIs from the final boxes scaled to the original image and back (a float round trip);
- float rounding of the scale factor, the batched-NMS coordinate offsets and the order of ties.
"""

from __future__ import annotations

import re

import torch

from simcal.detector.from_detectron2 import background_first
from simcal.detector.key_renames import Rule, check_head_weights, check_sigmoid_rpn, first_keys, rename_keys

_BN = r"(?:weight|bias|running_mean|running_var)"
_WB = r"(?P<p>weight|bias)"


def mmdet_rules(heads: str) -> list[Rule]:
    """mmdetection name (regex) -> torchvision name (``re.Match.expand`` template); the first rule that matches
    renames. ``heads`` (a regex) prefixes the RoI heads' names: ``roi_head\\.`` in v2/v3, empty in v1 (whose detector
    holds ``bbox_head`` and ``mask_head`` itself)."""
    return [(re.compile(p), to) for p, to in [
        (rf"^backbone\.(?P<rest>conv1\.weight|bn1\.{_BN})$", r"backbone.body.\g<rest>"),
        (rf"^backbone\.(?P<rest>layer[1-4]\.\d+\.(?:conv[123]\.weight|bn[123]\.{_BN}|downsample\.0\.weight"
         rf"|downsample\.1\.{_BN}))$", r"backbone.body.\g<rest>"),
        (rf"^neck\.lateral_convs\.(?P<i>[0-3])\.conv\.{_WB}$", r"backbone.fpn.inner_blocks.\g<i>.0.\g<p>"),
        (rf"^neck\.fpn_convs\.(?P<i>[0-3])\.conv\.{_WB}$", r"backbone.fpn.layer_blocks.\g<i>.0.\g<p>"),
        (rf"^rpn_head\.rpn_conv\.{_WB}$", r"rpn.head.conv.0.0.\g<p>"),
        (rf"^rpn_head\.rpn_cls\.{_WB}$", r"rpn.head.cls_logits.\g<p>"),
        (rf"^rpn_head\.rpn_reg\.{_WB}$", r"rpn.head.bbox_pred.\g<p>"),
        (rf"^{heads}bbox_head\.shared_fcs\.0\.{_WB}$", r"roi_heads.box_head.fc6.\g<p>"),
        (rf"^{heads}bbox_head\.shared_fcs\.1\.{_WB}$", r"roi_heads.box_head.fc7.\g<p>"),
        (rf"^{heads}bbox_head\.fc_cls\.{_WB}$", r"roi_heads.box_predictor.cls_score.\g<p>"),
        (rf"^{heads}bbox_head\.fc_reg\.{_WB}$", r"roi_heads.box_predictor.bbox_pred.\g<p>"),
        (rf"^{heads}mask_head\.convs\.(?P<i>[0-3])\.conv\.{_WB}$", r"roi_heads.mask_head.\g<i>.0.\g<p>"),
        (rf"^{heads}mask_head\.upsample\.{_WB}$", r"roi_heads.mask_predictor.conv5_mask.\g<p>"),
        (rf"^{heads}mask_head\.conv_logits\.{_WB}$", r"roi_heads.mask_predictor.mask_fcn_logits.\g<p>"),
    ]]


RENAMES = mmdet_rules(r"roi_head\.")
#: BatchNorm update counters: bookkeeping, not weights.
IGNORED = re.compile(r"^backbone\..*\.num_batches_tracked$")

CLS = "roi_head.bbox_head.fc_cls.weight"
RPN_CLS = "rpn_head.rpn_cls.weight"
#: The weights whose first dimension says what the heads score (read before renaming).
HEADS = (RPN_CLS, CLS, "roi_head.bbox_head.fc_cls.bias", "roi_head.bbox_head.fc_reg.weight",
         "roi_head.bbox_head.fc_reg.bias", "roi_head.mask_head.conv_logits.weight",
         "roi_head.mask_head.conv_logits.bias")


def rename(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmdetection names -> torchvision names; ValueError naming the first keys no R50-FPN Mask R-CNN has."""
    out, unknown = rename_keys(weights, RENAMES, IGNORED)
    if unknown:
        raise ValueError(f"has {len(unknown)} weight(s) no mmdetection R50-FPN Mask R-CNN has: {first_keys(unknown)}")
    return out


def _check_heads(weights: dict[str, torch.Tensor]) -> int:
    """K from the classifier's K + 1 rows, after refusing the heads whose scores ours cannot reproduce."""
    check_head_weights(weights, HEADS, "an mmdetection Mask R-CNN")
    check_sigmoid_rpn(weights, RPN_CLS, "mmdetection's default")
    rows, reg = int(weights[CLS].shape[0]), int(weights["roi_head.bbox_head.fc_reg.weight"].shape[0])
    if reg != 4 and rows == reg // 4 + 2:
        raise ValueError(f"has a classifier of {rows} outputs for {rows - 2} classes (a Seesaw-style loss with "
                         "an objectness output), which is not supported: SimCal scores K + 1 outputs with softmax")
    if rows < 2:
        raise ValueError(f"has a classifier of {rows} output(s), not one per class plus background")
    return rows - 1


def to_torchvision(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int, bool]:
    """mmdetection v2/v3 R50-FPN Mask R-CNN weights -> (torchvision state dict, K, class-agnostic).

    Raises ValueError (the caller names the file) for keys or heads outside that architecture.
    """
    K = _check_heads(weights)
    tv, agnostic = background_first(rename(weights), K)
    return {k: v.float() if v.is_floating_point() else v for k, v in tv.items()}, K, agnostic


__all__ = ["IGNORED", "RENAMES", "rename", "to_torchvision"]
