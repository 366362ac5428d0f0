"""Validate and normalize the inputs of an evaluation (see :mod:`simcal.evaluate.protocol`).

Everything a user can get wrong in a results file becomes one
:class:`~simcal.core.errors.InputError` sentence naming the file, the first
offending record and the fix; nothing here raises a bare exception on bad input.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from itertools import chain
from operator import eq, methodcaller
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simcal.core.errors import InputError, input_error
from simcal.data.annotations import Annotations
from simcal.data.geometry import (
    COORD_TOLERANCE,
    box_problem,
    boxes_outside,
    counts_list_problem,
    polygon_problem,
    rle_strings_problem,
)
from simcal.evaluate.detections import Detections, pack_counts
from simcal.evaluate.protocol import FREQUENCIES, IOU_TYPES, LVIS_MAX_DETS

_FIX_RESULTS = "write results as a JSON list of {image_id, category_id, bbox, score[, segmentation]} records"


# --------------------------------------------------------------------------- ground truth


@dataclass
class GroundTruth:
    """The normalized ground truth shared by both backends (one per IoU type).

    ``images``/``categories`` are LVIS-format records; ``annotations`` holds only the
    keys the protocol uses. Backends must not mutate these dicts: use :meth:`copy_dataset`.
    """

    path: Path
    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    cat_ids: list[int]
    frequency_source: str
    warnings: list[str] = field(default_factory=list)

    def copy_dataset(self) -> dict[str, Any]:
        """A fresh LVIS-format dict whose records a backend may mutate freely."""
        return {
            "images": [dict(im) for im in self.images],
            "annotations": [dict(a) for a in self.annotations],
            "categories": [dict(c) for c in self.categories],
        }


def _mask_area(seg: dict[str, Any]) -> float:
    from pycocotools import mask as mask_utils

    return float(mask_utils.area(seg))


def to_compressed_rle(seg: Any, height: int, width: int) -> dict[str, Any]:
    """Polygons, uncompressed or compressed RLE -> compressed RLE with ``str`` counts."""
    if isinstance(seg, dict) and isinstance(seg.get("counts"), str):
        return seg  # already compressed: the common case, a million times at LVIS scale (no import per call)
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        return seg
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def check_training(train: Annotations) -> None:
    """Refuse training annotations without an instance: every class would land in bin AP1 and APr."""
    if not train.annotations:
        raise input_error(
            train.path,
            "has no annotations, so every class would fall in the lowest instance-count bin",
            "pass the training annotation file with its instances as --train-ann",
        )


def resolve_frequencies(gt: Annotations, train: Annotations) -> tuple[dict[int, str], str]:
    """Category id -> LVIS frequency r/c/f, and where it came from.

    From the ground-truth file's ``frequency`` field, as the ``lvis`` package does;
    when the file has none (COCO format), from the training images per category
    (r <= 10 < c <= 100 < f, :func:`simcal.data.statistics.frequency_of`).
    """
    cats = gt.categories
    if cats and all(c.get("frequency") in FREQUENCIES for c in cats):
        return {c["id"]: c["frequency"] for c in cats}, "ground-truth file"
    bad = [c for c in cats if "frequency" in c and c["frequency"] not in FREQUENCIES]
    if bad:
        raise input_error(
            gt.path,
            f"category {bad[0]['id']} has frequency {bad[0]['frequency']!r}",
            "LVIS frequency must be one of 'r', 'c', 'f'",
        )
    from simcal.data.statistics import category_statistics

    by_id = {c["id"]: c["frequency"] for c in category_statistics(train)}
    return {c["id"]: by_id.get(c["id"], "r") for c in cats}, "training image counts (ground truth has none)"


def prepare_ground_truth(
    gt: Annotations, iou_type: str, frequencies: dict[int, str], frequency_source: str
) -> GroundTruth:
    """Normalize ``gt`` for ``iou_type`` (see the module docstring of :mod:`protocol`)."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"unknown iou type {iou_type!r}")
    warnings: list[str] = []
    cat_ids = [c["id"] for c in gt.categories]
    present: dict[int, set] = {}
    anns = []
    n_crowd = n_zero = 0
    img_by_id = {im["id"]: im for im in gt.images}
    for a in gt.annotations:
        if a.get("iscrowd", 0) or a.get("ignore", 0):
            n_crowd += 1
        rec = {"id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"])}
        seg = a.get("segmentation")
        if iou_type == "segm":
            if seg is None:
                raise input_error(
                    gt.path,
                    f"annotation {a['id']} has no 'segmentation', needed for mask AP",
                    "evaluate with --iou-type bbox or use a ground truth with masks",
                )
            im = img_by_id[a["image_id"]]
            seg = to_compressed_rle(seg, im["height"], im["width"])
            rec["segmentation"] = seg
        area = a.get("area")
        if not (isinstance(area, (int, float)) and not isinstance(area, bool) and math.isfinite(area)):
            if seg is not None:
                im = img_by_id[a["image_id"]]
                area = _mask_area(to_compressed_rle(seg, im["height"], im["width"]))
            else:
                area = float(a["bbox"][2] * a["bbox"][3])
        rec["area"] = float(area)
        if not rec["area"] > 0:
            n_zero += 1
            continue
        anns.append(rec)
        present.setdefault(a["image_id"], set()).add(a["category_id"])
    if n_crowd:
        warnings.append(
            f"{n_crowd} ground-truth instances carry iscrowd/ignore flags; the LVIS protocol counts them "
            "as ordinary instances"
        )
    if n_zero:
        warnings.append(f"{n_zero} ground-truth instances with zero area are left out (as LVISEval does)")

    images = []
    all_cats = set(cat_ids)
    for im in gt.images:
        rec = {"id": im["id"], "height": im["height"], "width": im["width"]}
        if gt.is_lvis:
            rec["neg_category_ids"] = list(im.get("neg_category_ids", []))
            rec["not_exhaustive_category_ids"] = list(im.get("not_exhaustive_category_ids", []))
        else:  # COCO: exhaustive, every absent category is a verified negative
            rec["neg_category_ids"] = sorted(all_cats - present.get(im["id"], set()))
            rec["not_exhaustive_category_ids"] = []
        images.append(rec)
    if not gt.is_lvis:
        warnings.append(
            "ground truth has no neg_category_ids (COCO format): every image is treated as exhaustively annotated"
        )
    categories = [{"id": c["id"], "name": c["name"], "frequency": frequencies[c["id"]]} for c in gt.categories]
    return GroundTruth(gt.path, images, anns, categories, cat_ids, frequency_source, warnings)


