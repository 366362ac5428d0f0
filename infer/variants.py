"""Several scoring variants from one detector forward (``simcal infer --sweep``).

A variant is one way of scoring the RoIs (mode, head, T, post-hoc rule, props-gt) plus
its detection cap. The backbone and the RPN run once per batch; each variant then runs
the RoI heads with its own ``score_fn`` and the detector's own box/mask post-processing,
so a variant's detections are exactly those a single ``simcal infer`` with the same
flags writes (tested). Fifty variants cost one backbone, RPN and box-head pass plus fifty
rounds of NMS and mask head.

Sweep file: a JSON list of objects, each ``{"name": str}`` plus any of ``mode``,
``head_ckpt``, ``T``, ``posthoc``, ``gamma``, ``props_gt``, ``max_dets`` (the single-run
flags and defaults).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

from simcal.core.checks import NONNEG, POSITIVE_INT, check
from simcal.core.errors import input_error
from simcal.core.jsonio import read_json
from simcal.core.names import MODES, POSTHOC
from simcal.data.categories import CategoryMapping

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


#: The numeric fields of a variant and their rules (the same as the single-run flags of ``simcal infer``).
VARIANT_NUMBERS = {"T": NONNEG, "gamma": NONNEG, "max_dets": POSITIVE_INT}


@dataclass
class VariantSpec:
    name: str = "results"
    mode: str = "orig"
    head_ckpt: Optional[str] = None
    T: float = 300
    posthoc: str = "none"
    gamma: float = 1.0
    props_gt: bool = False
    max_dets: int = 300
    #: A cascade detector's heads, one per box stage, in stage order; None where a stage keeps its own classifier
    #: (``[None, None, "h2.pth"]`` calibrates the last stage only). Replaces ``head_ckpt``.
    stage_heads: Optional[list] = None

    def head_files(self) -> list[str]:
        """Every head file this variant reads."""
        return [h for h in (self.stage_heads or [self.head_ckpt]) if h]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_variants(path: str | Path) -> list[VariantSpec]:
    """Parse and check a sweep file; every problem is one sentence naming the file."""
    doc = read_json(path, "a JSON list of variants")
    if not isinstance(doc, list) or not doc or not all(isinstance(v, dict) for v in doc):
        raise input_error(path, "must be a non-empty JSON list of objects", 'e.g. [{"name": "sel", "mode": "sel", '
                          '"head_ckpt": "head.pth"}]')
    fields = set(VariantSpec.__dataclass_fields__)
    specs = []
    for k, v in enumerate(doc):
        unknown = sorted(set(v) - fields)
        if unknown:
            raise input_error(path, f"variant {k} has unknown keys {unknown}", f"use only {', '.join(sorted(fields))}")
        spec = VariantSpec(**v)
        if not isinstance(spec.name, str) or not _NAME.match(spec.name):
            raise input_error(path, f"variant {k} has name {spec.name!r}, which is not a plain folder name",
                              "use letters, digits, '_', '-', '.'")
        check_variant(spec, path)
        specs.append(spec)
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise input_error(path, f"repeats the variant names {dup}", "give every variant its own name")
    return specs


def check_variant(spec: VariantSpec, source: str | Path | None = None) -> None:
    """Types and numbers first (a list where a name belongs must not reach a dict lookup), then meaning."""
    what = f"variant {spec.name!r}: " if source is not None else ""
    for key in ("mode", "posthoc", "head_ckpt"):
        if getattr(spec, key) is not None and not isinstance(getattr(spec, key), str):
            raise input_error(source, f"{what}{key} must be a string, not {getattr(spec, key)!r}")
    if not isinstance(spec.props_gt, bool):
        raise input_error(source, f"{what}props_gt must be true or false, not {spec.props_gt!r}")
    for key, rule in VARIANT_NUMBERS.items():
        try:
            check(getattr(spec, key), rule, key)
        except ValueError as e:
            raise input_error(source, f"{what}{e}")
    if spec.mode not in MODES:
        raise input_error(source, f"{what}unknown mode {spec.mode!r}", f"choose from {', '.join(MODES)}")
    if spec.posthoc not in POSTHOC:
        raise input_error(source, f"{what}unknown posthoc {spec.posthoc!r}", f"choose from {', '.join(POSTHOC)}")
    if spec.stage_heads is not None:
        _check_stage_heads(spec, source, what)
    if spec.mode != "orig" and not spec.head_files():
        raise input_error(source, f"{what}mode {spec.mode} needs a calibrated head", "give --head-ckpt HEAD.pth")
    if spec.props_gt and (spec.mode != "orig" or spec.head_ckpt or spec.posthoc != "none"):
        raise input_error(source, f"{what}props-gt replaces the classifier, so it takes no head, mode or posthoc",
                          "run it with --mode orig and no --head")


def _check_stage_heads(spec: VariantSpec, source, what: str) -> None:
    """``stage_heads``: a list of head files and nulls, at least one file, and nothing else that names a head or
    re-scores the detector's own classifier."""
    heads = spec.stage_heads
    if not isinstance(heads, list) or not heads or not all(h is None or isinstance(h, str) for h in heads):
        raise input_error(source, f"{what}stage_heads must be a list of head files or null, one per cascade stage, "
                          f"not {heads!r}", 'e.g. "stage_heads": [null, null, "stage2.pth"]')
    if not any(heads):
        raise input_error(source, f"{what}stage_heads names no head", "give at least one stage a head file")
    if spec.head_ckpt or spec.posthoc != "none" or spec.props_gt:
        raise input_error(source, f"{what}stage_heads goes with a mode and T only (no head_ckpt, posthoc or "
                          "props_gt)")


