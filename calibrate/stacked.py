"""H MLP heads of one shape held as one: stacked parameters, one forward and one SGD step for all of them.

Shapes: H heads, B rows, D feature width, h hidden width (the detector's box-head width), K = C+1 logits.
Every parameter of :class:`~simcal.calibrate.heads.MLPHead` (``fc6``, ``fc7``, ``cls_score``, as many as the
layer count has) becomes one leaf tensor with the heads along the first axis::

    fc6.weight (H, h, D)   fc6.bias (H, h)   fc7.weight (H, h, h)   fc7.bias (H, h)
    cls_score.weight (H, K, width)   cls_score.bias (H, K)

The forward takes the batch the heads share, ``(B, D)`` features, and returns ``(H, B, K)`` logits:

- the first layer is one matmul of the batch against every head's weights side by side,
  ``(B, D) @ (D, H*out)``, so the features are read once for all heads (and the weight gradient is
  one matmul back, ``(D, B) @ (B, H*out)``);
- each later layer is a batched matmul over the heads' own ``(H, B, width)`` activations (``baddbmm``).

Training (``stack(x, lrs)``, then :meth:`StackedMLP.sgd_step`): the first layer's SGD step is fused into
its backward, ``W -= (lr * g)^T @ x`` in one matmul that adds into the weights, so its ``(H, h, D)`` weight
gradient, the largest tensor of a step, is never written and read back (a step was a third faster, measured
with benchmarks/sweep_speed.py). The other parameters take torch.optim.SGD's update from their gradients.

Each output element is the same reduction as in the head's own ``nn.Linear``: on CPU the logits are the
same to the bit with one thread, and within float32 rounding where BLAS splits a product differently over
threads; the fused update rounds ``lr * g`` before the sum where SGD rounds the sum first, so weights drift
apart by float32 rounding (tests/calibrate/test_batched.py holds them within 1e-5 of the sequential
trainer's).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from simcal.calibrate.heads import MLPHead

#: The layers of an MLP head with 0, 1 or 2 hidden layers, input first.
LAYERS = {0: ("cls_score",), 1: ("fc6", "cls_score"), 2: ("fc6", "fc7", "cls_score")}


class SharedInputLinear(torch.autograd.Function):
    """H linear layers over one shared batch: ``(B, D)`` x, ``(H, O, D)`` w, ``(H, O)`` b -> ``(H, B, O)``.

    One matmul forward, ``x @ [w_0; ...; w_H-1]^T + b``, and one back for the weights, ``grad^T @ x``:
    each block is what the head's own ``nn.Linear`` computes, up to the order of the float sums. The bias
    gradient is summed over the batch in ``(H, B, O)`` order, the order a single head's ``(B, O)``
    gradient is summed in (summed as ``(B, H*O)``, float32 would round differently). Under autocast the
    matmul runs in its dtype, and the backward uses the same cast of ``x`` as autocast's backward of
    ``F.linear``.

    ``step``: ``(H*O,)`` minus each head's lr, one per output row (or None): the backward then takes the
    SGD step on ``w`` itself, ``w += (g * step)^T @ x``, and gives ``w`` no gradient (float32 only; under
    autocast the gradient is returned for :meth:`StackedMLP.sgd_step`).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, step: torch.Tensor | None) -> torch.Tensor:
        H, O, D = w.shape
        out = torch.addmm(b.reshape(H * O), x, w.reshape(H * O, D).t())  # (B, H*O)
        ctx.save_for_backward(x if x.dtype == out.dtype else x.to(out.dtype), w)
        ctx.step = step
        return out.view(len(x), H, O).transpose(0, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, None]:
        x, w = ctx.saved_tensors
        H, B, O = grad.shape
        g = grad.transpose(0, 1).reshape(B, H * O)  # (B, H*O), as the forward's matmul wrote it
        gx = g.mm(w.reshape(H * O, -1).to(g.dtype)) if ctx.needs_input_grad[0] else None
        if ctx.step is not None and g.dtype == w.dtype:
            w.view(H * O, -1).addmm_((g * ctx.step).t(), x)  # the SGD step, fused: no (H, O, D) gradient
            gw = None
        else:
            # (H*O, B) @ (B, D): the gradient in the weights' own layout. x^T @ g, transposed, is what autograd
            # gives one nn.Linear, and the transposing copy into .grad cost more than the matmuls (54 % of a step)
            gw = g.t().mm(x).view(H, O, -1)  # (H, O, D)
        return gx, gw, grad.contiguous().sum(1), None


