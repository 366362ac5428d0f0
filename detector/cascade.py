"""Cascade Mask R-CNN RoI heads (Cai & Vasconcelos 2018; the SimCal paper's Table 6 runs HTC on it).

Three box stages, each a box head and a class-agnostic box regressor of its own; stage t trains on RoIs
labelled with its own IoU threshold and encodes its targets with its own coder weights (as in Cascade
R-CNN and mmdetection's ``cascade_rcnn`` configs):

    stage   IoU threshold   box-coder weights    loss weight
    0       0.5             (10, 10, 5, 5)       1
    1       0.6             (20, 20, 10, 10)     0.5
    2       0.7             (30, 30, 15, 15)     0.25

Stage t's RoIs are stage t-1's regressed boxes (clipped to the image, detached), in training with the GT
boxes added again and re-sampled (mmdetection's ``refine_bboxes`` drops the regressed GT rows first, so do
we). One mask head, trained on the last stage's positive RoIs, runs on the final detections.

At test time (the authors' ``HybridTaskCascade.simple_test``, mmdetection's ``CascadeRoIHead``): the class
*logits* of the three stages are averaged, then softmaxed; the boxes are the last stage's regression of its
RoIs. With calibrated heads (:meth:`CascadeRoIHeads.forward_variants`), each stage's calibrated logits are
averaged the same way, and the dual-head rule combines the two averaged heads' probabilities, as the
authors' code does. HTC's other branches (interleaved mask flow, semantic segmentation) are left out
(docs/design.md).

Shapes: ``(S, R, C+1)`` per-stage logits, ``(S, R, D)`` per-stage taps (the box head's input of each stage,
``D`` = 256*7*7 for R50-FPN), S = 3 stages.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import fastrcnn_loss, maskrcnn_loss
from torchvision.ops import boxes as box_ops

from simcal.detector.roi_heads import LongTailRoIHeads

#: Per stage: (IoU threshold, box-coder weights, loss weight).
STAGES = ((0.5, (10.0, 10.0, 5.0, 5.0), 1.0),
          (0.6, (20.0, 20.0, 10.0, 10.0), 0.5),
          (0.7, (30.0, 30.0, 15.0, 15.0), 0.25))

#: ``(S, R, C+1) logits, (S, R, D) taps -> (R, C+1) probabilities``: one inference variant's scores.
CascadeScoreFn = Callable[[Tensor, Tensor], Tensor]


def stage_iou(stage: int) -> float:
    """The IoU threshold that labels stage ``stage``'s RoIs (training and ``simcal extract --stage``)."""
    return STAGES[stage][0]


def label_rois(rois: Tensor, gt_boxes: Tensor, gt_labels: Tensor, matcher: det_utils.Matcher
               ) -> tuple[Tensor, Tensor]:
    """``(P, 4)`` RoIs against ``(G, 4)`` GT -> ``(P,)`` matched GT index (clamped) and ``(P,)`` labels
    (0 background, -1 between thresholds), as torchvision's ``assign_targets_to_proposals``."""
    if gt_boxes.numel() == 0:
        zeros = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
        return zeros, zeros
    matched = matcher(box_ops.box_iou(gt_boxes, rois))
    labels = gt_labels[matched.clamp(min=0)].to(torch.int64)
    labels[matched == matcher.BELOW_LOW_THRESHOLD] = 0
    labels[matched == matcher.BETWEEN_THRESHOLDS] = -1
    return matched.clamp(min=0), labels


