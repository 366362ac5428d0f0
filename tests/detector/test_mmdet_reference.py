"""``simcal convert --from mmdet`` against mmdetection 3.3 itself (fixture from tools/mmdet_reference.py).

mmdetection ran once on seeded weights and images (its LVIS R50-FPN Mask R-CNN config, mmcv 2.1.0's
compiled CPU ops, OpenCV's resize) and recorded its detections; here the same weights and images are
regenerated, converted from an mmdetection 3.x checkpoint, and run through our model. The bar is the
detectron2 reference's: every mmdetection detection has a match of the same class with box IoU >= 0.99
and score within 1e-4, the lists have the same length, the masks agree (pooled IoU >= 0.98) and differ
only on ties at the 0.5 threshold.

The class-agnostic model (``reg_class_agnostic``, ``class_agnostic`` mask head) is checked on the first
image only, to keep the test short (the fixture holds all three).
"""

import pytest

from tools.reference_compare import (
    MMDET_FIXTURE,
    convert_mmdet_reference,
    load_fixture,
    match_detections,
    run_reference,
)

FIXTURE = load_fixture(MMDET_FIXTURE)


@pytest.mark.parametrize("variant", ["per_class", "class_agnostic"])
def test_converted_mmdet_model_reproduces_mmdetection(tmp_path, variant):
    settings = FIXTURE["settings"]
    model = convert_mmdet_reference(settings, variant == "class_agnostic", tmp_path)
    count = 1 if variant == "class_agnostic" else None
    for (size, det), ref in zip(run_reference(model, settings, count), FIXTURE[variant]):
        m = match_detections(ref, det, size)
        assert m["ours"] == m["detections"] == len(ref["boxes"]), m
        assert m["min_box_iou"] >= 0.99 and m["max_score_diff"] <= 1e-4, m
        assert m["pooled_mask_iou"] >= 0.98 and m["max_prob_off_threshold_where_masks_differ"] <= 1e-3, m
