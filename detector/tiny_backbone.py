"""The ``tiny`` backbone: a 4-stage conv net + FPN that learns the synthetic benchmark on a CPU.

Shapes for a (B, 3, 128, 128) batch (docs/design.md §8.1):
    stem   stride 2   (B, 16, 64, 64)
    c2     stride 4   (B, 16, 32, 32)   -> FPN "0"
    c3     stride 8   (B, 32, 16, 16)   -> FPN "1"
    c4     stride 16  (B, 64,  8,  8)   -> FPN "2"
    c5     stride 32  (B, 128, 4,  4)   -> FPN "3"
every FPN level has ``out_channels`` (64) channels, so the box head's input is 64 x 7 x 7 = 3136.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

STAGE_CHANNELS = (16, 32, 64, 128)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class TinyBackboneWithFPN(nn.Module):
    """Backbone returning ``OrderedDict[str, Tensor]`` of FPN levels, as torchvision's detectors expect."""

    def __init__(self, out_channels: int = 64, stage_channels: tuple[int, ...] = STAGE_CHANNELS) -> None:
        super().__init__()
        self.stem = _conv_bn(3, stage_channels[0], 2)
        stages, cin = [], stage_channels[0]
        for c in stage_channels:
            stages.append(nn.Sequential(_conv_bn(cin, c, 2), _conv_bn(c, c, 1)))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.fpn = FeaturePyramidNetwork(list(stage_channels), out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        x = self.stem(x)
        feats = OrderedDict()
        for k, stage in enumerate(self.stages):
            x = stage(x)
            feats[str(k)] = x
        return self.fpn(feats)
