"""mmdetection v2/v3 R50-FPN Mask R-CNN names, class layout and config -> ours (detector/from_mmdet.py,
detector/mmdet_config.py), and the behaviour claims convert.MMDET_BEHAVIOUR rests on.

The mmdetection state dict is written here from our model's names and shapes by the inverse mapping,
spelled out from mmdetection's module layout independently of the module under test: the ResNet keeps
torchvision's names under ``backbone.``, the FPN's and mask head's ConvModules hold ``.conv``, RPNHead
has rpn_conv/rpn_cls/rpn_reg, Shared2FCBBoxHead shared_fcs/fc_cls (background last)/fc_reg (no
background), FCNMaskHead convs/upsample/conv_logits (no background); mmdetection's BatchNorm adds its
``num_batches_tracked`` counters. Values are random (seeded).
"""

from __future__ import annotations

import functools
import math
import re

import pytest
import torch

from simcal.detector.builders import build
from simcal.detector.convert import MMDET_BEHAVIOUR
from simcal.detector.from_mmdet import to_torchvision
from simcal.detector.mmdet_config import check_config

K = 5
BOX, MASK, CLS = ("roi_heads.box_predictor.bbox_pred", "roi_heads.mask_predictor.mask_fcn_logits",
                  "roi_heads.box_predictor.cls_score")
_MODULES = {"rpn.head.conv.0.0": "rpn_head.rpn_conv", "rpn.head.cls_logits": "rpn_head.rpn_cls",
            "rpn.head.bbox_pred": "rpn_head.rpn_reg", "roi_heads.box_head.fc6": "roi_head.bbox_head.shared_fcs.0",
            "roi_heads.box_head.fc7": "roi_head.bbox_head.shared_fcs.1", CLS: "roi_head.bbox_head.fc_cls",
            BOX: "roi_head.bbox_head.fc_reg", "roi_heads.mask_predictor.conv5_mask": "roi_head.mask_head.upsample",
            MASK: "roi_head.mask_head.conv_logits"}


@functools.cache
def ours(agnostic: bool = False) -> torch.nn.Module:
    """Our r50_fpn for K classes with mmdetection's behaviour switches, built once per process (eval mode)."""
    return build("r50_fpn", K, class_agnostic=agnostic, **MMDET_BEHAVIOUR).eval()


def mmdet_name(ours_name: str) -> str:
    """Our name -> mmdetection's."""
    if ours_name.startswith("backbone.body."):
        return "backbone." + ours_name[len("backbone.body."):]
    m = re.fullmatch(r"backbone\.fpn\.(inner|layer)_blocks\.(\d)\.0\.(\w+)", ours_name)
    if m:
        return f"neck.{'lateral' if m[1] == 'inner' else 'fpn'}_convs.{m[2]}.conv.{m[3]}"
    m = re.fullmatch(r"roi_heads\.mask_head\.(\d)\.0\.(\w+)", ours_name)
    if m:
        return f"roi_head.mask_head.convs.{m[1]}.conv.{m[2]}"
    module, p = ours_name.rsplit(".", 1)
    return f"{_MODULES[module]}.{p}"


def mmdet_shape(ours_name: str, shape, k: int, agnostic: bool) -> tuple:
    """mmdetection's shape of that weight for k classes: no background slot but in the classifier."""
    first = {CLS: k + 1, BOX: 4 if agnostic else 4 * k, MASK: 1 if agnostic else k}.get(ours_name.rsplit(".", 1)[0])
    return tuple(shape) if first is None else (first, *shape[1:])


