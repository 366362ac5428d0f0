"""Train the heads that share a batch stream together: one draw and one read of the features per step for all.

Sweep configurations that agree on the sampler, its seed and batch settings (and ``--amp``) draw the
same batches: :func:`stream_key` says which, :func:`group_configs` groups them, and :func:`train_group`
trains a group in one loop. Each step draws one batch, reads its ``(B, D)`` features once, and then

- the MLP heads of each shape (``linear``; ``2fc_rand``; ``3fc_rand`` and ``3fc_ft``) take one step
  together as a :class:`~simcal.calibrate.stacked.StackedMLP`: ``(H, B, K)`` logits, each head's own loss
  on its ``(B, K)`` slice, one backward, each head's own lr;
- ``2fc_ncm`` heads (no gradient) accumulate the batch, each on its own, as the sequential trainer does.

Every head keeps what :func:`~simcal.calibrate.trainer.train_head` would give it: its initialisation
(:func:`~simcal.calibrate.trainer.initial_head`), loss, lr and lr schedule, whose drops are fractions of
*its own* steps; a head leaves its stack after its last step, so a configuration that differs only in
``steps`` is trained to its own end, never a snapshot of a longer run. Its log lines, divergence check
and refusal are the sequential trainer's too. tests/calibrate/test_batched.py holds the two paths to
the same weights (max abs difference <= 1e-5; the stack's fused first-layer update rounds apart from SGD's).

Shapes: H heads of a stack, B rows of a batch, D feature width, K = C+1 logits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from simcal.calibrate.heads import MLPHead
from simcal.calibrate.stacked import StackedMLP
from simcal.calibrate.trainer import (
    STREAM_FIELDS,
    CalibConfig,
    batch_accuracy,
    batch_stream,
    diverged,
    head_loss,
    initial_head,
    lr_factor,
    non_finite_weights,
    shown,
)


def stream_key(cfg: CalibConfig) -> tuple:
    """What two configurations must share to draw the same batches and read them alike."""
    return tuple(getattr(cfg, k) for k in STREAM_FIELDS) + (cfg.amp,)


def group_configs(configs: Sequence[CalibConfig]) -> list[list[int]]:
    """Positions of ``configs`` grouped by :func:`stream_key`, groups in order of their first member."""
    groups: dict[tuple, list[int]] = {}
    for n, c in enumerate(configs):
        groups.setdefault(stream_key(c), []).append(n)
    return list(groups.values())


@dataclass
class Trained:
    """One head of a group: the trained head (eval mode) or why there is none, its info and log lines."""

    head: torch.nn.Module | None
    info: dict[str, Any]
    log: list[dict[str, Any]] = field(default_factory=list)
    error: Exception | None = None


def train_group(cache, cfgs: Sequence[CalibConfig], device: torch.device | str, reader, index,
                progress: Any = None) -> list[Trained]:
    """Train ``cfgs`` (one :func:`stream_key`) over one batch stream; one :class:`Trained` per configuration.

    A head that diverges stops there and carries the sequential trainer's refusal in ``error``;
    the others train on.
    """
    from simcal.extract.reader import prefetch

    keys = {stream_key(c) for c in cfgs}
    if len(keys) != 1:
        raise ValueError(f"configurations of {len(keys)} batch streams do not train together")
    device = torch.device(device)
    heads = [initial_head(cache, c, device) for c in cfgs]
    losses = [head_loss(cache, c) for c in cfgs]
    out = [Trained(None, {"steps": c.steps}) for c in cfgs]
    by_shape: dict[int, list[int]] = {}  # hidden layers -> positions of the MLP heads with that many
    for n, h in enumerate(heads):
        if isinstance(h, MLPHead):
            by_shape.setdefault(h.layers, []).append(n)
    stacks = {k: (StackedMLP.from_heads([heads[n] for n in ns]), ns) for k, ns in by_shape.items()}
    ncm = [n for n, h in enumerate(heads) if not isinstance(h, MLPHead)]  # nearest class mean: no gradient
    amp = cfgs[0].amp
    produce = batch_stream(cfgs[0], index, reader)

    t0 = time.perf_counter()
    for h in heads:
        h.train()

    def finish(n: int, error: Exception | None = None) -> None:
        seconds = time.perf_counter() - t0
        out[n].error = error or non_finite_weights(heads[n], cfgs[n].steps)
        out[n].head = None if out[n].error else heads[n].eval()
        out[n].info.update(seconds=seconds, steps_per_s=cfgs[n].steps / max(seconds, 1e-9))

    threaded = getattr(reader, "prefetch", False)
    batches = prefetch(produce) if threaded else iter(produce, None)
    for step in range(max(c.steps for c in cfgs)):
        n_rows, x, y = next(batches)
        if not amp:
            x = x.float()  # a bfloat16 reader shared with --amp runs
        for layers, (stack, ns) in list(stacks.items()):
            done = _stack_step(stack, ns, step, x, y, n_rows, cfgs, losses, out, amp, device)
            for i, error in done.items():
                heads[ns[i]].load_state_dict(stack.state_dict(i))
                finish(ns[i], error)
            if done:
                alive = [i for i in range(len(ns)) if i not in done]
                if alive:
                    stack.keep(alive)
                    stacks[layers] = (stack, [ns[i] for i in alive])
                else:
                    del stacks[layers]
        for n in [n for n in ncm if step < cfgs[n].steps]:
            _ncm_step(heads[n], step, x, y, n_rows, cfgs[n], out[n].log)
            if step + 1 == cfgs[n].steps:
                finish(n)
        if progress is not None:
            progress.update(1)
        if not stacks and all(step + 1 >= cfgs[n].steps for n in ncm):
            break  # the heads still to go diverged
    if threaded:
        batches.close()
    seconds = time.perf_counter() - t0
    rate = sum(c.steps for c in cfgs) / max(seconds, 1e-9)
    for t in out:
        t.info.update(group_heads=len(cfgs), head_steps_per_s=rate)
    return out


def _stack_step(stack: StackedMLP, ns: list[int], step: int, x: torch.Tensor, y: torch.Tensor, n_rows: int,
                cfgs: Sequence[CalibConfig], losses: Sequence[Callable], out: list[Trained], amp: bool,
                device: torch.device) -> dict[int, Exception | None]:
    """One update of every head in ``stack`` (positions ``ns``); returns the stack positions done after it
    (their last step, or a loss that is not finite at a checked step) with the refusal, if any."""
    # --amp: bfloat16 matmuls (fp32 weights and loss), as the sequential trainer's autocast
    lrs = [cfgs[n].lr * lr_factor(cfgs[n], step) for n in ns]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        logits = stack(x, lrs)  # the first layer's update happens in the backward (stacked.py)
    per_head = logits.float().unbind(0)
    loss = [losses[n](per_head[i], y) for i, n in enumerate(ns)]
    torch.autograd.backward(loss)
    stack.sgd_step(lrs)
    done: dict[int, Exception | None] = {}
    for i, n in enumerate(ns):
        cfg = cfgs[n]
        if not shown(step, cfg.steps):
            continue
        value = loss[i].item()
        if not math.isfinite(value):
            done[i] = diverged(f"the loss is {value} at step {step + 1}")
            continue
        fg_acc, bg_acc = batch_accuracy(per_head[i], y)
        out[n].log.append({"step": step + 1, "loss": value, "fg_acc": fg_acc, "bg_acc": bg_acc,
                           "lr": cfg.lr * lr_factor(cfg, step + 1), "rows": int(n_rows)})
        if step + 1 == cfg.steps:
            done[i] = None
    return done


def _ncm_step(head: torch.nn.Module, step: int, x: torch.Tensor, y: torch.Tensor, n_rows: int, cfg: CalibConfig,
              log: list[dict[str, Any]]) -> None:
    """One batch into a nearest-class-mean head (always float32), logged as the sequential trainer does."""
    x = x.float()
    head.accumulate(x, y)
    if shown(step, cfg.steps):
        with torch.no_grad():
            fg_acc, bg_acc = batch_accuracy(head(x), y)
        log.append({"step": step + 1, "loss": 0.0, "fg_acc": fg_acc, "bg_acc": bg_acc, "lr": 0.0,
                    "rows": int(n_rows)})
