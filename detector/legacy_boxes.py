"""mmdetection v1's "+1" box arithmetic as plain functions over ``torchvision.ops`` (``build(..., boxes="mmdet1")``).

**Convention.** mmdetection v1 (twangnh/SimCal @ e5f3076, mmdetection 1.0rc0) counts a box's corner pixels in:
[x1, x2] is x2 - x1 + 1 pixels wide, and its datasets turn an annotation's (x, y, w, h) into
(x, y, x + w - 1, y + h - 1). torchvision and the rest of SimCal take x2 as the right edge: x2 - x1 wide.
Boxes cross every module boundary in torchvision's convention -- our box (x1, y1, x2, y2) is v1's
(x1, y1, x2 - 1, y2 - 1) -- so ground truth goes in unchanged, and proposals in a cache and detections in a
results file are what any SimCal detector writes (v1's own results json adds the 1 back, ``xyxy2xywh``:
w = x2 - x1 + 1). With that shift v1's "+1" formulas are torchvision's plain ones:

- IoU: v1's NMS kernel (``mmdet/ops/nms/src/nms_kernel.cu``) and assigner take (min x2 - max x1 + 1) over
  (x2 - x1 + 1)(y2 - y1 + 1): torchvision's ``box_iou`` and ``nms`` on our boxes. :func:`nms_mmdet1` is
  ``torchvision.ops.nms`` (suppress IoU > thr, as the CUDA kernel the release ran; v1's CPU kernel uses >=).
- RoIAlign's end (x2 + 1) * scale and the FPN level's sqrt((w + 1)(h + 1)): :mod:`simcal.detector.legacy_pooler`.

What stays v1's own, here:

- ``delta2bbox`` (``mmdet/core/bbox/transforms.py``): widths x2 - x1 + 1, centres (x1 + x2) / 2, corners
  gx -+ gw / 2 +- 0.5, dw and dh clamped to +-log(1000 / 16) on both sides (torchvision only from above);
  stds (1, 1, 1, 1) for the RPN, (0.1, 0.1, 0.2, 0.2) for the box head (:class:`Mmdet1BoxCoder`);
- clipping to [0, W - 1] x [0, H - 1] on v1's corners (our x2 to [1, W]) (:func:`clip_boxes`);
- the RPN (``anchor_heads/rpn_head.py::get_bboxes_single``, test_cfg ``nms_pre=nms_post=max_num=1000``,
  ``nms_thr=0.7``, ``min_bbox_size=0``): per level sigmoid, the top ``nms_pre``, decode, clip, NMS, keep
  ``nms_post``; then the top ``max_num`` of all levels by score; no small-box filter (:class:`Mmdet1RPN`);
- one scale factor for both axes (``mmcv.imrescale``): v1's corners map x -> x * s, so ours map
  x1 -> x1 * s, x2 -> (x2 - 1) * s + 1 (:func:`scale_boxes`, :func:`unscale_boxes`);
- the detections (``bbox_heads/bbox_head.py::get_det_bboxes``, ``core/post_processing/bbox_nms.py::
  multiclass_nms``): boxes clipped in the resized image, divided by the scale factor *before* the NMS (so the
  +1 NMS runs in original pixels), per class i >= 1 the RoIs with score > ``score_thr`` (0.0), NMS 0.5, all
  classes in class order, the top ``max_per_img`` (300) by score when there are more; no small-box filter
  (:func:`postprocess_mmdet1`). The scores are the score hook's (softmax by default), as v1's dual head
  merges its two softmaxes before this step.

Exact up to float32 rounding: the shift by one pixel in and out of v1's corners, and v1's ``x * 0.1`` where
torchvision's coder divides by 10, move a coordinate by an ulp (about 1e-7 relative).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import nms

RPN_STDS = (1.0, 1.0, 1.0, 1.0)
RCNN_STDS = (0.1, 0.1, 0.2, 0.2)
#: ``delta2bbox(wh_ratio_clip=16 / 1000)``: a box grows or shrinks at most 1000 / 16 times its reference.
WH_RATIO_CLIP = 16 / 1000


def to_inclusive(boxes: Tensor) -> Tensor:
    """Our boxes (x2 = right edge) -> v1's (x2 = last pixel)."""
    return torch.cat([boxes[..., :2], boxes[..., 2:] - 1], dim=-1)


def to_ours(boxes: Tensor) -> Tensor:
    """v1's boxes (x2 = last pixel) -> ours (x2 = right edge)."""
    return torch.cat([boxes[..., :2], boxes[..., 2:] + 1], dim=-1)


