"""How closely converted detectors reproduce their source framework's detections, on the committed fixtures.

    python benchmarks/conversion_agreement.py

For each recorded run of detectron2 (tests/fixtures/detectron2_reference.json, made by
tools/detectron2_reference.py) and mmdetection 3.x (tests/fixtures/mmdet_reference.json, made by
tools/mmdet_reference.py), per-class and class-agnostic heads on three images each: regenerates and converts
the weights, runs the converted model on every image and prints, as the last line, one JSON object: per
source and variant the worst figure over the images (box IoU of matched detections, score difference, mask
IoU pooled and per mask, detection counts), and what the fixture was made with.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.reference_compare import REFERENCES, load_fixture, match_detections, run_reference  # noqa: E402


def agreement(fixture_path: Path, convert) -> dict:
    """The worst figures over the fixture's images, per variant, and what the fixture was made with."""
    fixture = load_fixture(fixture_path)
    settings = fixture["settings"]
    out: dict = {"made_with": fixture["made_with"], "images": len(settings["sizes"])}
    for variant in ("per_class", "class_agnostic"):
        with tempfile.TemporaryDirectory() as tmp:
            model = convert(settings, variant == "class_agnostic", Path(tmp))
            ms = [match_detections(ref, det, size)
                  for (size, det), ref in zip(run_reference(model, settings), fixture[variant])]
        out[variant] = {
            "detections_recorded": sum(m["detections"] for m in ms), "detections_ours": sum(m["ours"] for m in ms),
            "min_box_iou": min(m["min_box_iou"] for m in ms), "max_score_diff": max(m["max_score_diff"] for m in ms),
            "min_pooled_mask_iou": min(m["pooled_mask_iou"] for m in ms),
            "min_mask_iou": min(m["min_mask_iou"] for m in ms),
            "max_prob_off_threshold_where_masks_differ": max(m["max_prob_off_threshold_where_masks_differ"]
                                                             for m in ms)}
    return out


def main() -> int:
    print(json.dumps({source: agreement(*how) for source, how in REFERENCES.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
