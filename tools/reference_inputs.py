"""Seeded inputs for comparing converted detectors with their source frameworks (no framework needed).

:func:`detectron2_weights` writes a detectron2 R50-FPN Mask R-CNN state dict in detectron2's own names
and class layout (background last; ``modeling/backbone/resnet.py``, ``fpn.py``,
``proposal_generator/rpn.py``, ``roi_heads/{box_head,fast_rcnn,mask_head}.py``), with values scaled so
that a random network still gives varied proposals, scores and masks: He-scaled convolutions, frozen
BatchNorm statistics near identity, a classifier whose logits spread over a few units. The same seed
gives the same weights on any machine (torch's CPU generator), so a fixture of detectron2's outputs
needs only the seed, not the 170 MB file.

:func:`images` draws RGB uint8 test images with coloured shapes on a gradient, from a NumPy seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: ResNet-50: (blocks, bottleneck width) of res2..res5.
RESNET50 = ((3, 64), (4, 128), (6, 256), (3, 512))


class _Draw:
    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, shape: tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g) * std + mean

    def uniform(self, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
        return torch.rand(*shape, generator=self.g) * (hi - lo) + lo

    def conv(self, shape: tuple[int, ...], gain: float = 1.0) -> torch.Tensor:
        fan_in = math.prod(shape[1:])
        return self.normal(shape, gain * math.sqrt(2.0 / fan_in))

    def frozen_bn(self, prefix: str, c: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": self.uniform((c,), 0.5, 1.5), f"{prefix}.bias": self.normal((c,), 0.1),
                f"{prefix}.running_mean": self.normal((c,), 0.1), f"{prefix}.running_var": self.uniform((c,), 0.5, 1.5)}


def detectron2_weights(seed: int, num_classes: int, agnostic: bool = False,
                       cls_bias: list[float] | None = None) -> dict[str, torch.Tensor]:
    """detectron2-named float32 weights of an R50-FPN Mask R-CNN for ``num_classes`` (K) classes.

    ``cls_bias`` (K+1 floats, background last) replaces the classifier's bias: the fixture script sets it
    to minus each class's mean logit over the test RoIs, so that every class gets detections.

    cls_score (K+1, 1024) background last; bbox_pred (4K, 1024) or (4, 1024) class-agnostic;
    mask predictor (K, 256, 1, 1) or (1, 256, 1, 1).
    """
    d = _Draw(seed)
    sd = {"backbone.bottom_up.stem.conv1.weight": d.conv((64, 3, 7, 7), gain=1 / 64),  # 0-255 input
          **d.frozen_bn("backbone.bottom_up.stem.conv1.norm", 64)}
    cin = 64
    for stage, (blocks, width) in zip(range(2, 6), RESNET50):
        for b in range(blocks):
            pre = f"backbone.bottom_up.res{stage}.{b}"
            shapes = {1: (width, cin, 1, 1), 2: (width, width, 3, 3), 3: (4 * width, width, 1, 1)}
            for i, shape in shapes.items():
                sd[f"{pre}.conv{i}.weight"] = d.conv(shape, gain=0.3 if i == 3 else 1.0)
                sd.update(d.frozen_bn(f"{pre}.conv{i}.norm", shape[0]))
            if b == 0:
                sd[f"{pre}.shortcut.weight"] = d.conv((4 * width, cin, 1, 1))
                sd.update(d.frozen_bn(f"{pre}.shortcut.norm", 4 * width))
            cin = 4 * width
        sd[f"backbone.fpn_lateral{stage}.weight"] = d.conv((256, cin, 1, 1), gain=0.5)
        sd[f"backbone.fpn_lateral{stage}.bias"] = d.normal((256,), 0.1)
        sd[f"backbone.fpn_output{stage}.weight"] = d.conv((256, 256, 3, 3), gain=0.5)
        sd[f"backbone.fpn_output{stage}.bias"] = d.normal((256,), 0.1)
    k = num_classes
    layers = {  # name: (shape, weight std as a multiple of the He scale)
        "proposal_generator.rpn_head.conv": ((256, 256, 3, 3), 1.0),
        "proposal_generator.rpn_head.objectness_logits": ((3, 256, 1, 1), 1.0),
        "proposal_generator.rpn_head.anchor_deltas": ((12, 256, 1, 1), 0.1),
        "roi_heads.box_head.fc1": ((1024, 256 * 7 * 7), 1.0),
        "roi_heads.box_head.fc2": ((1024, 1024), 1.0),
        "roi_heads.box_predictor.cls_score": ((k + 1, 1024), 0.3),
        "roi_heads.box_predictor.bbox_pred": ((4 if agnostic else 4 * k, 1024), 0.05),
        **{f"roi_heads.mask_head.mask_fcn{i}": ((256, 256, 3, 3), 1.0) for i in range(1, 5)},
        "roi_heads.mask_head.deconv": ((256, 256, 2, 2), 1.0),
        "roi_heads.mask_head.predictor": ((1 if agnostic else k, 256, 1, 1), 0.6),
    }
    for name, (shape, gain) in layers.items():
        sd[f"{name}.weight"] = d.conv(shape, gain)
        sd[f"{name}.bias"] = d.normal((shape[1] if "deconv" in name else shape[0],), 0.1)
    if cls_bias is not None:
        sd["roi_heads.box_predictor.cls_score.bias"] = torch.tensor(cls_bias, dtype=torch.float32)
    return sd


def images(seed: int, sizes: tuple[tuple[int, int], ...]) -> list[np.ndarray]:
    """(H, W, 3) RGB uint8 images, one per (H, W): a colour gradient with a few filled rectangles and ellipses."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in sizes:
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.uniform(0, 255, 3)[None, None] * (0.5 + 0.5 * (xx / w)[..., None]) + rng.uniform(0, 60, (h, w, 3))
        for _ in range(int(rng.integers(3, 7))):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.05, 0.3) * h, rng.uniform(0.05, 0.3) * w
            inside = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1) if rng.random() < 0.5 else \
                ((abs(yy - cy) <= ry) & (abs(xx - cx) <= rx))
            base[inside] = rng.uniform(0, 255, 3)
        out.append(np.clip(base, 0, 255).astype(np.uint8))
    return out


