"""Self-describing detector checkpoints.

A checkpoint is a plain dict (loadable with ``torch.load(weights_only=True)``):

    format                 "simcal.detector/1"
    arch, builder_kwargs   how to rebuild the model: build(arch, C, **builder_kwargs)
    state_dict             the weights
    categories             CategoryMapping.to_dict() of the train file (label k <-> category id)
    category_stats         per class (label order): id, name, instance_count, image_count, frequency
    annotation_fingerprint sha256 of the train annotation file
    detector_fingerprint   sha256 over arch, kwargs and weights (caches and heads refer to it);
                           recomputed from the weights whenever a checkpoint is read
    train_args             the training command's resolved arguments
    iteration              training iterations done
    train_state            (resume files only) optimizer / scheduler / scaler state

Writes go to a temporary name and are renamed, so a checkpoint is whole or absent. Reads
validate the whole document (types, categories, every tensor's shape against the
architecture, finite weights) before any module is allocated.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from simcal.core.checks import NONNEG_INT, check, field
from simcal.core.errors import input_error
from simcal.core.names import ARCHS
from simcal.data.categories import CategoryMapping

FORMAT = "simcal.detector/1"
_REQUIRED = ("format", "arch", "builder_kwargs", "state_dict", "categories", "category_stats", "detector_fingerprint")


def detector_fingerprint(arch: str, builder_kwargs: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 of arch + kwargs + every tensor's name, dtype, shape and bytes (in key order)."""
    h = hashlib.sha256()
    h.update(json.dumps({"arch": arch, "kwargs": builder_kwargs}, sort_keys=True).encode())
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy of the weights
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


def classifier_weights(model: torch.nn.Module, stage: int = 0) -> dict[str, np.ndarray]:
    """The box head's fc6, fc7 and cls_score weights and biases as float32 arrays (what 3fc_ft starts from);
    a cascade's ``stage``."""
    box_head, box_predictor = model.roi_heads.stage(stage)
    layers = (("fc6", box_head.fc6), ("fc7", box_head.fc7), ("cls_score", box_predictor.cls_score))
    return {f"{name}.{p}": getattr(mod, p).detach().float().cpu().numpy() for name, mod in layers
            for p in ("weight", "bias")}


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> Path:
    """Written atomically: a checkpoint is whole or absent."""
    from simcal.core.atomic import save_torch

    return save_torch(path, ckpt)