class CascadeRoIHeads(LongTailRoIHeads):
    """:class:`LongTailRoIHeads` with three box stages; stage 0 is the inherited ``box_head``/``box_predictor``
    (so the plain Mask R-CNN's state-dict keys stay), stages 1 and 2 are ``later_box_heads``/``later_box_predictors``.
    """

    @classmethod
    def like(cls, heads: LongTailRoIHeads, **rules) -> "CascadeRoIHeads":  # type: ignore[override]
        """Cascade heads from a Mask R-CNN's RoI heads: its stage-0 modules, copies (fresh init) for the later
        stages; every box predictor class-agnostic."""
        new = super().like(heads, **rules)
        new.stage_coders = [det_utils.BoxCoder(w) for _, w, _ in STAGES]
        new.stage_matchers = [det_utils.Matcher(iou, iou, allow_low_quality_matches=False) for iou, _, _ in STAGES]
        new.box_coder = new.stage_coders[0]
        new.proposal_matcher = new.stage_matchers[0]
        new.later_box_heads = nn.ModuleList([_fresh_copy(heads.box_head) for _ in STAGES[1:]])
        new.later_box_predictors = nn.ModuleList([_fresh_copy(heads.box_predictor) for _ in STAGES[1:]])
        return new

    num_stages = len(STAGES)

    def stage(self, t: int) -> tuple[nn.Module, nn.Module]:
        """Stage ``t``'s (box head, box predictor)."""
        if t == 0:
            return self.box_head, self.box_predictor
        return self.later_box_heads[t - 1], self.later_box_predictors[t - 1]

    def run_stage(self, t: int, features, rois: list[Tensor], image_shapes) -> tuple[Tensor, Tensor, Tensor]:
        """Stage ``t`` on ``rois`` (per image ``(R_i, 4)``) -> ``(R, D)`` tap, ``(R, C+1)`` logits, and
        ``(R, 4)`` decoded class-agnostic boxes."""
        head, predictor = self.stage(t)
        tap = self.box_roi_pool(features, rois, image_shapes)
        logits, deltas = predictor(head(tap))
        boxes = self.stage_coders[t].decode(deltas[:, :4], rois).reshape(-1, 4)
        return tap.flatten(start_dim=1), logits, boxes

    def refine(self, t: int, features, rois: list[Tensor], image_shapes) -> list[Tensor]:
        """Stages 0..t-1 applied in turn to ``rois``: the RoIs stage ``t`` sees at test time (clipped)."""
        for s in range(t):
            rois = _next_rois(self.run_stage(s, features, rois, image_shapes)[2], rois, image_shapes)
        return rois

    # ---------------------------------------------------------------- training
    def _sample(self, t: int, proposals: list[Tensor], targets: list[dict[str, Tensor]]):
        """Stage ``t``'s training RoIs: GT added, labelled at its IoU, sampled; per image the sampled RoIs,
        matched GT indices, labels, regression targets (stage ``t``'s coder) and which rows are GT boxes."""
        rois, matched, labels, is_gt = [], [], [], []
        for props, tgt in zip(proposals, targets):
            cand = torch.cat([props, tgt["boxes"].to(props)])
            m, lab = label_rois(cand, tgt["boxes"], tgt["labels"], self.stage_matchers[t])
            rois.append(cand), matched.append(m), labels.append(lab)
            is_gt.append(torch.arange(len(cand), device=cand.device) >= len(props))
        keep = [torch.where(p | n)[0] for p, n in zip(*self.fg_bg_sampler(labels))]
        rois, matched, labels, is_gt = ([x[k] for x, k in zip(xs, keep)] for xs in (rois, matched, labels, is_gt))
        gt_of = [tgt["boxes"].to(r)[m] if len(tgt["boxes"]) else torch.zeros_like(r)
                 for r, m, tgt in zip(rois, matched, targets)]
        targets_t = self.stage_coders[t].encode(gt_of, rois)
        return rois, matched, labels, targets_t, is_gt

    def _train_forward(self, features, proposals, image_shapes, targets) -> dict[str, Tensor]:
        """Every stage's weighted box losses (summed as ``loss_classifier``/``loss_box_reg``) and the mask loss on
        the last stage's positives."""
        losses = {"loss_classifier": 0.0, "loss_box_reg": 0.0}
        rois = [p.detach() for p in proposals]
        for t, (_, _, weight) in enumerate(STAGES):
            rois_t, matched, labels, reg_targets, is_gt = self._sample(t, rois, targets)
            head, predictor = self.stage(t)
            logits, deltas = predictor(head(self.box_roi_pool(features, rois_t, image_shapes)))
            loss_cls, loss_box = fastrcnn_loss(logits, deltas, labels, reg_targets)
            if self.cls_loss is not None:
                loss_cls = self.cls_loss(logits, torch.cat(labels))
            losses["loss_classifier"] = losses["loss_classifier"] + weight * loss_cls
            losses["loss_box_reg"] = losses["loss_box_reg"] + weight * loss_box
            if t < len(STAGES) - 1:
                with torch.no_grad():
                    boxes = self.stage_coders[t].decode(deltas[:, :4], rois_t).reshape(-1, 4)
                    rois = [r[~g] for r, g in zip(_next_rois(boxes, rois_t, image_shapes), is_gt)]
        if self.has_mask():
            pos = [torch.where(lab > 0)[0] for lab in labels]
            mask_rois = [r[p] for r, p in zip(rois_t, pos)]
            mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_rois, image_shapes)))
            losses["loss_mask"] = maskrcnn_loss(mask_logits, mask_rois, [t["masks"] for t in targets],
                                                [t["labels"] for t in targets], [m[p] for m, p in zip(matched, pos)])
        return losses

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            return [], self._train_forward(features, proposals, image_shapes, targets)
        return self.forward_variants(features, proposals, image_shapes, [(None, self.detections_per_img)])[0], {}

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def stage_outputs(self, features, proposals, image_shapes) -> tuple[Tensor, Tensor, Tensor]:
        """All stages once: ``(S, R, C+1)`` logits, ``(S, R, D)`` taps, ``(R, 4)`` final boxes."""
        rois, taps, logits = proposals, [], []
        for t in range(self.num_stages):
            tap, lg, boxes = self.run_stage(t, features, rois, image_shapes)
            taps.append(tap), logits.append(lg)
            rois = _next_rois(boxes, rois, image_shapes)
        return torch.stack(logits), torch.stack(taps), boxes

    @torch.no_grad()
    def forward_variants(self, features, proposals, image_shapes,
                         variants: Sequence[tuple[Optional[CascadeScoreFn], int]]) -> list[list[dict[str, Tensor]]]:
        """As :meth:`LongTailRoIHeads.forward_variants`, each ``score_fn`` taking the stages' logits and taps;
        None: the softmax of the stages' mean logits."""
        logits, taps, boxes = self.stage_outputs(features, proposals, image_shapes)
        per_image = [len(p) for p in proposals]
        num_classes = logits.shape[-1]
        boxes = boxes[:, None, :].expand(-1, num_classes, -1).split(per_image, 0)  # (R_i, C+1, 4)
        out = []
        for score_fn, cap in variants:
            scores = torch.softmax(logits.mean(0), -1) if score_fn is None else score_fn(logits, taps)
            out.append(self.detect(features, boxes, scores.split(per_image, 0), image_shapes, cap))
        return out


def _next_rois(boxes: Tensor, rois: list[Tensor], image_shapes) -> list[Tensor]:
    """A stage's ``(R, 4)`` regressed boxes of ``rois`` -> the next stage's RoIs: per image, clipped to it."""
    per_image = boxes.split([len(r) for r in rois])
    return [box_ops.clip_boxes_to_image(b, shape) for b, shape in zip(per_image, image_shapes)]


def _fresh_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with its parameters re-initialised (``reset_parameters`` of each layer)."""
    new = copy.deepcopy(module)
    for m in new.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return new