def delta2bbox(rois: Tensor, deltas: Tensor, stds: Sequence[float], max_shape=None,
               wh_ratio_clip: float = WH_RATIO_CLIP) -> Tensor:
    """v1's ``delta2bbox`` (means 0): (R, 4) inclusive rois, (R, 4k) deltas -> (R, 4k) inclusive boxes,
    clipped to ``max_shape`` = (H, W) when given."""
    stds_t = deltas.new_tensor(stds).repeat(1, deltas.size(1) // 4)
    denorm = deltas * stds_t
    dx, dy, dw, dh = denorm[:, 0::4], denorm[:, 1::4], denorm[:, 2::4], denorm[:, 3::4]
    max_ratio = abs(math.log(wh_ratio_clip))
    dw = dw.clamp(min=-max_ratio, max=max_ratio)
    dh = dh.clamp(min=-max_ratio, max=max_ratio)
    px = ((rois[:, 0] + rois[:, 2]) * 0.5).unsqueeze(1).expand_as(dx)
    py = ((rois[:, 1] + rois[:, 3]) * 0.5).unsqueeze(1).expand_as(dy)
    pw = (rois[:, 2] - rois[:, 0] + 1.0).unsqueeze(1).expand_as(dw)
    ph = (rois[:, 3] - rois[:, 1] + 1.0).unsqueeze(1).expand_as(dh)
    gw, gh = pw * dw.exp(), ph * dh.exp()
    gx, gy = px + pw * dx, py + ph * dy
    x1, y1 = gx - gw * 0.5 + 0.5, gy - gh * 0.5 + 0.5
    x2, y2 = gx + gw * 0.5 - 0.5, gy + gh * 0.5 - 0.5
    if max_shape is not None:
        x1, x2 = x1.clamp(min=0, max=max_shape[1] - 1), x2.clamp(min=0, max=max_shape[1] - 1)
        y1, y2 = y1.clamp(min=0, max=max_shape[0] - 1), y2.clamp(min=0, max=max_shape[0] - 1)
    return torch.stack([x1, y1, x2, y2], dim=-1).view_as(deltas)


def bbox2delta(proposals: Tensor, gt: Tensor, stds: Sequence[float]) -> Tensor:
    """v1's ``bbox2delta`` (means 0) on inclusive (N, 4) boxes -> (N, 4) deltas."""
    proposals, gt = proposals.float(), gt.float()
    px, py = (proposals[..., 0] + proposals[..., 2]) * 0.5, (proposals[..., 1] + proposals[..., 3]) * 0.5
    pw, ph = proposals[..., 2] - proposals[..., 0] + 1.0, proposals[..., 3] - proposals[..., 1] + 1.0
    gx, gy = (gt[..., 0] + gt[..., 2]) * 0.5, (gt[..., 1] + gt[..., 3]) * 0.5
    gw, gh = gt[..., 2] - gt[..., 0] + 1.0, gt[..., 3] - gt[..., 1] + 1.0
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
    return deltas / deltas.new_tensor(stds)


class Mmdet1BoxCoder(BoxCoder):
    """torchvision's ``BoxCoder`` interface (our boxes in and out) on v1's ``delta2bbox`` / ``bbox2delta``."""

    def __init__(self, stds: Sequence[float]) -> None:
        super().__init__(weights=tuple(1.0 / s for s in stds), bbox_xform_clip=abs(math.log(WH_RATIO_CLIP)))
        self.stds = tuple(float(s) for s in stds)

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """(N, 4k) deltas on (N, 4) boxes -> (N, 4k) boxes, not clipped (our convention)."""
        inclusive = delta2bbox(to_inclusive(boxes.to(rel_codes.dtype)), rel_codes, self.stds)
        return to_ours(inclusive.view(len(inclusive), -1, 4)).view_as(rel_codes)

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """(N, 4) targets for (N, 4) proposals -> (N, 4) deltas."""
        return bbox2delta(to_inclusive(proposals), to_inclusive(reference_boxes), self.stds).to(reference_boxes.dtype)


def clip_boxes(boxes: Tensor, image_shape: Sequence[int]) -> Tensor:
    """(..., 4) boxes (ours) clipped as v1 clips its corners to [0, W - 1] x [0, H - 1]: x1 to [0, W - 1], x2 to
    [1, W]."""
    h, w = int(image_shape[0]), int(image_shape[1])
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1.clamp(0, w - 1), y1.clamp(0, h - 1), x2.clamp(1, w), y2.clamp(1, h)], dim=-1)


def scale_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Original image -> resized image by v1's one factor (``gt_bboxes * scale_factor`` on its corners)."""
    return to_ours(to_inclusive(boxes) * scale)


