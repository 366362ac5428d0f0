"""mmdetection v1 (the SimCal authors' release) R50-FPN Mask R-CNN weights in torchvision's layout: the renaming
step of ``--from mmdet1``.

The release's detector (``MaskRCNN_calibration``, ``mmdet/models/detectors/two_stage_calibration.py`` of
twangnh/SimCal) holds its heads as top-level attributes: ``bbox_head``, ``mask_head`` without mmdetection 2's
``roi_head.`` prefix. Names follow :data:`RENAMES`; K classes, shapes as stored:

    backbone.conv1.weight, backbone.bn1.*      (64, 3, 7, 7) RGB input  -> backbone.body.conv1.weight, bn1.*
    backbone.layerL.B.{conv,bn}k.*              torchvision's shapes     -> backbone.body.layerL.B.*
    neck.lateral_convs.i.conv.*                (256, C_i, 1, 1)          -> backbone.fpn.inner_blocks.i.0.*
    neck.fpn_convs.i.conv.*                    (256, 256, 3, 3)          -> backbone.fpn.layer_blocks.i.0.*
    rpn_head.rpn_conv / rpn_cls / rpn_reg      (256,..), (3,..), (12,..) -> rpn.head.conv.0.0 / cls_logits / bbox_pred
    bbox_head.shared_fcs.0/1.*                 (1024, 12544), (1024, 1024) -> roi_heads.box_head.fc6/fc7.*
    bbox_head.fc_cls.*                         (K+1, 1024) background first -> cls_score, unchanged
    bbox_head.fc_reg.*                         (4(K+1), 1024) incl. background, or (4, 1024) reg_class_agnostic
                                                                        -> bbox_pred, unchanged
    mask_head.convs.i.conv.*                   (256, 256, 3, 3)          -> roi_heads.mask_head.i.0.*
    mask_head.upsample.*                       (256, 256, 2, 2) deconv   -> roi_heads.mask_predictor.conv5_mask.*
    mask_head.conv_logits.*                    (K+1, 256, 1, 1) incl. background, or (1, ...) class_agnostic
                                                                        -> mask_fcn_logits, unchanged

mmdetection v1 already uses torchvision's class layout: ``num_classes=1231`` counts the background,
which is label 0 (``LvisDataset.cat2label = {cat_id: i + 1}`` over the file's categories, ids ascending
in LVIS), and the regressor and mask predictor keep a background slot. Every tensor is copied as it is;
only the BatchNorm counters (``num_batches_tracked``) are dropped (our frozen BatchNorm has none).
The class-agnostic release (``r50-ag``) has our class-agnostic heads' shapes.

The test behaviour that goes with these weights (mmdetection v1's "+1" pixel convention, scalar rescale,
legacy anchors, RoIAlign and mask pasting) is ``convert.MMDET1_BEHAVIOUR``; see
:mod:`simcal.detector.legacy_boxes`.
"""

from __future__ import annotations

import torch

from simcal.detector.from_mmdet import IGNORED, mmdet_rules
from simcal.detector.key_renames import check_head_weights, check_sigmoid_rpn, first_keys, rename_keys

#: mmdetection v1 name -> torchvision name: v2's rules with the RoI heads at the top level (no ``roi_head.``).
RENAMES = mmdet_rules("")

CLS, REG, MASK, RPN_CLS = ("bbox_head.fc_cls", "bbox_head.fc_reg", "mask_head.conv_logits", "rpn_head.rpn_cls")
#: The weights whose first dimension says what the heads score (v1 names).
HEADS = tuple(f"{m}.{p}" for m in (RPN_CLS, CLS, REG, MASK) for p in ("weight", "bias"))


def rename(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmdetection v1 names -> torchvision names; ValueError naming the first keys no R50-FPN Mask R-CNN has."""
    out, unknown = rename_keys(weights, RENAMES, IGNORED)
    if unknown:
        hint = " (an mmdetection 2 checkpoint: use --from mmdet)" if any(k.startswith("roi_head.") for k in unknown) \
            else ""
        raise ValueError(f"has {len(unknown)} weight(s) no mmdetection 1.x R50-FPN Mask R-CNN has{hint}: "
                         f"{first_keys(unknown)}")
    return out


def check_heads(weights: dict[str, torch.Tensor]) -> tuple[int, bool]:
    """(K, class-agnostic) from the heads' first dimensions (v1 names), or ValueError for heads ours cannot run."""
    check_head_weights(weights, HEADS, "an mmdetection 1.x Mask R-CNN")
    check_sigmoid_rpn(weights, f"{RPN_CLS}.weight", "the release's")
    rows = int(weights[f"{CLS}.weight"].shape[0])
    if rows < 2:
        raise ValueError(f"has a classifier of {rows} output(s), not one per class plus background")
    K = rows - 1
    reg, mask = int(weights[f"{REG}.weight"].shape[0]), int(weights[f"{MASK}.weight"].shape[0])
    agnostic = reg == 4
    if (mask == 1) != agnostic or reg not in (4, 4 * rows) or mask not in (1, rows):
        raise ValueError(f"has a box regressor of {reg} rows and a mask predictor of {mask} channels, which fit "
                         f"neither {K} classes plus background (mmdetection 1.x keeps its slot) nor one "
                         "class-agnostic output each")
    return K, agnostic


def to_torchvision(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int, bool]:
    """mmdetection v1 R50-FPN Mask R-CNN weights -> (torchvision state dict, K, class-agnostic).

    Raises ValueError (the caller names the file) for keys or heads outside that architecture.
    """
    K, agnostic = check_heads(weights)
    tv = rename(weights)
    return {k: v.float() if v.is_floating_point() else v for k, v in tv.items()}, K, agnostic


__all__ = ["IGNORED", "RENAMES", "check_heads", "rename", "to_torchvision"]
