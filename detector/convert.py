"""``simcal convert``: a detector trained in another framework -> a SimCal checkpoint every stage loads.

Reads the source file (:mod:`simcal.detector.sources`), renames and re-indexes its weights
(:mod:`simcal.detector.from_detectron2`, :mod:`simcal.detector.from_mmdet`,
:mod:`simcal.detector.from_mmdet1`), checks its classes against the training annotations (their
count, and their names in category-id order when the file lists them), and writes a checkpoint whose
builder keywords switch on the source framework's behaviour where torchvision's differs, so that
extraction, online calibration and inference compute what the source computes (:data:`SOURCES`).

``--head`` (``--from mmdet1`` only) also converts the SimCal release's calibrated head into a head
checkpoint bound to the converted detector. That format belongs to the calibrate stage, which this
one may not import: :func:`main` takes the converter as an argument, and ``simcal convert`` is run
with :func:`simcal.calibrate.import_head.convert_head` (calibrate/cli.py). The head is converted and
checked before anything is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Optional

#: detectron2's and mmdetection's LVIS test size (shorter side, longest side), torchvision's MaskRCNN default too.
TEST_SIZE = (800, 1333)

#: detectron2 R50-FPN's test behaviour, as builder keywords (detector/builders.py): the MSRA ResNet,
#: BGR 0-255 input with its pixel mean (the stem's weights take RGB after conversion), unrounded anchors
#: at fixed strides, ROIAlignV2, no small-box filter, half-up resize, grid_sample mask pasting.
DETECTRON2_BEHAVIOUR: dict[str, Any] = {"stride_in_1x1": True, "pixel_norm": "detectron2", "anchors": "detectron2",
                                        "roi_align": "detectron2", "small_boxes": "detectron2",
                                        "resize": "detectron2", "paste_masks": "detectron2"}

#: mmdetection v2/v3 R50-FPN's test behaviour: detectron2's on every switch but three: two where it is
#: torchvision's (a ``style='pytorch'`` ResNet strides in the 3x3, and takes RGB with ImageNet mean and
#: std) and the resize filter. Read from mmdetection: ``AnchorGenerator`` (scales 8, fixed strides 4..64,
#: ``center_offset=0``, corners not rounded), mmcv ``RoIAlign`` (``aligned=True``, ``sampling_ratio=0``),
#: RPN and final boxes kept whenever wider and taller than 0 (``min_bbox_size=0``; no 1e-2 filter),
#: ``mmcv.imrescale`` (size ``int(x * scale + 0.5)``, OpenCV's bilinear on the 8-bit image),
#: ``FCNMaskHead`` pasting with detectron2's ``_do_paste_mask`` (``grid_sample``) at threshold ``>= 0.5``.
#: Approximate only where the doc of :mod:`simcal.detector.from_mmdet` says.
MMDET_BEHAVIOUR: dict[str, Any] = {"anchors": "detectron2", "roi_align": "detectron2", "small_boxes": "detectron2",
                                   "resize": "mmdet", "paste_masks": "detectron2"}

#: mmdetection v1's (the SimCal release's) R50-FPN test behaviour: its "+1" pixel convention and one scale
#: factor, as builder keywords (detector/builders.py): v1's rounded anchors at fixed strides, its box decoding,
#: RPN, NMS and post-processing (detector/legacy_boxes.py), its RoIAlign and FPN levels (legacy_pooler.py), its
#: resize and mask pasting (mmdet1_transform.py), and its test score threshold (``score_thr=0.0``, kept when
#: ``> 0``). style='pytorch' ResNet and ImageNet RGB normalisation: torchvision's. Approximate only where
#: those modules' docs say.
MMDET1_BEHAVIOUR: dict[str, Any] = {"anchors": "mmdet1", "boxes": "mmdet1", "roi_align": "mmdet1",
                                    "resize": "mmdet1", "paste_masks": "mmdet1", "box_score_thresh": 0.0}

#: (torchvision state dict, K classes, class-agnostic, what was assumed about the source or None)
Converted = tuple[dict, int, bool, Optional[str]]


def _detectron2(source) -> Converted:
    from simcal.detector.from_detectron2 import to_torchvision

    return (*to_torchvision(source.weights), None)


def _mmdet(source) -> Converted:
    from simcal.detector.from_mmdet import to_torchvision
    from simcal.detector.mmdet_config import check_config

    assumed = check_config(source.meta.get("config"))
    return (*to_torchvision(source.weights), assumed)


def _mmdet1(source) -> Converted:
    from simcal.detector.from_mmdet1 import to_torchvision
    from simcal.detector.mmdet_config import check_config_v1

    assumed = check_config_v1(source.meta.get("config"))
    return (*to_torchvision(source.weights), assumed)


#: --from -> (the file as read -> its weights in our layout, the source's test behaviour as builder keywords).
SOURCES: dict[str, tuple[Callable[[Any], Converted], dict[str, Any]]] = {
    "detectron2": (_detectron2, DETECTRON2_BEHAVIOUR),
    "mmdet": (_mmdet, MMDET_BEHAVIOUR),
    "mmdet1": (_mmdet1, MMDET1_BEHAVIOUR),
}
#: The sources whose releases come with a calibrated head (``--head``).
HEAD_SOURCES = ("mmdet1",)
#: ``(head file, converted detector checkpoint) -> head checkpoint``; one-sentence InputError for a bad head.
HeadConverter = Callable[[Path, dict], dict]
_FIX_SOURCE = "pass an R50-FPN Mask R-CNN checkpoint trained with the framework's standard settings"
_FIX_ANN = "pass the annotation file the detector was trained on"


def _class_agnostic(setting: str, found: bool, src: Path) -> bool:
    from simcal.core.errors import input_error

    if setting != "auto" and (setting == "on") != found:
        raise input_error(src, f"has {'class-agnostic' if found else 'per-class'} box and mask heads, and "
                          f"--class-agnostic {setting} says otherwise", "leave --class-agnostic at auto")
    return found


def _check_classes(src: Path, num_classes: int, names: Optional[list], ann) -> None:
    """The source's class count, and its class names when it lists them, against ``ann`` in category-id order."""
    from simcal.core.errors import input_error

    ours = ann.mapping
    if num_classes != ours.num_classes:
        raise input_error(src, f"scores {num_classes} classes, and {ann.path} has {ours.num_classes} categories",
                          _FIX_ANN)
    if names is None:
        return
    names = [str(n) for n in names]
    if len(names) != ours.num_classes:
        raise input_error(src, f"lists {len(names)} class names, and {ann.path} has {ours.num_classes} categories",
                          _FIX_ANN)
    for label, (theirs, name, cid) in enumerate(zip(names, ours.names, ours.ids)):
        if theirs != name:
            order = ", the same names in another order" if sorted(names) == sorted(ours.names) else ""
            raise input_error(src, f"names its class {label} {theirs!r}, and {ann.path} has {name!r} there (category "
                              f"id {cid}; classes follow the category ids){order}", _FIX_ANN)