def mmdet_r50_fpn(k: int = K, agnostic: bool = False, seed: int = 0, skinny: bool = False) -> dict:
    """An mmdetection R50-FPN Mask R-CNN state dict for k classes, random values. ``skinny``: every tensor
    cut to its first dimension (zeros): right names and head sizes, a file of kilobytes, for refusals."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, t in ours().state_dict().items():
        shape = mmdet_shape(name, t.shape, k, agnostic)
        mm = mmdet_name(name)
        sd[mm] = torch.zeros(shape[:1]) if skinny else torch.randn(shape, generator=g)
        if mm.startswith("backbone.") and mm.endswith(".running_var"):
            sd[mm[:-len("running_var")] + "num_batches_tracked"] = torch.tensor(1000)
    return sd


@functools.cache
def source(agnostic: bool) -> dict:
    """One random source per layout for this module (tests copy it before any edit)."""
    return mmdet_r50_fpn(agnostic=agnostic)


def expected(ours_name: str, mm: torch.Tensor) -> torch.Tensor:
    """Where the source tensor must land: background first in the classifier, a zero background slot in the
    class-specific regressor (4 rows) and mask predictor (1 channel)."""
    module = ours_name.rsplit(".", 1)[0]
    if module == CLS:
        return torch.cat([mm[K:], mm[:K]])
    slot = {BOX: 4, MASK: 1}.get(module)
    if slot is not None and mm.shape[0] != slot:
        return torch.cat([torch.zeros((slot, *mm.shape[1:])), mm])
    return mm


def back_to_mmdet(tv: dict, agnostic: bool) -> dict:
    """The inverse of the conversion: background row last again, background slots dropped."""
    out = {}
    for name, t in tv.items():
        module = name.rsplit(".", 1)[0]
        if module == CLS:
            t = torch.cat([t[1:], t[:1]])
        elif module in (BOX, MASK) and not agnostic:
            t = t[4 if module == BOX else 1:]
        out[mmdet_name(name)] = t
    return out


@pytest.mark.parametrize("agnostic", [False, True])
def test_every_source_tensor_lands_once_bit_for_bit(agnostic):
    mm = source(agnostic)
    tv, k, is_agnostic = to_torchvision(mm)
    assert (k, is_agnostic) == (K, agnostic)
    ours(agnostic).load_state_dict(tv, strict=True)  # names and shapes: all present, none extra
    weights = {n for n in mm if not n.endswith("num_batches_tracked")}
    assert sorted(mmdet_name(n) for n in tv) == sorted(weights)  # one target per source weight, none twice
    for name, t in tv.items():
        assert t.dtype == torch.float32 and torch.equal(t, expected(name, mm[mmdet_name(name)])), name
    if not agnostic:  # the background slots are zeros, class c's rows sit behind them
        assert not tv[f"{BOX}.weight"][:4].any() and not tv[f"{MASK}.bias"][0].any()
        assert torch.equal(tv[f"{BOX}.weight"][4 * 3:4 * 4], mm["roi_head.bbox_head.fc_reg.weight"][4 * 2:4 * 3])
    assert torch.equal(tv[f"{CLS}.bias"][0], mm["roi_head.bbox_head.fc_cls.bias"][K])  # background: last -> first


def test_style_pytorch_is_torchvisions_input_and_strides():
    """mmdetection's default img_norm_cfg is torchvision's ImageNet one on 0-255 RGB; style='pytorch' strides the
    3x3: the converted model keeps torchvision's normalisation and stride placement."""
    model = ours()
    assert model.transform.image_mean == [0.485, 0.456, 0.406] and model.transform.image_std == [0.229, 0.224, 0.225]
    assert [round(m * 255, 3) for m in model.transform.image_mean] == [123.675, 116.28, 103.53]
    assert all(layer[0].conv1.stride == (1, 1) and layer[0].conv2.stride == (2, 2)
               for layer in (model.backbone.body.layer2, model.backbone.body.layer3, model.backbone.body.layer4))


@pytest.mark.parametrize("agnostic", [False, True])
def test_round_trip(agnostic):
    mm = source(agnostic)
    back = back_to_mmdet(to_torchvision(mm)[0], agnostic)
    weights = {n: t for n, t in mm.items() if not n.endswith("num_batches_tracked")}
    assert back.keys() == weights.keys() and all(torch.equal(back[n], weights[n]) for n in weights)


def _edit(name, value):
    return lambda d: d.update({name: value})


