"""Checks of masks and coordinates made before any C library (pycocotools, faster-coco-eval) sees them.

pycocotools' C code trusts its input: a compressed RLE whose runs add up to more
than height x width writes past its buffer, a truncated one reads past its string,
and a polygon with a coordinate of 1e9 makes it allocate and walk billions of
points. These functions find such input first, so that the loaders can refuse it
in one sentence. They return a description of the first problem (or None) and
leave the phrasing of the error (which file, which record) to the caller.

Compressed RLE is the COCO string format (``rleToString`` in pycocotools'
``maskApi.c``): each run is a signed number written as 5-bit groups, least
significant first, one character per group (``chr(48 + bits)``); bit 0x20 of a
group means another group follows, bit 0x10 of the last group is the sign. Runs
from the fourth on are stored as the difference to the run two before.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

#: Coordinates may lie this far outside the image, as a fraction of the image's side (width for x, height for y).
COORD_TOLERANCE = 0.5

#: The longest group sequence of one run: 7 groups hold 35 bits, enough for any run of a mask below 2**32 pixels.
MAX_GROUPS_PER_RUN = 7

_CHUNK_CHARS = 1 << 20  # strings are checked this many characters at a time: about 100 bytes of numpy per character


def coordinate_bounds(height: int, width: int) -> tuple[float, float, float, float]:
    """(x_min, x_max, y_min, y_max) a coordinate of an image of this size may take."""
    tx, ty = COORD_TOLERANCE * width, COORD_TOLERANCE * height
    return -tx, width + tx, -ty, height + ty


def polygon_problem(polygons: Any, height: int, width: int) -> str | None:
    """Why ``polygons`` is not a usable list of polygons of an image of this size, or None."""
    if not isinstance(polygons, list) or not polygons:
        return "an empty polygon list"
    x0, x1, y0, y1 = coordinate_bounds(height, width)
    for poly in polygons:
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            return "a bad polygon (not an even number >= 6 of coordinates)"
        if not all(type(v) in (int, float) for v in poly):
            return "a bad polygon (a coordinate that is not a number)"
        xy = np.asarray(poly, dtype=np.float64)
        if not np.isfinite(xy).all():
            return "a bad polygon (a non-finite coordinate)"
        xs, ys = xy[0::2], xy[1::2]
        if xs.min() < x0 or xs.max() > x1 or ys.min() < y0 or ys.max() > y1:
            return f"a bad polygon (a coordinate outside the {width}x{height} image)"
    return None


def box_problem(box: Any, height: int, width: int, empty_ok: bool) -> str | None:
    """What is wrong with an [x, y, w, h] box of a ``width`` x ``height`` image, or None.

    Ground truth needs w, h > 0; detections may be empty (``empty_ok``: w, h >= 0).
    """
    if not (isinstance(box, list) and len(box) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
        return "bbox is not [x, y, w, h] of finite numbers"
    if (min(box[2], box[3]) < 0) if empty_ok else (min(box[2], box[3]) <= 0):
        return f"has a {'negative' if empty_ok else 'non-positive'} box size (w={box[2]}, h={box[3]})"
    if box_outside(box, height, width):
        return (f"bbox {box} lies outside its {width}x{height} image (boxes must stay within "
                f"{int(COORD_TOLERANCE * 100)}% of the image size of the image)")
    return None


def box_outside(box: Sequence[float], height: int, width: int) -> bool:
    """Whether the [x, y, w, h] box (finite numbers, w, h >= 0) reaches beyond the tolerated frame of the image."""
    x0, x1, y0, y1 = coordinate_bounds(height, width)
    x, y, w, h = box
    return x < x0 or y < y0 or x + w > x1 or y + h > y1


def boxes_outside(boxes: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The rows of (N, 4) [x, y, w, h] ``boxes`` that :func:`box_outside` refuses, as a boolean mask."""
    tx, ty = COORD_TOLERANCE * widths, COORD_TOLERANCE * heights
    return (
        (boxes[:, 0] < -tx)
        | (boxes[:, 1] < -ty)
        | (boxes[:, 0] + boxes[:, 2] > widths + tx)
        | (boxes[:, 1] + boxes[:, 3] > heights + ty)
    )


def counts_list_problem(counts: list, pixels: int) -> str | None:
    """Why uncompressed RLE ``counts`` do not describe a mask of ``pixels`` pixels, or None."""
    if not all(type(v) is int and v >= 0 for v in counts):
        return "uncompressed RLE counts that are not non-negative integers"
    if sum(counts) != pixels:
        return f"uncompressed RLE counts that add up to {sum(counts)}, not height x width {pixels}"
    return None


