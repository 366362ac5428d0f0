"""detectron2's R50-FPN Mask R-CNN weights in torchvision's layout: the renaming step of checkpoint import.

Names follow :data:`RENAMES` (detectron2 module paths: ``modeling/backbone/resnet.py``, ``fpn.py``,
``proposal_generator/rpn.py``, ``roi_heads/{box_head,fast_rcnn,mask_head}.py``). Then the layers that
depend on the classes are re-indexed, because the two frameworks place background differently:

    cls_score   (K+1, 1024) background last  -> (K+1, 1024) background first
    bbox_pred   (4K, 1024) no background     -> (4(K+1), 1024), four zero rows for background
                (4, 1024) class-agnostic     -> unchanged (our class-agnostic regressor)
    mask logits (K, 256, 1, 1)               -> (K+1, 256, 1, 1), a zero channel for background
                (1, 256, 1, 1) class-agnostic -> unchanged

detectron2 column j is category id j + 1 of an LVIS file (its LVIS loader maps ``category_id - 1``),
which is our label j + 1: no permutation beyond the background move. detectron2 reads BGR images,
so the stem's input channels are reversed to take RGB; the pixel mean and std that go with the
weights are builder keywords of the converted checkpoint, not weights.

Only the weights are converted here. Behaviour that differs (resize rounding, anchors, RoIAlign
``aligned``, mask pasting) is the converter's other half.
"""

from __future__ import annotations

import re
from typing import Callable

import torch

from simcal.detector.key_renames import Rule, rename_keys


def _rule(pattern: str, to: str | Callable[[re.Match], str]) -> Rule:
    return re.compile(pattern), (to if callable(to) else (lambda m, to=to: m.expand(to)))


def _layer(m: re.Match) -> str:
    return str(int(m["stage"]) - 1)


#: detectron2 name (regex) -> torchvision name; the first rule that matches renames the key.
RENAMES: list[Rule] = [
    _rule(r"^backbone\.bottom_up\.stem\.conv1\.weight$", "backbone.body.conv1.weight"),
    _rule(r"^backbone\.bottom_up\.stem\.conv1\.norm\.(?P<p>\w+)$", r"backbone.body.bn1.\g<p>"),
    _rule(r"^backbone\.bottom_up\.res(?P<stage>[2-5])\.(?P<b>\d+)\.conv(?P<k>[123])\.weight$",
          lambda m: f"backbone.body.layer{_layer(m)}.{m['b']}.conv{m['k']}.weight"),
    _rule(r"^backbone\.bottom_up\.res(?P<stage>[2-5])\.(?P<b>\d+)\.conv(?P<k>[123])\.norm\.(?P<p>\w+)$",
          lambda m: f"backbone.body.layer{_layer(m)}.{m['b']}.bn{m['k']}.{m['p']}"),
    _rule(r"^backbone\.bottom_up\.res(?P<stage>[2-5])\.0\.shortcut\.weight$",
          lambda m: f"backbone.body.layer{_layer(m)}.0.downsample.0.weight"),
    _rule(r"^backbone\.bottom_up\.res(?P<stage>[2-5])\.0\.shortcut\.norm\.(?P<p>\w+)$",
          lambda m: f"backbone.body.layer{_layer(m)}.0.downsample.1.{m['p']}"),
    _rule(r"^backbone\.fpn_lateral(?P<s>[2-5])\.(?P<p>weight|bias)$",
          lambda m: f"backbone.fpn.inner_blocks.{int(m['s']) - 2}.0.{m['p']}"),
    _rule(r"^backbone\.fpn_output(?P<s>[2-5])\.(?P<p>weight|bias)$",
          lambda m: f"backbone.fpn.layer_blocks.{int(m['s']) - 2}.0.{m['p']}"),
    _rule(r"^proposal_generator\.rpn_head\.conv\.(?P<p>weight|bias)$", r"rpn.head.conv.0.0.\g<p>"),
    _rule(r"^proposal_generator\.rpn_head\.objectness_logits\.(?P<p>weight|bias)$", r"rpn.head.cls_logits.\g<p>"),
    _rule(r"^proposal_generator\.rpn_head\.anchor_deltas\.(?P<p>weight|bias)$", r"rpn.head.bbox_pred.\g<p>"),
    _rule(r"^roi_heads\.box_head\.fc1\.(?P<p>weight|bias)$", r"roi_heads.box_head.fc6.\g<p>"),
    _rule(r"^roi_heads\.box_head\.fc2\.(?P<p>weight|bias)$", r"roi_heads.box_head.fc7.\g<p>"),
    _rule(r"^roi_heads\.box_predictor\.(?P<l>cls_score|bbox_pred)\.(?P<p>weight|bias)$",
          r"roi_heads.box_predictor.\g<l>.\g<p>"),
    _rule(r"^roi_heads\.mask_head\.mask_fcn(?P<i>[1-4])\.(?P<p>weight|bias)$",
          lambda m: f"roi_heads.mask_head.{int(m['i']) - 1}.0.{m['p']}"),
    _rule(r"^roi_heads\.mask_head\.deconv\.(?P<p>weight|bias)$", r"roi_heads.mask_predictor.conv5_mask.\g<p>"),
    _rule(r"^roi_heads\.mask_head\.predictor\.(?P<p>weight|bias)$", r"roi_heads.mask_predictor.mask_fcn_logits.\g<p>"),
]
#: Keys old detectron2 checkpoints carry that are not weights (its own loader skips them too).
IGNORED = re.compile(r"^(pixel_mean|pixel_std|proposal_generator\.anchor_generator\.cell_anchors\.\d+)$")