# --------------------------------------------------------------------------- results


def read_results(path: str | os.PathLike) -> Any:
    """The parsed results json; InputError for a missing or unreadable file.

    The bytes are decoded to text first, exactly as ``json.loads`` would decode them,
    and let go before parsing: the parse then never holds the file twice (bytes and
    text) besides its objects. Bytes that do not decode go to the parser as they are,
    which refuses them in its own words.
    """
    import json

    from simcal.core.jsonio import parse_json, read_bytes

    what, fix = "a results json file", "rewrite the results file"
    raw: bytes | str = read_bytes(path, what)
    try:
        raw = raw.decode(json.detect_encoding(raw), "surrogatepass")
    except UnicodeDecodeError:
        pass
    return parse_json(raw, path, what, fix)


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool) and math.isfinite(x)


def _check_segmentation(path, i: int, seg: Any, im: dict[str, Any]) -> None:
    """Polygons and uncompressed RLE of result ``i``; compressed strings are checked in one batch later."""
    h, w = im["height"], im["width"]
    if isinstance(seg, list):
        problem = polygon_problem(seg, h, w)
        if problem is not None:
            raise input_error(
                path, f"result {i} (image {im['id']}) has {problem}",
                f"write masks as RLE {{'size': [h, w], 'counts': ...}} or polygons within "
                f"{int(COORD_TOLERANCE * 100)}% of the image size",
            )
        return
    if (
        not isinstance(seg, dict)
        or not isinstance(seg.get("counts"), (str, list))
        or not isinstance(seg.get("size"), list)
    ):
        raise input_error(
            path, f"result {i} has a bad segmentation", "write masks as RLE {'size': [h, w], 'counts': ...}"
        )
    if list(seg["size"]) != [h, w]:
        raise input_error(
            path,
            f"result {i} mask size {seg['size']} differs from its image's [height, width] [{h}, {w}]",
            "encode masks at the original image size",
        )
    counts = seg["counts"]
    problem = counts_list_problem(counts, h * w) if isinstance(counts, list) else None
    if problem is not None:
        raise input_error(path, f"result {i} has {problem}", "encode masks with pycocotools.mask.encode")


