"""resize="mmdet": OpenCV's INTER_LINEAR on 8 bits, held to OpenCV's own outputs (tools/opencv_resize_reference.py)."""

import json
from pathlib import Path

import numpy as np
import torch

from simcal.detector.opencv_resize import resize_like_opencv, resize_uint8
from tools.opencv_resize_reference import cases, digest, image

FIXTURE = json.loads((Path(__file__).resolve().parent.parent / "fixtures" / "opencv_resize.json").read_text())


def _ours(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return resize_uint8(torch.from_numpy(pixels).permute(2, 0, 1), size).permute(1, 2, 0).numpy()


def test_resize_is_opencvs_bit_for_bit():
    recorded = FIXTURE["outputs"]
    pairs = cases(FIXTURE["seed"], FIXTURE["count"])
    assert [(tuple(r["from"]), tuple(r["to"])) for r in recorded] == pairs
    wrong = [(pair, r["sha256"]) for n, (pair, r) in enumerate(zip(pairs, recorded))
             if digest(_ours(image(FIXTURE["seed"], n, *pair[0]), pair[1])) != r["sha256"]]
    assert not wrong, f"{len(wrong)} of {len(pairs)} differ from OpenCV {FIXTURE['opencv']}, first {wrong[0][0]}"


def test_the_simd_rounding_is_not_the_exact_one():
    """The fixed-point kernel is not exact bilinear arithmetic: a kernel that rounds (t0 b0 + t1 b1) / 2**22
    exactly gives other pixels on the first recorded case (so the test above can tell the two apart)."""
    from simcal.detector import opencv_resize

    (h, w), size = cases(FIXTURE["seed"], 0)[0]
    pixels = image(FIXTURE["seed"], 0, h, w)
    simd = _ours(pixels, size)
    exact = torch.from_numpy(pixels).permute(2, 0, 1).long()
    rows = opencv_resize._columns(exact, size[1])
    s, b0, b1 = opencv_resize._taps(h, size[0])
    top, bottom = s.clamp(0, h - 1), (s + 1).clamp(0, h - 1)
    exact = ((rows[:, top] * b0[:, None] + rows[:, bottom] * b1[:, None] + 2 ** 21) >> 22).clamp(0, 255)
    differ = (exact.permute(1, 2, 0).numpy() != simd)
    assert 0 < differ.mean() < 0.2 and digest(simd) == FIXTURE["outputs"][0]["sha256"]


def test_float_image_goes_through_its_8_bits():
    g = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (3, 9, 13), generator=g, dtype=torch.uint8)
    got = resize_like_opencv(pixels.float() / 255, (14, 20))
    assert got.dtype == torch.float32
    assert torch.equal((got * 255).round().to(torch.uint8), resize_uint8(pixels, (14, 20)))
