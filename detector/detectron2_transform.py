"""detectron2's and mmdetection's resize and mask pasting on torchvision's transform (builder keywords
``resize`` set to ``"detectron2"`` or ``"mmdet"``, ``paste_masks`` to ``"detectron2"``).

**Resize.** Both scale the shorter side to ``min_size`` unless the longer would pass ``max_size``.
torchvision floors the output size (``interpolate(scale_factor=..., recompute_scale_factor=True)``);
detectron2 rounds half up (``ResizeShortestEdge.get_output_shape``: ``int(x + 0.5)``): a 640x480
image becomes 1066x800 in torchvision, 1067x800 in detectron2 and mmcv. torchvision interpolates the
normalised float image; detectron2 resizes the uint8 image with PIL's bilinear filter
(``transforms/transform.py::ResizeTransform``), then normalises. :func:`resize_like_pil` does the
latter on the [0, 1] image before normalising (:meth:`Detectron2Transform.normalize` waits for it):
an image read from an 8-bit file goes through exactly detectron2's arithmetic; any other values are
rounded to 8 bits first, as detectron2's reader would have. mmdetection v2/v3 (``Resize`` ->
``mmcv.imrescale``: the same half-up size) resizes the 8-bit image with OpenCV's ``INTER_LINEAR`` instead:
``resize="mmdet"`` uses :func:`simcal.detector.opencv_resize.resize_like_opencv` there.

**Mask pasting.** torchvision pads the 28x28 mask to 30x30, grows the box by 30/28, rounds it to
integers and resizes into it; detectron2 (``layers/mask_ops.py::_do_paste_mask``) samples the mask
with ``grid_sample`` at every pixel centre of the image inside the box's continuous extent.
:func:`paste_masks_grid` does the latter, one mask at a time over the pixels its box touches (as
detectron2 does on CPU), and returns probabilities like torchvision's paste: (N, 1, H, W).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform, _resize_image_and_masks, resize_boxes

from simcal.detector.opencv_resize import resize_like_opencv


def shortest_edge_size(h: int, w: int, short: float, max_size: float) -> tuple[int, int]:
    """(new h, new w): detectron2's ``ResizeShortestEdge.get_output_shape``."""
    scale = short / min(h, w)
    newh, neww = scale * h, scale * w
    if max(newh, neww) > max_size:
        scale = max_size / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def resize_like_pil(image: Tensor, size: tuple[int, int]) -> Tensor:
    """(3, H, W) image in [0, 1] -> (3, h, w) = ``size``, resized as uint8 by PIL's bilinear filter (detectron2's)."""
    import numpy as np
    from PIL import Image

    pixels = (image.detach() * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    out = np.asarray(Image.fromarray(pixels).resize((size[1], size[0]), Image.BILINEAR))
    return torch.from_numpy(out.copy()).to(image.device).permute(2, 0, 1).to(image.dtype) / 255


def paste_masks_grid(masks: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """(N, 1, M, M) mask probabilities, (N, 4) xyxy boxes in the image -> (N, 1, H, W) probabilities."""
    h, w = image_size
    out = masks.new_zeros((len(masks), 1, h, w))
    for i, (mask, box) in enumerate(zip(masks, boxes.tolist())):
        x0, y0, x1, y1 = box
        # the pixels the box touches, one pixel of margin (detectron2's skip_empty region)
        xa, ya = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        xb, yb = min(math.ceil(x1) + 1, w), min(math.ceil(y1) + 1, h)
        if xb <= xa or yb <= ya:
            continue
        gx = (torch.arange(xa, xb, dtype=torch.float32, device=masks.device) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gy = (torch.arange(ya, yb, dtype=torch.float32, device=masks.device) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack([gx[None, :].expand(len(gy), -1), gy[:, None].expand(-1, len(gx))], dim=2)
        out[i, 0, ya:yb, xa:xb] = F.grid_sample(mask[None].float(), grid[None], align_corners=False)[0, 0]
    return out


#: ``Detectron2Transform(eight_bit=...)`` -> the filter: (3, H, W) in [0, 1], (h, w) -> (3, h, w).
EIGHT_BIT = {None: None, "pil": resize_like_pil, "opencv": resize_like_opencv}


class Detectron2Transform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` with detectron2's or mmdetection's test-time resize and/or detectron2's
    mask pasting.

    ``eight_bit``: None (torchvision's resize), ``"pil"`` (detectron2's) or ``"opencv"`` (mmdetection's):
    the half-up size, and the filter that resizes the 8-bit image before normalisation.
    """

    def __init__(self, *args: Any, eight_bit: Optional[str] = None, grid_paste: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if eight_bit not in EIGHT_BIT:
            raise ValueError(f"unknown eight_bit {eight_bit!r}; choose from {', '.join(map(str, EIGHT_BIT))}")
        self.eight_bit, self.grid_paste = eight_bit, grid_paste

    @classmethod
    def like(cls, t: GeneralizedRCNNTransform, eight_bit: Optional[str], grid_paste: bool) -> "Detectron2Transform":
        """``t``'s sizes, mean and std, with an 8-bit resize and/or detectron2's mask pasting switched on."""
        return cls(t.min_size, t.max_size, t.image_mean, t.image_std, t.size_divisible, t.fixed_size,
                   eight_bit=eight_bit, grid_paste=grid_paste, _skip_resize=t._skip_resize)

    def _eight_bit_resize(self) -> bool:
        return self.eight_bit is not None and not self.training

    def normalize(self, image: Tensor) -> Tensor:
        """Normalises after the resize at test time (detectron2 and mmdetection resize the 8-bit image first)."""
        return image if self._eight_bit_resize() else super().normalize(image)

    def resize(self, image: Tensor, target: Optional[dict[str, Tensor]] = None):
        if not self._eight_bit_resize():
            return super().resize(image, target)
        h, w = image.shape[-2:]
        newh, neww = shortest_edge_size(int(h), int(w), float(self.min_size[-1]), float(self.max_size))
        image = super().normalize(EIGHT_BIT[self.eight_bit](image, (newh, neww)))
        if target is not None:
            _, target = _resize_image_and_masks(image[:, :1, :1], self.min_size[-1], self.max_size, target,
                                                fixed_size=(neww, newh))
            if "boxes" in target:
                target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        return image, target

    def postprocess(self, result, image_shapes, original_image_sizes):
        if self.training or not self.grid_paste:
            return super().postprocess(result, image_shapes, original_image_sizes)
        for pred, im_s, o_im_s in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], im_s, o_im_s)
            if "masks" in pred:
                pred["masks"] = paste_masks_grid(pred["masks"], pred["boxes"], o_im_s)
        return result
