"""The RoI heads' inference as plain functions, and ``RoIHeads`` with a classification-loss hook for training.

- :func:`postprocess` (detectron2's ``fast_rcnn_inference`` shape): decoded boxes and class probabilities
  per image -> detections, under one model's :class:`BoxRules` (score threshold, NMS, cap, small-box rule,
  torchvision's or mmdetection v1's convention). Scores are used as they are given: torchvision's
  ``postprocess_detections`` applies a softmax to whatever logits it gets, which would renormalise a
  dual-head score vector; the authors' code does not (docs/design.md §10).
- :meth:`LongTailRoIHeads.forward_variants` (dual-head and post-hoc inference): the box head once, then
  per variant its scores -- ``score_fn(class_logits, tap)``, the tap being the box head's input ``(R, D)``
  so calibrated heads see exactly what the box head sees, or the softmax -- through :func:`postprocess`
  and the mask branch. One function per stage would serve a cascade.
- ``cls_loss`` (the paper's Table-2 strategies): torchvision computes ``fastrcnn_loss`` (plain
  cross-entropy) inline in ``RoIHeads.forward``. This subclass keeps that forward unchanged and only
  replaces ``loss_classifier`` afterwards, from the class logits and sampled labels of the same forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops

#: ``(R, C+1) logits, (R, D) tap -> (R, C+1) probabilities``: one inference variant's scores.
ScoreFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class BoxRules:
    """How a model turns one image's scored boxes into detections (set by the builder's keywords)."""

    score_thresh: float
    nms_thresh: float
    detections_per_img: int
    #: Detections narrower or shorter than this are dropped before NMS: torchvision's 1e-2, or None to keep
    #: them as detectron2 does (``build(..., small_boxes="detectron2")``).
    min_box_size: Optional[float] = 1e-2
    #: Drop detections of zero width or height after NMS and the cap, as detectron2's ``detector_postprocess``
    #: does (``Boxes.nonempty()``).
    drop_empty: bool = False
    #: ``"mmdet1"``: decoded, clipped, rescaled and NMS'd as mmdetection v1 does
    #: (:func:`simcal.detector.legacy_boxes.postprocess_mmdet1`; its scale factor read from the image size the
    #: transform returns); ``"torchvision"``: torchvision's post-processing.
    convention: str = "torchvision"


def postprocess(boxes: Sequence[Tensor], scores: Sequence[Tensor], image_shapes: Sequence, rules: BoxRules
                ) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per image, ``(R, C+1, 4)`` decoded boxes and ``(R, C+1)`` class probabilities (column 0 background)
    -> ``(K, 4)`` boxes, ``(K,)`` scores, ``(K,)`` labels in 1..C, at most ``rules.detections_per_img``."""
    if rules.convention == "mmdet1":  # boxes in the resized image; a plain (h, w) size is scale factor 1
        from simcal.detector.legacy_boxes import postprocess_mmdet1

        return [postprocess_mmdet1(b, s, shape, getattr(shape, "scale", 1.0), rules.score_thresh,
                                   rules.nms_thresh, rules.detections_per_img)
                for b, s, shape in zip(boxes, scores, image_shapes)]
    return [detections(b, s, shape, rules) for b, s, shape in zip(boxes, scores, image_shapes)]


def detections(boxes: Tensor, scores: Tensor, image_shape, rules: BoxRules) -> tuple[Tensor, Tensor, Tensor]:
    """One image under torchvision's rules (``RoIHeads.postprocess_detections``, 0.26-0.29): clip, drop the
    background column, score threshold, small-box filter (``rules.min_box_size``), per-class NMS, cap, then
    detectron2's empty-box filter where ``rules.drop_empty``."""
    boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
    labels = torch.arange(scores.shape[-1], device=scores.device).view(1, -1).expand_as(scores)
    boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
    inds = torch.where(scores > rules.score_thresh)[0]
    boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
    if rules.min_box_size is not None:
        keep = box_ops.remove_small_boxes(boxes, min_size=rules.min_box_size)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = box_ops.batched_nms(boxes, scores, labels, rules.nms_thresh)[: rules.detections_per_img]
    if rules.drop_empty:
        kept = boxes[keep]
        keep = keep[(kept[:, 2] > kept[:, 0]) & (kept[:, 3] > kept[:, 1])]
    return boxes[keep], scores[keep], labels[keep]


class LongTailRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` (same modules, same state dict) with :class:`BoxRules` and the hooks above."""

    #: ``(R, C+1) logits, (R,) labels -> loss``; None keeps torchvision's cross-entropy.
    cls_loss: Optional[Callable[[Tensor, Tensor], Tensor]] = None

    @classmethod
    def like(cls, heads: RoIHeads, min_box_size: Optional[float] = 1e-2, drop_empty: bool = False,
             convention: str = "torchvision") -> "LongTailRoIHeads":
        """The RoI heads of a torchvision ``MaskRCNN`` (its modules, matcher, sampler, coder and test settings),
        as this class; the other arguments are :class:`BoxRules`' fields."""
        new = cls(heads.box_roi_pool, heads.box_head, heads.box_predictor, heads.proposal_matcher.high_threshold,
                  heads.proposal_matcher.low_threshold, heads.fg_bg_sampler.batch_size_per_image,
                  heads.fg_bg_sampler.positive_fraction, heads.box_coder.weights, heads.score_thresh,
                  heads.nms_thresh, heads.detections_per_img, heads.mask_roi_pool, heads.mask_head,
                  heads.mask_predictor)
        new.box_coder = heads.box_coder  # (its clip value too)
        new.min_box_size, new.drop_empty, new.convention = min_box_size, drop_empty, convention
        return new

    #: Box stages (a cascade has more: :class:`simcal.detector.cascade.CascadeRoIHeads`).
    num_stages = 1

    def stage(self, t: int) -> tuple[torch.nn.Module, torch.nn.Module]:
        """Stage ``t``'s (box head, box predictor); this model has stage 0 only."""
        if t != 0:
            raise IndexError(f"stage {t} of a one-stage RoI head")
        return self.box_head, self.box_predictor

    def rules(self, detections_per_img: Optional[int] = None) -> BoxRules:
        """This model's :class:`BoxRules`, with another cap where given."""
        cap = self.detections_per_img if detections_per_img is None else detections_per_img
        return BoxRules(self.score_thresh, self.nms_thresh, cap, self.min_box_size, self.drop_empty, self.convention)

    def select_training_samples(self, proposals, targets):
        """torchvision's; with a ``cls_loss``, also hands this forward's sampled labels to :meth:`forward`,
        which takes them back before it returns (nothing stays on the module)."""
        out = super().select_training_samples(proposals, targets)
        if self.cls_loss is not None:
            self._sampled_labels = out[2]
        return out

    def forward(self, features, proposals, image_shapes, targets=None):
        stash: dict = {}
        handle = None
        if self.training and self.cls_loss is not None:
            handle = self.box_predictor.register_forward_hook(lambda m, i, o: stash.__setitem__("logits", o[0]))
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
        finally:
            if handle is not None:
                handle.remove()
        if handle is not None:
            labels = torch.cat(self.__dict__.pop("_sampled_labels"), dim=0)
            losses["loss_classifier"] = self.cls_loss(stash["logits"], labels)
        return result, losses

    @torch.no_grad()
    def forward_variants(self, features, proposals, image_shapes,
                         variants: Sequence[tuple[Optional[ScoreFn], int]]) -> list[list[dict[str, Tensor]]]:
        """Eval forward once for several ``(score_fn or None, detections per image)`` pairs -> one result list
        (torchvision's per-image dicts) each.

        torchvision's ``RoIHeads.forward`` (eval, boxes and masks) with the box head run and its boxes decoded
        once: only scoring, :func:`postprocess` and the mask branch differ between variants. The variant
        ``(None, detections_per_img)`` is ``forward``'s own output (tests/infer/test_infer.py).
        """
        tap = self.box_roi_pool(features, proposals, image_shapes)
        class_logits, box_regression = self.box_predictor(self.box_head(tap))
        per_image = [len(p) for p in proposals]
        boxes = self.box_coder.decode(box_regression, proposals).split(per_image, 0)
        out = []
        for score_fn, cap in variants:
            scores = (torch.nn.functional.softmax(class_logits, -1) if score_fn is None
                      else score_fn(class_logits, tap.flatten(start_dim=1)))
            out.append(self.detect(features, boxes, scores.split(per_image, 0), image_shapes, cap))
        return out

    def detect(self, features, boxes: Sequence[Tensor], scores: Sequence[Tensor], image_shapes,
               cap: int) -> list[dict[str, Tensor]]:
        """Per image ``(R, C+1, 4)`` decoded boxes and ``(R, C+1)`` scores -> torchvision's result dicts: boxes,
        labels, scores by :func:`postprocess` (at most ``cap``), and the mask branch's masks on those boxes."""
        from torchvision.models.detection.roi_heads import maskrcnn_inference

        dets = postprocess(boxes, scores, image_shapes, self.rules(cap))
        result = [{"boxes": b, "labels": lab, "scores": sc} for b, sc, lab in dets]
        if self.has_mask():
            mask_features = self.mask_head(self.mask_roi_pool(features, [r["boxes"] for r in result], image_shapes))
            labels = [r["labels"] for r in result]
            for prob, r in zip(maskrcnn_inference(self.mask_predictor(mask_features), labels), result):
                r["masks"] = prob
        return result

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        """torchvision's hook in ``forward``: (boxes, scores, labels) per image, the softmax's, by
        :func:`postprocess` under this model's rules."""
        per_image = [len(p) for p in proposals]
        boxes = self.box_coder.decode(box_regression, proposals).split(per_image, 0)
        scores = torch.nn.functional.softmax(class_logits, -1).split(per_image, 0)
        dets = postprocess(boxes, scores, image_shapes, self.rules())
        return [d[0] for d in dets], [d[1] for d in dets], [d[2] for d in dets]
