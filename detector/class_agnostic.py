"""Class-agnostic box regression and masks (the paper's "r50-ag") inside torchvision's RoIHeads.

torchvision's ``RoIHeads`` indexes box deltas ``(R, (C+1)*4)`` and mask logits
``(R, C+1, M, M)`` by class, in training (losses) and inference alike. These
predictors learn one regressor and one mask channel and *repeat* them across
classes, so every class-indexing step in RoIHeads reads the shared output and its
gradient flows into the single shared parameter set. No RoIHeads code is forked.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor


class AgnosticFastRCNNPredictor(FastRCNNPredictor):
    """``cls_score``: D -> C+1 logits; ``bbox_pred``: D -> 4 deltas shared by all classes.

    forward: (R, D) -> ((R, C+1) logits, (R, (C+1)*4) deltas, identical for every class).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, num_classes)
        self.num_classes = num_classes
        self.bbox_pred = nn.Linear(in_channels, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x).repeat(1, self.num_classes)


class AgnosticMaskRCNNPredictor(MaskRCNNPredictor):
    """One mask channel expanded to C+1: (R, in, M/2, M/2) -> (R, C+1, M, M)."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int) -> None:
        super().__init__(in_channels, dim_reduced, 1)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return logits.expand(-1, self.num_classes, -1, -1)
