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

from typing import Any

import numpy as np

from simcal.evaluate.inputs import Detections, GroundTruth
from simcal.evaluate.protocol import AREA_LABELS, AREA_RANGES, IOU_THRS, REC_THRS


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


#: Image-category pairs per C++ call; larger inputs are evaluated in category chunks (exact).
MAX_PAIRS_PER_CALL = 400_000


def _make_eval_class():
    """COCOeval_faster with a leaner ``evaluate()`` (same C++ evaluation, less Python per pair).

    The stock ``evaluate()`` builds a dict over *every* image-category pair keyed by
    numpy integers (seconds at LVIS scale) before handing a nested list of IoU matrices
    to C++. Here that list is built directly, with IoUs computed only for the pairs
    that have both ground truth and detections (the stock code computes no others
    either). If this faster-coco-eval lacks the internals used, the stock method runs.
    """
    import copy

    from faster_coco_eval import COCOeval_faster
    from faster_coco_eval.core import faster_eval_api

    _C = getattr(faster_eval_api, "_C", None)

    class _LVISFasterEval(COCOeval_faster):
        def evaluate(self):  # noqa: D401
            p = self.params
            if (
                _C is None
                or not hasattr(_C, "COCOevalEvaluateAccumulate")
                or self.separate_eval
                or not p.useCats
                or p.iouType not in ("bbox", "segm")
            ):
                return super().evaluate()
            p.imgIds = sorted({int(i) for i in p.imgIds})
            p.catIds = sorted({int(c) for c in p.catIds})
            p.maxDets = sorted(p.maxDets)
            self._prepare()
            pairs = getattr(self, "_nonempty_iou_pairs", None)
            if pairs is None:
                return super().evaluate()
            img_index = {i: n for n, i in enumerate(p.imgIds)}
            cat_index = {c: k for k, c in enumerate(p.catIds)}
            empty: list = []
            ious = [[empty] * len(p.catIds) for _ in p.imgIds]
            self.ious = {}
            for img, cat in sorted(pairs):
                ious[img_index[img]][cat_index[cat]] = self.computeIoU(img, cat)
            self._paramsEval = copy.deepcopy(self.params)
            self.eval = _C.COCOevalEvaluateAccumulate(
                self._paramsEval, ious, self.gt_dataset, self.dt_dataset, p.imgIds, p.catIds, True
            )

    return _LVISFasterEval


def run_fast(
    gt: GroundTruth, dets: Detections, iou_type: str, cat_chunk: int | None = None
) -> tuple[np.ndarray, dict[str, float]]:
    """Precision ``[T, R, K, A]`` (categories in ``gt.cat_ids`` order) and faster-coco-eval's own summary.

    Small inputs run in one call over every category. Larger ones (more than
    :data:`MAX_PAIRS_PER_CALL` image-category pairs, or ``cat_chunk`` given) run
    ``cat_chunk`` categories at a time, and only the categories with ground truth
    in val (the others have no precision, -1, whatever was detected): exact,
    because LVIS accumulates each category on its own, and it bounds the memory on
    LVIS-scale inputs. The native summary is only available from a single call
    (else an empty dict).
    """
    from faster_coco_eval import COCO

    EvalClass = _make_eval_class()
    K = len(gt.cat_ids)
    col = {c: k for k, c in enumerate(gt.cat_ids)}
    with_gt = sorted({a["category_id"] for a in gt.annotations})
    if not cat_chunk:
        cat_chunk = max(1, MAX_PAIRS_PER_CALL // max(1, len(gt.images)))
    single = cat_chunk >= K  # small enough: one call over every category, as LVISEval does
    chunks = [list(gt.cat_ids)] if single else [with_gt[i : i + cat_chunk] for i in range(0, len(with_gt), cat_chunk)]
    # The federated rule, applied here rather than by faster-coco-eval: a detection of a category
    # neither annotated in its image nor negative there is dropped (LVISEval._prepare). Same result,
    # and it avoids a faster-coco-eval crash (it looks up the size of images whose detections were
    # all dropped).
    known: dict[int, set] = {im["id"]: set(im["neg_category_ids"]) for im in gt.images}
    for a in gt.annotations:
        known[a["image_id"]].add(a["category_id"])
    records = [d for d in dets.for_iou_type(iou_type, with_ids=True) if d["category_id"] in known[d["image_id"]]]
    by_cat: dict[int, list] = {}
    if not single:
        for d in records:
            by_cat.setdefault(d["category_id"], []).append(d)
    precision = -np.ones((len(IOU_THRS), len(REC_THRS), K, len(AREA_RANGES)))
    native: dict[str, float] = {}
    for chunk in chunks:
        ds = gt.copy_dataset()
        if single:
            dt_anns = records
        else:
            keep = set(chunk)
            ds["annotations"] = [a for a in ds["annotations"] if a["category_id"] in keep]
            dt_anns = [d for c in chunk for d in by_cat.get(c, ())]
        coco_gt = COCO(ds, print_function=_quiet)
        coco_dt = COCO(print_function=_quiet)
        coco_dt.dataset = {"images": ds["images"], "categories": ds["categories"], "annotations": dt_anns}
        coco_dt.createIndex()
        ev = EvalClass(coco_gt, coco_dt, iouType=iou_type, lvis_style=True, print_function=_quiet)
        p = ev.params
        p.iouThrs = IOU_THRS.copy()
        p.recThrs = REC_THRS.copy()
        p.areaRng = [list(r) for r in AREA_RANGES]
        p.areaRngLbl = list(AREA_LABELS)
        p.maxDets = [dets.max_dets]
        p.catIds = list(chunk)
        ev.evaluate()
        ev.accumulate()
        prec = np.asarray(ev.eval["precision"])[..., -1]
        precision[:, :, [col[c] for c in chunk], :] = prec
        if single:
            ev.summarize()
            sd = ev.stats_as_dict
            native = {
                "AP": sd["AP_all"],
                "AP50": sd["AP_50"],
                "AP75": sd["AP_75"],
                "APs": sd["AP_small"],
                "APm": sd["AP_medium"],
                "APl": sd["AP_large"],
                "APr": sd["APr"],
                "APc": sd["APc"],
                "APf": sd["APf"],
            }
        del ev, coco_gt, coco_dt, ds
    return precision, native
