"""detectron2's test-time resize size on torchvision's transform (``build(..., resize="detectron2")``).

Both scale the shorter side to ``min_size`` unless the longer would pass ``max_size``. torchvision
then floors the output size (``interpolate(scale_factor=..., recompute_scale_factor=True)``);
detectron2 rounds half up (``ResizeShortestEdge.get_output_shape``: ``int(x + 0.5)``). A 640x480
image becomes 1066x800 in torchvision, 1067x800 in detectron2 and mmcv.

:class:`RoundingTransform` resizes to detectron2's size. The pixels are still interpolated as
torchvision does (bilinear on the normalised float image; detectron2 resizes the uint8 image with
PIL first), so values differ slightly where sizes now agree.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform, _resize_image_and_masks, resize_boxes


def shortest_edge_size(h: int, w: int, short: float, max_size: float) -> tuple[int, int]:
    """(new h, new w): detectron2's ``ResizeShortestEdge.get_output_shape``."""
    scale = short / min(h, w)
    newh, neww = scale * h, scale * w
    if max(newh, neww) > max_size:
        scale = max_size / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


class RoundingTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` whose test-time resize rounds the output size half up (training unchanged)."""

    def resize(self, image: Tensor, target: Optional[dict[str, Tensor]] = None):
        if self.training:
            return super().resize(image, target)
        h, w = image.shape[-2:]
        newh, neww = shortest_edge_size(int(h), int(w), float(self.min_size[-1]), float(self.max_size))
        image, target = _resize_image_and_masks(image, self.min_size[-1], self.max_size, target,
                                                fixed_size=(neww, newh))
        if target is not None and "boxes" in target:
            target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        return image, target
