"""``simcal convert``: a detector trained in another framework -> a SimCal checkpoint every stage loads.

Reads the source file (:mod:`simcal.detector.sources`), renames and re-indexes its weights
(:mod:`simcal.detector.from_detectron2`), checks its class count against the training annotations,
and writes a checkpoint whose builder keywords switch on the source framework's behaviour where
torchvision's differs, so that extraction, online calibration and inference compute what the source
computes (:data:`DETECTRON2_BEHAVIOUR`). Only detectron2 sources convert so far.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: detectron2 R50-FPN's test behaviour, as builder keywords (detector/builders.py): the MSRA ResNet,
#: BGR 0-255 input with its pixel mean (the stem's weights take RGB after conversion), unrounded anchors
#: at fixed strides, ROIAlignV2, no small-box filter, half-up resize, grid_sample mask pasting.
DETECTRON2_BEHAVIOUR: dict[str, Any] = {"stride_in_1x1": True, "pixel_norm": "detectron2", "anchors": "detectron2",
                                        "roi_align": "detectron2", "small_boxes": "detectron2",
                                        "resize": "detectron2", "paste_masks": "detectron2"}


def _class_agnostic(setting: str, found: bool, src: Path) -> bool:
    from simcal.core.errors import input_error

    if setting != "auto" and (setting == "on") != found:
        raise input_error(src, f"has {'class-agnostic' if found else 'per-class'} box and mask heads, and "
                          f"--class-agnostic {setting} says otherwise", "leave --class-agnostic at auto")
    return found


def main(args: argparse.Namespace) -> int:
    from simcal.core.atomic import require_output
    from simcal.core.errors import input_error
    from simcal.data.annotations import load_annotations
    from simcal.data.statistics import category_statistics
    from simcal.detector.builders import build
    from simcal.detector.checkpoint import make_checkpoint, save_checkpoint
    from simcal.detector.from_detectron2 import to_torchvision
    from simcal.detector.sources import read_source

    src = Path(args.src)
    require_output(args.out, "file", "--out", "detector.pth")
    if args.source != "detectron2":
        raise input_error(None, f"--from {args.source} is not converted yet (only detectron2 is)",
                          "convert a detectron2 checkpoint, or train with 'simcal train'")
    ann = load_annotations(args.ann)
    source = read_source(src, args.source)
    try:
        weights, num_classes, agnostic = to_torchvision(source.weights)
    except ValueError as e:
        raise input_error(src, str(e), "pass an R50-FPN Mask R-CNN checkpoint")
    if num_classes != ann.mapping.num_classes:
        raise input_error(src, f"scores {num_classes} classes, and {args.ann} has {ann.mapping.num_classes} "
                          "categories", "pass the annotation file the detector was trained on")
    kw = {"class_agnostic": _class_agnostic(args.class_agnostic, agnostic, src), **DETECTRON2_BEHAVIOUR}
    model = build(args.arch, num_classes, **kw)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        raise input_error(src, f"does not fit {args.arch} ({lines[-1].strip()})")
    stats = [{k: c[k] for k in ("id", "name", "instance_count", "image_count", "frequency")}
             for c in category_statistics(ann)]
    record = {"converted_from": str(src), "source_framework": args.source,
              **{k: v for k, v in source.meta.items() if isinstance(v, (str, int, float, bool))}}
    ck = make_checkpoint(model, args.arch, kw, ann.mapping, stats, ann.fingerprint, record, 0)
    save_checkpoint(ck, args.out)
    print(f"wrote {args.out}: {args.arch}, {num_classes} classes{' (class-agnostic)' if agnostic else ''}, "
          f"converted from {args.source}")
    return 0
