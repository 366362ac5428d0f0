"""Which RoIs an image contributes to the cache, and their pooled features.

For a batch of images through a frozen torchvision Mask R-CNN in eval mode
(docs/design.md §10):

1. ``images, targets = model.transform(imgs, targets)`` (GT boxes rescaled too);
2. ``feats = model.backbone(images.tensors)``; ``proposals = model.rpn(images, feats)``;
3. per image, GT boxes are appended to the proposals (as training does) and every
   candidate is labelled by its max IoU with a GT: the GT's class if IoU >= ``fg_iou``,
   else background (0);
4. foreground: per GT, the GT box itself plus up to ``fg_per_gt - 1`` other proposals
   matched to it; background: up to ``bg_per_image`` proposals with IoU < ``fg_iou``;
   both drawn from a generator seeded by ``(seed, image index, view)``, so a row set
   never depends on batch, rank or resume;
5. ``model.roi_heads.box_roi_pool(feats, rois, image_sizes)`` -> ``(R, C_fpn, 7, 7)``,
   flattened to ``(R, D)``: the box head's input, the tap every calibration head reads.

Boxes are returned in original-image pixels (of the view: a flipped view's boxes
are in flipped coordinates).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import box_iou


@dataclass
class Selection:
    """Rows of one image view (R rows)."""

    features: torch.Tensor  # (R, D) float32
    labels: torch.Tensor  # (R,) int64, 0 = background
    ious: torch.Tensor  # (R,) float32
    boxes: torch.Tensor  # (R, 4) float32, xyxy original-image pixels
    is_gt: torch.Tensor  # (R,) bool


def _generator(seed: int, image_index: int, view: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + image_index) * 7 + view) % 2**63)


def choose_rows(
    proposals: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    fg_per_gt: int,
    bg_per_image: int,
    fg_iou: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick rows among ``cat(gt_boxes, proposals)``; returns (boxes, labels, ious, is_gt), GT rows first.

    Shapes: proposals (P, 4), gt_boxes (G, 4), gt_labels (G,) -> R rows.
    """
    G = len(gt_boxes)
    cand = torch.cat([gt_boxes, proposals], dim=0)  # (G + P, 4): GT boxes first, as torchvision appends them
    if G:
        iou = box_iou(cand, gt_boxes)  # (G + P, G)
        best, match = iou.max(dim=1)
    else:
        best = torch.zeros(len(cand))
        match = torch.zeros(len(cand), dtype=torch.int64)
    is_fg = best >= fg_iou
    keep: list[torch.Tensor] = []
    for g in range(G):
        # the GT box itself (candidate g matches GT g with IoU 1 unless two GT boxes coincide)
        mine = torch.nonzero(is_fg[G:] & (match[G:] == g)).flatten() + G
        extra = mine[torch.randperm(len(mine), generator=generator)[: max(fg_per_gt - 1, 0)]]
        keep.append(torch.cat([torch.tensor([g]), extra.sort().values]))
    bg = torch.nonzero(~is_fg[G:]).flatten() + G
    keep.append(bg[torch.randperm(len(bg), generator=generator)[:bg_per_image]].sort().values)
    idx = torch.cat(keep) if keep else torch.zeros(0, dtype=torch.int64)
    labels = torch.where(is_fg[idx], gt_labels[match[idx]] if G else torch.zeros_like(idx), torch.zeros_like(idx))
    is_gt = idx < G
    return cand[idx], labels, best[idx].float(), is_gt


@torch.no_grad()
def extract_batch(
    model: torch.nn.Module,
    images: list[torch.Tensor],
    targets: list[dict],
    image_indices: list[int],
    view: int,
    fg_per_gt: int,
    bg_per_image: int,
    fg_iou: float,
    seed: int,
    stage: int | None = None,
) -> list[Selection]:
    """Rows and features for a batch of one view; ``targets`` need ``boxes`` and ``labels`` (original pixels).

    ``stage``: a cascade's box stage (:mod:`simcal.detector.cascade`): the proposals are first regressed by the
    stages before it, as at test time; the tap is the same RoIAlign, the input of every stage's box head."""
    device = next(model.parameters()).device
    imgs = [im.to(device) for im in images]
    tgts = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
    original_sizes = [im.shape[-2:] for im in imgs]
    image_list, tgts = model.transform(imgs, tgts)
    feats = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, feats)
    if stage:
        proposals = model.roi_heads.refine(stage, feats, proposals, image_list.image_sizes)
    chosen, rois = [], []
    for k, (props, t) in enumerate(zip(proposals, tgts)):
        boxes, labels, ious, is_gt = choose_rows(
            props.float().cpu(), t["boxes"].float().cpu(), t["labels"].cpu(), fg_per_gt, bg_per_image, fg_iou,
            _generator(seed, image_indices[k], view),
        )
        chosen.append((boxes, labels, ious, is_gt))
        rois.append(boxes.to(device))
    pooled = model.roi_heads.box_roi_pool(feats, rois, image_list.image_sizes)  # (sum R, C, 7, 7)
    pooled = pooled.flatten(start_dim=1).float().cpu()
    out, start = [], 0
    for (boxes, labels, ious, is_gt), (oh, ow), (rh, rw) in zip(chosen, original_sizes, image_list.image_sizes):
        n = len(boxes)
        scale = torch.tensor([ow / rw, oh / rh, ow / rw, oh / rh])
        out.append(Selection(pooled[start : start + n], labels, ious, boxes * scale, is_gt))
        start += n
    return out


@torch.no_grad()
def pool_boxes(model: torch.nn.Module, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Recompute the tap for ``boxes`` (original pixels) of one image: (N, D). Used to verify a cache."""
    device = next(model.parameters()).device
    oh, ow = image.shape[-2:]
    image_list, _ = model.transform([image.to(device)])
    rh, rw = image_list.image_sizes[0]
    feats = model.backbone(image_list.tensors)
    scaled = boxes.to(device) * torch.tensor([rw / ow, rh / oh, rw / ow, rh / oh], device=device)
    return model.roi_heads.box_roi_pool(feats, [scaled], image_list.image_sizes).flatten(start_dim=1).float().cpu()
