"""Multi-level RoIAlign with ``aligned=True`` (``build(..., roi_align="detectron2")``).

detectron2 and mmdetection v2 pool with ``ROIAlignV2``: torchvision's ``roi_align`` with
``aligned=True`` (box coordinates shifted by half a pixel, so a box's pixel centres are sampled
where they lie) and ``sampling_ratio=0`` (as many samples as the bin covers). torchvision's
``MultiScaleRoIAlign`` never passes ``aligned``, so it always pools the legacy way.
:class:`AlignedMultiScaleRoIAlign` is that pooler with the flag: the same level assignment and
scales (torchvision's own helpers), then ``roi_align(..., aligned=True)`` per level.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` pooling with ``aligned=True``: (R, C, output_size) features for R boxes."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        if len(features) == 1:
            levels = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
        else:
            levels = self.map_levels(boxes)
        first = features[0]
        result = first.new_zeros((len(rois), first.shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            idx = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[idx], output_size=self.output_size, spatial_scale=scale,
                               sampling_ratio=self.sampling_ratio, aligned=True)
            result[idx] = pooled.to(result.dtype)
        return result
