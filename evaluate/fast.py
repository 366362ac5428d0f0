"""The fast backend: ``faster-coco-eval`` (C++) with ``lvis_style=True``.

What ``lvis_style=True`` does in faster-coco-eval (checked against its source and,
in ``tests/test_evaluate.py``, against ``LVISEval`` on generated cases):

- federated filtering: a detection of a category that is neither annotated in the
  image nor in its ``neg_category_ids`` is dropped, as in ``LVISEval._prepare``
  (we apply the same rule before calling it: its own filter crashes when every
  detection of an image is dropped and the image has no ground truth);
- unmatched detections of a category in the image's ``not_exhaustive_category_ids``
  are ignored (``lvis_mark``), as in ``LVISEval.evaluate_img``;
- APr/APc/APf group categories by the ground truth's ``frequency`` field.

What it does *not* do, and is therefore done by :mod:`simcal.evaluate.inputs`
before it runs: the per-image cap (its ``maxDets`` is a per image-and-category
cap; we set it to the per-image cap, a no-op after capping), the LVISResults box
area for detections, the ``0 < area`` filter, and LVIS's disregard of ``iscrowd``
(faster-coco-eval turns ``iscrowd`` into ``ignore``; we pass ``iscrowd = 0``).
The summary metrics are not taken from it: they are computed from its per-class
precision array by :mod:`simcal.evaluate.bins`, exactly as for the reference.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np

from simcal.evaluate.detections import Detections
from simcal.evaluate.gcpause import gc_paused
from simcal.evaluate.inputs import GroundTruth
from simcal.evaluate.protocol import AREA_LABELS, AREA_RANGES, IOU_THRS, REC_THRS


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


#: Image-category pairs per C++ call; larger inputs are evaluated in category chunks (exact).
MAX_PAIRS_PER_CALL = 40_000


@functools.lru_cache(maxsize=None)
def _make_eval_class():
    """COCOeval_faster fed directly with prepared records (no COCO objects, no ``_prepare``).

    :func:`_load` fills its C++ datasets the way ``_prepare`` does (``append_ref`` of
    every record) from records built once per class chunk from the columns of
    :class:`Detections`. ``evaluate()`` then hands the nested list
    of IoU matrices to C++ directly, computing IoUs only for the image-category pairs
    with both ground truth and detections (the stock code computes no others either),
    instead of building a dict over every pair.
    """
    import copy

    from faster_coco_eval import COCOeval_faster
    from faster_coco_eval.core import faster_eval_api

    _C = faster_eval_api._C

    class _LVISFasterEval(COCOeval_faster):
        def evaluate(self):  # noqa: D401
            p = self.params
            img_index = {i: n for n, i in enumerate(p.imgIds)}
            cat_index = {c: k for k, c in enumerate(p.catIds)}
            empty: list = []
            ious = [[empty] * len(p.catIds) for _ in p.imgIds]
            for img, cat in sorted(self._nonempty_iou_pairs):
                ious[img_index[img]][cat_index[cat]] = self.computeIoU(img, cat)
            self._paramsEval = copy.deepcopy(self.params)
            self.eval = _C.COCOevalEvaluateAccumulate(
                self._paramsEval, ious, self.gt_dataset, self.dt_dataset, p.imgIds, p.catIds, True
            )

    return _LVISFasterEval


def _load(ev, gt_records: list[dict], matchable: list[dict], unmatchable: list[dict]) -> None:
    """Fill ``ev``'s C++ datasets with these records as ``COCOeval._prepare`` would (records are mutated).

    Fresh dicts: ``gt_records``; detections (with ``lvis_mark``) in image-category pairs
    with ground truth (``matchable``: with their geometry) and in the others
    (``unmatchable``: no IoU is ever computed for them, so no geometry).

    For mask IoU, each record's ``rle`` is its compressed RLE as it is (every mask here
    is one, at its image's size): faster-coco-eval's mask IoU reads it directly and
    gives the same IoUs, where ``calculateRleForAllAnnotations`` would first decode
    every counts string into Python lists.
    """
    if ev.params.compute_rle:
        for records in (gt_records, matchable):
            for r in records:
                r["rle"] = r["segmentation"]
    for dataset, records in ((ev.gt_dataset, gt_records), (ev.dt_dataset, matchable), (ev.dt_dataset, unmatchable)):
        append = dataset.append_ref
        for r in records:
            append(r["image_id"], r["category_id"], r)
    ev._nonempty_iou_pairs = {(r["image_id"], r["category_id"]) for r in matchable}


def _federated(gt: GroundTruth, dets: Detections) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept, lvis_mark, matchable), bool ``[N]`` each, for the ``N`` detections of ``dets``.

    The federated rule, applied here rather than by faster-coco-eval (LVISEval._prepare):
    a detection of a category neither annotated in its image nor negative there is
    dropped; one of a category in the image's ``not_exhaustive_category_ids`` is marked
    (its unmatched detections are then ignored). ``matchable``: the category is
    annotated in the image (kept; the only detections an IoU is computed for).
    """
    cats = np.unique(np.asarray(gt.cat_ids, dtype=np.int64))
    K = len(cats)

    def keys(pairs: list[tuple[int, int]]) -> np.ndarray:
        """One int64 per (image id, category id) pair; pairs of a category not in ``cats`` are left out."""
        arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        col = np.minimum(np.searchsorted(cats, arr[:, 1]), max(K - 1, 0))
        known = cats[col] == arr[:, 1] if K else np.zeros(len(arr), dtype=bool)
        return arr[known, 0] * K + col[known]

    annotated = keys([(a["image_id"], a["category_id"]) for a in gt.annotations])
    negative = keys([(im["id"], c) for im in gt.images for c in im["neg_category_ids"]])
    unexhaustive = keys([(im["id"], c) for im in gt.images for c in im["not_exhaustive_category_ids"]])
    det_keys = dets.image_ids * K + np.searchsorted(cats, dets.category_ids)
    matchable = np.isin(det_keys, annotated)
    return matchable | np.isin(det_keys, negative), np.isin(det_keys, unexhaustive), matchable


