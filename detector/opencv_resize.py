"""OpenCV's bilinear resize of an 8-bit image (``cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)``),
in OpenCV's own fixed-point arithmetic: what mmdetection's ``Resize`` (``mmcv.imresize``) feeds its detector.

OpenCV (``modules/imgproc/src/resize.cpp``, ``resizeGeneric_`` with ``HResizeLinear`` and ``VResizeLinear``)
resizes in two passes with 11-bit integer weights (``INTER_RESIZE_COEF_BITS``):

1. Sample points: for output column x, ``f = float((x + 0.5) * (W / w) - 0.5)`` (the ratio in double,
   the point rounded to float32), ``s = floor(f)``, ``f -= s``; a point left of the first column or at
   or right of the last takes that column alone (``s`` clamped, ``f = 0``). Rows the same, except that
   their weights are not reset at the border (both rows clamp to the edge row instead).
2. Weights: ``a0 = round(2048 * (1 - f))``, ``a1 = round(2048 * f)`` (float32, round half to even).
3. Horizontal pass, exact: ``t = S[s] * a0 + S[s + 1] * a1`` in int32 (up to 255 * 2048).
4. Vertical pass, OpenCV's SIMD kernel ``VResizeLinearVec_32s8u`` for the whole row:
   ``out = saturate_u8((mulhi(t0 >> 4, b0) + mulhi(t1 >> 4, b1) + 2) >> 2)``, where ``mulhi(a, b)`` is
   ``(a * b) >> 16`` on int16 lanes and the sum saturates at int16. It is not the exact
   ``(t0 * b0 + t1 * b1 + 2**21) >> 22``: the two differ by one grey level on some pixels.

:func:`resize_like_opencv` reproduces opencv-python 5.0.0 and 4.14.0 (x86-64 wheels) bit for bit on
hundreds of random sizes (up, down, 2x both ways, 1-pixel sides; ``tools/opencv_resize_reference.py``
records such a check as ``tests/fixtures/opencv_resize.json``). Older releases may finish a row's last
few values with the exact formula instead (one grey level apart at most; not checked here).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: OpenCV's INTER_RESIZE_COEF_SCALE: weights are 11-bit fixed point.
ONE = 2048


def _taps(src: int, dst: int) -> tuple[Tensor, Tensor, Tensor]:
    """(first source index, a0, a1) per output index, (dst,) int64 each; indices may be -1 or src - 1."""
    scale = 1.0 / (dst / src)  # OpenCV: scale_x = 1. / inv_scale_x, inv_scale_x = (double)dsize.width / ssize.width
    f = ((torch.arange(dst, dtype=torch.float64) + 0.5) * scale - 0.5).to(torch.float32)
    s = torch.floor(f)
    f = f - s
    one = torch.tensor(1.0, dtype=torch.float32)
    return s.long(), torch.round((one - f) * ONE).long(), torch.round(f * ONE).long()


def _columns(pixels: Tensor, w: int) -> Tensor:
    """(C, H, W) int64 -> (C, H, w) int64: OpenCV's horizontal pass (step 3), values up to 255 * 2048."""
    width = pixels.shape[-1]
    s, a0, a1 = _taps(width, w)
    edge = (s < 0) | (s >= width - 1)  # OpenCV: fx = 0 and sx clamped to [0, W-1]; the second tap unused
    s = s.clamp(0, width - 1)
    a0, a1 = torch.where(edge, ONE, a0), torch.where(edge, 0, a1)
    right = (s + 1).clamp(max=width - 1)
    return pixels[..., s] * a0 + pixels[..., right] * a1


def _mulhi(a: Tensor, b: Tensor) -> Tensor:
    """int16 x int16 -> the high 16 bits of the product (``_mm_mulhi_epi16``)."""
    return (a * b) >> 16


def _int16(v: Tensor) -> Tensor:
    """Signed saturation to int16 (``_mm_packs_epi32``, ``_mm_adds_epi16``)."""
    return v.clamp(-32768, 32767)


def resize_uint8(pixels: Tensor, size: tuple[int, int]) -> Tensor:
    """(C, H, W) uint8 -> (C, h, w) uint8 = ``size``, as ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)``."""
    h, w = size
    if tuple(pixels.shape[-2:]) == (h, w):
        return pixels.clone()  # OpenCV copies when the size does not change
    rows = _columns(pixels.long(), w)
    s, b0, b1 = _taps(pixels.shape[-2], h)
    top, bottom = s.clamp(0, pixels.shape[-2] - 1), (s + 1).clamp(0, pixels.shape[-2] - 1)
    b0, b1 = b0[:, None], b1[:, None]
    t = _int16(_mulhi(_int16(rows[:, top] >> 4), b0) + _mulhi(_int16(rows[:, bottom] >> 4), b1))
    return ((t + 2) >> 2).clamp(0, 255).to(torch.uint8)


def resize_like_opencv(image: Tensor, size: tuple[int, int]) -> Tensor:
    """(3, H, W) image in [0, 1] -> (3, h, w) = ``size``: its 8 bits resized by OpenCV's INTER_LINEAR, / 255.

    Values that are not multiples of 1/255 are rounded to 8 bits first, as the image file would have been.
    """
    pixels = (image.detach() * 255).round().clamp(0, 255).to(torch.uint8)
    return resize_uint8(pixels, size).to(image.dtype) / 255


__all__ = ["resize_like_opencv", "resize_uint8"]
