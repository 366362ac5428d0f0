"""mmdetection v1's multi-level RoIAlign (``build(..., roi_align="mmdet1")``).

**Levels** (``mmdet/models/roi_extractors/single_level.py::map_roi_levels``): scale = sqrt((x2 - x1 + 1) *
(y2 - y1 + 1)) on v1's inclusive corners, level = floor(log2(scale / 56 + 1e-6)) clamped to P2..P5, with
the fixed strides 4, 8, 16, 32 (``featmap_strides``). On our boxes (x2 = v1's x2 + 1,
:mod:`simcal.detector.legacy_boxes`) the scale is sqrt(w * h). torchvision's ``LevelMapper`` computes
floor(4 + log2(sqrt(w * h) / 224) + 1e-6): the same levels but within 1e-6 of an edge, on its own box widths.

**Pooling** (``mmdet/ops/roi_align/src/roi_align_kernel.cu``, ``sample_num=2``): start x1 * scale, end
(x2 + 1) * scale on v1's corners -- our x2 * scale --, no half-pixel shift, width max(end - start, 0), a
2 x 2 grid of bilinear samples per bin, averaged; the same bilinear interpolation and border rules as
torchvision's ``roi_align(aligned=False, sampling_ratio=2)``, which is therefore v1's op on our boxes, bit
for bit, except for one rule: torchvision stretches a RoI narrower or shorter than one feature cell to
one cell (``max(width, 1)``), v1 does not. Those RoIs (under 4 pixels on P2) are pooled with
``aligned=True`` on the box shifted by half a cell, whose sample points are v1's up to float rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input

#: v1's ``featmap_strides`` of P2..P5 and ``finest_scale``.
STRIDES = (4, 8, 16, 32)
FINEST_SCALE = 56


def map_levels_mmdet1(boxes: Tensor, num_levels: int, finest_scale: float = FINEST_SCALE) -> Tensor:
    """(R, 4) boxes (ours) -> (R,) level indices 0..num_levels - 1."""
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    return torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(min=0, max=num_levels - 1).long()


def roi_align_mmdet1(feature: Tensor, rois: Tensor, output_size, spatial_scale: float,
                     sampling_ratio: int = 2) -> Tensor:
    """v1's ``RoIAlign`` (``sample_num`` = ``sampling_ratio``): (K, 5) rois (batch index, our box) -> (K, C, *size)."""
    out = roi_align(feature, rois, output_size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio,
                    aligned=False)
    thin = ((rois[:, 3] * spatial_scale - rois[:, 1] * spatial_scale) < 1) | \
        ((rois[:, 4] * spatial_scale - rois[:, 2] * spatial_scale) < 1)
    if thin.any():  # no stretching to one cell: aligned=True subtracts the half cell added here, nothing else
        shifted = rois[thin].clone()
        shifted[:, 1:] += 0.5 / spatial_scale
        out[thin] = roi_align(feature, shifted, output_size, spatial_scale=spatial_scale,
                              sampling_ratio=sampling_ratio, aligned=True)
    return out


class Mmdet1MultiScaleRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign``'s interface with v1's levels, fixed scales and pooling: (R, C, *output_size)."""

    def __init__(self, featmap_names: list[str], output_size: int, sampling_ratio: int = 2,
                 strides=STRIDES, finest_scale: float = FINEST_SCALE) -> None:
        super().__init__(featmap_names, output_size, sampling_ratio)
        if len(strides) != len(featmap_names):
            raise ValueError(f"{len(strides)} strides for {len(featmap_names)} feature maps")
        self.strides, self.finest_scale = tuple(int(s) for s in strides), float(finest_scale)

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        rois = _convert_to_roi_format(boxes)
        levels = map_levels_mmdet1(rois[:, 1:], len(features), self.finest_scale)
        first = features[0]
        result = first.new_zeros((len(rois), first.shape[1], *self.output_size))
        for level, (feature, stride) in enumerate(zip(features, self.strides)):
            idx = torch.where(levels == level)[0]
            if len(idx):
                pooled = roi_align_mmdet1(feature, rois[idx], self.output_size, 1.0 / stride, self.sampling_ratio)
                result[idx] = pooled.to(result.dtype)
        return result


__all__ = ["Mmdet1MultiScaleRoIAlign", "map_levels_mmdet1", "roi_align_mmdet1"]