@pytest.mark.parametrize("edit, words", [
    (_edit("rpn_head.rpn_cls.weight", torch.zeros(6)), r"a softmax RPN \(use_sigmoid=False"),
    (_edit("rpn_head.rpn_cls.weight", torch.zeros(9)), "an RPN of 9 scores per position"),
    (_edit("roi_head.bbox_head.fc_cls.weight", torch.zeros(K + 2)), "Seesaw-style loss"),
    (_edit("roi_head.bbox_head.fc_reg.weight", torch.zeros(7)), "box regressor of 7 rows"),
    (_edit("roi_head.bbox_head.fc_reg.weight", torch.zeros(4)), "mask predictor of 5 channels"),
    (_edit("roi_head.bbox_head.fc_cls.weight", torch.zeros(())), "a scalar where 'roi_head.bbox_head.fc_cls.weight'"),
    (lambda d: d.pop("roi_head.mask_head.conv_logits.bias"), "has no 'roi_head.mask_head.conv_logits.bias'"),
    (lambda d: d.update({f"roi_head.semantic_head.conv{i}.weight": torch.zeros(1) for i in range(5)}),
     r"has 5 weight\(s\) no mmdetection R50-FPN Mask R-CNN has: 'roi_head.semantic_head.conv0.weight', "
     r"'roi_head.semantic_head.conv1.weight', 'roi_head.semantic_head.conv2.weight' and 2 more"),
    (_edit("neck.lateral_convs.0.bn.weight", torch.zeros(1)), "'neck.lateral_convs.0.bn.weight'"),
])
def test_heads_and_weights_outside_the_architecture_are_named(edit, words):
    mm = mmdet_r50_fpn(skinny=True)
    edit(mm)
    with pytest.raises(ValueError, match=words):
        to_torchvision(mm)


# A config as mmcv's Config.pretty_text writes it (v2: meta['config']), trimmed to what is checked.
V2_CONFIG = """
model = dict(
    type='MaskRCNN',
    backbone=dict(type='ResNet', depth=50, num_stages=4, frozen_stages=1, norm_eval=True, style='pytorch'),
    rpn_head=dict(
        type='RPNHead',
        anchor_generator=dict(
            type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder', target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    roi_head=dict(
        type='StandardRoIHead',
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32]),
        bbox_head=dict(
            type='Shared2FCBBoxHead', num_classes=1230, reg_class_agnostic=False,
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder', target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[0.1, 0.1, 0.2, 0.2])),
        mask_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32]),
        mask_head=dict(type='FCNMaskHead', num_convs=4, num_classes=1230)),
    test_cfg=dict(
        rcnn=dict(score_thr=0.0001, nms=dict(type='nms', iou_threshold=0.5), max_per_img=300, mask_thr_binary=0.5)))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=(1333, 800), flip=False, transforms=[
        dict(type='Resize', keep_ratio=True),
        dict(type='Normalize', **img_norm_cfg),
        dict(type='Pad', size_divisor=32)])
]
"""
# mmengine's (v3: meta['cfg']): the normalisation sits in the model's data_preprocessor.
V3_CONFIG = """
model = dict(type='MaskRCNN', data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
             std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_mask=True, pad_size_divisor=32),
             backbone=dict(type='ResNet', depth=50, style='pytorch'),
             roi_head=dict(bbox_roi_extractor=dict(roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0))))
"""


def test_standard_configs_pass_and_a_missing_one_is_said():
    assert check_config(V2_CONFIG) is None and check_config(V3_CONFIG) is None
    assert "the file carries no config: ResNet style='pytorch'" in check_config(None)
    assert "assumed" in check_config("") and "not Python source" in check_config("model = dict(")


@pytest.mark.parametrize("old, new, words", [
    ("style='pytorch'", "style='caffe'", "style='caffe' ResNet"),
    ("mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True",
     "mean=[103.53, 116.28, 123.675], std=[1.0, 1.0, 1.0], to_rgb=False",
     r"input normalised with mean=\[103.53, 116.28, 123.675\], std=\[1.0, 1.0, 1.0\] in BGR order"),
    ("to_rgb=True", "to_rgb=False", "in BGR order"),
    ("output_size=7, sampling_ratio=0", "out_size=7, sample_num=2",
     "RoIAlign with sampling_ratio=2, aligned=True"),
    ("output_size=14,", "output_size=14, aligned=False,", "aligned=False"),
    ("strides=[4, 8, 16, 32, 64]", "strides=[8, 16, 32, 64, 128]", r"anchors with strides=\[8, 16, 32, 64, 128\]"),
    ("type='AnchorGenerator',", "type='AnchorGenerator', center_offset=0.5,", "center_offset=0.5"),
    ("type='AnchorGenerator',", "type='LegacyAnchorGenerator',", r"LegacyAnchorGenerator \(mmdetection 1.x"),
    ("target_stds=[0.1, 0.1, 0.2, 0.2]", "target_stds=[0.05, 0.05, 0.1, 0.1]", "box deltas with"),
])
def test_configs_asking_for_other_behaviour_are_refused(old, new, words):
    assert old in V2_CONFIG
    refusal = f"has a config that asks for .*{words}.*, which --from mmdet does not reproduce"
    with pytest.raises(ValueError, match=refusal):
        check_config(V2_CONFIG.replace(old, new))


