"""The LVIS evaluation protocol, fixed once for both backends.

Both backends (:mod:`simcal.evaluate.fast` and :mod:`simcal.evaluate.lvis_reference`)
receive the *same* normalized ground truth and detections built here, and return
the same thing: the accumulated precision array ``[T, R, K, A]`` (IoU thresholds
.50:.05:.95, 101 recall thresholds, categories in ascending id order, area ranges
all/small/medium/large), -1 where a category has no ground truth in that range.
Every metric is then computed from that array by :mod:`simcal.evaluate.bins`, so
the two backends can only differ where the array differs.

Normalization (what LVISEval does itself, made explicit so that the fast backend
sees exactly the same input):

- detections: at most ``max_dets`` per image, the highest scores, ties kept in
  file order (``LVISResults.limit_dets_per_image``); then ordered by image, score
  descending; ids 1..N in that order; ``area`` is the box area ``w * h`` when the
  results carry boxes, else the mask area (``LVISResults``); masks become
  compressed RLE;
- ground truth: ``area`` from the file (computed when absent); instances with
  area <= 0 are left out (``LVIS.get_ann_ids`` keeps only ``0 < area < inf``);
  ``iscrowd``/``ignore`` flags are not used (LVISEval never marks crowds; they
  count as ordinary instances); a COCO-style file without ``neg_category_ids`` is
  treated as exhaustively annotated (every category absent from an image is
  negative there), which makes the federated rules reduce to COCO's.
"""

from __future__ import annotations

import numpy as np

IOU_TYPES = ("bbox", "segm")

#: The LVIS/COCO IoU thresholds and recall points (same linspace as both packages).
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)

#: Area ranges in pixels^2 (both ends inclusive, as in LVISEval).
AREA_RANGES = ((0.0, 1e5**2), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e5**2))
AREA_LABELS = ("all", "small", "medium", "large")

#: The LVIS default evaluation cap (detections per image).
LVIS_MAX_DETS = 300

#: Metric keys written to METRICS.json, in a stable order.
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AP1", "AP2", "AP3", "AP4")

#: The paper's column order for the printed table.
PAPER_COLUMNS = ("AP1", "AP2", "AP3", "AP4", "APr", "APc", "APf", "AP")

FREQUENCIES = ("r", "c", "f")
