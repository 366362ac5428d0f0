"""detectron2 R50-FPN Mask R-CNN names and class layout -> ours (detector/from_detectron2.py).

The detectron2 state dict is written here from detectron2's module layout (stem, res2..res5 with
3/4/6/3 bottlenecks, fpn_lateral/fpn_output 2..5, StandardRPNHead, FastRCNNConvFCHead fc1/fc2,
FastRCNNOutputLayers with background last, MaskRCNNConvUpsampleHead), with random values.
"""

import pytest
import torch

from simcal.detector.builders import build
from simcal.detector.from_detectron2 import to_torchvision

K = 5


def _norm(prefix, c, g):
    params = ("weight", "bias", "running_mean", "running_var")
    return {f"{prefix}.norm.{p}": torch.randn(c, generator=g) for p in params}


def detectron2_r50_fpn(k=K, agnostic=False, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {"backbone.bottom_up.stem.conv1.weight": torch.randn(64, 3, 7, 7, generator=g),
          **_norm("backbone.bottom_up.stem.conv1", 64, g)}
    cin = 64
    for stage, (blocks, width) in zip(range(2, 6), ((3, 64), (4, 128), (6, 256), (3, 512))):
        for b in range(blocks):
            pre = f"backbone.bottom_up.res{stage}.{b}"
            shapes = {1: (width, cin, 1, 1), 2: (width, width, 3, 3), 3: (4 * width, width, 1, 1)}
            for i, shape in shapes.items():
                sd[f"{pre}.conv{i}.weight"] = torch.randn(*shape, generator=g)
                sd.update(_norm(f"{pre}.conv{i}", shape[0], g))
            if b == 0:
                sd[f"{pre}.shortcut.weight"] = torch.randn(4 * width, cin, 1, 1, generator=g)
                sd.update(_norm(f"{pre}.shortcut", 4 * width, g))
            cin = 4 * width
        s = stage
        sd[f"backbone.fpn_lateral{s}.weight"] = torch.randn(256, cin, 1, 1, generator=g)
        sd[f"backbone.fpn_lateral{s}.bias"] = torch.randn(256, generator=g)
        sd[f"backbone.fpn_output{s}.weight"] = torch.randn(256, 256, 3, 3, generator=g)
        sd[f"backbone.fpn_output{s}.bias"] = torch.randn(256, generator=g)
    layers = {"proposal_generator.rpn_head.conv": (256, 256, 3, 3),
              "proposal_generator.rpn_head.objectness_logits": (3, 256, 1, 1),
              "proposal_generator.rpn_head.anchor_deltas": (12, 256, 1, 1),
              "roi_heads.box_head.fc1": (1024, 256 * 7 * 7), "roi_heads.box_head.fc2": (1024, 1024),
              "roi_heads.box_predictor.cls_score": (k + 1, 1024),
              "roi_heads.box_predictor.bbox_pred": (4 if agnostic else 4 * k, 1024),
              **{f"roi_heads.mask_head.mask_fcn{i}": (256, 256, 3, 3) for i in range(1, 5)},
              "roi_heads.mask_head.deconv": (256, 256, 2, 2),
              "roi_heads.mask_head.predictor": (1 if agnostic else k, 256, 1, 1)}
    for name, shape in layers.items():
        sd[f"{name}.weight"] = torch.randn(*shape, generator=g)
        sd[f"{name}.bias"] = torch.randn(shape[1] if "deconv" in name else shape[0], generator=g)
    sd["pixel_mean"] = torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)  # old checkpoints: skipped
    return sd


@pytest.mark.parametrize("agnostic", [False, True])
def test_every_weight_lands_in_our_r50_fpn(agnostic):
    d2 = detectron2_r50_fpn(agnostic=agnostic)
    tv, k, is_agnostic = to_torchvision(d2)
    assert (k, is_agnostic) == (K, agnostic)
    model = build("r50_fpn", K, class_agnostic=agnostic)
    model.load_state_dict(tv, strict=True)  # names and shapes: all present, none extra
    # background moves from last to first; foreground rows keep their order (column j = category j + 1)
    cls = d2["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(tv["roi_heads.box_predictor.cls_score.weight"], torch.cat([cls[K:], cls[:K]]))
    # the stem takes RGB: its input channels are detectron2's BGR ones reversed
    assert torch.equal(tv["backbone.body.conv1.weight"][:, 0], d2["backbone.bottom_up.stem.conv1.weight"][:, 2])
    assert torch.equal(tv["backbone.body.layer3.5.bn2.running_var"],
                       d2["backbone.bottom_up.res4.5.conv2.norm.running_var"])
    assert torch.equal(tv["backbone.fpn.inner_blocks.3.0.weight"], d2["backbone.fpn_lateral5.weight"])
    assert torch.equal(tv["roi_heads.mask_head.3.0.bias"], d2["roi_heads.mask_head.mask_fcn4.bias"])
    box, mask = tv["roi_heads.box_predictor.bbox_pred.weight"], tv["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    if agnostic:
        assert box.shape[0] == 4 and mask.shape[0] == 1
    else:  # class c's 4 regression rows (and mask channel) sit behind the zero background slot
        assert torch.equal(box[:4], torch.zeros(4, 1024))
        assert torch.equal(box[4 * 3:4 * 4], d2["roi_heads.box_predictor.bbox_pred.weight"][4 * 2:4 * 3])
        assert torch.equal(mask[3], d2["roi_heads.mask_head.predictor.weight"][2]) and not mask[0].any()


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.update({"roi_heads.keypoint_head.fc.weight": torch.zeros(1)}), "keypoint_head.fc.weight"),
    (lambda d: d.update({"roi_heads.box_predictor.bbox_pred.weight": torch.zeros(7, 1024)}),
     "box regressor of 7 rows"),
    (lambda d: d.pop("roi_heads.box_predictor.cls_score.weight"), "has no 'roi_heads.box_predictor.cls_score"),
])
def test_weights_outside_the_architecture_are_named(edit, words):
    d2 = detectron2_r50_fpn()
    edit(d2)
    with pytest.raises(ValueError, match=words):
        to_torchvision(d2)
