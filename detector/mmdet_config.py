"""What an mmdetection training config says about test-time behaviour, read without running it.

mmdetection v2 stores its config as Python source in a checkpoint's ``meta['config']`` (mmcv's
``Config.pretty_text``; older versions ``Config.text``, the base files' sources one after another),
mmengine (v3) in ``meta['cfg']``. The text is parsed with :mod:`ast` and never executed: every
``dict(...)`` call and ``{...}`` literal in it is collected with those of its values that are literals
(names, expressions and ``**`` splices are skipped, so a setting spelled that way goes unchecked).

:func:`check_config` refuses a config in which any collected dict asks for behaviour the converted
detector would not reproduce (:data:`RULES`): a ``style='caffe'`` ResNet (stride in the 1x1 convs,
BGR input with std 1), an input normalisation other than torchvision's ImageNet RGB one
(``mean``/``std`` on 0-255, ``to_rgb``/``bgr_to_rgb``), a RoIAlign other than ``aligned=True,
sampling_ratio=0``, anchors other than scale 8, ratios (0.5, 1, 2), strides 4..64 and offset 0,
box-delta means/stds other than mmdetection's defaults, and mmdetection 1.x's ``Legacy*`` conventions.
Test-time thresholds (score, NMS, detections per image, image size) are not read: SimCal applies its
LVIS settings to every detector.

:func:`check_config_v1` does the same for an mmdetection 1.x config (the SimCal release's,
``configs/simcal/calibration/mask_rcnn_r50_fpn_1x_lvis_{clswise,agnostic}.py``), whose keys differ:
RoIAlign ``sample_num=2`` without ``aligned``, ``anchor_scales=[8]``, ``anchor_ratios``, ``anchor_strides``
on the RPN head, ``target_means``/``target_stds`` on the RPN and box heads (:data:`RULES_V1`).
"""

from __future__ import annotations

import ast
from typing import Any, Callable, Optional

#: torchvision's ImageNet normalisation on 0-255 RGB pixels (mmdetection's default ``img_norm_cfg``).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
#: What a file without a readable config is assumed to be, in words.
ASSUMED = "ResNet style='pytorch', ImageNet RGB normalisation and RoIAlign aligned=True (mmdetection's defaults)"

_UNKNOWN = object()  # a value that is not a literal


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _UNKNOWN


def config_dicts(text: str) -> list[dict[str, Any]]:
    """Every ``dict(k=v, ...)`` and ``{'k': v}`` in ``text``, values that are not literals left out.

    Raises SyntaxError (and the like) when ``text`` is not Python source.
    """
    out = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
            pairs = [(kw.arg, kw.value) for kw in node.keywords if kw.arg is not None]
        elif isinstance(node, ast.Dict):
            pairs = [(k.value, v) for k, v in zip(node.keys, node.values)
                     if isinstance(k, ast.Constant) and isinstance(k.value, str)]
        else:
            continue
        values = {k: _literal(v) for k, v in pairs}
        out.append({k: v for k, v in values.items() if v is not _UNKNOWN})
    return out


def _numbers(value: Any, n: int) -> Optional[tuple[float, ...]]:
    ok = isinstance(value, (list, tuple)) and len(value) == n and \
        all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
    return tuple(float(x) for x in value) if ok else None


def _close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(abs(x - y) <= 1e-3 * max(1.0, abs(y)) for x, y in zip(a, b))


def _caffe_style(d: dict) -> Optional[str]:
    if d.get("style") == "caffe":
        return "a style='caffe' ResNet (stride in the 1x1 convs, BGR input with std 1)"
    return None


def _normalisation(d: dict) -> Optional[str]:
    mean, std = _numbers(d.get("mean"), 3), _numbers(d.get("std"), 3)
    if mean is None or std is None:
        return None
    bgr = d.get("to_rgb", d.get("bgr_to_rgb")) is False
    if _close(mean, IMAGENET_MEAN) and _close(std, IMAGENET_STD) and not bgr:
        return None
    return f"input normalised with mean={list(mean)}, std={list(std)}{' in BGR order' if bgr else ''}"


def _roi_align(d: dict) -> Optional[str]:
    if d.get("type") != "RoIAlign":
        return None
    ratio, aligned = d.get("sampling_ratio", d.get("sample_num", 0)), d.get("aligned", True)
    if ratio == 0 and aligned is True:
        return None
    return f"RoIAlign with sampling_ratio={ratio}, aligned={aligned}"


_ANCHORS = {"scales": (8.0,), "ratios": (0.5, 1.0, 2.0), "strides": (4.0, 8.0, 16.0, 32.0, 64.0)}


def _anchors(d: dict) -> Optional[str]:
    if d.get("type") != "AnchorGenerator":
        return None
    for key, want in _ANCHORS.items():
        if key in d and _numbers(d[key], len(want)) != want:
            return f"anchors with {key}={d[key]!r}"
    offset = d.get("center_offset", 0)
    return None if offset == 0 else f"anchors with center_offset={offset!r}"


