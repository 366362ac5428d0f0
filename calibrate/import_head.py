"""The SimCal authors' calibrated head (their mmdetection v1 release) as a SimCal head checkpoint:
``simcal convert --from mmdet1 epoch_12.pth --head 3fc_ft.pth --head-out HEAD.pth``.

The release trains its head in ``mmdet/apis/train_new.py`` and saves it with mmcv's ``save_checkpoint``
(``{"meta": {...}, "state_dict": ...}``, a ``module.`` prefix removed on save; removed here too when present).
Its two layouts (``cls_head_models/simple3fc.py``, ``simple2fc.py``), K + 1 outputs, background first (v1's
layout, and ours), on the flattened 256 x 7 x 7 RoIAlign features -- the tap SimCal caches:

    simple3fc (3fc_ft, 3fc_rand)  feat_classifier.fc1            (1024, 12544) -> fc6        3fc_ft
                                  feat_classifier.fc2            (1024, 1024)  -> fc7
                                  feat_classifier.fc_classifier  (K+1, 1024)   -> cls_score  (no bias with
                                                                                  cls_fc_bias=False: zeros)
    simple2fc (2fc_rand)          feat_extractor.fc1             (1024, 12544) -> fc6        2fc_rand
                                  feat_extractor.fc2             (K+1, 1024)   -> cls_score

``3fc_ft`` starts from the detector's ``shared_fcs.0/1`` and ``fc_cls`` (``train_new.py``'s key map), which is
our ``3fc_ft``; both layouts are our heads' (:mod:`simcal.calibrate.heads`) with the same ReLUs. The head is
bound to the converted detector as ``simcal calibrate`` binds its heads (detector fingerprint, categories,
feature width), so ``simcal infer`` accepts it with that detector and refuses it with any other. It lives in
calibrate/ because the head format does; ``simcal convert`` calls :func:`convert_head` (calibrate/cli.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

#: release prefix -> (our head, its layer -> our layer)
LAYOUTS: dict[str, tuple[str, dict[str, str]]] = {
    "feat_classifier": ("3fc_ft", {"fc1": "fc6", "fc2": "fc7", "fc_classifier": "cls_score"}),
    "feat_extractor": ("2fc_rand", {"fc1": "fc6", "fc2": "cls_score"}),
}
_FIX = "pass the calibrated head file of the SimCal release (3fc_ft.pth) that goes with this detector"


def _first(keys: list[str], n: int = 3) -> str:
    return ", ".join(repr(k) for k in keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def head_weights(weights: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """The release's head weights -> (our head name, its state dict); ValueError naming the first bad keys."""
    prefixes = sorted({k.split(".", 1)[0] for k in weights} & set(LAYOUTS))
    if len(prefixes) != 1:
        found = "both simple3fc and simple2fc weights" if prefixes else f"none of them ({_first(sorted(weights))})"
        raise ValueError(f"is not one calibrated head of the SimCal release (feat_classifier.* of simple3fc or "
                         f"feat_extractor.* of simple2fc): it has {found}")
    prefix = prefixes[0]
    name, layers = LAYOUTS[prefix]
    wanted = {f"{prefix}.{layer}.{p}": f"{ours}.{p}" for layer, ours in layers.items() for p in ("weight", "bias")}
    unknown = [k for k in weights if k not in wanted]
    if unknown:
        raise ValueError(f"has {len(unknown)} weight(s) no {name} head of the release has: {_first(unknown)}")
    last = f"{prefix}.{list(layers)[-1]}.bias"  # simple3fc(cls_fc_bias=False) has no classifier bias
    missing = [k for k in wanted if k not in weights and k != last]
    if missing:
        raise ValueError(f"lacks {len(missing)} weight(s) of the release's {name} head: {_first(missing)}")
    sd = {ours: weights[k].float().contiguous() for k, ours in wanted.items() if k in weights}
    if last not in weights:
        sd["cls_score.bias"] = torch.zeros(int(sd["cls_score.weight"].shape[0]))
    return name, sd


def convert_head(path: Path, detector: dict[str, Any]) -> dict[str, Any]:
    """The release's head file -> a ``simcal.head`` document bound to ``detector`` (a converted checkpoint, in
    memory); a one-sentence InputError naming ``path`` for anything that does not fit."""
    from simcal.calibrate.trainer import FORMAT, cache_fingerprint, validate_head
    from simcal.core.errors import input_error
    from simcal.detector.sources import read_source

    source = read_source(path, "mmdet1")
    try:
        name, sd = head_weights(source.weights)
    except ValueError as e:
        raise input_error(path, str(e), _FIX)
    det = detector["state_dict"]["roi_heads.box_head.fc6.weight"]
    dim, classes = int(det.shape[1]), len(detector["category_stats"])
    rows, width = int(sd["cls_score.weight"].shape[0]), int(sd["fc6.weight"].shape[1])
    if rows != classes + 1:
        raise input_error(path, f"scores {rows - 1} classes plus background, and the detector it is converted with "
                          f"scores {classes}", _FIX)
    if width != dim:
        raise input_error(path, f"takes {width}-d features, and the detector's RoI features are {dim}-d", _FIX)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    origin = {"source": "mmdet1", "head_file": str(path), "head_sha256": digest}
    doc = {
        "format": FORMAT,
        "head": name,
        "state_dict": sd,
        "head_kwargs": {"dim": dim, "num_classes": classes, "hidden": int(sd["fc6.weight"].shape[0])},
        "cache_fingerprint": cache_fingerprint({"detector_fingerprint": detector["detector_fingerprint"],
                                                "annotation_fingerprint": detector.get("annotation_fingerprint"),
                                                "params": origin}),
        "detector_fingerprint": detector["detector_fingerprint"],
        "categories": detector["category_stats"],
        "config": {"head": name, "converted_from": str(path), "source_framework": "mmdet1"},
        "steps": 0,
        "train_info": {**origin, **{k: v for k, v in source.meta.items()
                                    if isinstance(v, (str, int, float, bool)) and k != "config"}},
    }
    try:
        validate_head(doc)
    except ValueError as e:
        raise input_error(path, str(e), _FIX)
    return doc


__all__ = ["LAYOUTS", "convert_head", "head_weights"]