def detection_record(resized: tuple[int, int], boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                     masks: np.ndarray) -> dict:
    """One image's detections as the reference fixtures store them (what ``tools.reference_compare`` reads):
    (N, 4) xyxy boxes rounded to 1e-4, scores to 7 significant digits, classes 0..K-1, (N, H, W) binary masks
    as compressed RLE strings."""
    from pycocotools import mask as mask_utils

    masks = masks.astype(np.uint8)
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
    return {"resized": list(resized),
            "boxes": np.round(boxes.astype(float), 4).tolist(),
            "scores": [float(f"{s:.7g}") for s in scores.tolist()],
            "classes": classes.tolist(),
            "masks": [r["counts"].decode("ascii") for r in rles]}


#: detectron2 name pattern -> mmdetection v2/v3 name, for :func:`mmdet_weights` (numbered modules re-based:
#: res2..res5 -> layer1..4, P2..P5 -> 0..3, fc1/fc2 -> shared_fcs 0/1, mask_fcn1..4 -> convs 0..3).
_D2_TO_MMDET = ((r"^backbone\.bottom_up\.stem\.conv1\.norm\.", lambda m: "backbone.bn1."),
                (r"^backbone\.bottom_up\.stem\.conv1\.", lambda m: "backbone.conv1."),
                (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.",
                 lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.downsample.1."),
                (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.",
                 lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.downsample.0."),
                (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.",
                 lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}."),
                (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.",
                 lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}."),
                (r"^backbone\.fpn_lateral(\d)\.", lambda m: f"neck.lateral_convs.{int(m[1]) - 2}.conv."),
                (r"^backbone\.fpn_output(\d)\.", lambda m: f"neck.fpn_convs.{int(m[1]) - 2}.conv."),
                (r"^proposal_generator\.rpn_head\.conv\.", lambda m: "rpn_head.rpn_conv."),
                (r"^proposal_generator\.rpn_head\.objectness_logits\.", lambda m: "rpn_head.rpn_cls."),
                (r"^proposal_generator\.rpn_head\.anchor_deltas\.", lambda m: "rpn_head.rpn_reg."),
                (r"^roi_heads\.box_head\.fc(\d)\.", lambda m: f"roi_head.bbox_head.shared_fcs.{int(m[1]) - 1}."),
                (r"^roi_heads\.box_predictor\.cls_score\.", lambda m: "roi_head.bbox_head.fc_cls."),
                (r"^roi_heads\.box_predictor\.bbox_pred\.", lambda m: "roi_head.bbox_head.fc_reg."),
                (r"^roi_heads\.mask_head\.mask_fcn(\d)\.", lambda m: f"roi_head.mask_head.convs.{int(m[1]) - 1}.conv."),
                (r"^roi_heads\.mask_head\.deconv\.", lambda m: "roi_head.mask_head.upsample."),
                (r"^roi_heads\.mask_head\.predictor\.", lambda m: "roi_head.mask_head.conv_logits."))
#: mmdetection's ImageNet std (its R50 takes (RGB - mean) / std, detectron2's 0-255 BGR - mean).
MMDET_STD = 57.375


def mmdet_weights(seed: int, num_classes: int, agnostic: bool = False,
                  cls_bias: list[float] | None = None) -> dict[str, torch.Tensor]:
    """mmdetection v2/v3-named weights of an R50-FPN Mask R-CNN (``style='pytorch'``, BatchNorm with its
    ``num_batches_tracked``): :func:`detectron2_weights`' values under mmdetection's names (res2..res5 ->
    layer1..4, P2..P5 -> index 0..3, mask_fcn1..4 -> convs 0..3), background last as both frameworks keep it,
    the stem scaled by mmdetection's std (its input is normalised, detectron2's is 0-255). ``agnostic``:
    ``reg_class_agnostic`` box regression (fc_reg (4, 1024)) and a ``class_agnostic`` mask head (one mask)."""
    import re

    def renamed(name: str) -> str:
        for pattern, repl in _D2_TO_MMDET:
            new, n = re.subn(pattern, repl, name)
            if n:
                return new
        raise KeyError(name)

    sd = {}
    for name, value in detectron2_weights(seed, num_classes, agnostic, cls_bias=cls_bias).items():
        new = renamed(name)
        sd[new] = value * MMDET_STD if new == "backbone.conv1.weight" else value
        if new.endswith(".running_var"):
            sd[new[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
    return sd
