"""Evaluate LVIS-format results: the function the CLI calls, and a detectron2-style class.

``evaluate_results`` runs the whole protocol (validation, per-image cap, either
backend, summaries, per-class table). :class:`LVISEvaluator` wraps it in
detectron2's ``reset / process / evaluate`` shape for use inside an inference loop.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from simcal.core.errors import input_error
from simcal.data.annotations import Annotations
from simcal.evaluate.bins import empty_precision, per_class_ap, summarize
from simcal.evaluate.detections import Detections
from simcal.evaluate.gcpause import gc_paused
from simcal.evaluate.inputs import (
    check_training,
    prepare_ground_truth,
    prepare_results,
    resolve_frequencies,
)
from simcal.evaluate.protocol import AREA_RANGES, IOU_THRS, IOU_TYPES, METRIC_KEYS, REC_THRS

BACKENDS = ("fast", "lvis")


@dataclass
class EvalReport:
    """What one evaluation produced."""

    metrics: dict[str, dict[str, float]]  # iou type -> METRIC_KEYS
    per_class: list[dict[str, Any]]  # one row per GT category
    config: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    precision: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    native: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The METRICS.json document: ``{"bbox": {...}, "segm": {...}, "config": {...}}``."""
        doc: dict[str, Any] = {t: {k: self.metrics[t][k] for k in METRIC_KEYS} for t in self.metrics}
        doc["config"] = self.config
        return doc


def category_bins(gt: Annotations, train: Annotations, bins: str) -> dict[int, dict[str, Any]]:
    """Per GT category: training instance/image counts and the paper bin (from ``train``)."""
    from simcal.data.statistics import category_statistics

    stats = {c["id"]: c for c in category_statistics(train, bins)}
    missing = [c["id"] for c in gt.categories if c["id"] not in stats]
    if missing:
        raise input_error(
            train.path, f"has no category {missing[0]} of the ground truth {gt.path} ({len(missing)} missing)",
            "pass the training annotations of the same dataset as --train-ann",
        )
    return {c["id"]: stats[c["id"]] for c in gt.categories}


def default_iou_types(dets_raw: Any) -> tuple[str, ...]:
    """Both box and mask AP when every result has a mask, else box AP."""
    if isinstance(dets_raw, Detections):
        return ("bbox", "segm") if dets_raw.has_segm else ("bbox",)
    if (
        isinstance(dets_raw, list)
        and dets_raw
        and all(isinstance(r, dict) and r.get("segmentation") is not None for r in dets_raw)
    ):
        return ("bbox", "segm")
    return ("bbox",)