def _compressed_counts(segs: list) -> tuple[list[int], list[str]]:
    """(index, counts) of the results whose segmentation is compressed RLE (a ``str`` counts); ``segs`` as given."""
    if _types(segs) <= {dict}:
        strings = [seg.get("counts") for seg in segs]
        if _types(strings) <= {str}:  # the common case: every result has one
            return list(range(len(segs))), strings
    index = [i for i, seg in enumerate(segs) if type(seg) is dict and type(seg.get("counts")) is str]
    return index, [segs[i]["counts"] for i in index]


def _check_rle_strings(where, index: list[int], strings: list[str], pixels: np.ndarray) -> None:
    """Decode every compressed counts string of the (otherwise valid) results at once, before any C decoder does.

    ``strings[j]`` is the counts of result ``index[j]``, whose image has ``pixels[j]`` pixels.
    """
    found = rle_strings_problem(strings, pixels)
    if found is not None:
        raise input_error(
            where,
            f"result {index[found[0]]} has a malformed RLE mask ({found[1]})",
            "encode masks with pycocotools.mask.encode",
        )


def _check_id(where, gt: Annotations, i: int, value: Any, key: str, known) -> None:
    """``image_id``/``category_id`` of result ``i``: an integer the ground truth knows."""
    what = {"image_id": "image", "category_id": "category"}[key]
    if not _is_int(value):
        raise input_error(where, f"result {i} has {'no' if value is None else 'a non-integer'} {key}", _FIX_RESULTS)
    if value not in known:
        fix = (
            "evaluate results against the annotation file they were produced for"
            if key == "image_id"
            else "map model labels to the dataset's category ids"
        )
        of_gt = "in the ground truth" if key == "image_id" else "a category of the ground truth"
        raise input_error(where, f"result {i} names {what} id {value}, which is not {of_gt} {gt.path}", fix)


def _check_box(where, i: int, box: Any, im: dict[str, Any]) -> None:
    """``bbox`` of result ``i``: finite [x, y, w, h], w, h >= 0, within the tolerated frame of its image."""
    problem = box_problem(box, im["height"], im["width"], empty_ok=True)
    if problem is not None:
        raise input_error(where, f"result {i} (image {im['id']}): {problem}", "boxes are [x, y, width, height] "
                          "inside their image")


#: What the validation passes return for ``n`` results: ``(image_ids, category_ids, scores, boxes, segs,
#: has_segm)``: int64 ``[n]``, int64 ``[n]``, float64 ``[n]``, float64 ``[n, 4]`` (None when the results carry
#: no boxes), each result's segmentation as given (None where it has none), and whether every result has one.
Columns = tuple


def _types(values) -> set:
    """The set of the exact types of ``values`` (one C-level pass; ``bool`` is not ``int`` here)."""
    return set(map(type, values))


def _columns_fast(results: list, img_by_id: dict, cat_ids: set, need_bbox: bool, need_segm: bool):
    """The :data:`Columns` of well-formed results in bulk; None if anything is unusual.

    Accepts exactly what :func:`_columns_checked` accepts with compressed-RLE masks
    (the common case) and returns the same columns; anything else (a bad record,
    polygons, uncompressed RLE) goes to the record-by-record pass. Each check is one
    pass over a column (exact types, as the record-by-record checks: no ``bool``).
    """
    n = len(results)
    if not _types(results) <= {dict}:
        return None
    imgs = [r.get("image_id") for r in results]
    cats = [r.get("category_id") for r in results]
    scs = [r.get("score") for r in results]
    if not (_types(imgs) <= {int} and _types(cats) <= {int} and _types(scs) <= {float, int}):
        return None
    if not (set(imgs) <= img_by_id.keys() and set(cats) <= cat_ids):
        return None
    scores = np.array(scs, dtype=np.float64).reshape(n)
    if not np.isfinite(scores).all():
        return None
    image_ids = np.array(imgs, dtype=np.int64).reshape(n)
    sizes = _image_sizes(img_by_id, image_ids)
    boxes_raw = [r.get("bbox") for r in results]
    n_bbox = n - boxes_raw.count(None)
    boxes = None
    if n_bbox:
        if n_bbox != n or not (_types(boxes_raw) <= {list} and set(map(len, boxes_raw)) <= {4}):
            return None
        if not _types(chain.from_iterable(boxes_raw)) <= {float, int}:
            return None
        boxes = np.array(boxes_raw, dtype=np.float64).reshape(n, 4)
        if not np.isfinite(boxes).all() or (boxes[:, 2:] < 0).any():
            return None
        if boxes_outside(boxes, sizes[:, 0].astype(np.float64), sizes[:, 1].astype(np.float64)).any():
            return None
    elif need_bbox and n:
        return None
    segs = [r.get("segmentation") for r in results]
    n_segm = n - segs.count(None)
    if need_segm and n_segm != n:
        return None
    if n_segm:
        given = [i for i, seg in enumerate(segs) if seg is not None] if n_segm != n else range(n)
        present = [segs[i] for i in given] if n_segm != n else segs
        if not (_types(present) <= {dict} and _types(map(methodcaller("get", "counts"), present)) <= {str}):
            return None
        if not all(map(eq, map(methodcaller("get", "size"), present), sizes[given].tolist())):
            return None
    return image_ids, np.array(cats, dtype=np.int64).reshape(n), scores, boxes, segs, n > 0 and n_segm == n


