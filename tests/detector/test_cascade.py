"""The Cascade Mask R-CNN heads: stage labelling, training losses, test-time averaging, per-stage scoring."""

import pytest
import torch
import torch.nn.functional as F

from simcal.detector.builders import build
from simcal.detector.cascade import STAGES, label_rois
from simcal.infer.scoring import make_cascade_score_fn

C = 5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build("tiny_cascade", C).eval()


class OwnClassifier(torch.nn.Module):
    """A stage's own box head and classifier as a head over its tap: ``(R, D) -> (R, C+1)`` logits."""

    def __init__(self, head, predictor):
        super().__init__()
        self.head, self.predictor = head, predictor

    def forward(self, x):
        return self.predictor(self.head(x))[0]


def _images(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 128, 128, generator=g) for _ in range(n)]


def _targets(n=2):
    masks = torch.zeros(2, 128, 128, dtype=torch.uint8)
    masks[0, 10:50, 10:60] = 1
    masks[1, 60:100, 30:90] = 1
    return [{"boxes": torch.tensor([[10.0, 10, 60, 50], [30, 60, 90, 100]]), "labels": torch.tensor([1, 3]),
             "masks": masks} for _ in range(n)]


def _rois_and_features(model, images):
    image_list, _ = model.transform(images)
    features = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, features)
    return features, proposals, image_list.image_sizes


def test_stages_have_their_own_modules_coders_and_thresholds(model):
    heads = model.roi_heads
    assert heads.num_stages == 3
    modules = [heads.stage(t) for t in range(3)]
    assert len({id(h) for h, _ in modules}) == 3 and len({id(p) for _, p in modules}) == 3
    assert [c.weights for c in heads.stage_coders] == [w for _, w, _ in STAGES]
    assert [m.high_threshold for m in heads.stage_matchers] == [0.5, 0.6, 0.7]
    assert all(p.bbox_pred.out_features == 4 for _, p in modules)  # class-agnostic regression in every stage
    # the later stages start from their own random init, not from stage 0's weights
    assert not torch.equal(modules[0][0].fc6.weight, modules[1][0].fc6.weight)
    keys = model.state_dict()
    assert "roi_heads.box_head.fc6.weight" in keys and "roi_heads.later_box_predictors.1.cls_score.weight" in keys


def test_label_rois_is_torchvisions_assignment_at_stage_0(model):
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(200, 2, generator=g) * 100
    rois = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=g) * 40], 1)
    gt = torch.tensor([[10.0, 10, 60, 50], [30, 60, 90, 100], [50, 50, 70, 70]])
    labels = torch.tensor([1, 3, 2])
    matched, ours = label_rois(rois, gt, labels, model.roi_heads.stage_matchers[0])
    theirs_idx, theirs = model.roi_heads.assign_targets_to_proposals([rois], [gt], [labels])
    assert torch.equal(ours, theirs[0]) and torch.equal(matched, theirs_idx[0])
    assert (ours > 0).any() and (ours == 0).any()


def test_each_stage_labels_at_its_own_iou(model):
    gt = torch.tensor([[0.0, 0, 100, 100]])
    # IoU with the GT: 0.55, 0.65, 0.75 (boxes [0, 0, 100, h] inside the GT)
    rois = torch.tensor([[0.0, 0, 100, 55], [0, 0, 100, 65], [0, 0, 100, 75]])
    got = [label_rois(rois, gt, torch.tensor([4]), m)[1].tolist() for m in model.roi_heads.stage_matchers]
    assert got == [[4, 4, 4], [0, 4, 4], [0, 0, 4]]


def test_training_trains_every_stage_and_the_mask_head():
    torch.manual_seed(0)
    m = build("tiny_cascade", C).train()
    losses = m(_images(), _targets())
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for t in range(3):
        head, predictor = m.roi_heads.stage(t)
        assert predictor.cls_score.weight.grad.abs().sum() > 0, t
        assert head.fc6.weight.grad.abs().sum() > 0, t
    assert m.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0