def unscale_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Resized image -> original image (``bboxes /= scale_factor`` on v1's corners)."""
    return to_ours(to_inclusive(boxes) / scale)


def nms_mmdet1(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """v1's +1 NMS (``nms_kernel.cu``): kept indices by decreasing score, on our boxes.

    v1's IoU of its inclusive boxes is torchvision's IoU of ours (each extent plus one), and the CUDA
    kernel suppresses ``IoU > thr`` as torchvision does: this is ``torchvision.ops.nms``.
    """
    return nms(boxes, scores, iou_threshold)


def rpn_proposals_mmdet1(boxes: Sequence[Tensor], logits: Sequence[Tensor], image_shape: Sequence[int],
                         nms_pre: int, nms_post: int, max_num: int, nms_thresh: float) -> tuple[Tensor, Tensor]:
    """One image's proposals from per-level decoded boxes (A_l, 4) and objectness logits (A_l,) -> (P, 4), (P,).

    ``RPNHead.get_bboxes_single`` with ``nms_across_levels=False`` and ``min_bbox_size=0``.
    """
    kept_boxes, kept_scores = [], []
    for level_boxes, level_logits in zip(boxes, logits):
        scores = level_logits.sigmoid()
        if nms_pre > 0 and scores.shape[0] > nms_pre:
            scores, top = scores.topk(nms_pre)
            level_boxes = level_boxes[top]
        level_boxes = clip_boxes(level_boxes, image_shape)
        keep = nms_mmdet1(level_boxes, scores, nms_thresh)[:nms_post]
        kept_boxes.append(level_boxes[keep])
        kept_scores.append(scores[keep])
    all_boxes, all_scores = torch.cat(kept_boxes), torch.cat(kept_scores)
    all_scores, top = all_scores.topk(min(max_num, all_scores.shape[0]))
    return all_boxes[top], all_scores


class Mmdet1RPN(RegionProposalNetwork):
    """torchvision's RPN (head, anchors, losses) with v1's proposal selection and box coder."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.box_coder = Mmdet1BoxCoder(RPN_STDS)

    @classmethod
    def like(cls, rpn: RegionProposalNetwork) -> "Mmdet1RPN":
        """The same head, anchor generator and settings as ``rpn``."""
        return cls(rpn.anchor_generator, rpn.head, rpn.proposal_matcher.high_threshold,
                   rpn.proposal_matcher.low_threshold, rpn.fg_bg_sampler.batch_size_per_image,
                   rpn.fg_bg_sampler.positive_fraction, dict(rpn._pre_nms_top_n), dict(rpn._post_nms_top_n),
                   rpn.nms_thresh, rpn.score_thresh)

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)
        out_boxes, out_scores = [], []
        for boxes, logits, shape in zip(proposals, objectness, image_shapes):
            b, s = rpn_proposals_mmdet1(boxes.split(num_anchors_per_level), logits.split(num_anchors_per_level),
                                        shape, self.pre_nms_top_n(), self.post_nms_top_n(), self.post_nms_top_n(),
                                        self.nms_thresh)
            out_boxes.append(b)
            out_scores.append(s)
        return out_boxes, out_scores


def postprocess_mmdet1(boxes: Tensor, scores: Tensor, image_shape: Sequence[int], scale: float,
                       score_thresh: float, nms_thresh: float, max_dets: int) -> tuple[Tensor, Tensor, Tensor]:
    """One image's detections, v1's ``get_det_bboxes`` + ``multiclass_nms``.

    ``boxes`` (R, C+1, 4) decoded in the resized image (ours, not clipped), ``scores`` (R, C+1) per-class
    probabilities (column 0 background), ``scale`` v1's one factor (original -> resized). Returns the kept
    boxes clipped in the resized image (the mask branch pools them; :func:`unscale_boxes` maps them to the
    original image, as the NMS saw them), their scores and labels (1..C).
    """
    boxes = clip_boxes(boxes, image_shape)
    original = unscale_boxes(boxes, scale)
    rows, labels = [], []
    for c in range(1, scores.shape[1]):
        idx = torch.where(scores[:, c] > score_thresh)[0]
        if len(idx) == 0:
            continue
        keep = nms_mmdet1(original[idx, c], scores[idx, c], nms_thresh)
        rows.append(idx[keep])
        labels.append(torch.full_like(keep, c))
    if not rows:
        empty = torch.zeros(0, dtype=torch.int64, device=scores.device)
        return boxes.new_zeros((0, 4)), scores.new_zeros((0,)), empty
    r, c = torch.cat(rows), torch.cat(labels)
    if len(r) > max_dets:
        order = scores[r, c].sort(descending=True)[1][:max_dets]
        r, c = r[order], c[order]
    return boxes[r, c], scores[r, c], c


__all__ = ["Mmdet1BoxCoder", "Mmdet1RPN", "RCNN_STDS", "RPN_STDS", "bbox2delta", "clip_boxes", "delta2bbox",
           "nms_mmdet1", "postprocess_mmdet1", "rpn_proposals_mmdet1", "scale_boxes", "to_inclusive", "to_ours",
           "unscale_boxes"]
