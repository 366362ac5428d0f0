"""mmdetection v1's test-time resize, scalar rescale and mask pasting on torchvision's transform (builder
keywords ``resize`` and ``paste_masks`` set to ``"mmdet1"``).

**Resize** (``mmdet/datasets/transforms.py::ImageTransform``, ``mmcv.imrescale`` at ``img_scale=(1333, 800)``):
one factor s = min(1333 / long side, 800 / short side) for both axes, output sides ``int(x * s + 0.5)``;
cv2's bilinear filter on the 8-bit image, then normalisation (ImageNet mean and std on 0-255 RGB, as
torchvision's), zero padding to a multiple of 32. The 8-bit resize is
:func:`simcal.detector.opencv_resize.resize_like_opencv` (OpenCV's fixed-point arithmetic, as mmdetection
v2/v3's); the OpenCV of v1's day may have rounded each row's last few values differently.
The factor reaches the RoI heads with the image size (:class:`ScaledSize`), because v1 maps the detections to
the original image *before* its NMS (:func:`simcal.detector.legacy_boxes.postprocess_mmdet1`); ground-truth
boxes are scaled by it too (``BboxTransform``: ``gt_bboxes * scale_factor`` on v1's corners), and detections
are mapped back by it (:func:`simcal.detector.legacy_boxes.unscale_boxes`), where torchvision uses the two
ratios of the rounded sizes.

**Mask pasting** (``mmdet/models/mask_heads/fcn_mask_head.py::get_seg_masks``): the detection's box in
original pixels, v1's corners truncated to integers (``astype(np.int32)``), w = x2 - x1 + 1, h = y2 - y1 + 1
(at least 1); the 28 x 28 probabilities resized to (w, h) by cv2's bilinear filter on float32 (``mmcv.imresize``)
and placed at [y1, y1 + h) x [x1, x1 + w); ``> 0.5`` binarises them (:mod:`simcal.detector.predict`, as
v1's ``mask_thr_binary``). :func:`paste_masks_mmdet1` resizes with ``interpolate(bilinear,
align_corners=False)`` (cv2's sample points and border rule, float32) and returns the probabilities
(N, 1, H, W), zero outside the box. v1 takes the box as the mask branch pooled it, its resized box
divided by the factor again; ours is that division, once (an ulp apart). A box that would reach past the
image (v1's numpy assignment fails there) is cut at the image's edge.

Training is torchvision's: these switches act at test time, for converted detectors.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform, _resize_image_and_masks

from simcal.detector.legacy_boxes import scale_boxes, to_inclusive, unscale_boxes
from simcal.detector.opencv_resize import resize_like_opencv


def rescale_size(h: int, w: int, short: float = 800, long: float = 1333) -> tuple[int, int, float]:
    """(new h, new w, scale factor): ``mmcv.imrescale(img, (long, short), return_scale=True)``."""
    scale = min(long / max(h, w), short / min(h, w))
    return int(h * float(scale) + 0.5), int(w * float(scale) + 0.5), scale


class ScaledSize(tuple):
    """``(h, w)`` of a resized image that also carries v1's scale factor (original -> resized) as ``.scale``.

    torchvision hands the image sizes from the transform to the RPN, the RoI heads and back to the
    transform unchanged: the factor travels with them, and a plain tuple is still an image size.
    """

    scale: float

    def __new__(cls, h: int, w: int, scale: float) -> "ScaledSize":
        size = super().__new__(cls, (int(h), int(w)))
        size.scale = float(scale)
        return size

    def __getnewargs__(self):
        return (self[0], self[1], self.scale)


def paste_masks_mmdet1(masks: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """(N, 1, M, M) mask probabilities, (N, 4) boxes (ours) in the original image -> (N, 1, H, W) probabilities."""
    H, W = int(image_size[0]), int(image_size[1])
    out = masks.new_zeros((len(masks), 1, H, W))
    for i, (mask, box) in enumerate(zip(masks, to_inclusive(boxes).tolist())):
        x1, y1, x2, y2 = (int(v) for v in box)  # numpy's astype(int32): toward zero
        w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        resized = F.interpolate(mask[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        ya, yb, xa, xb = max(y1, 0), min(y1 + h, H), max(x1, 0), min(x1 + w, W)
        if yb > ya and xb > xa:
            out[i, 0, ya:yb, xa:xb] = resized[ya - y1:yb - y1, xa - x1:xb - x1].to(out.dtype)
    return out


class Mmdet1Transform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` with v1's test-time resize and scalar rescale, and optionally its mask pasting."""

    def __init__(self, like: GeneralizedRCNNTransform, paste_masks: bool) -> None:
        super().__init__(like.min_size, like.max_size, like.image_mean, like.image_std, like.size_divisible,
                         like.fixed_size, _skip_resize=like._skip_resize)
        self.paste_masks = bool(paste_masks)

    def _size(self, h: int, w: int) -> tuple[int, int, float]:
        return rescale_size(int(h), int(w), float(self.min_size[-1]), float(self.max_size))

    def forward(self, images: list[Tensor], targets: Optional[list[dict[str, Tensor]]] = None):
        if self.training:
            return super().forward(images, targets)
        scales = [self._size(*im.shape[-2:])[2] for im in images]
        image_list, targets = super().forward(images, targets)
        image_list.image_sizes = [ScaledSize(h, w, s) for (h, w), s in zip(image_list.image_sizes, scales)]
        return image_list, targets

    def normalize(self, image: Tensor) -> Tensor:
        """Normalises after the resize at test time (v1 resizes the 8-bit image first)."""
        return super().normalize(image) if self.training else image

    def resize(self, image: Tensor, target: Optional[dict[str, Tensor]] = None):
        if self.training:
            return super().resize(image, target)
        newh, neww, scale = self._size(*image.shape[-2:])
        image = super().normalize(resize_like_opencv(image, (newh, neww)))
        if target is not None:
            _, target = _resize_image_and_masks(image[:, :1, :1], self.min_size[-1], self.max_size, target,
                                                fixed_size=(neww, newh))
            if "boxes" in target:
                target["boxes"] = scale_boxes(target["boxes"], scale)
        return image, target

    def postprocess(self, result, image_shapes, original_image_sizes):
        if self.training:
            return result
        for pred, im_s, o_im_s in zip(result, image_shapes, original_image_sizes):
            scale = getattr(im_s, "scale", None)
            if scale is None:
                scale = self._size(*o_im_s)[2]
            pred["boxes"] = unscale_boxes(pred["boxes"], scale)
            if "masks" in pred:
                paste = paste_masks_mmdet1 if self.paste_masks else paste_masks_in_image
                pred["masks"] = paste(pred["masks"], pred["boxes"], o_im_s)
        return result


__all__ = ["Mmdet1Transform", "ScaledSize", "paste_masks_mmdet1", "rescale_size"]
