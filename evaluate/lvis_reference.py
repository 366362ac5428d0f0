"""The reference backend: the ``lvis`` package's ``LVISEval``, unmodified.

Its PyPI release (0.5.3) uses ``np.float``, removed in numpy >= 1.24; the alias is
restored around the call (and removed again afterwards if we added it). It gets
the same normalized ground truth and capped detections as the fast backend (its
own ``limit_dets_per_image`` is then a no-op: it is given the same cap).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Iterator

import numpy as np

from simcal.evaluate.detections import Detections
from simcal.evaluate.inputs import GroundTruth


@contextlib.contextmanager
def numpy_aliases() -> Iterator[None]:
    """Provide ``np.float`` (used by lvis 0.5.3) while the block runs."""
    added = "float" not in np.__dict__
    if added:
        np.float = float  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if added:
            try:
                del np.float  # type: ignore[attr-defined]
            except AttributeError:
                pass


@contextlib.contextmanager
def _quiet_lvis_logs() -> Iterator[None]:
    log = logging.getLogger("lvis")
    old = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # lvis 0.5.3 calls the deprecated Logger.warn
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        log.setLevel(old)


def run_reference(gt: GroundTruth, dets: Detections, iou_type: str) -> tuple[np.ndarray, dict[str, float]]:
    """Precision ``[T, R, K, A]`` (categories in ascending id order) and LVISEval's own summary."""
    with numpy_aliases(), _quiet_lvis_logs():
        from lvis import LVIS, LVISEval, LVISResults

        lvis_gt = LVIS.__new__(LVIS)
        lvis_gt.logger = logging.getLogger("lvis.lvis")
        lvis_gt.dataset = gt.copy_dataset()
        lvis_gt._create_index()
        lvis_dt = LVISResults(lvis_gt, dets.for_iou_type(iou_type, with_ids=False), max_dets=dets.max_dets)
        ev = LVISEval(lvis_gt, lvis_dt, iou_type=iou_type)
        ev.params.max_dets = dets.max_dets
        ev.run()
        precision = np.asarray(ev.eval["precision"], dtype=np.float64)
        native: dict[str, Any] = {k: float(v) for k, v in ev.results.items() if k.startswith("AP")}
    return precision, native