def rle_strings_problem(strings: Sequence[str], pixels: Sequence[int]) -> tuple[int, str] | None:
    """(index, why) of the first compressed RLE ``strings[i]`` that is not a mask of ``pixels[i]`` pixels, or None.

    Decodes every run of every string with numpy, a chunk of strings at a time
    (a per-string Python loop is far too slow for LVIS's 1.5 million masks).
    """
    n = len(strings)
    start = 0
    while start < n:
        stop, chars = start, 0
        while stop < n and (stop == start or chars + len(strings[stop]) <= _CHUNK_CHARS):
            chars += len(strings[stop])
            stop += 1
        found = _chunk_problem(strings[start:stop], np.asarray(pixels[start:stop], dtype=np.int64))
        if found is not None:
            return start + found[0], found[1]
        start = stop
    return None


def _first(bad_strings: np.ndarray, why: str, best: tuple[int, str] | None) -> tuple[int, str] | None:
    """Keep the earlier of ``best`` and the first string flagged in ``bad_strings``."""
    idx = np.flatnonzero(bad_strings)
    if len(idx) and (best is None or idx[0] < best[0]):
        return int(idx[0]), why
    return best


def _chunk_problem(strings: Sequence[str], pixels: np.ndarray) -> tuple[int, str] | None:
    joined = "".join(strings)
    if not joined.isascii():
        i = next(k for k, s in enumerate(strings) if not s.isascii())
        return i, "a character outside '0'..'o' in its counts string"
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    ends = np.cumsum(lengths)  # one past each string's last character
    c = np.frombuffer(joined.encode("ascii"), dtype=np.uint8) - np.uint8(48)  # below '0' wraps to > 63
    best: tuple[int, str] | None = None
    bad_char = np.flatnonzero(c > 63)
    if len(bad_char):
        s = int(np.searchsorted(ends, bad_char[0], side="right"))
        best = (s, "a character outside '0'..'o' in its counts string")
    nonempty = lengths > 0
    last = np.zeros(len(strings), dtype=bool)
    last[nonempty] = (c[ends[nonempty] - 1] & 0x20) != 0
    best = _first(last, "a counts string that ends inside a run (truncated)", best)
    best = _first(~nonempty, "an empty counts string", best)
    if best is not None:  # the decoding below assumes well-formed characters and complete runs
        return best
    return _runs_problem(c, ends, pixels)


def _runs_problem(c: np.ndarray, ends: np.ndarray, pixels: np.ndarray) -> tuple[int, str] | None:
    """Decode the runs of well-formed strings (``c``: characters - 48; ``ends``: string ends) and check them."""
    run_last = np.flatnonzero((c & 0x20) == 0)  # index of each run's last character
    run_first = np.empty_like(run_last)
    run_first[0], run_first[1:] = 0, run_last[:-1] + 1
    groups = run_last - run_first + 1
    runs_upto = np.searchsorted(run_last, ends - 1, side="right")  # runs ending in strings 0..i
    first_run = np.r_[0, runs_upto[:-1]]
    runs_per_string = runs_upto - first_run

    def string_of(run: int) -> int:
        return int(np.searchsorted(runs_upto, run, side="right"))

    too_long = np.flatnonzero(groups > MAX_GROUPS_PER_RUN)
    if len(too_long):
        return string_of(too_long[0]), f"a run longer than {MAX_GROUPS_PER_RUN} characters (overflow)"
    value = (c[run_first] & 0x1F).astype(np.int64)
    for g in range(1, int(groups.max())):
        more = np.flatnonzero(groups > g)
        value[more] |= (c[run_first[more] + g] & 0x1F).astype(np.int64) << (5 * g)
    negative = (c[run_last] & 0x10) != 0
    value[negative] -= np.int64(1) << (5 * groups[negative])
    # Runs j >= 3 are the difference to run j - 2: a cumulative sum along every other run, restarted per string.
    chained = np.empty_like(value)
    chained[0::2], chained[1::2] = np.cumsum(value[0::2]), np.cumsum(value[1::2])
    j = np.arange(len(value)) - np.repeat(first_run, runs_per_string)  # a run's index within its string
    base = np.repeat(first_run, runs_per_string) - (j % 2)  # the run before the chain, of the same parity
    counts = chained - np.r_[0, chained][base + 1]
    counts[j == 0] = value[j == 0]
    bad_run = np.flatnonzero((counts < 0) | (counts > np.repeat(pixels, runs_per_string)))
    if len(bad_run):
        return string_of(bad_run[0]), "a negative run or a run longer than the mask in its counts string"
    total = np.add.reduceat(counts, first_run)
    wrong = np.flatnonzero(total != pixels)
    if len(wrong):
        i = int(wrong[0])
        return i, f"counts whose runs add up to {int(total[i])}, not height x width {int(pixels[i])}"
    return None