def _columns_checked(
    where, gt: Annotations, results: list, img_by_id: dict, cat_ids: set, need_bbox: bool, need_segm: bool
):
    """The record-by-record validation: the first problem becomes an InputError; else the :data:`Columns`."""
    n = len(results)
    image_ids = np.empty(n, dtype=np.int64)
    category_ids = np.empty(n, dtype=np.int64)
    segs: list = [None] * n
    scores = np.empty(n, dtype=np.float64)
    boxes = np.empty((n, 4), dtype=np.float64)
    n_bbox = n_segm = 0
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise input_error(where, f"result {i} is not a JSON object", _FIX_RESULTS)
        img, cat = r.get("image_id"), r.get("category_id")
        _check_id(where, gt, i, img, "image_id", img_by_id)
        _check_id(where, gt, i, cat, "category_id", cat_ids)
        s = r.get("score")
        if not _finite(s):
            what = (
                "no score"
                if s is None
                else f"a non-finite score ({s})"
                if isinstance(s, float)
                else f"a non-numeric score ({s!r})"
            )
            raise input_error(where, f"result {i} has {what}", "every detection needs a finite score")
        box = r.get("bbox")
        if box is not None:
            _check_box(where, i, box, img_by_id[img])
            boxes[i] = box
            n_bbox += 1
        elif need_bbox:
            raise input_error(
                where, f"result {i} has no 'bbox', needed for box AP", "add boxes or evaluate with --iou-type segm"
            )
        seg = r.get("segmentation")
        if seg is not None:
            _check_segmentation(where, i, seg, img_by_id[img])
            segs[i] = seg
            n_segm += 1
        elif need_segm:
            raise input_error(
                where,
                f"result {i} has no 'segmentation', needed for mask AP (--iou-type segm)",
                "evaluate with --iou-type bbox or write masks as RLE",
            )
        image_ids[i] = img
        category_ids[i] = cat
        scores[i] = s
    if 0 < n_bbox < n:
        raise input_error(where, f"{n_bbox} of {n} results carry a bbox", "give every result a bbox, or none")
    return image_ids, category_ids, scores, (boxes if n and n_bbox == n else None), segs, n > 0 and n_segm == n