def test_config_text_is_parsed_never_run(tmp_path):
    marker = tmp_path / "ran"
    text = f"import os\nos.system('touch {marker}')\nopen({str(marker)!r}, 'w')\nbackbone = dict(style=os.sep)\n"
    assert check_config(text) is None and not marker.exists()  # a non-literal value goes unchecked
    splice = "base = dict(depth=50)\nbackbone = dict(**base, style='caffe')\n"
    with pytest.raises(ValueError, match="style='caffe'"):
        check_config(splice)


def test_anchors_are_mmdetections():
    """mmdetection's AnchorGenerator(scales=[8], ratios=[0.5, 1, 2], strides=[4..64], center_offset=0), from its
    definition: base size = stride * 8, h = base * sqrt(ratio), w = base / sqrt(ratio), centred on (x, y) * stride,
    positions row-major and the 3 ratios within each."""
    from torchvision.models.detection.image_list import ImageList

    sizes = [(13, 20), (7, 10), (4, 5), (2, 3), (1, 2)]  # an odd padded size: torchvision's own strides would drift
    feats = [torch.zeros(1, 1, h, w) for h, w in sizes]
    got = ours().rpn.anchor_generator(ImageList(torch.zeros(1, 3, 52, 80), [(52, 80)]), feats)[0]
    want = []
    for (h, w), stride in zip(sizes, (4, 8, 16, 32, 64)):
        for y in range(h):
            for x in range(w):
                for ratio in (0.5, 1.0, 2.0):
                    bh, bw = stride * 8 * math.sqrt(ratio), stride * 8 / math.sqrt(ratio)
                    want.append([x * stride - bw / 2, y * stride - bh / 2, x * stride + bw / 2, y * stride + bh / 2])
    assert torch.allclose(got, torch.tensor(want), atol=1e-4)


@pytest.mark.parametrize("h, w", [(480, 640), (375, 500), (427, 640), (100, 1333), (612, 612), (1000, 333)])
def test_resize_size_is_mmcvs(h, w):
    """mmcv.rescale_size at scale (1333, 800): factor min(1333 / long side, 800 / short side), sides int(x * f + .5)."""
    f = min(1333 / max(h, w), 800 / min(h, w))
    image, _ = ours().transform.resize(torch.zeros(3, h, w))
    assert tuple(image.shape[-2:]) == (int(h * f + 0.5), int(w * f + 0.5))


def test_roi_levels_are_mmdetections():
    """SingleRoIExtractor.map_roi_levels: floor(log2(sqrt(area) / 56 + 1e-6)) clamped to 0..3 (P2..P5), against
    the LevelMapper torchvision's MultiScaleRoIAlign builds for P2..P5."""
    from torchvision.ops.poolers import LevelMapper

    w = torch.logspace(2, 11, 400, base=2.0)
    scale = torch.sqrt(w * w * 0.5)
    w = w[(torch.log2(scale / 56) - torch.log2(scale / 56).round()).abs() > 1e-4]  # off the levels' edges
    boxes = torch.stack([torch.zeros_like(w), torch.zeros_like(w), w, w * 0.5], dim=1)
    mmdet = torch.floor(torch.log2(torch.sqrt(w * w * 0.5) / 56 + 1e-6)).clamp(0, 3)
    assert torch.equal(LevelMapper(2, 5)([boxes]).float(), mmdet)
