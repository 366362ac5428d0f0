"""``RoIHeads`` with a pluggable classification loss (for the paper's Table-2 strategies).

torchvision computes ``fastrcnn_loss`` (plain cross-entropy) inline in
``RoIHeads.forward``. This subclass keeps that forward unchanged and only
replaces ``loss_classifier`` afterwards, from the class logits and sampled labels
of the same forward (stashed by hooks), with ``self.cls_loss`` when one is set.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torchvision.models.detection.roi_heads import RoIHeads


class LongTailRoIHeads(RoIHeads):
    #: ``(R, C+1) logits, (R,) labels -> loss``; None keeps torchvision's cross-entropy.
    cls_loss: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None

    def select_training_samples(self, proposals, targets):
        out = super().select_training_samples(proposals, targets)
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
            labels = torch.cat(self._sampled_labels, dim=0)
            losses["loss_classifier"] = self.cls_loss(stash["logits"], labels)
        return result, losses


def use_long_tail_roi_heads(model: torch.nn.Module) -> LongTailRoIHeads:
    """Turn ``model.roi_heads`` into a :class:`LongTailRoIHeads` in place (same modules, same weights)."""
    model.roi_heads.__class__ = LongTailRoIHeads
    return model.roi_heads