def _check_keys(src: Path, arch: str, weights: dict, model) -> None:
    """Missing, extra and misshapen weights named before loading (torchvision names, as converted)."""
    from simcal.core.errors import input_error

    want = model.state_dict()
    missing, extra = [k for k in want if k not in weights], [k for k in weights if k not in want]
    for keys, problem in ((missing, f"lacks {len(missing)} weight(s) {arch} needs"),
                          (extra, f"has {len(extra)} weight(s) {arch} does not")):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            raise input_error(src, f"{problem} (named as converted: {', '.join(keys[:3])}{more})", _FIX_SOURCE)
    for k, t in want.items():
        if tuple(weights[k].shape) != tuple(t.shape):
            raise input_error(src, f"gives {k} (named as converted) the shape {tuple(weights[k].shape)}, where "
                              f"{arch} needs {tuple(t.shape)}", _FIX_SOURCE)


def _check_head_args(args: argparse.Namespace, convert_head: Optional[HeadConverter]) -> None:
    """--head and --head-out: together, only for a source with a released head, to a file of their own."""
    from simcal.core.atomic import require_output
    from simcal.core.errors import input_error

    head, head_out = getattr(args, "head", None), getattr(args, "head_out", None)
    if head is None and head_out is None:
        return
    if head is None or head_out is None:
        given, missing = ("--head", "--head-out") if head is not None else ("--head-out", "--head")
        raise input_error(None, f"{given} was given without {missing}",
                          "pass --head SIMCAL_HEAD.pth --head-out HEAD.pth together")
    if args.source not in HEAD_SOURCES:
        raise input_error(None, f"--head takes the calibrated head of the SimCal authors' release, which comes with "
                          f"--from mmdet1, not --from {args.source}",
                          "calibrate a head for this detector with 'simcal extract' and 'simcal calibrate'")
    if convert_head is None:
        raise input_error(None, "--head needs the calibrate stage's head converter", "run it as 'simcal convert'")
    if Path(head_out).resolve() == Path(args.out).resolve():
        raise input_error(None, "--head-out and --out name the same file", "write the head to a file of its own")
    require_output(head_out, "file", "--head-out", "head.pth")


