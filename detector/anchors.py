"""detectron2's anchors on torchvision's ``AnchorGenerator`` interface (``build(..., anchors="detectron2")``).

Both frameworks place cell anchors of area ``size**2`` and height/width ``ratio`` at every cell of
every FPN level, in the same order. They differ in two details (detectron2
``modeling/anchor_generator.py``: ``DefaultAnchorGenerator.generate_cell_anchors`` and
``_create_grid_offsets``; torchvision ``models/detection/anchor_utils.py``):

- torchvision rounds the cell anchors' corners to integers; detectron2 does not;
- torchvision derives a level's stride as ``padded image size // grid size``, detectron2 uses the
  level's fixed stride (4, 8, 16, 32, 64). They agree where the division is exact, not on P6 of an
  800-pixel side: 13 cells give stride 61 against 64, and anchors up to 36 pixels apart.

:class:`FixedStrideAnchorGenerator` does what detectron2 does, with its offset 0.0.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

#: detectron2's R50-FPN levels P2..P6.
FPN_STRIDES = (4, 8, 16, 32, 64)


class FixedStrideAnchorGenerator(AnchorGenerator):
    """``AnchorGenerator`` with unrounded cell anchors and one fixed stride per level.

    (sum over levels of H_l * W_l * A, 4) anchors per image, as the parent returns them.
    """

    def __init__(self, sizes, aspect_ratios, strides=FPN_STRIDES) -> None:
        super().__init__(sizes, aspect_ratios)
        if len(strides) != len(sizes):
            raise ValueError(f"{len(strides)} strides for {len(sizes)} anchor levels")
        self.strides = tuple(int(s) for s in strides)

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=None) -> Tensor:
        """(A, 4) cell anchors of one level, corners not rounded."""
        return torch.tensor(self._unrounded(scales, aspect_ratios), dtype=dtype, device=device)

    @staticmethod
    def _unrounded(scales, aspect_ratios) -> list[list[float]]:
        """detectron2's cell anchors: w = sqrt(size**2 / ratio), h = ratio * w, centred on the origin."""
        out = []
        for ratio in aspect_ratios:  # torchvision's order: ratios outer, sizes inner
            for size in scales:
                w = (float(size) ** 2 / float(ratio)) ** 0.5
                h = float(ratio) * w
                out.append([-w / 2, -h / 2, w / 2, h / 2])
        return out

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        grid_sizes = [list(fm.shape[-2:]) for fm in feature_maps]
        device = feature_maps[0].device
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(feature_maps[0].dtype, device)
        per_level = self.grid_anchors(grid_sizes, strides)
        return [torch.cat(per_level) for _ in image_list.image_sizes]
