"""Self-describing detector checkpoints.

A checkpoint is a plain dict (loadable with ``torch.load(weights_only=True)``):

    format                 "simcal.detector/1"
    arch, builder_kwargs   how to rebuild the model: build(arch, C, **builder_kwargs)
    state_dict             the weights
    categories             CategoryMapping.to_dict() of the train file (label k <-> category id)
    category_stats         per class (label order): id, name, instance_count, image_count, frequency
    annotation_fingerprint sha256 of the train annotation file
    detector_fingerprint   sha256 over arch, kwargs and weights (caches and heads refer to it)
    train_args             the training command's resolved arguments
    iteration              training iterations done
    train_state            (resume files only) optimizer / scheduler / scaler state

Writes go to a temporary name and are renamed, so a checkpoint is whole or absent.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simcal.core.errors import input_error
from simcal.data.categories import CategoryMapping

FORMAT = "simcal.detector/1"
_REQUIRED = ("format", "arch", "builder_kwargs", "state_dict", "categories", "detector_fingerprint")


def detector_fingerprint(arch: str, builder_kwargs: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 of arch + kwargs + every tensor's name, dtype, shape and bytes (in key order)."""
    h = hashlib.sha256()
    h.update(json.dumps({"arch": arch, "kwargs": builder_kwargs}, sort_keys=True).encode())
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def make_checkpoint(
    model: torch.nn.Module,
    arch: str,
    builder_kwargs: dict[str, Any],
    mapping: CategoryMapping,
    category_stats: list[dict[str, Any]],
    annotation_fingerprint: str,
    train_args: dict[str, Any],
    iteration: int,
) -> dict[str, Any]:
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "format": FORMAT,
        "arch": arch,
        "builder_kwargs": dict(builder_kwargs),
        "state_dict": sd,
        "categories": mapping.to_dict(),
        "category_stats": category_stats,
        "annotation_fingerprint": annotation_fingerprint,
        "detector_fingerprint": detector_fingerprint(arch, builder_kwargs, sd),
        "train_args": train_args,
        "iteration": iteration,
    }


def classifier_weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The box head's fc6, fc7 and cls_score weights and biases as float32 arrays (what 3fc_ft starts from)."""
    heads = model.roi_heads
    layers = (("fc6", heads.box_head.fc6), ("fc7", heads.box_head.fc7), ("cls_score", heads.box_predictor.cls_score))
    return {f"{name}.{p}": getattr(mod, p).detach().float().cpu().numpy() for name, mod in layers
            for p in ("weight", "bias")}


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> Path:
    """Written atomically: a checkpoint is whole or absent."""
    from simcal.core.atomic import save_torch

    return save_torch(path, ckpt)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict, validated; one-sentence InputError for missing, corrupt or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "does not exist", "pass a checkpoint written by 'simcal train'")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle error, unsafe content: all mean "not ours"
        raise input_error(
            path, f"is not a readable checkpoint ({type(e).__name__}: truncated, corrupt or not a torch file)",
            "re-run 'simcal train' or copy the file again",
        )
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _REQUIRED):
        missing = [k for k in _REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
        raise input_error(path, f"is not a SimCal detector checkpoint (missing {missing[0]!r})",
                          "pass a checkpoint written by 'simcal train'")
    if ckpt["format"] != FORMAT:
        raise input_error(path, f"has checkpoint format {ckpt['format']!r}, this SimCal reads {FORMAT!r}")
    return ckpt


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the detector from a checkpoint: ``(model in eval mode, checkpoint dict)``."""
    from simcal.detector.builders import build

    ckpt = read_checkpoint(path)
    mapping = CategoryMapping.from_dict(ckpt["categories"])
    try:
        model = build(ckpt["arch"], mapping.num_classes, **ckpt["builder_kwargs"])
    except (ValueError, TypeError) as e:
        raise input_error(path, f"describes a model this SimCal cannot build ({e})")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise input_error(path, f"weights do not match its arch {ckpt['arch']!r} ({first})")
    return model.to(device).eval(), ckpt


def check_categories(ckpt: dict[str, Any], mapping: CategoryMapping, ckpt_path: str | os.PathLike,
                     ann_path: str | os.PathLike) -> None:
    """Refuse annotations whose categories differ from the ones the detector was trained on."""
    theirs = CategoryMapping.from_dict(ckpt["categories"])
    if theirs.ids != mapping.ids:
        diff = sorted(set(theirs.ids) ^ set(mapping.ids))
        raise input_error(
            ann_path, f"has {mapping.num_classes} categories but checkpoint {ckpt_path} was trained on "
            f"{theirs.num_classes}" + (f" (e.g. id {diff[0]} differs)" if diff else ""),
            "use annotations with the detector's category list",
        )
