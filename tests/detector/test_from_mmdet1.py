"""mmdetection v1 (the SimCal release) R50-FPN Mask R-CNN names and class layout -> ours (detector/from_mmdet1.py).

The v1 state dict is written here from our model's names and shapes by the inverse mapping, spelled out from
the release's module layout (``two_stage_calibration.py``: backbone, neck, rpn_head, bbox_head, mask_head as
top-level attributes, no ``roi_head.``; otherwise mmdetection 2's names, test_from_mmdet.py) independently of the
module under test: the ResNet keeps torchvision's
names under ``backbone.`` with BatchNorm counters, the FPN's and mask head's ConvModules hold ``.conv``,
RPNHead has rpn_conv/rpn_cls/rpn_reg, SharedFCBBoxHead shared_fcs/fc_cls/fc_reg, FCNMaskHead
convs/upsample/conv_logits -- and v1 counts the background in ``num_classes`` (1231 for LVIS): K + 1 rows in
fc_cls, 4(K + 1) in a class-specific fc_reg, K + 1 channels in conv_logits, background first.
"""

from __future__ import annotations

import functools

import pytest
import torch

from simcal.detector.builders import build
from simcal.detector.convert import MMDET1_BEHAVIOUR
from simcal.detector.from_mmdet1 import to_torchvision
from tests.detector.test_from_mmdet import mmdet_name

K = 5
BOX, MASK, CLS = ("roi_heads.box_predictor.bbox_pred", "roi_heads.mask_predictor.mask_fcn_logits",
                  "roi_heads.box_predictor.cls_score")


def ours(agnostic: bool = False) -> torch.nn.Module:
    """Our r50_fpn for K classes with the release's behaviour switches, on the meta device (names and shapes)."""
    with torch.device("meta"):
        return build("r50_fpn", K, class_agnostic=agnostic, **MMDET1_BEHAVIOUR)


def v1_name(ours_name: str) -> str:
    """Our name -> v1's: mmdetection 2's (written independently in test_from_mmdet.py) without ``roi_head.``."""
    return mmdet_name(ours_name).removeprefix("roi_head.")


def v1_shape(ours_name: str, shape, k: int, agnostic: bool) -> tuple:
    """v1's shape for k classes: K + 1 outputs everywhere (background included), 4 / 1 when class-agnostic."""
    first = {CLS: k + 1, BOX: 4 if agnostic else 4 * (k + 1), MASK: 1 if agnostic else k + 1}.get(
        ours_name.rsplit(".", 1)[0])
    return tuple(shape) if first is None else (first, *shape[1:])


