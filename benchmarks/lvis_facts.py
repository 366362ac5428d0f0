"""What the LVIS-scale benchmark and the cost model of docs/scale.md share: LVIS's sizes and extraction's defaults.

Standard library only (the renderer imports it).
"""

from __future__ import annotations

#: Split sizes and training instances of the real datasets (v0.5: the paper's Table 1; v1: the LVIS v1 release).
LVIS = {
    "v0.5": {"train_images": 57263, "val_images": 5000, "train_instances": 693958, "classes": 1230},
    "v1": {"train_images": 100170, "val_images": 19809, "train_instances": 1270141, "classes": 1203},
}
FG_PER_GT, BG_PER_IMAGE = 8, 32  # simcal extract's defaults: rows per GT (the GT box included), bg rows per image
#: Each of a GT's FG_PER_GT - 1 proposal slots is filled with this probability (the simulation's assumption).
FG_HIT = 0.6
FG_ROWS_PER_INSTANCE = 1 + (FG_PER_GT - 1) * FG_HIT


def rows_per_image(version: str) -> float:
    """Expected cached rows per image of the whole train split: instances per image x fg rows each + bg rows."""
    v = LVIS[version]
    return v["train_instances"] / v["train_images"] * FG_ROWS_PER_INSTANCE + BG_PER_IMAGE
