"""``simcal convert --from detectron2`` against detectron2 itself (fixture from tools/detectron2_reference.py).

detectron2 ran once on seeded weights and images and recorded its detections; here the same weights
and images are regenerated from the seeds, converted, and run through our model
(:mod:`tools.reference_compare`). Every detectron2 detection must have a match of the same class with
box IoU >= 0.99 and score within 1e-4, the two detection lists must be the same length, the masks
must agree (pooled IoU >= 0.98), and every pixel on which they differ must be a tie at the 0.5
threshold (our probability within 1e-3 of it: a 23-pixel mask can lose 4 % IoU to one such pixel).

The class-agnostic model is checked on the first image only, to keep the test short (the fixture
holds all three; ``benchmarks/conversion_agreement.py`` measures every image).
"""

import pytest

from tools.reference_compare import convert_reference, load_fixture, match_detections, run_reference

FIXTURE = load_fixture()


@pytest.mark.parametrize("variant", ["per_class", "class_agnostic"])
def test_converted_detectron2_model_reproduces_detectron2(tmp_path, variant):
    settings = FIXTURE["settings"]
    model = convert_reference(settings, variant == "class_agnostic", tmp_path)
    count = 1 if variant == "class_agnostic" else None
    for (size, det), ref in zip(run_reference(model, settings, count), FIXTURE[variant]):
        m = match_detections(ref, det, size)
        assert m["ours"] == m["detections"] == len(ref["boxes"]), m
        assert m["min_box_iou"] >= 0.99 and m["max_score_diff"] <= 1e-4, m
        assert m["pooled_mask_iou"] >= 0.98 and m["max_prob_off_threshold_where_masks_differ"] <= 1e-3, m