CLS = "roi_heads.box_predictor.cls_score"
BOX = "roi_heads.box_predictor.bbox_pred"
MASK = "roi_heads.mask_predictor.mask_fcn_logits"


def rename(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """detectron2 names -> torchvision names; ValueError naming a key no R50-FPN Mask R-CNN has."""
    out, unknown = rename_keys(weights, RENAMES, IGNORED)
    if unknown:
        raise ValueError(f"has the weight {unknown[0]!r}, which no detectron2 R50-FPN Mask R-CNN has")
    return out


def num_classes_of(weights: dict[str, torch.Tensor]) -> int:
    """K, from the classifier's K + 1 rows (detectron2 names)."""
    return int(weights["roi_heads.box_predictor.cls_score.weight"].shape[0]) - 1


def background_first(tv: dict[str, torch.Tensor], num_classes: int) -> tuple[dict[str, torch.Tensor], bool]:
    """Re-index the class-dependent layers (module doc); returns the weights and whether they are class-agnostic."""
    K = num_classes
    out = dict(tv)
    for p in ("weight", "bias"):
        w = tv[f"{CLS}.{p}"]
        out[f"{CLS}.{p}"] = torch.cat([w[K:K + 1], w[:K]])
    box_rows, mask_channels = tv[f"{BOX}.weight"].shape[0], tv[f"{MASK}.weight"].shape[0]
    agnostic = box_rows == 4
    if (mask_channels == 1) != agnostic or box_rows not in (4, 4 * K) or mask_channels not in (1, K):
        raise ValueError(f"has a box regressor of {box_rows} rows and a mask predictor of {mask_channels} channels, "
                         f"which fit neither {K} classes nor one class-agnostic output each")
    if not agnostic:
        for name in (f"{BOX}.weight", f"{BOX}.bias"):
            w = tv[name]
            out[name] = torch.cat([torch.zeros((4, *w.shape[1:]), dtype=w.dtype), w])
        for name in (f"{MASK}.weight", f"{MASK}.bias"):
            w = tv[name]
            out[name] = torch.cat([torch.zeros((1, *w.shape[1:]), dtype=w.dtype), w])
    return out, agnostic


def to_torchvision(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int, bool]:
    """detectron2 R50-FPN Mask R-CNN weights -> (torchvision state dict, K, class-agnostic), stem taking RGB.

    Raises ValueError (the caller names the file) for keys or shapes outside that architecture.
    """
    if "roi_heads.box_predictor.cls_score.weight" not in weights:
        raise ValueError("has no 'roi_heads.box_predictor.cls_score.weight' (not a detectron2 Mask R-CNN?)")
    K = num_classes_of(weights)
    tv = rename(weights)
    tv["backbone.body.conv1.weight"] = tv["backbone.body.conv1.weight"][:, [2, 1, 0]]  # BGR -> RGB input
    tv, agnostic = background_first(tv, K)
    return {k: v.float() if v.is_floating_point() else v for k, v in tv.items()}, K, agnostic


__all__ = ["IGNORED", "RENAMES", "background_first", "num_classes_of", "rename", "to_torchvision"]
