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

Training (``stack(x, lrs)``, backward, then :meth:`StackedMLP.sgd_step`): each layer's backward takes its
SGD step itself, ``W -= (lr * g)^T @ a`` as one matmul that adds into the weights and ``b -= lr * sum(g)``,
so no weight gradient is ever written and read back (the first layer's ``(H, h, D)`` one is the largest
tensor of a step). Under ``--amp`` (bfloat16 gradients) the layers return gradients instead and
:meth:`StackedMLP.sgd_step` applies torch.optim.SGD's update.

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


class StackedLinear(torch.autograd.Function):
    """H linear layers: ``(B, D)`` x shared by all heads or ``(H, B, D)`` each its own, ``(H, O, D)`` w, ``(H, O)``
    b -> ``(H, B, O)``.

    Shared input: one matmul forward, ``x @ [w_0; ...; w_H-1]^T + b``, and one back for the weights,
    ``grad^T @ x``. Per-head input: ``baddbmm`` forward, ``bmm`` back. Each block is what the head's own
    ``nn.Linear`` computes, up to the order of the float sums; the weight gradient comes out in the weights'
    own layout (x^T @ g, transposed, is what autograd gives one nn.Linear, and the transposing copy into
    ``.grad`` cost more than the matmuls). The bias gradient is summed over the batch in ``(H, B, O)`` order,
    the order a single head's ``(B, O)`` gradient is summed in. Under autocast the matmul runs in its dtype,
    and the backward uses the same cast of ``x`` as autocast's backward of ``F.linear``.

    ``step``: ``(H,)`` minus each head's lr (or None): the backward then takes the SGD step on ``w`` and ``b``
    itself and gives them no gradient (when the gradient is float32 like the weights; under autocast it
    returns the gradients for :meth:`StackedMLP.sgd_step`).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, step: torch.Tensor | None) -> torch.Tensor:
        H, O, D = w.shape
        if x.dim() == 2:
            out = torch.addmm(b.reshape(H * O), x, w.reshape(H * O, D).t()).view(len(x), H, O).transpose(0, 1)
        else:
            out = torch.baddbmm(b[:, None, :], x, w.transpose(1, 2))
        ctx.save_for_backward(x if x.dtype == out.dtype else x.to(out.dtype), w, b)
        ctx.step = step
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None,
                                                   torch.Tensor | None, None]:
        x, w, b = ctx.saved_tensors
        H, B, O = grad.shape
        fused = ctx.step is not None and grad.dtype == w.dtype
        gb = grad.contiguous().sum(1)  # (H, O)
        if x.dim() == 2:
            g = grad.transpose(0, 1).reshape(B, H * O)  # (B, H*O), as the forward's matmul wrote it
            gx = g.mm(w.reshape(H * O, -1).to(g.dtype)) if ctx.needs_input_grad[0] else None
            if fused:
                w.view(H * O, -1).addmm_((g.view(B, H, O) * ctx.step[:, None]).view(B, H * O).t(), x)
            else:
                gw = g.t().mm(x).view(H, O, -1)  # (H*O, B) @ (B, D) -> (H, O, D)
        else:
            gx = torch.bmm(grad, w.to(grad.dtype)) if ctx.needs_input_grad[0] else None  # (H, B, D)
            if fused:
                w.baddbmm_((grad * ctx.step[:, None, None]).transpose(1, 2), x)
            else:
                gw = torch.bmm(grad.transpose(1, 2), x)  # (H, O, B) @ (H, B, D) -> (H, O, D)
        if fused:
            b.add_(gb * ctx.step[:, None])
            return gx, None, None, None
        return gx, gw, gb, None


class StackedMLP:
    """Heads ``0..H-1`` of one layer count; :meth:`keep` drops those that are done."""

    def __init__(self, params: dict[str, torch.Tensor], layers: int) -> None:
        self.layers = layers
        self.params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        self._steps: dict[tuple[float, ...], torch.Tensor] = {}  # lrs -> StackedLinear's step, on the device

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
        backward takes the SGD step at those rates; call :meth:`sgd_step` with the same ``lrs`` after it."""
        step = None if lrs is None else self._step(lrs)
        a = x
        for n, name in enumerate(LAYERS[self.layers]):
            a = StackedLinear.apply(F.relu(a) if n else a, self.params[f"{name}.weight"], self.params[f"{name}.bias"],
                                    step)
        return a.contiguous()

    def _step(self, lrs: Sequence[float]) -> torch.Tensor:
        """``(H,)`` minus each head's lr, made on the device once per set of rates (they change at the drops)."""
        key = tuple(lrs)
        if key not in self._steps:
            bias = self.params["cls_score.bias"]
            self._steps = {key: (-torch.tensor(key, dtype=bias.dtype)).to(bias.device)}
        return self._steps[key]

    @torch.no_grad()
    def sgd_step(self, lrs: Sequence[float]) -> None:
        """``p[i] -= lrs[i] * p.grad[i]`` for every parameter with a gradient (torch.optim.SGD's update without
        momentum or weight decay, head by head: the same kernel on the same numbers; none after a fused
        backward), then the gradients are cleared."""
        params = [p for p in self.params.values() if p.grad is not None]
        by_lr: dict[float, list[int]] = {}
        for i, lr in enumerate(lrs if params else ()):
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
