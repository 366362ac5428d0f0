"""mmdetection v1's anchors on torchvision's ``AnchorGenerator`` interface (``build(..., anchors="mmdet1")``).

v1's ``AnchorGenerator`` (``mmdet/core/anchor/anchor_generator.py``, ``anchor_heads/anchor_head.py``): per FPN
level a base size equal to the level's stride (4, 8, 16, 32, 64), scale 8, ratios (0.5, 1, 2); cell anchors
centred on ((s - 1) / 2, (s - 1) / 2) with widths ws = s * 8 / sqrt(ratio), heights hs = s * 8 * sqrt(ratio),
corners ``ctr -+ 0.5 * (ws - 1)``, **rounded** (float32, half to even); shifted by k * stride from 0. Ratios
outer, scales inner, positions row-major with the anchors of a position together: torchvision's order.
Its corners are inclusive (:mod:`simcal.detector.legacy_boxes`): the generator returns them in our convention,
x2 and y2 one more (32 at ratio 0.5 on P2: v1's [-21, -9, 24, 12] is our [-21, -9, 25, 13]).
"""

from __future__ import annotations

import torch
from torch import Tensor

from simcal.detector.anchors import FPN_STRIDES, FixedStrideAnchorGenerator

#: v1's ``anchor_scales=[8]``: a level's anchors are 8 strides wide (at ratio 1).
OCTAVE_SCALE = 8


def base_anchors_mmdet1(base_size: int, scales, ratios) -> Tensor:
    """v1's ``AnchorGenerator.gen_base_anchors`` (scale_major, ctr None): (len(ratios) * len(scales), 4), inclusive
    corners, float32 as v1 computes them."""
    scales_t, ratios_t = torch.tensor(scales, dtype=torch.float32), torch.tensor(ratios, dtype=torch.float32)
    w = h = base_size
    x_ctr, y_ctr = 0.5 * (w - 1), 0.5 * (h - 1)
    h_ratios = torch.sqrt(ratios_t)
    w_ratios = 1 / h_ratios
    ws = (w * w_ratios[:, None] * scales_t[None, :]).view(-1)
    hs = (h * h_ratios[:, None] * scales_t[None, :]).view(-1)
    return torch.stack([x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1), x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)],
                       dim=-1).round()


class Mmdet1AnchorGenerator(FixedStrideAnchorGenerator):
    """v1's anchors at fixed strides: (sum over levels of H_l * W_l * A, 4) per image, our box convention.

    ``sizes`` are torchvision's (an anchor's width at ratio 1: 8 * stride), so the RPN head sees the usual
    3 anchors per position; the base size is ``size / 8``.
    """

    def __init__(self, sizes=((32,), (64,), (128,), (256,), (512,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5,
                 strides=FPN_STRIDES) -> None:
        super().__init__(sizes, aspect_ratios, strides)

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=None) -> Tensor:
        """(A, 4) cell anchors of one level (``scales`` = its sizes), v1's corners plus one on x2, y2."""
        out = []
        for size in scales:
            base = float(size) / OCTAVE_SCALE
            if base != int(base):
                raise ValueError(f"anchor size {size} is not {OCTAVE_SCALE} strides")
            out.append(base_anchors_mmdet1(int(base), (OCTAVE_SCALE,), aspect_ratios))
        # ratios outer, sizes inner, as torchvision orders a level with several sizes
        anchors = torch.stack(out, dim=1).reshape(-1, 4) if len(out) > 1 else out[0]
        anchors = torch.cat([anchors[:, :2], anchors[:, 2:] + 1], dim=1)
        return anchors.to(dtype=dtype, device=device)


__all__ = ["Mmdet1AnchorGenerator", "base_anchors_mmdet1"]