def load_torch_document(path: Path, what: str, fix: str) -> Any:
    """``torch.load(weights_only=True)`` of ``path``; a missing, corrupt or unsafe file is one InputError."""
    if not path.is_file():
        raise input_error(path, "does not exist", fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and containers only
    except Exception as e:  # truncated zip, pickle error, unsafe content: all mean "not ours"
        raise input_error(path, f"is not a readable {what} ({type(e).__name__}: truncated, corrupt or not a torch "
                          "file)", fix)


def category_mapping(categories: Any) -> CategoryMapping:
    """The checkpoint's ``categories`` ({"ids": [int], "names": [str]}) as a mapping; ValueError when malformed."""
    if not isinstance(categories, dict):
        raise ValueError(f"has 'categories' of type {type(categories).__name__}, not a dict of ids and names")
    ids = field(categories, "ids", list, "a list", "categories.")
    names = field(categories, "names", list, "a list", "categories.")
    if not ids or len(ids) != len(names):
        raise ValueError(f"has {len(ids)} category ids and {len(names)} names (need as many, at least one)")
    bad = next((k for k, (i, n) in enumerate(zip(ids, names)) if not _is_int(i) or not isinstance(n, str)), None)
    if bad is not None:
        raise ValueError(f"has category {bad} = ({ids[bad]!r}, {names[bad]!r}), not an integer id and a string name")
    if ids != sorted(set(ids)):
        raise ValueError("has category ids that repeat or are not ascending")
    return CategoryMapping(tuple(ids), tuple(names))


def check_category_stats(stats: Any, key: str, ids: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Per-class statistics (label order): one dict per class with int id, str name and counts.

    ``ids``: the category ids the list must follow (the detector's mapping); None: its own
    ids must be ascending and unique. Returns the ids.
    """
    if not isinstance(stats, list) or not stats or not all(isinstance(c, dict) for c in stats):
        raise ValueError(f"has {key!r} that is not a non-empty list of per-class dicts")
    for k, c in enumerate(stats):
        field(c, "id", int, "an integer", f"{key}[{k}].")
        field(c, "name", str, "a string", f"{key}[{k}].")
        field(c, "frequency", str, "a string", f"{key}[{k}].")
        for count in ("instance_count", "image_count"):
            check(field(c, count, int, "an integer", f"{key}[{k}]."), NONNEG_INT, f"{key}[{k}].{count}")
    own = tuple(c["id"] for c in stats)
    if ids is None and list(own) != sorted(set(own)):
        raise ValueError(f"has {key!r} whose ids repeat or are not ascending")
    if ids is not None and own != ids:
        raise ValueError(f"has {len(own)} {key!r} entries that do not follow its {len(ids)} categories")
    return own


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_weights(state_dict: Any, reference: dict[str, torch.Tensor], model: str) -> None:
    """The file's tensors are exactly ``reference``'s keys, shapes and kinds, and all finite.

    ``reference`` comes from a model built on the meta device: the sizes a file declares are
    compared with the tensors it holds before any real module is allocated.
    """
    if not isinstance(state_dict, dict):
        raise ValueError(f"has 'state_dict' of type {type(state_dict).__name__}, not a dict of tensors")
    bad = next((k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)
                or v.layout != torch.strided), None)
    if bad is not None:
        raise ValueError(f"has state_dict entry {bad!r} that is not a dense tensor")
    missing = [k for k in reference if k not in state_dict]
    extra = [k for k in state_dict if k not in reference]
    if missing or extra:
        name, what = (missing[0], "lacks") if missing else (extra[0], "has the unexpected")
        n = len(missing) + len(extra)
        raise ValueError(f"weights do not match {model} ({what} tensor {name!r}"
                         + (f", {n - 1} more keys differ)" if n > 1 else ")"))
    for k, ref in reference.items():
        t = state_dict[k]
        if tuple(t.shape) != tuple(ref.shape) or t.is_floating_point() != ref.is_floating_point():
            raise ValueError(f"weights do not match {model} ({k!r} is {t.dtype} {tuple(t.shape)}, it needs "
                             f"{ref.dtype} {tuple(ref.shape)})")
    bad = first_non_finite(state_dict)
    if bad is not None:
        raise ValueError(f"has non-finite weights (NaN or inf) in {bad!r}")


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding NaN or inf, or None."""
    return next((k for k, t in tensors.items()
                 if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())), None)


def meta_state(build_fn: Callable[[], torch.nn.Module], model: str) -> dict[str, torch.Tensor]:
    """The state dict a model would have, built on the meta device (shapes only, nothing allocated)."""
    try:
        with torch.device("meta"):
            return build_fn().state_dict()
    except (ValueError, TypeError, RuntimeError, OverflowError) as e:
        raise ValueError(f"describes {model} this SimCal cannot build ({str(e).splitlines()[0]})")


def validate_checkpoint(ckpt: dict[str, Any]) -> CategoryMapping:
    """The whole document against the schema, weights included; ValueError naming the first problem."""
    from simcal.detector.builders import build

    for key, kind, what in (("arch", str, "a string"), ("builder_kwargs", dict, "a dict"),
                            ("detector_fingerprint", str, "a string")):
        field(ckpt, key, kind, what)
    arch, kwargs = ckpt["arch"], ckpt["builder_kwargs"]
    if arch not in ARCHS:
        raise ValueError(f"has unknown arch {arch!r} (this SimCal builds {', '.join(ARCHS)})")
    bad = next((k for k, v in kwargs.items() if not isinstance(k, str) or not isinstance(v, _SCALARS)), None)
    if bad is not None:
        raise ValueError(f"has builder_kwargs entry {bad!r} that is not a name with a number, string or bool")
    if "backbone_weights" in kwargs:  # a file the builder would open: a checkpoint carries its weights itself
        raise ValueError("has builder_kwargs entry 'backbone_weights' (a file to read), which a checkpoint never "
                         "needs")
    mapping = category_mapping(ckpt["categories"])
    check_category_stats(ckpt["category_stats"], "category_stats", mapping.ids)
    model = f"its arch {arch!r} with {mapping.num_classes} categories"
    check_weights(ckpt["state_dict"], meta_state(lambda: build(arch, mapping.num_classes, **kwargs), model), model)
    return mapping


_SCALARS = (bool, int, float, str, type(None))
_FIX = "pass a checkpoint written by 'simcal train' (re-run it if this one was edited or damaged)"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict, validated whole; one-sentence InputError for missing, corrupt or foreign files.

    ``detector_fingerprint`` is recomputed from the weights in the file: what is stored there
    is not trusted, so heads and caches bind to the weights actually loaded.
    """
    path = Path(path)
    ckpt = load_torch_document(path, "checkpoint", "re-run 'simcal train' or copy the file again")
    if not isinstance(ckpt, dict):
        raise input_error(path, f"is not a SimCal detector checkpoint (a {type(ckpt).__name__}, not a dict)",
                          "pass a checkpoint written by 'simcal train'")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise input_error(path, f"is not a SimCal detector checkpoint (missing {missing[0]!r})",
                          "pass a checkpoint written by 'simcal train'")
    if ckpt["format"] != FORMAT:
        raise input_error(path, f"has checkpoint format {ckpt['format']!r}, this SimCal reads {FORMAT!r}")
    try:
        validate_checkpoint(ckpt)
    except ValueError as e:
        raise input_error(path, str(e), _FIX)
    ckpt["detector_fingerprint"] = detector_fingerprint(ckpt["arch"], ckpt["builder_kwargs"], ckpt["state_dict"])
    return ckpt


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the detector from a checkpoint: ``(model in eval mode, checkpoint dict)``.

    :func:`read_checkpoint` has checked every tensor against the architecture, so building and
    loading cannot fail on the file's content.
    """
    from simcal.detector.builders import build

    ckpt = read_checkpoint(path)
    mapping = CategoryMapping.from_dict(ckpt["categories"])
    model = build(ckpt["arch"], mapping.num_classes, **ckpt["builder_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
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