def _dt_records(
    dets: Detections, iou_type: str, rows: np.ndarray, matchable: np.ndarray, marked: np.ndarray
) -> tuple[list[dict], list[dict]]:
    """Records of ``rows`` for faster-coco-eval: (matchable ones, with geometry; the others, without).

    ``matchable``, ``marked``: bool ``[N]`` from :func:`_federated`; each record gets its ``lvis_mark``.
    """
    m = matchable[rows]
    out = []
    for part, geometry in ((rows[m], True), (rows[~m], False)):
        records = dets.for_iou_type(iou_type, with_ids=True, rows=part, geometry=geometry)
        for d, mark in zip(records, marked[part].tolist()):
            d["lvis_mark"] = mark
        out.append(records)
    return out[0], out[1]


def _rows_of(chunk: list[int], by_cat: np.ndarray, cats_sorted: np.ndarray) -> np.ndarray:
    """The rows (ascending) of the categories in ``chunk`` (sorted ids), from rows grouped by category."""
    lo = int(np.searchsorted(cats_sorted, chunk[0], side="left"))
    hi = int(np.searchsorted(cats_sorted, chunk[-1], side="right"))
    return np.sort(by_cat[lo:hi][np.isin(cats_sorted[lo:hi], chunk)])


def run_fast(
    gts: Mapping[str, GroundTruth], dets: Detections, cat_chunk: int | None = None
) -> dict[str, tuple[np.ndarray, dict[str, float]]]:
    """Per IoU type of ``gts`` (its ground truth for that type): precision and faster-coco-eval's own summary.

    Precision ``[T, R, K, A]`` has the categories in ``gt.cat_ids`` order. Small
    inputs run in one call per IoU type over every category. Larger ones (more than
    :data:`MAX_PAIRS_PER_CALL` image-category pairs, or ``cat_chunk`` given) run
    ``cat_chunk`` categories at a time, and only the categories with ground truth
    in val (the others have no precision, -1, whatever was detected): exact,
    because LVIS accumulates each category on its own, and it bounds the memory on
    LVIS-scale inputs (the records of one chunk exist at a time, shared by the IoU
    types). The native summary is only available from a single call (else an empty dict).
    """
    with gc_paused():
        return _run_chunks(gts, dets, cat_chunk)