_DELTA_STDS = ((1.0, 1.0, 1.0, 1.0), (0.1, 0.1, 0.2, 0.2))  # RPN, R-CNN: torchvision's weights (1,1,1,1), (10,10,5,5)


def _box_coder(d: dict) -> Optional[str]:
    if d.get("type") != "DeltaXYWHBBoxCoder":
        return None
    means, stds = d.get("target_means", (0, 0, 0, 0)), d.get("target_stds", _DELTA_STDS[0])
    if _numbers(means, 4) == (0.0, 0.0, 0.0, 0.0) and any(_numbers(stds, 4) == s for s in _DELTA_STDS):
        return None
    return f"box deltas with target_means={means!r}, target_stds={stds!r}"


def _legacy(d: dict) -> Optional[str]:
    kind = d.get("type")
    return f"{kind} (mmdetection 1.x box conventions)" if isinstance(kind, str) and kind.startswith("Legacy") else None


#: Each rule reads one dict of the config and names what it asks for when that is not reproduced.
RULES: list[Callable[[dict], Optional[str]]] = [_caffe_style, _normalisation, _roi_align, _anchors, _box_coder,
                                                 _legacy]


def _roi_align_v1(d: dict) -> Optional[str]:
    if d.get("type") != "RoIAlign":
        return None
    ratio, aligned = d.get("sample_num", d.get("sampling_ratio", 2)), d.get("aligned", False)
    if ratio == 2 and aligned is False:
        return None
    return f"RoIAlign with sample_num={ratio}{', aligned=True' if aligned is True else ''}"


_ANCHORS_V1 = {"anchor_scales": (8.0,), "anchor_ratios": (0.5, 1.0, 2.0),
               "anchor_strides": (4.0, 8.0, 16.0, 32.0, 64.0)}


def _anchors_v1(d: dict) -> Optional[str]:
    for key, want in _ANCHORS_V1.items():
        if key in d and _numbers(d[key], len(want)) != want:
            return f"anchors with {key}={d[key]!r}"
    return f"anchors with anchor_base_sizes={d['anchor_base_sizes']!r}" if d.get("anchor_base_sizes") else None


def _deltas_v1(d: dict) -> Optional[str]:
    """v1 keeps target_means/stds in the head's own dict: (1, 1, 1, 1) for the RPN, (0.1, 0.1, 0.2, 0.2) after."""
    kind = d.get("type")
    if not isinstance(kind, str) or not ("target_stds" in d or "target_means" in d):
        return None
    want = _DELTA_STDS[0] if kind == "RPNHead" else _DELTA_STDS[1] if kind.endswith("BBoxHead") else None
    if want is None:
        return None
    means, stds = d.get("target_means", (0, 0, 0, 0)), d.get("target_stds", want)
    if _numbers(means, 4) == (0.0, 0.0, 0.0, 0.0) and _numbers(stds, 4) == want:
        return None
    return f"{kind} box deltas with target_means={means!r}, target_stds={stds!r}"


#: The rules for an mmdetection 1.x config (``--from mmdet1``): its own RoIAlign, anchor and box-delta keys.
RULES_V1: list[Callable[[dict], Optional[str]]] = [_caffe_style, _normalisation, _roi_align_v1, _anchors_v1,
                                                    _deltas_v1]
#: What a v1 file without a readable config is assumed to be, in words.
ASSUMED_V1 = ("ResNet style='pytorch', ImageNet RGB normalisation, RoIAlign sample_num=2 and anchors of scale 8 at "
              "strides 4..64 (the SimCal release's)")


def check_config(text: Any, rules=RULES, assumed: str = ASSUMED, source: str = "mmdet") -> Optional[str]:
    """None when the config was read and every setting checked is reproduced; a phrase saying what was
    assumed when there is no readable config; ValueError naming the first setting that is not reproduced."""
    if not isinstance(text, str) or not text.strip():
        return f"the file carries no config: {assumed} assumed"
    try:
        dicts = config_dicts(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return f"its config is not Python source that could be read: {assumed} assumed"
    for rule in rules:
        for d in dicts:
            found = rule(d)
            if found:
                raise ValueError(f"has a config that asks for {found}, which --from {source} does not reproduce")
    return None


def check_config_v1(text: Any) -> Optional[str]:
    """:func:`check_config` for an mmdetection 1.x config (``meta['config']``, mmcv's ``Config.text``)."""
    return check_config(text, RULES_V1, ASSUMED_V1, "mmdet1")


__all__ = ["ASSUMED", "ASSUMED_V1", "IMAGENET_MEAN", "IMAGENET_STD", "RULES", "RULES_V1", "check_config",
           "check_config_v1", "config_dicts"]
