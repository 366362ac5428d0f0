"""Validated detections held as columns, and the per-detection records a backend asks for.

Shapes (``N``: detections kept after the per-image cap and the ``0 < area`` filter,
ordered by image id, score descending, file order; detection ``i`` has id ``i + 1``):

- ``image_ids``, ``category_ids``: int64 ``[N]``;
- ``scores``, ``areas``: float64 ``[N]`` (``areas`` by the LVISResults rule: the box
  area ``w * h`` when the results carry boxes, else the mask area);
- ``boxes``: float64 ``[N, 4]`` ``[x, y, w, h]``, or None when the results carry no boxes;
- ``counts_text``: every compressed-RLE counts string, concatenated, and
  ``counts_bounds``: int64 ``[N, 2]``, detection ``i``'s ``[start, end)`` in it; both
  None when the results carry no masks; ``mask_sizes``: int64 ``[N, 2]``
  ``[height, width]`` of each mask (its image's size).

Columns instead of one dict per detection: a million detections cost a few numpy
arrays and one string; dicts are built only where a backend needs them, for the rows
it asks for. One string rather than a million: once the parsed results file is
released, none of its small objects is kept alive, so their memory can go back to
the system.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Detections:
    """Validated results, capped per image and ordered (see the module docstring for the columns)."""

    image_ids: np.ndarray
    category_ids: np.ndarray
    scores: np.ndarray
    areas: np.ndarray
    boxes: np.ndarray | None
    counts_text: str | None
    counts_bounds: np.ndarray | None
    mask_sizes: np.ndarray | None
    num_input: int
    num_images_capped: int
    max_dets: int
    num_zero_area: int = 0

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def has_bbox(self) -> bool:
        return self.boxes is not None

    @property
    def has_segm(self) -> bool:
        return self.counts_text is not None

    def for_iou_type(
        self, iou_type: str, with_ids: bool, rows: np.ndarray | None = None, geometry: bool = True
    ) -> list[dict[str, Any]]:
        """One fresh dict per detection of ``rows`` (default: all, in order) with the keys ``iou_type`` needs.

        Always ``image_id, category_id, score``; ``bbox`` when the results carry boxes;
        ``segmentation`` (``{"size": [h, w], "counts": str}``) for mask AP. ``with_ids``
        (faster-coco-eval) adds ``id`` (row + 1), ``iscrowd = 0`` and ``area``; without it
        (LVISResults, which computes the area itself) there is no ``id`` and no ``area``.
        ``geometry=False`` leaves out ``bbox`` and ``segmentation``: for detections that
        no IoU is computed for (faster-coco-eval's C++ reads only ids, score and area).
        """
        if rows is None:
            rows = np.arange(len(self), dtype=np.int64)
        cols: dict[str, list] = {
            "image_id": self.image_ids[rows].tolist(),
            "category_id": self.category_ids[rows].tolist(),
            "score": self.scores[rows].tolist(),
        }
        if self.boxes is not None and geometry:
            cols["bbox"] = self.boxes[rows].tolist()
        if self.counts_text is not None and iou_type == "segm" and geometry:
            text = self.counts_text
            cols["segmentation"] = [
                {"size": size, "counts": text[a:b]}
                for (a, b), size in zip(self.counts_bounds[rows].tolist(), self.mask_sizes[rows].tolist())
            ]
        if with_ids:
            cols["id"] = (rows + 1).tolist()
            cols["iscrowd"] = [0] * len(rows)
            cols["area"] = self.areas[rows].tolist()
        keys = tuple(cols)
        return [dict(zip(keys, values)) for values in zip(*cols.values())]


def pack_counts(counts: list[str]) -> tuple[str, np.ndarray]:
    """(``counts_text``, ``counts_bounds`` int64 ``[N, 2]``) of ``N`` counts strings (see the module docstring)."""
    lengths = np.fromiter(map(len, counts), dtype=np.int64, count=len(counts))
    ends = np.cumsum(lengths)
    return "".join(counts), np.stack([ends - lengths, ends], axis=1)
