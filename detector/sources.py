"""Reading a detector trained elsewhere: its weights as the source framework names them, and its metadata.

The first step of ``simcal convert`` (renaming to torchvision's layout comes after). Formats:

- ``detectron2``: a model-zoo ``.pkl``, a plain pickle ``{"model": {name: ndarray}, "__author__": ...}``
  (read by :mod:`simcal.core.safe_pickle`, which runs nothing), or a Checkpointer ``.pth``,
  ``torch.save({"model": state_dict, "iteration": ..., "optimizer": ..., ...})``.
- ``mmdet`` (mmdetection v2/v3) and ``mmdet1`` (v1, the SimCal authors' release):
  ``{"meta": {...}, "state_dict": ..., ...}``; ``meta`` may carry the class names (v2 ``CLASSES``,
  v3 ``dataset_meta['classes']``) and the training config's source text (v2 ``config``, v3 ``cfg``).
  mmengine (v3) adds ``message_hub`` and ``param_schedulers`` holding mmengine objects: they are read
  as inert stand-ins (:class:`Inert`), mmengine is never imported, and any other class the file names
  is refused.

Every ``.pth`` is read with ``torch.load(weights_only=True)``. A ``module.`` prefix (a model saved
inside DistributedDataParallel) is removed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simcal.core.errors import input_error
from simcal.core.safe_pickle import ALLOWED_GLOBALS, load_weights_pickle

FRAMEWORKS = ("detectron2", "mmdet", "mmdet1")
#: Classes of training bookkeeping (not weights) that mmengine/mmcv checkpoints pickle.
INERT_PREFIXES = ("mmengine.", "mmcv.")


class Inert:
    """Stands in for an mmengine/mmcv bookkeeping object (a log buffer, a scheduler state): keeps its state, does
    nothing, and never imports the class it replaces."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


@dataclass
class SourceCheckpoint:
    """``weights``: name -> tensor as the source spells it; ``meta``: what the file says about itself."""

    framework: str
    path: Path
    weights: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


def read_source(path: str | os.PathLike, framework: str) -> SourceCheckpoint:
    """Read ``path`` as a checkpoint of ``framework``; every problem is one InputError naming the file."""
    path = Path(path)
    if framework not in FRAMEWORKS:
        raise input_error(None, f"unknown source framework {framework!r}", f"choose from {', '.join(FRAMEWORKS)}")
    if path.suffix == ".pkl":
        if framework != "detectron2":
            raise input_error(path, f"is a pickle, which {framework} never writes",
                              "pass its .pth checkpoint, or --from detectron2 for a detectron2 model-zoo file")
        return _detectron2(path, load_weights_pickle(path, "a detectron2 model-zoo file"))
    doc = _torch_load(path)
    return _detectron2(path, doc) if framework == "detectron2" else _mmdet(path, doc, framework)


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; mmengine/mmcv bookkeeping read as :class:`Inert`, numpy as numpy."""
    from simcal.detector.checkpoint import load_torch_document

    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # missing, or not a torch zip file: load_torch_document says which
        unsafe = []
    numpy_allowed = {f"{m}.{n}" for m, n in ALLOWED_GLOBALS}
    refused = [g for g in unsafe if not g.startswith(INERT_PREFIXES) and g not in numpy_allowed]
    if refused:
        raise input_error(path, f"names the global {refused[0]}, which a checkpoint of weights never needs, so it "
                          "was refused before anything in it ran", "convert a file from a source you trust")
    allowed = [(Inert, g) for g in unsafe if g.startswith(INERT_PREFIXES)]
    allowed += [(_numpy_global(g), g) for g in unsafe if g in numpy_allowed]
    with torch.serialization.safe_globals(allowed):
        return load_torch_document(path, "torch checkpoint", "pass the .pth file the framework saved")


def _numpy_global(qualname: str) -> Any:
    import importlib

    module, name = qualname.rsplit(".", 1)
    target = ALLOWED_GLOBALS[(module, name)]
    return getattr(importlib.import_module(target[0]), target[1])


def _weights(path: Path, raw: Any, key: str) -> dict[str, torch.Tensor]:
    """The ``key`` entry of the file as name -> tensor (numpy arrays converted), ``module.`` removed."""
    if not isinstance(raw, dict) or not raw:
        raise input_error(path, f"has no weights under '{key}' (a {type(raw).__name__})",
                          "pass the checkpoint the framework saved")
    out = {}
    for name, value in raw.items():
        if not isinstance(name, str):
            raise input_error(path, f"has a weight named {name!r}, not a string")
        if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise input_error(path, f"has '{name}' under '{key}' that is a {type(value).__name__}, not an array")
        out[name[len("module."):] if name.startswith("module.") else name] = value
    return out


def _detectron2(path: Path, doc: Any) -> SourceCheckpoint:
    if not isinstance(doc, dict) or "model" not in doc:
        hint = "--from mmdet or --from mmdet1" if isinstance(doc, dict) and "state_dict" in doc else None
        raise input_error(path, "is not a detectron2 checkpoint (no 'model' entry)",
                          f"it looks like mmdetection's: use {hint}" if hint else "pass model_final.pkl or .pth")
    meta = {k: doc[k] for k in ("__author__", "iteration", "matching_heuristics") if k in doc}
    return SourceCheckpoint("detectron2", path, _weights(path, doc["model"], "model"), meta)


def _mmdet(path: Path, doc: Any, framework: str) -> SourceCheckpoint:
    if not isinstance(doc, dict) or "state_dict" not in doc:
        hint = "it looks like detectron2's: use --from detectron2" if isinstance(doc, dict) and "model" in doc else \
            "pass the .pth file mmdetection saved"
        raise input_error(path, "is not an mmdetection checkpoint (no 'state_dict' entry)", hint)
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    version = str(meta.get("mmdet_version", ""))
    if version and (version.startswith("1.") != (framework == "mmdet1")):
        other = "mmdet1" if version.startswith("1.") else "mmdet"
        raise input_error(path, f"was saved by mmdetection {version}", f"convert it with --from {other}")
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    classes = dataset_meta.get("classes", meta.get("CLASSES"))
    config = meta.get("config", meta.get("cfg"))  # the training config's source text: v2 'config', mmengine 'cfg'
    info = {"mmdet_version": version or None, "classes": list(classes) if isinstance(classes, (list, tuple)) else None,
            "epoch": meta.get("epoch"), "iter": meta.get("iter"), "config": config if isinstance(config, str) else None}
    return SourceCheckpoint(framework, path, _weights(path, doc["state_dict"], "state_dict"), info)


__all__ = ["FRAMEWORKS", "Inert", "SourceCheckpoint", "read_source"]
