"""``simcal convert --from mmdet`` against mmdetection 3.3 itself (fixture from tools/mmdet_reference.py).

mmdetection ran once on seeded weights and images (its LVIS R50-FPN Mask R-CNN config, mmcv 2.1.0's
compiled CPU ops) and recorded its detections; here the same weights and images are regenerated,
converted from an mmdetection 3.x checkpoint, and run through our model.

The agreement is not yet the detectron2 reference's (docs/conversion.md, "Against mmdetection"):
mmdetection resizes with OpenCV's fixed-point bilinear, which differs from the PIL resize our
``resize="detectron2"`` does by one grey level on 10-18 % of the pixels, enough to move a random
network's scores by up to 0.03. With PIL's resize put into mmdetection, two of the three images match
to 1e-5 in score. This test holds the current level on the first image (the fixture keeps all three)
so a regression shows; tightening it is the open part of the mmdetection converter.
"""

from tools.reference_compare import (
    MMDET_FIXTURE,
    convert_mmdet_reference,
    load_fixture,
    match_detections,
    run_reference,
)

FIXTURE = load_fixture(MMDET_FIXTURE)


def test_converted_mmdet_model_is_close_to_mmdetection(tmp_path):
    settings = FIXTURE["settings"]
    model = convert_mmdet_reference(settings, tmp_path)
    (size, det), = run_reference(model, settings, 1)
    m = match_detections(FIXTURE["per_class"][0], det, size)
    assert m["ours"] == m["detections"] == 100, m
    assert m["max_score_diff"] <= 0.03 and m["pooled_mask_iou"] >= 0.95, m