def prepare_results(
    results: Any,
    gt: Annotations,
    iou_types: Sequence[str],
    max_dets: int,
    path: str | os.PathLike | None = None,
) -> Detections:
    """Validate ``results`` against ``gt`` for ``iou_types``, cap per image, normalize.

    Raises :class:`InputError` (one sentence) for: not a list, a record that is not
    an object, unknown image or category id, missing/non-finite score, a missing or
    bad bbox, a missing segmentation when mask AP is asked for.
    """
    where = path if path is not None else "results"
    if not isinstance(results, list):
        kind = {
            dict: "an object",
            str: "a string",
            bool: "a boolean",
            type(None): "null",
            int: "a number",
            float: "a number",
        }.get(type(results), "not a list")
        raise input_error(where, f"top level is {kind}, not a list of detections", _FIX_RESULTS)
    img_by_id = {im["id"]: im for im in gt.images}
    cat_ids = set(c["id"] for c in gt.categories)
    need_segm = "segm" in iou_types
    need_bbox = "bbox" in iou_types
    n = len(results)
    cols = _columns_fast(results, img_by_id, cat_ids, need_bbox, need_segm)
    if cols is None:  # something is unusual: the record-by-record pass names the first problem
        cols = _columns_checked(where, gt, results, img_by_id, cat_ids, need_bbox, need_segm)
    image_ids, category_ids, scores, boxes, segs, has_segm = cols
    sizes = _image_sizes(img_by_id, image_ids)
    index, strings = _compressed_counts(segs)
    _check_rle_strings(where, index, strings, (sizes[:, 0] * sizes[:, 1])[index])
    keep, num_capped = _cap_per_image(image_ids, scores, max_dets)

    kept_boxes = boxes[keep] if boxes is not None else None
    counts = mask_sizes = None
    if has_segm:
        mask_sizes = sizes[keep]
        if len(strings) == n:  # every mask is compressed RLE already
            counts = list(map(strings.__getitem__, keep.tolist()))
        else:
            counts = [
                to_compressed_rle(seg, h, w)["counts"]
                for seg, (h, w) in zip(map(segs.__getitem__, keep.tolist()), mask_sizes.tolist())
            ]
    del segs, strings
    # area by the LVISResults rule: box area when results carry boxes, else mask area
    if kept_boxes is not None:
        areas = kept_boxes[:, 2] * kept_boxes[:, 3]
    elif counts is not None:  # one at a time: pycocotools' area() of a list overflows past 255 masks
        areas = np.array(
            [_mask_area({"size": hw, "counts": c}) for hw, c in zip(mask_sizes.tolist(), counts)], dtype=np.float64
        )
    else:
        areas = np.zeros(len(keep), dtype=np.float64)
    # LVIS keeps only 0 < area < inf (LVIS.get_ann_ids), after the cap.
    ok = (areas > 0) & (areas < math.inf)
    if not ok.all():
        keep, areas = keep[ok], areas[ok]
        kept_boxes = kept_boxes[ok] if kept_boxes is not None else None
        if counts is not None:
            counts = [c for c, good in zip(counts, ok.tolist()) if good]
            mask_sizes = mask_sizes[ok]
    return Detections(
        image_ids[keep], category_ids[keep], scores[keep], areas, kept_boxes,
        *(pack_counts(counts) if counts is not None else (None, None)), mask_sizes,
        n, num_capped, max_dets, int((~ok).sum()),
    )


def _image_sizes(img_by_id: dict, image_ids: np.ndarray) -> np.ndarray:
    """int64 ``[n, 2]``: ``[height, width]`` of the image of each of the ``n`` known ``image_ids``."""
    ids = np.fromiter(img_by_id, dtype=np.int64, count=len(img_by_id))
    hw = np.array([[im["height"], im["width"]] for im in img_by_id.values()], dtype=np.int64).reshape(-1, 2)
    order = np.argsort(ids, kind="stable")
    return hw[order[np.searchsorted(ids, image_ids, sorter=order)]] if len(ids) else hw[:0]


def _cap_per_image(image_ids: np.ndarray, scores: np.ndarray, max_dets: int) -> tuple[np.ndarray, int]:
    """(indices kept, ordered by image id and score descending; images over the cap).

    At most ``max_dets`` per image, the highest scores, ties in file order (a stable
    sort, as ``LVISResults.limit_dets_per_image``).
    """
    n = len(image_ids)
    if not n:
        return np.zeros(0, dtype=np.int64), 0
    order = np.lexsort((np.arange(n), -scores, image_ids))
    starts = np.r_[0, np.flatnonzero(np.diff(image_ids[order])) + 1]
    sizes = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, sizes)
    return order[rank < max_dets], int((sizes > max_dets).sum())


def resolve_max_dets(requested: int | None, gt: Annotations) -> tuple[int, str]:
    """The per-image cap: ``--max-dets``, else the GT's ``info.max_dets_per_image``, else 300."""
    if requested is not None:
        if requested < 1:
            raise InputError(f"--max-dets must be a positive integer, got {requested}.")
        return int(requested), "--max-dets"
    v = gt.info.get("max_dets_per_image")
    if v is None:
        return LVIS_MAX_DETS, "LVIS default"
    if not _is_int(v) or v < 1:
        raise input_error(
            gt.path, f"info.max_dets_per_image is {v!r}, not a positive integer", "fix it or pass --max-dets"
        )
    return int(v), f"{Path(gt.path).name} info.max_dets_per_image"