def main(args: argparse.Namespace, convert_head: Optional[HeadConverter] = None) -> int:
    """Convert ``args.src``; with ``args.head``, also the release's head through ``convert_head`` (module doc)."""
    from simcal.core.atomic import require_output
    from simcal.core.errors import input_error
    from simcal.data.annotations import load_annotations
    from simcal.data.statistics import category_statistics
    from simcal.detector.builders import build
    from simcal.detector.checkpoint import make_checkpoint, save_checkpoint
    from simcal.detector.sources import read_source

    src = Path(args.src)
    require_output(args.out, "file", "--out", "detector.pth")
    if args.source not in SOURCES:
        raise input_error(None, f"--from {args.source} is not converted yet (only {', '.join(SOURCES)} are)",
                          "convert a detectron2 or mmdetection checkpoint, or train with 'simcal train'")
    _check_head_args(args, convert_head)
    to_torchvision, behaviour = SOURCES[args.source]
    ann = load_annotations(args.ann)
    source = read_source(src, args.source)
    try:
        weights, num_classes, agnostic, assumed = to_torchvision(source)
    except ValueError as e:
        raise input_error(src, str(e), _FIX_SOURCE)
    _check_classes(src, num_classes, source.meta.get("classes"), ann)
    kw = {"class_agnostic": _class_agnostic(args.class_agnostic, agnostic, src), **behaviour}
    if tuple(args.test_size) != TEST_SIZE:  # builder keywords of torchvision's MaskRCNN
        kw["min_size"], kw["max_size"] = args.test_size
    model = build(args.arch, num_classes, **kw)
    _check_keys(src, args.arch, weights, model)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        raise input_error(src, f"does not fit {args.arch} ({lines[-1].strip()})")
    stats = [{k: c[k] for k in ("id", "name", "instance_count", "image_count", "frequency")}
             for c in category_statistics(ann)]
    record = {"converted_from": str(src), "source_framework": args.source,
              **({"assumed": assumed} if assumed else {}),
              **{k: v for k, v in source.meta.items() if isinstance(v, (str, int, float, bool)) and k != "config"}}
    ck = make_checkpoint(model, args.arch, kw, ann.mapping, stats, ann.fingerprint, record, 0)
    head = convert_head(Path(args.head), ck) if getattr(args, "head", None) else None
    save_checkpoint(ck, args.out)
    print(f"wrote {args.out}: {args.arch}, {num_classes} classes{' (class-agnostic)' if agnostic else ''}, "
          f"converted from {args.source}{f'; {assumed}' if assumed else ''}")
    if head is not None:
        save_checkpoint(head, args.head_out)
        print(f"wrote {args.head_out}: a {head['head']} head for {args.out}, converted from {args.head}")
    return 0