def test_test_time_scores_average_logits_and_stage_heads_plug_in(model):
    """forward == the softmax of the stages' mean logits; a calibrated head per stage averages as logits."""
    with torch.no_grad():
        features, proposals, sizes = _rois_and_features(model, _images())
        logits, taps, _ = model.roi_heads.stage_outputs(features, proposals, sizes)
        assert logits.shape[0] == 3 and taps.shape[:2] == logits.shape[:2]
        seen = {}

        def record(lg, tp):
            seen["logits"], seen["taps"] = lg, tp
            return F.softmax(lg.mean(0), -1)

        plain, recorded = model.roi_heads.forward_variants(features, proposals, sizes, [(None, 50), (record, 50)])
        assert torch.equal(seen["logits"], logits)
        for a, b in zip(plain, recorded):
            assert torch.equal(a["scores"], b["scores"]) and torch.equal(a["boxes"], b["boxes"])
        assert torch.equal(model(_images())[0]["scores"], model.roi_heads.forward_variants(
            features, proposals, sizes, [(None, model.roi_heads.detections_per_img)])[0][0]["scores"])

        # each stage's own classifier as its "calibrated" head: mode cal reproduces the original scores
        own = [OwnClassifier(*model.roi_heads.stage(t)) for t in range(3)]
        cal = make_cascade_score_fn([1] * C, "cal", own)
        assert torch.allclose(cal(logits, taps), F.softmax(logits.mean(0), -1), atol=1e-6)
        # a constant head on the last stage only: the average is over logits, not probabilities
        const = torch.linspace(-2, 2, C + 1)
        last = make_cascade_score_fn([1] * C, "cal", [None, None, lambda x: const.expand(len(x), -1)])
        want = F.softmax((logits[0] + logits[1] + const) / 3, -1)
        assert torch.allclose(last(logits, taps), want, atol=1e-6)
        # sel: rare classes (N_z <= T) from the calibrated average, the others and background original
        sel = make_cascade_score_fn([1, 1, 500, 500, 500], "sel", [None, None, lambda x: const.expand(len(x), -1)])
        got, orig = sel(logits, taps), F.softmax(logits.mean(0), -1)
        assert torch.equal(got[:, [0, 3, 4, 5]], orig[:, [0, 3, 4, 5]]) and torch.allclose(got[:, 1:3], want[:, 1:3])


def test_refine_gives_the_rois_each_stage_sees_at_test_time(model):
    with torch.no_grad():
        features, proposals, sizes = _rois_and_features(model, _images(1))
        seen = []
        pool = model.roi_heads.box_roi_pool
        handle = pool.register_forward_pre_hook(lambda mod, args: seen.append([r.clone() for r in args[1]]))
        try:
            model.roi_heads.stage_outputs(features, proposals, sizes)
        finally:
            handle.remove()
        for t in range(3):
            refined = model.roi_heads.refine(t, features, proposals, sizes)
            assert torch.equal(refined[0], seen[t][0]), t
        assert not torch.equal(seen[0][0], seen[2][0])


def test_cascade_refuses_mmdet1_boxes():
    with pytest.raises(ValueError, match="stages' own coders"):
        build("tiny_cascade", C, boxes="mmdet1", resize="mmdet1")


@pytest.mark.parametrize("arch,agnostic", [("tiny_cascade", True), ("r50_cascade", False)])
def test_other_cascade_builds_run(arch, agnostic):
    """The class-agnostic mask option and the R50-FPN cascade: three stages of the right width, an eval forward."""
    torch.manual_seed(0)
    m = build(arch, C, class_agnostic=agnostic, **({"min_size": 128, "max_size": 128} if arch == "r50_cascade" else {}))
    heads = m.roi_heads.eval()
    assert heads.num_stages == 3 and heads.stage(2)[0].fc6.in_features == (3136 if arch == "tiny_cascade" else 12544)
    assert (heads.mask_predictor.mask_fcn_logits.out_channels == 1) == agnostic
    with torch.no_grad():
        out = m.eval()(_images(1))[0]
    assert set(out) == {"boxes", "labels", "scores", "masks"} and len(out["boxes"]) <= heads.detections_per_img