def mmdet1_r50_fpn(k: int = K, agnostic: bool = False, seed: int = 0, skinny: bool = False) -> dict:
    """A v1 R50-FPN Mask R-CNN state dict for k classes, random values; ``skinny``: every tensor cut to its first
    dimension (zeros), for refusals."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, t in _shapes().items():
        shape = v1_shape(name, t.shape, k, agnostic)
        v1 = v1_name(name)
        sd[v1] = torch.zeros(shape[:1]) if skinny else torch.randn(shape, generator=g)
        if v1.startswith("backbone.") and v1.endswith(".running_var"):
            sd[v1[:-len("running_var")] + "num_batches_tracked"] = torch.tensor(1000)
    return sd


@functools.cache
def _shapes() -> dict:
    return ours().state_dict()


@functools.cache
def source(agnostic: bool) -> dict:
    return mmdet1_r50_fpn(agnostic=agnostic)


@pytest.mark.parametrize("agnostic", [False, True])
def test_every_source_tensor_lands_once_bit_for_bit(agnostic):
    v1 = source(agnostic)
    tv, k, is_agnostic = to_torchvision(v1)
    assert (k, is_agnostic) == (K, agnostic)
    ours(agnostic).load_state_dict(tv, strict=True, assign=True)  # names and shapes: all present, none extra
    weights = {n for n in v1 if not n.endswith("num_batches_tracked")}
    assert sorted(v1_name(n) for n in tv) == sorted(weights)  # one target per source weight, none twice
    for name, t in tv.items():  # v1's layout is ours: every tensor as it is, background row 0 included
        assert t.dtype == torch.float32 and torch.equal(t, v1[v1_name(name)]), name
    assert torch.equal(tv[f"{CLS}.bias"][0], v1["bbox_head.fc_cls.bias"][0])
    if not agnostic:
        assert torch.equal(tv[f"{BOX}.weight"][4:8], v1["bbox_head.fc_reg.weight"][4:8])  # class 1 behind background


@pytest.mark.parametrize("agnostic", [False, True])
def test_round_trip(agnostic):
    v1 = source(agnostic)
    back = {v1_name(n): t for n, t in to_torchvision(v1)[0].items()}
    weights = {n: t for n, t in v1.items() if not n.endswith("num_batches_tracked")}
    assert back.keys() == weights.keys() and all(torch.equal(back[n], weights[n]) for n in weights)


def _edit(name, value):
    return lambda d: d.update({name: value})


@pytest.mark.parametrize("edit, words", [
    (_edit("rpn_head.rpn_cls.weight", torch.zeros(6)), r"a softmax RPN \(use_sigmoid=False"),
    (_edit("bbox_head.fc_reg.weight", torch.zeros(4 * K)), "box regressor of 20 rows and a mask predictor of 6 "
     "channels, which fit neither 5 classes plus background"),  # an mmdetection 2 regressor without background
    (_edit("mask_head.conv_logits.weight", torch.zeros(1)), "mask predictor of 1 channels"),
    (_edit("bbox_head.fc_cls.weight", torch.zeros(())), "a scalar where 'bbox_head.fc_cls.weight'"),
    (lambda d: d.pop("mask_head.conv_logits.bias"), "has no 'mask_head.conv_logits.bias'"),
    (lambda d: d.update({f"semantic_head.conv{i}.weight": torch.zeros(1) for i in range(5)}),
     r"has 5 weight\(s\) no mmdetection 1.x R50-FPN Mask R-CNN has: 'semantic_head.conv0.weight', "
     r"'semantic_head.conv1.weight', 'semantic_head.conv2.weight' and 2 more"),
    (lambda d: d.update({"roi_head." + k: d.pop(k) for k in list(d) if k.startswith("mask_head.convs")}),
     r"\(an mmdetection 2 checkpoint: use --from mmdet\): 'roi_head.mask_head.convs.0.conv.weight'"),
])
def test_heads_and_weights_outside_the_architecture_are_named(edit, words):
    v1 = mmdet1_r50_fpn(skinny=True)
    edit(v1)
    with pytest.raises(ValueError, match=words):
        to_torchvision(v1)


def test_release_config_passes_and_other_settings_are_refused():
    """The release's configs/simcal/calibration/mask_rcnn_r50_fpn_1x_lvis_clswise.py, trimmed to what is checked."""
    from simcal.detector.mmdet_config import check_config_v1

    assert check_config_v1(RELEASE_CONFIG) is None and "assumed" in check_config_v1(None)
    for old, new, words in [("sample_num=2", "sample_num=0", "RoIAlign with sample_num=0"),
                            ("anchor_strides=[4, 8, 16, 32, 64]", "anchor_strides=[8, 16, 32, 64, 128]",
                             "anchor_strides"),
                            ("target_stds=[0.1, 0.1, 0.2, 0.2]", "target_stds=[0.05, 0.05, 0.1, 0.1]",
                             "SharedFCBBoxHead box deltas"),
                            ("style='pytorch'", "style='caffe'", "style='caffe' ResNet")]:
        assert old in RELEASE_CONFIG
        with pytest.raises(ValueError, match=f"asks for .*{words}.*which --from mmdet1 does not reproduce"):
            check_config_v1(RELEASE_CONFIG.replace(old, new))


RELEASE_CONFIG = """
model = dict(
    type='MaskRCNN_calibration',
    backbone=dict(type='ResNet', depth=50, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1, style='pytorch'),
    neck=dict(type='FPN', in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5),
    rpn_head=dict(
        type='RPNHead', in_channels=256, feat_channels=256, anchor_scales=[8], anchor_ratios=[0.5, 1.0, 2.0],
        anchor_strides=[4, 8, 16, 32, 64], target_means=[.0, .0, .0, .0], target_stds=[1.0, 1.0, 1.0, 1.0],
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    bbox_roi_extractor=dict(
        type='SingleRoIExtractor', roi_layer=dict(type='RoIAlign', out_size=7, sample_num=2), out_channels=256,
        featmap_strides=[4, 8, 16, 32]),
    bbox_head=dict(
        type='SharedFCBBoxHead', num_fcs=2, in_channels=256, fc_out_channels=1024, roi_feat_size=7,
        num_classes=1231, target_means=[0., 0., 0., 0.], target_stds=[0.1, 0.1, 0.2, 0.2], reg_class_agnostic=False),
    mask_roi_extractor=dict(
        type='SingleRoIExtractor', roi_layer=dict(type='RoIAlign', out_size=14, sample_num=2), out_channels=256,
        featmap_strides=[4, 8, 16, 32]),
    mask_head=dict(type='FCNMaskHead', num_convs=4, in_channels=256, conv_out_channels=256, class_agnostic=False,
                   num_classes=1231))
test_cfg = dict(
    rpn=dict(nms_across_levels=False, nms_pre=1000, nms_post=1000, max_num=1000, nms_thr=0.7, min_bbox_size=0),
    rcnn=dict(score_thr=0.00, nms=dict(type='nms', iou_thr=0.5), max_per_img=300, mask_thr_binary=0.5))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
"""