def _run_chunks(
    gts: Mapping[str, GroundTruth], dets: Detections, cat_chunk: int | None
) -> dict[str, tuple[np.ndarray, dict[str, float]]]:
    """:func:`run_fast`, with the collector already paused."""
    gt = next(iter(gts.values()))  # images, categories and federated lists are the same for every IoU type
    K = len(gt.cat_ids)
    col = {c: k for k, c in enumerate(gt.cat_ids)}
    gt_by_cat = {t: _by_category(g.annotations) for t, g in gts.items()}
    with_gt = sorted(set().union(*gt_by_cat.values()))
    if not cat_chunk:
        cat_chunk = max(1, MAX_PAIRS_PER_CALL // max(1, len(gt.images)))
    single = cat_chunk >= K  # small enough: one call over every category, as LVISEval does
    chunks = [sorted(gt.cat_ids)] if single else [with_gt[i : i + cat_chunk] for i in range(0, len(with_gt), cat_chunk)]
    kept, marked, matchable = _federated(gt, dets)
    rows = np.flatnonzero(kept)
    by_cat = rows[np.argsort(dets.category_ids[rows], kind="stable")]  # rows grouped by category, ids ascending
    cats_sorted = dets.category_ids[by_cat]
    all_images = sorted(im["id"] for im in gt.images)
    freq = {c["id"]: c["frequency"] for c in gt.categories}
    out = {t: (-np.ones((len(IOU_THRS), len(REC_THRS), K, len(AREA_RANGES))), {}) for t in gts}
    geometry_of = "segm" if "segm" in gts else "bbox"  # the records carry what every IoU type reads
    for chunk in chunks:
        chunk_rows = rows if single else _rows_of(chunk, by_cat, cats_sorted)
        dt_records = _dt_records(dets, geometry_of, chunk_rows, matchable, marked)
        dt_images = set(dets.image_ids[chunk_rows].tolist())
        for t, (precision, native) in out.items():
            gt_records = [dict(a, ignore=0) for c in chunk for a in gt_by_cat[t].get(c, ())]
            # Images with neither ground truth nor detections of these categories add nothing (exact).
            images = all_images if single else sorted(dt_images.union(a["image_id"] for a in gt_records))
            ev = _evaluator(t, images, chunk, dets.max_dets, freq)
            _load(ev, gt_records, *dt_records)
            del gt_records
            ev.evaluate()
            ev.accumulate()
            precision[:, :, [col[c] for c in chunk], :] = np.asarray(ev.eval["precision"])[..., -1]
            if single:
                native.update(_native_summary(ev))
            del ev
        del dt_records
    return out


def _by_category(annotations: list[dict]) -> dict[int, list[dict]]:
    """Category id -> its annotations, in file order."""
    out: dict[int, list[dict]] = {}
    for a in annotations:
        out.setdefault(a["category_id"], []).append(a)
    return out


def _evaluator(iou_type: str, img_ids: list[int], cat_ids: list[int], max_dets: int, freq: dict[int, str]):
    """A faster-coco-eval evaluator (lvis_style) with the protocol's parameters, for these images and categories.

    ``img_ids``, ``cat_ids``: sorted ids; ``freq``: category id -> r/c/f (its APr/APc/APf groups).
    """
    ev = _make_eval_class()(None, None, iouType=iou_type, lvis_style=True, print_function=_quiet)
    p = ev.params
    p.imgIds = list(img_ids)
    p.catIds = list(cat_ids)
    p.iouThrs = IOU_THRS.copy()
    p.recThrs = REC_THRS.copy()
    p.areaRng = [list(r) for r in AREA_RANGES]
    p.areaRngLbl = list(AREA_LABELS)
    p.maxDets = [max_dets]
    ev.freq_groups = [[k for k, c in enumerate(p.catIds) if freq[c] == f] for f in p.imgCountLbl]
    return ev


def _native_summary(ev) -> dict[str, float]:
    """faster-coco-eval's own summary of an evaluation over every category (metric keys as LVISEval's)."""
    ev.summarize()
    sd = ev.stats_as_dict
    keys = {"AP": "AP_all", "AP50": "AP_50", "AP75": "AP_75", "APs": "AP_small", "APm": "AP_medium",
            "APl": "AP_large", "APr": "APr", "APc": "APc", "APf": "APf"}
    return {k: sd[v] for k, v in keys.items()}
