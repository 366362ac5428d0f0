"""``RoIHeads`` with two hooks: a classification loss for training and a score function for inference.

- ``cls_loss`` (the paper's Table-2 strategies): torchvision computes ``fastrcnn_loss``
  (plain cross-entropy) inline in ``RoIHeads.forward``. This subclass keeps that
  forward unchanged and only replaces ``loss_classifier`` afterwards, from the class
  logits and sampled labels of the same forward (stashed by hooks).
- ``score_fn`` (dual-head and post-hoc inference): torchvision's
  ``postprocess_detections`` applies a softmax to whatever logits it gets, which would
  renormalise a merged score vector; the authors' code does not (docs/design.md §10). With
  ``score_fn`` set, the per-RoI class probabilities come from
  ``score_fn(class_logits, box_features)`` -- ``box_features`` being the tap (the box
  head's input, ``(R, D)``), so calibrated heads see exactly what the box head sees --
  and are used as they are. One function per stage would serve a cascade.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops


class LongTailRoIHeads(RoIHeads):
    #: ``(R, C+1) logits, (R,) labels -> loss``; None keeps torchvision's cross-entropy.
    cls_loss: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None

    #: ``(R, C+1) logits, (R, D) tap -> (R, C+1) probabilities``; None keeps the softmax.
    score_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None

    #: Detections narrower or shorter than this are dropped before NMS: torchvision's 1e-2, or None to keep
    #: them as detectron2 does (``build(..., small_boxes="detectron2")``).
    min_box_size: Optional[float] = 1e-2

    #: Drop detections of zero width or height after NMS and the per-image cap, as detectron2's
    #: ``detector_postprocess`` does (``Boxes.nonempty()``); set with ``min_box_size=None`` by the builder.
    drop_empty: bool = False

    #: ``"mmdet1"``: detections decoded, clipped, rescaled and NMS'd as mmdetection v1 does
    #: (:func:`simcal.detector.legacy_boxes.postprocess_mmdet1`; ``build(..., boxes="mmdet1")``), its scale factor
    #: read from the image sizes the transform returns; ``"torchvision"``: torchvision's post-processing.
    box_convention: str = "torchvision"

    def select_training_samples(self, proposals, targets):
        out = super().select_training_samples(proposals, targets)
        self._sampled_labels = out[2]
        return out

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training and self.score_fn is not None:
            return self._forward_with_tap(features, proposals, image_shapes, targets)
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
            labels = torch.cat(self._sampled_labels, dim=0)
            losses["loss_classifier"] = self.cls_loss(stash["logits"], labels)
        return result, losses

    def _forward_with_tap(self, *args, **kwargs):
        """Eval forward that records the box head's input for ``score_fn``."""
        handle = self.box_head.register_forward_pre_hook(lambda m, inp: setattr(self, "_tap", inp[0]))
        try:
            return super().forward(*args, **kwargs)
        finally:
            handle.remove()
            self._tap = None

    @torch.no_grad()
    def forward_variants(self, features, proposals, image_shapes, variants):
        """Eval forward once for several ``(score_fn, detections_per_img)`` pairs -> one result list each.

        torchvision's ``RoIHeads.forward`` (eval, boxes and masks) with the box head run once:
        only scoring, NMS and the mask branch differ between variants. ``simcal infer`` tests
        that each variant equals a single forward with that ``score_fn``, byte for byte.
        """
        from torchvision.models.detection.roi_heads import maskrcnn_inference

        saved = (self.score_fn, self.detections_per_img)
        tap = self.box_roi_pool(features, proposals, image_shapes)
        class_logits, box_regression = self.box_predictor(self.box_head(tap))
        out = []
        try:
            for score_fn, cap in variants:
                self.score_fn, self.detections_per_img, self._tap = score_fn, cap, tap
                boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals,
                                                                    image_shapes)
                result = [{"boxes": b, "labels": lab, "scores": sc} for b, sc, lab in zip(boxes, scores, labels)]
                if self.has_mask():
                    mask_features = self.mask_head(self.mask_roi_pool(features, boxes, image_shapes))
                    for prob, r in zip(maskrcnn_inference(self.mask_predictor(mask_features), labels), result):
                        r["masks"] = prob
                out.append(result)
        finally:
            self.score_fn, self.detections_per_img = saved
            self._tap = None
        return out

    def _scores(self, class_logits):
        """(R, C+1) class probabilities: the softmax, or ``score_fn`` on the logits and the tap."""
        if self.score_fn is None:
            return torch.nn.functional.softmax(class_logits, -1)
        return self.score_fn(class_logits, self._tap.flatten(start_dim=1))

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        """(boxes, scores, labels) per image: torchvision's, or per image through :meth:`_detections` (with
        ``score_fn``, another small-box rule) or mmdetection v1's post-processing (``box_convention``)."""
        if self.box_convention == "torchvision" and self.score_fn is None and self.min_box_size == 1e-2 \
                and not self.drop_empty:
            return super().postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        boxes_per_image = [len(p) for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals).split(boxes_per_image, 0)
        pred_scores = self._scores(class_logits).split(boxes_per_image, 0)
        if self.box_convention == "mmdet1":  # boxes in the resized image; a plain (h, w) size is scale factor 1
            from simcal.detector.legacy_boxes import postprocess_mmdet1

            out = [postprocess_mmdet1(boxes, scores, shape, getattr(shape, "scale", 1.0), self.score_thresh,
                                      self.nms_thresh, self.detections_per_img)
                   for boxes, scores, shape in zip(pred_boxes, pred_scores, image_shapes)]
        else:
            out = [self._detections(boxes, scores, shape)
                   for boxes, scores, shape in zip(pred_boxes, pred_scores, image_shapes)]
        return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]

    def _detections(self, boxes, scores, image_shape):
        """One image's (R, C+1, 4) boxes and (R, C+1) scores -> its detections: torchvision's
        postprocess_detections (0.26-0.29) with the small-box filter by ``min_box_size`` / ``drop_empty``."""
        boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
        labels = torch.arange(scores.shape[-1], device=scores.device).view(1, -1).expand_as(scores)
        boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        inds = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
        if self.min_box_size is not None:
            keep = box_ops.remove_small_boxes(boxes, min_size=self.min_box_size)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        if self.drop_empty:
            kept = boxes[keep]
            keep = keep[(kept[:, 2] > kept[:, 0]) & (kept[:, 3] > kept[:, 1])]
        return boxes[keep], scores[keep], labels[keep]


def use_long_tail_roi_heads(model: torch.nn.Module) -> LongTailRoIHeads:
    """Turn ``model.roi_heads`` into a :class:`LongTailRoIHeads` in place (same modules, same weights)."""
    model.roi_heads.__class__ = LongTailRoIHeads
    return model.roi_heads
