"""``simcal convert`` against the source frameworks themselves: detectron2 (fixture from
tools/detectron2_reference.py) and mmdetection 3.3 (tools/mmdet_reference.py: its LVIS R50-FPN Mask R-CNN
config, mmcv 2.1.0's compiled CPU ops, OpenCV's resize).

Each framework ran once on seeded weights and images and recorded its detections; here the same weights
and images are regenerated from the seeds, written in the framework's own checkpoint format, converted,
and run through our model (:mod:`tools.reference_compare`). Every recorded detection must have a match of
the same class with box IoU >= 0.99 and score within 1e-4, the two detection lists must be the same
length, the masks must agree (pooled IoU >= 0.98), and every pixel on which they differ must be a tie at
the 0.5 threshold (our probability within 1e-3 of it: a 23-pixel mask can lose 4 % IoU to one such pixel).

The class-agnostic models are checked on the first image only, to keep the test short (the fixtures hold
all three; ``benchmarks/conversion_agreement.py`` measures every image).
"""

import pytest

from tools.reference_compare import REFERENCES, load_fixture, match_detections, run_reference


@pytest.mark.parametrize("variant", ["per_class", "class_agnostic"])
@pytest.mark.parametrize("source", sorted(REFERENCES))
def test_converted_model_reproduces_its_framework(tmp_path, source, variant):
    fixture_path, convert = REFERENCES[source]
    fixture = load_fixture(fixture_path)
    settings = fixture["settings"]
    model = convert(settings, variant == "class_agnostic", tmp_path)
    count = 1 if variant == "class_agnostic" else None
    for (size, det), ref in zip(run_reference(model, settings, count), fixture[variant]):
        m = match_detections(ref, det, size)
        assert m["ours"] == m["detections"] == len(ref["boxes"]), m
        assert m["min_box_iou"] >= 0.99 and m["max_score_diff"] <= 1e-4, m
        assert m["pooled_mask_iou"] >= 0.98 and m["max_prob_off_threshold_where_masks_differ"] <= 1e-3, m