class StackedMLP:
    """Heads ``0..H-1`` of one layer count; :meth:`keep` drops those that are done."""

    def __init__(self, params: dict[str, torch.Tensor], layers: int) -> None:
        self.layers = layers
        self.params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        self._steps: dict[tuple[float, ...], torch.Tensor] = {}  # lrs -> SharedInputLinear's step, on the device

    @classmethod
    def from_heads(cls, heads: Sequence[MLPHead]) -> "StackedMLP":
        """Stack the current weights of ``heads`` (all of one layer count)."""
        layers = {h.layers for h in heads}
        if len(layers) != 1:
            raise ValueError(f"heads of {sorted(layers)} hidden layers do not stack; group them by shape")
        states = [h.state_dict() for h in heads]
        return cls({k: torch.stack([s[k] for s in states]) for k in states[0]}, layers.pop())

    def __len__(self) -> int:
        return len(self.params["cls_score.bias"])

    def __call__(self, x: torch.Tensor, lrs: Sequence[float] | None = None) -> torch.Tensor:
        """``(B, D)`` features -> ``(H, B, K)`` logits, head ``i``'s in ``[i]``. With ``lrs`` (one per head), the
        backward takes the first layer's SGD step at those rates; :meth:`sgd_step` with the same ``lrs`` does the
        rest."""
        first, *rest = LAYERS[self.layers]
        w = self.params[f"{first}.weight"]
        a = SharedInputLinear.apply(x, w, self.params[f"{first}.bias"], None if lrs is None else self._step(lrs))
        for name in rest:
            w, b = self.params[f"{name}.weight"], self.params[f"{name}.bias"]
            a = torch.baddbmm(b[:, None, :], F.relu(a), w.transpose(1, 2))
        return a.contiguous()

    def _step(self, lrs: Sequence[float]) -> torch.Tensor:
        """``(H*O,)`` minus each head's lr per first-layer output row; made on the device once per set of rates."""
        key = tuple(lrs)
        if key not in self._steps:
            w = self.params[f"{LAYERS[self.layers][0]}.weight"]
            step = -torch.tensor(key, dtype=w.dtype).repeat_interleave(w.shape[1])
            self._steps = {key: step.to(w.device)}  # rates change only at the schedule's drops
        return self._steps[key]

    @torch.no_grad()
    def sgd_step(self, lrs: Sequence[float]) -> None:
        """``p[i] -= lrs[i] * p.grad[i]`` for every parameter with a gradient (torch.optim.SGD's update without
        momentum or weight decay, head by head: the same kernel on the same numbers), then the gradients are
        cleared."""
        params = [p for p in self.params.values() if p.grad is not None]
        by_lr: dict[float, list[int]] = {}
        for i, lr in enumerate(lrs):
            by_lr.setdefault(lr, []).append(i)
        for lr, heads in by_lr.items():
            torch._foreach_add_([p[i] for p in params for i in heads], [p.grad[i] for p in params for i in heads],
                                alpha=-lr)
        for p in self.params.values():
            p.grad = None

    def keep(self, heads: Sequence[int]) -> None:
        """Keep only ``heads`` (positions in the stack, in their new order)."""
        idx = torch.tensor(list(heads), dtype=torch.long, device=self.params["cls_score.bias"].device)
        self.params = {k: v.detach().index_select(0, idx).requires_grad_() for k, v in self.params.items()}
        self._steps = {}

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Head ``i``'s weights, as :class:`MLPHead` names them (copies)."""
        return {k: v.detach()[i].clone() for k, v in self.params.items()}
