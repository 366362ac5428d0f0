"""Record what OpenCV's ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)`` makes of seeded 8-bit images.

``tests/detector/test_opencv_resize.py`` redraws the same images and holds
:func:`simcal.detector.opencv_resize.resize_uint8` to these outputs (their SHA-256, so the fixture stays a
few kilobytes). Needs numpy and opencv-python (not a SimCal dependency), e.g. the mmdetection reference's
environment (tools/mmdet_reference.py)::

    /tmp/mm/bin/python tools/opencv_resize_reference.py --out tests/fixtures/opencv_resize.json
"""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np

#: Sizes checked beyond the random ones: 2x up and down (OpenCV's area special case), odd halves,
#: no change, single pixels, and LVIS-like test resizes.
FIXED = [((100, 80), (200, 160)), ((100, 80), (50, 40)), ((101, 81), (50, 40)), ((64, 64), (64, 64)),
         ((1, 1), (5, 7)), ((3, 200), (1, 50)), ((240, 320), (320, 427)), ((257, 391), (320, 487)),
         ((300, 200), (480, 320))]


def cases(seed: int, count: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """((H, W), (h, w)) pairs: the fixed ones, then ``count`` random scales 0.2-3 (aspect jittered by 10 %)."""
    rng = np.random.default_rng(seed)
    out = list(FIXED)
    for _ in range(count):
        h, w = (int(v) for v in rng.integers(1, 300, 2))
        s = float(rng.uniform(0.2, 3.0))
        out.append(((h, w), (max(1, int(h * s + 0.5)), max(1, int(w * s * rng.uniform(0.9, 1.1) + 0.5)))))
    return out


def image(seed: int, n: int, h: int, w: int) -> np.ndarray:
    """(H, W, 3) uint8: noise for odd ``n``, a smooth gradient with noise for even ones."""
    rng = np.random.default_rng([seed, n])
    noise = rng.integers(0, 256, (h, w, 3))
    if n % 2:
        return noise.astype(np.uint8)
    ramp = np.add.outer(np.arange(h) * 255 // max(h, 1), np.arange(w) * 255 // max(w, 1))[..., None] // 2
    return ((ramp + noise // 8) % 256).astype(np.uint8)


def digest(pixels: np.ndarray) -> str:
    """SHA-256 of (h, w, 3) uint8, C order."""
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


def main() -> int:
    import cv2

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="the JSON fixture to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=60, help="random sizes beyond the fixed ones")
    args = parser.parse_args()
    record = {"opencv": cv2.__version__, "seed": args.seed, "count": args.count, "outputs": []}
    for n, ((h, w), (nh, nw)) in enumerate(cases(args.seed, args.count)):
        out = cv2.resize(image(args.seed, n, h, w), (nw, nh), interpolation=cv2.INTER_LINEAR)
        record["outputs"].append({"from": [h, w], "to": [nh, nw], "sha256": digest(out)})
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