def evaluate_results(
    gt: Annotations,
    results: Any,
    train: Annotations,
    iou_types: Sequence[str] | None = None,
    bins: str = "lvis",
    backend: str = "fast",
    max_dets: int = 300,
    results_path: str | os.PathLike | None = None,
    cat_chunk: int | None = None,
) -> EvalReport:
    """Evaluate parsed ``results`` (a list of LVIS result records) against ``gt``.

    ``results`` may also be the :class:`Detections` that :func:`inputs.prepare_results`
    made of them for ``iou_types`` and ``max_dets`` (the CLI does so, to let go of the
    parsed file before the evaluation). Raises :class:`~simcal.core.errors.InputError` for bad results. ``max_dets`` is
    the per-image cap (resolve the default with :func:`inputs.resolve_max_dets`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if iou_types is None:
        iou_types = default_iou_types(results)
    iou_types = tuple(t for t in IOU_TYPES if t in iou_types)
    t0 = time.perf_counter()
    warnings: list[str] = []
    check_training(train)
    cats = category_bins(gt, train, bins)
    frequencies, freq_source = resolve_frequencies(gt, train)
    if not freq_source.startswith("ground"):
        warnings.append(f"APr/APc/APf use frequencies from {freq_source}")
    if isinstance(results, Detections):
        dets = results
    else:
        with gc_paused():
            dets = prepare_results(results, gt, iou_types, max_dets, results_path)
    del results  # the parsed records: only the columns of dets are used from here on
    if dets.num_input == 0:
        warnings.append("the results file is empty: every AP is 0")
    if dets.num_images_capped:
        warnings.append(
            f"{dets.num_images_capped} images had more than {max_dets} detections; kept the {max_dets} highest scores"
        )
    if dets.num_zero_area:
        warnings.append(f"{dets.num_zero_area} detections with zero area are left out (as LVISEval does)")

    metrics: dict[str, dict[str, float]] = {}
    precisions: dict[str, np.ndarray] = {}
    natives: dict[str, dict[str, float]] = {}
    per_class_aps: dict[str, np.ndarray] = {}
    gt_counts: dict[int, int] = {}
    gts = {t: prepare_ground_truth(gt, t, frequencies, freq_source) for t in iou_types}
    fast_out = {}
    if len(dets) and backend == "fast":
        from simcal.evaluate.fast import run_fast

        fast_out = run_fast(gts, dets, cat_chunk=cat_chunk)  # both IoU types from one set of records
    for t, g in gts.items():
        for w in g.warnings:
            if w not in warnings:
                warnings.append(w)
        if not gt_counts:
            for a in g.annotations:
                gt_counts[a["category_id"]] = gt_counts.get(a["category_id"], 0) + 1
        if not len(dets):
            prec = empty_precision(g.annotations, g.cat_ids, AREA_RANGES, len(IOU_THRS), len(REC_THRS))
            native: dict[str, float] = {}
        elif backend == "fast":
            prec, native = fast_out[t]
        else:
            from simcal.evaluate.lvis_reference import run_reference

            prec, native = run_reference(g, dets, t)
        precisions[t], natives[t] = prec, native
        metrics[t] = summarize(prec, g.cat_ids, frequencies, {c: cats[c]["bin"] for c in g.cat_ids})
        per_class_aps[t] = per_class_ap(prec)

    per_class = []
    for k, c in enumerate(gt.categories):
        row = {
            "category_id": c["id"],
            "name": c["name"],
            "train_instances": cats[c["id"]]["instance_count"],
            "train_images": cats[c["id"]]["image_count"],
            "bin": cats[c["id"]]["bin"],
            "frequency": frequencies[c["id"]],
            "val_instances": gt_counts.get(c["id"], 0),
        }
        for t in iou_types:
            row[f"AP_{t}"] = float(per_class_aps[t][k])
        per_class.append(row)

    from simcal import __version__
    from simcal.data.statistics import BIN_EDGES, bin_labels

    counts_bin = {
        str(b): sum(1 for c in gt.categories if cats[c["id"]]["bin"] == b and gt_counts.get(c["id"], 0))
        for b in (1, 2, 3, 4)
    }
    counts_freq = {
        f: sum(1 for c in gt.categories if frequencies[c["id"]] == f and gt_counts.get(c["id"], 0)) for f in "rcf"
    }
    config = {
        "simcal_version": __version__,
        "gt": str(gt.path),
        "gt_fingerprint": gt.fingerprint,
        "results": str(results_path) if results_path is not None else None,
        "train_ann": str(train.path),
        "train_fingerprint": train.fingerprint,
        "iou_types": list(iou_types),
        "backend": backend,
        "max_dets_per_image": max_dets,
        "bins": bins,
        "bin_edges": list(BIN_EDGES[bins]),
        "bin_labels": {str(k): v for k, v in bin_labels(bins).items()},
        "frequency_source": freq_source,
        "categories_in_val_per_bin": counts_bin,
        "categories_in_val_per_frequency": counts_freq,
        "num_results": dets.num_input,
        "num_results_evaluated": len(dets),
        "num_images_over_cap": dets.num_images_capped,
        "seconds": round(time.perf_counter() - t0, 3),
        "warnings": list(warnings),
    }
    return EvalReport(metrics, per_class, config, warnings, precisions, natives)


class LVISEvaluator:
    """detectron2-style evaluator: ``reset()``, ``process(inputs, outputs)`` per batch, ``evaluate()``.

    ``inputs`` is a list of dicts with ``image_id``; ``outputs`` the matching list,
    each either a list of LVIS result records (``image_id`` may be omitted) or a dict
    of arrays ``{"boxes": (N, 4) xyxy, "scores": (N,), "category_ids": (N,)[, "masks": list of RLE]}``.
    Only each image's ``max_dets`` best detections are kept while processing.
    """

    def __init__(
        self,
        gt: Annotations | str | os.PathLike,
        train: Annotations | str | os.PathLike,
        iou_types: Sequence[str] | None = None,
        bins: str = "lvis",
        backend: str = "fast",
        max_dets: int | None = None,
    ) -> None:
        from simcal.data.annotations import load_annotations
        from simcal.evaluate.inputs import resolve_max_dets

        self.gt = gt if isinstance(gt, Annotations) else load_annotations(gt)
        self.train = train if isinstance(train, Annotations) else load_annotations(train)
        self.iou_types = tuple(iou_types) if iou_types is not None else None
        self.bins = bins
        self.backend = backend
        self.max_dets, self.max_dets_source = resolve_max_dets(max_dets, self.gt)
        self.reset()

    def reset(self) -> None:
        self._results: list[dict[str, Any]] = []

    @staticmethod
    def _records(image_id: int, out: Any) -> list[dict[str, Any]]:
        if isinstance(out, Mapping):
            boxes = np.asarray(out["boxes"], dtype=np.float64).reshape(-1, 4)
            scores = np.asarray(out["scores"], dtype=np.float64).reshape(-1)
            cats = np.asarray(out["category_ids"]).reshape(-1)
            masks = out.get("masks")
            recs = []
            for i in range(len(scores)):
                x0, y0, x1, y1 = boxes[i].tolist()
                r = {
                    "image_id": int(image_id),
                    "category_id": int(cats[i]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(scores[i]),
                }
                if masks is not None:
                    m = masks[i]
                    if isinstance(m.get("counts"), bytes):
                        m = {"size": list(m["size"]), "counts": m["counts"].decode("ascii")}
                    r["segmentation"] = m
                recs.append(r)
            return recs
        return [{**r, "image_id": r.get("image_id", image_id)} for r in out]

    def process(self, inputs: Iterable[Mapping[str, Any]], outputs: Iterable[Any]) -> None:
        for inp, out in zip(inputs, outputs):
            recs = self._records(inp["image_id"], out)
            if len(recs) > self.max_dets:
                recs = sorted(recs, key=lambda r: r["score"], reverse=True)[: self.max_dets]
            self._results.extend(recs)

    @property
    def results(self) -> list[dict[str, Any]]:
        """The collected LVIS result records (write them with ``json.dump`` for the CLI)."""
        return self._results

    def evaluate(self) -> dict[str, dict[str, float]]:
        """``{"bbox": {...}, "segm": {...}}`` (METRICS.json keys, fractions)."""
        self.report = evaluate_results(
            self.gt, self._results, self.train, self.iou_types, self.bins, self.backend, self.max_dets
        )
        return {t: dict(m) for t, m in self.report.metrics.items()}


__all__ = ["BACKENDS", "EvalReport", "LVISEvaluator", "category_bins", "default_iou_types", "evaluate_results"]
