"""The head trainer: retrain a classification head on sampler batches read from the cache.

Released-code optimisation (docs/design.md §5): plain SGD, lr 0.01, no momentum, no
weight decay, lr x0.1 and x0.01 late in training; cross-entropy over C+1 classes
(paper Eq. 1) or one of the shared long-tail losses. Batches are drawn ``LOOKAHEAD`` steps
before they are read and the reader is told their rows then, so a cold store's reads
overlap the steps between; store reads also run in a background thread where a core is
free for it (``FeatureReader.prefetch``). The same seed gives the same head either way.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

FORMAT = "simcal.head/1"


@dataclass
class CalibConfig:
    head: str = "3fc_ft"
    sampler: str = "bilevel"
    loss: str = "ce"
    steps: int = 1000
    lr: float = 0.01
    lr_steps: tuple[float, ...] = (0.75, 0.92)
    classes_per_batch: int = 16
    images_per_class: int = 1
    bg_ratio: float = 1.0
    batch_rows: int = 256
    seed: int = 0
    amp: bool = False
    loss_kwargs: dict[str, Any] = field(default_factory=dict)


def feature_dtype(amp: bool) -> torch.dtype:
    """What a reader hands the trainer: bfloat16 under ``--amp`` (autocast's cast, done once at preload)."""
    return torch.bfloat16 if amp else torch.float32


def config_dict(cfg: CalibConfig) -> dict[str, Any]:
    """The JSON form of a configuration, as head checkpoints and sweep rows record it."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


def cache_fingerprint(attrs: dict[str, Any]) -> str:
    """Identity of a cache's content: detector, annotations and extraction parameters."""
    key = {k: attrs.get(k) for k in ("detector_fingerprint", "annotation_fingerprint", "params", "schema_version")}
    return "sha256:" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def train_head(
    cache,
    cfg: CalibConfig,
    device: torch.device | str = "cpu",
    reader=None,
    index=None,
    log: Callable[[dict[str, Any]], None] | None = None,
    progress: Any = None,
    source: Any = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train one head; ``reader``/``index`` may be shared across a sweep (the cache is read once).

    ``cache`` may be a :class:`DetectorSpec` with an online ``source`` (``source.sample() -> (x, y)``)
    instead of cache batches.
    """
    from simcal.calibrate.samplers import CacheIndex
    from simcal.extract.reader import FeatureReader, prefetch

    device = torch.device(device)
    head = initial_head(cache, cfg, device)
    if source is None:
        reader = reader or FeatureReader(cache, "auto", device, feature_dtype(cfg.amp))
        index = index or CacheIndex.from_cache(cache)
        produce = batch_stream(cfg, index, reader)
    else:
        def produce():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                x, y = source.sample()
            return len(y), x.float(), y
    loss_fn = head_loss(cache, cfg)
    # Plain SGD (no momentum, no weight decay) by hand: p -= lr * grad is torch.optim.SGD's update to the bit,
    # and constructing a torch.optim optimizer imports torch._dynamo, seconds of every calibrate process.
    trainable = [p for p in head.parameters() if p.requires_grad]

    t0 = time.perf_counter()
    head.train()
    # Store reads may overlap compute in a thread (FeatureReader.prefetch says when). The online
    # source runs the detector: it stays on this thread.
    threaded = source is None and getattr(reader, "prefetch", False)
    batches = prefetch(produce) if threaded else iter(produce, None)
    for step in range(cfg.steps):
        n_rows, x, y = next(batches)
        if not cfg.amp:
            x = x.float()  # a bfloat16 reader shared with --amp runs
        if not trainable:  # nearest class mean: accumulate, no gradient (always float32)
            x = x.float()
            head.accumulate(x, y)
            loss = torch.zeros(())
            with torch.no_grad():
                logits = head(x)
        else:
            # --amp: bfloat16 matmuls (fp32 weights and loss), where GPUs and BF16-capable CPUs are fastest
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                logits = head(x)
            loss = loss_fn(logits.float(), y)
            for p in trainable:
                p.grad = None
            loss.backward()
            with torch.no_grad():
                lr = cfg.lr * lr_factor(cfg, step)  # the schedule's drops at fractions of cfg.steps
                for p in trainable:
                    p.add_(p.grad, alpha=-lr)
        # accuracies cost a few syncs: only where they are shown (log lines, every 10th bar update)
        show = shown(step, cfg.steps)
        if show and not bool(torch.isfinite(loss)):
            raise diverged(f"the loss is {loss.item()} at step {step + 1}")
        if show or (progress is not None and step % 10 == 0):
            fg_acc, bg_acc = batch_accuracy(logits, y)
            if progress is not None:
                progress.set_postfix(loss=f"{loss.item():.3f}", fg_acc=f"{fg_acc:.2f}", bg_acc=f"{bg_acc:.2f}",
                                     refresh=False)
        if log is not None and show:
            log({"step": step + 1, "loss": loss.item(), "fg_acc": fg_acc, "bg_acc": bg_acc,
                 "lr": cfg.lr * lr_factor(cfg, step + 1) if trainable else 0.0, "rows": int(n_rows)})
        if progress is not None:
            progress.update(1)
    if threaded:
        batches.close()
    bad = non_finite_weights(head, cfg.steps)
    if bad is not None:
        raise bad
    head.eval()
    info = {"steps": cfg.steps, "seconds": time.perf_counter() - t0,
            "steps_per_s": cfg.steps / max(time.perf_counter() - t0, 1e-9)}
    return head, info


def initial_head(cache, cfg: CalibConfig, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The head a run starts from: built under ``cfg.seed``, with the detector's layers copied where it takes them."""
    from simcal.calibrate.heads import build_head, init_from_detector

    det = cache.detector_head()
    num_classes = len(cache.attrs["categories"])
    hidden = int(det["fc6.weight"].shape[0])
    torch.manual_seed(cfg.seed)
    return init_from_detector(build_head(cfg.head, cache.dim, num_classes, hidden), cfg.head, det).to(device)


def head_loss(cache, cfg: CalibConfig):
    """The configuration's classification loss, with the cache's train instance counts."""
    from simcal.detector.losses import build_classification_loss

    counts = [c["instance_count"] for c in cache.attrs["categories"]]
    return build_classification_loss(cfg.loss, counts, **cfg.loss_kwargs)


#: What fixes a run's batch stream besides the cache: the sampler and its arguments.
STREAM_FIELDS = ("sampler", "seed", "classes_per_batch", "images_per_class", "bg_ratio", "batch_rows")
#: Batches drawn ahead of the one read: the reader is asked for their rows (``will_need``) while the steps
#: before them compute, so reads from a cold store overlap training without a thread.
LOOKAHEAD = 2


def batch_stream(cfg: CalibConfig, index, reader) -> Callable[[], tuple[int, torch.Tensor, torch.Tensor]]:
    """``produce() -> (rows, (B, D) features, (B,) labels)``: the configuration's batches, one per call.

    Batches are drawn ``LOOKAHEAD`` calls ahead: the same batches in the same order, read a little later.
    """
    from simcal.calibrate.samplers import build_sampler

    sampler = build_sampler(cfg.sampler, index, **{k: getattr(cfg, k) for k in STREAM_FIELDS[1:]})
    drawn: deque = deque()

    def produce():
        while len(drawn) <= LOOKAHEAD:
            drawn.append(sampler.sample().rows)
            reader.will_need(drawn[-1])
        rows = drawn.popleft()
        x, y = reader.read(rows)
        return len(rows), x, y

    return produce


def lr_factor(cfg: CalibConfig, step: int) -> float:
    """The lr multiplier of update ``step`` (0-based): x0.1 at each of ``cfg.lr_steps``, fractions of ``cfg.steps``."""
    return 0.1 ** sum(step >= m for m in [int(f * cfg.steps) for f in cfg.lr_steps])


def shown(step: int, steps: int) -> bool:
    """Whether update ``step`` (0-based) of ``steps`` is logged (and its loss checked): every 50th, and the last."""
    return (step + 1) % 50 == 0 or step + 1 == steps


@torch.no_grad()
def batch_accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Foreground and background accuracy of ``(B, C+1)`` logits on ``(B,)`` labels (nan where a side is empty)."""
    pred = logits.argmax(1)
    fg = y > 0
    fg_acc = (pred[fg] == y[fg]).float().mean().item() if fg.any() else float("nan")
    bg_acc = (pred[~fg] == 0).float().mean().item() if (~fg).any() else float("nan")
    return fg_acc, bg_acc


def non_finite_weights(head: torch.nn.Module, steps: int) -> Exception | None:
    """The refusal for a head whose weights hold NaN or infinity after ``steps`` updates, else None."""
    from simcal.detector.checkpoint import first_non_finite

    bad = first_non_finite(head.state_dict())
    return None if bad is None else diverged(f"the head's {bad} is not finite after {steps} steps")


def diverged(what: str) -> Exception:
    """Training that produced NaN or infinity is refused: no head is written, the run says why in one sentence."""
    from simcal.core.errors import input_error

    return input_error(None, f"calibration diverged: {what}, so no head was written",
                       "lower --lr, or check the cache with 'simcal cache verify'")


class DetectorSpec:
    """What a head needs to know about its detector when there is no cache (the online source)."""

    def __init__(self, model: torch.nn.Module, ckpt: dict[str, Any], path: str, annotation_fingerprint: str) -> None:
        from simcal.detector.checkpoint import classifier_weights

        self.dim = int(model.roi_heads.box_head.fc6.in_features)
        self.path = Path(path)
        self.attrs = {"categories": ckpt["category_stats"], "detector_fingerprint": ckpt["detector_fingerprint"],
                      "annotation_fingerprint": annotation_fingerprint, "params": {"source": "online"},
                      "source": "online"}
        self._head = classifier_weights(model)

    def detector_head(self) -> dict[str, np.ndarray]:
        return self._head


def head_checkpoint(head: torch.nn.Module, cfg: CalibConfig, cache, info: dict[str, Any]) -> dict[str, Any]:
    det = cache.detector_head()
    return {
        "format": FORMAT,
        "head": cfg.head,
        "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "head_kwargs": {"dim": cache.dim, "num_classes": len(cache.attrs["categories"]),
                        "hidden": int(det["fc6.weight"].shape[0])},
        "cache_fingerprint": cache_fingerprint(cache.attrs),
        "detector_fingerprint": cache.attrs["detector_fingerprint"],
        # a cascade's box stage whose cache it learnt from (simcal extract --stage); None: a one-stage detector
        "stage": (cache.attrs.get("params") or {}).get("stage"),
        "categories": cache.attrs["categories"],
        "config": config_dict(cfg),
        "steps": cfg.steps,
        "train_info": info,
    }


def save_head(ckpt: dict[str, Any], path: str | os.PathLike) -> Path:
    """Atomic write (temporary name, then rename), as for detector checkpoints."""
    from simcal.detector.checkpoint import save_checkpoint

    return save_checkpoint(ckpt, path)


_HEAD_FIX = "pass a head written by 'simcal calibrate' (calibrate again if this one was edited or damaged)"
_HEAD_FIELDS = (("head", str, "a string"), ("state_dict", dict, "a dict of tensors"), ("head_kwargs", dict, "a dict"),
                ("detector_fingerprint", str, "a string"), ("cache_fingerprint", str, "a string"),
                ("categories", list, "a list"), ("config", dict, "a dict"))
_HEAD_KWARGS = ("dim", "num_classes", "hidden")


def validate_head(ck: dict[str, Any]) -> None:
    """The whole head document against the schema, weights included; ValueError naming the first problem.

    The declared sizes only build a meta-device head whose shapes must equal the tensors in the
    file, so a size the weights do not back is refused before anything is allocated.
    """
    from simcal.calibrate.heads import build_head
    from simcal.core.checks import POSITIVE_INT, check, field
    from simcal.core.names import HEADS
    from simcal.detector.checkpoint import check_category_stats, check_weights, meta_state

    for key, kind, what in _HEAD_FIELDS:
        field(ck, key, kind, what)
    name, kw = ck["head"], ck["head_kwargs"]
    if name not in HEADS:
        raise ValueError(f"has unknown head {name!r} (this SimCal builds {', '.join(HEADS)})")
    if sorted(kw) != sorted(_HEAD_KWARGS):
        raise ValueError(f"has head_kwargs {sorted(map(str, kw))}, not {list(_HEAD_KWARGS)}")
    for k in _HEAD_KWARGS:
        check(kw[k], POSITIVE_INT, f"head_kwargs {k}")
    ids = check_category_stats(ck["categories"], "categories")
    if len(ids) != kw["num_classes"]:
        raise ValueError(f"has {len(ids)} categories but head_kwargs num_classes {kw['num_classes']}")
    model = f"a {name!r} head of dim {kw['dim']}, hidden {kw['hidden']} and {kw['num_classes']} classes"
    check_weights(ck["state_dict"], meta_state(lambda: build_head(name, kw["dim"], kw["num_classes"], kw["hidden"]),
                                               model), model)


def load_head(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a calibrated head (weights_only); one-sentence InputError for foreign, malformed or corrupt files."""
    from simcal.calibrate.heads import build_head
    from simcal.core.errors import input_error
    from simcal.detector.checkpoint import load_torch_document

    path = Path(path)
    ck = load_torch_document(path, "head checkpoint", "pass a head written by 'simcal calibrate'")
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise input_error(path, "is not a SimCal head checkpoint", "pass a head written by 'simcal calibrate'")
    try:
        validate_head(ck)
    except ValueError as e:
        raise input_error(path, str(e), _HEAD_FIX)
    kw = ck["head_kwargs"]
    head = build_head(ck["head"], kw["dim"], kw["num_classes"], kw["hidden"])
    head.load_state_dict(ck["state_dict"])
    return head.eval(), ck


def check_head_fits(hck: dict[str, Any], head_path: str | os.PathLike, ckpt: dict[str, Any],
                    ckpt_path: str | os.PathLike, dim: int) -> None:
    """Refuse a head not calibrated on this detector: its recorded fingerprint against the one
    :func:`~simcal.detector.checkpoint.read_checkpoint` recomputed from the weights, then its
    input width and categories, which a copied fingerprint alone does not make right."""
    from simcal.core.errors import input_error

    fix = "extract a cache with this checkpoint and calibrate again"
    if hck["detector_fingerprint"] != ckpt["detector_fingerprint"]:
        raise input_error(head_path, f"was calibrated on features of another detector than {ckpt_path} "
                          "(fingerprints of the weights differ)", fix)
    ids = [c["id"] for c in hck["categories"]]
    if ids != list(ckpt["categories"]["ids"]) or hck["head_kwargs"]["dim"] != dim:
        raise input_error(head_path, f"scores {len(ids)} categories from {hck['head_kwargs']['dim']}-d features, "
                          f"but {ckpt_path} has {len(ckpt['categories']['ids'])} categories and {dim}-d features", fix)