def check_stages(specs: list[VariantSpec], num_stages: int, arch: str, checkpoint) -> None:
    """Each variant against the detector: a cascade takes per-stage heads (``stage_heads`` / ``--head-ckpt`` one
    per stage) and no post-hoc rule; a one-stage detector takes no ``stage_heads``."""
    for spec in specs:
        what = f"variant {spec.name!r}" if spec.name != "results" else "this run"
        if num_stages == 1 and spec.stage_heads is not None:
            raise input_error(checkpoint, f"is a {arch} detector with one box stage, and {what} gives stage_heads",
                              "give the head as head_ckpt (--head-ckpt HEAD.pth)")
        if num_stages == 1:
            continue
        if spec.head_ckpt:
            raise input_error(checkpoint, f"is a {arch} detector with {num_stages} box stages, and {what} gives "
                              "one head", f"give one head per stage, in order (--head-ckpt with {num_stages} files, "
                              "'orig' for a stage that keeps its classifier; stage_heads in a sweep)")
        if spec.stage_heads is not None and len(spec.stage_heads) != num_stages:
            raise input_error(checkpoint, f"has {num_stages} box stages, and {what} gives "
                              f"{len(spec.stage_heads)} stage heads", f"give {num_stages}, in stage order")
        if spec.posthoc != "none" or spec.props_gt:
            raise input_error(checkpoint, f"is a {arch} detector: {what} asks for "
                              f"{'props-gt' if spec.props_gt else spec.posthoc}, which SimCal defines for "
                              "one-stage detectors only", "drop it, or use a one-stage detector")


def build_score_fn(spec: VariantSpec, counts: list[int], heads: dict[str, torch.nn.Module],
                   cls_score: torch.nn.Linear) -> Optional[Callable]:
    from simcal.infer.scoring import PropsGT, make_cascade_score_fn, make_score_fn

    if spec.props_gt:
        return PropsGT()
    if spec.stage_heads is not None:
        return make_cascade_score_fn(counts, spec.mode, [heads[h] if h else None for h in spec.stage_heads], spec.T)
    return make_score_fn(counts, spec.mode, heads.get(spec.head_ckpt) if spec.head_ckpt else None, spec.T, spec.posthoc,
                         spec.gamma, cls_score)


@torch.no_grad()
def predict_variants(
    model: torch.nn.Module,
    batches: Iterable[tuple[list[torch.Tensor], list[dict[str, Any]]]],
    mapping: CategoryMapping,
    variants: dict[str, tuple[Optional[Callable], int]],
    device: torch.device | str = "cpu",
    progress: Any = None,
) -> dict[str, list[dict[str, Any]]]:
    """LVIS results per variant; ``variants`` maps a name to ``(score_fn or None, detections per image)``.

    The body is torchvision's ``GeneralizedRCNN.forward`` (eval); the RoI heads score the
    shared proposals once per variant (:meth:`LongTailRoIHeads.forward_variants`).
    """
    from simcal.detector.predict import detections_to_results

    model.eval()
    needs_gt = any(hasattr(fn, "bind") for fn, _ in variants.values())
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for images, targets in batches:
        images = [im.to(device) for im in images]
        original_sizes = [tuple(im.shape[-2:]) for im in images]
        gt = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets] if needs_gt else None
        image_list, gt = model.transform(images, gt)
        features = model.backbone(image_list.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        proposals, _ = model.rpn(image_list, features)
        for fn, _ in variants.values():
            if hasattr(fn, "bind"):
                fn.bind(proposals, gt)
        per_variant = model.roi_heads.forward_variants(features, proposals, image_list.image_sizes,
                                                       list(variants.values()))
        for name, dets in zip(variants, per_variant):
            dets = model.transform.postprocess(dets, image_list.image_sizes, original_sizes)
            for det, t in zip(dets, targets):
                results[name].extend(detections_to_results(det, t["image_id"], mapping))
        if progress is not None:
            progress.update(len(images))
    return results
