"""Classification losses for long-tail training (paper §4.1, Table 2), shared by training and calibration.

All take ``(R, C+1)`` logits and ``(R,)`` int64 labels (0 = background) and
return the mean loss over the R proposals. Per-class statistics come from the
*train* instance counts ``N_j`` (index 0 unused; a class absent from training
counts as 1 instance):

1. ``ce``       L = -log p_z                                     (paper Eq. 1)
2. ``reweight`` L = -w_z log p_z,  w_j = clamp(N / N_j, 0.1, 10); background weight w_0
3. ``focal``    L = -(1 - p_z)^gamma log p_z                     (multi-class focal loss)
4. ``margin``   L = -log e^{y_z - D_z} / (e^{y_z - D_z} + sum_{c != z} e^{y_c}),
                D_j = K / N_j^{1/4}; background has no margin    (class-aware margin, LDAM)

``N`` (reweight) and ``K`` (margin) are hyper-parameters the paper leaves open.
Defaults: ``N`` = the median train instance count over classes, so half the
classes are up-weighted; ``K`` such that the largest margin is 0.5 (LDAM's default).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

LOSSES = ("ce", "reweight", "focal", "margin")


def _counts_tensor(instance_counts: Sequence[int]) -> torch.Tensor:
    """(C,) counts of classes 1..C -> (C+1,) float tensor with a placeholder at background index 0."""
    n = torch.tensor([1.0] + [float(max(c, 1)) for c in instance_counts])
    return n


class ClassificationLoss:
    """Base: plain softmax cross-entropy over C+1 classes."""

    name = "ce"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    def config(self) -> dict:
        return {"name": self.name}


class ReweightedCE(ClassificationLoss):
    name = "reweight"

    def __init__(self, instance_counts: Sequence[int], n: float | None = None, background_weight: float = 1.0):
        counts = _counts_tensor(instance_counts)
        self.n = float(n if n is not None else torch.tensor([float(c) for c in instance_counts]).median())
        w = (self.n / counts).clamp(0.1, 10.0)  # (2) w_j = N / N_j clamped to [0.1, 10]
        w[0] = background_weight
        self.background_weight = background_weight
        self.weight = w

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(logits.device, logits.dtype)[labels]
        return (w * F.cross_entropy(logits, labels, reduction="none")).mean()

    def config(self) -> dict:
        return {"name": self.name, "n": self.n, "background_weight": self.background_weight}


class FocalCE(ClassificationLoss):
    name = "focal"

    def __init__(self, gamma: float = 2.0):
        self.gamma = gamma

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1).gather(1, labels[:, None])[:, 0]
        return (-((1 - logp.exp()) ** self.gamma) * logp).mean()  # (3)

    def config(self) -> dict:
        return {"name": self.name, "gamma": self.gamma}


class MarginCE(ClassificationLoss):
    name = "margin"

    def __init__(self, instance_counts: Sequence[int], k: float | None = None, max_margin: float = 0.5):
        counts = _counts_tensor(instance_counts)
        self.k = float(k if k is not None else max_margin * counts[1:].min() ** 0.25)
        m = self.k / counts**0.25  # (4) D_j = K / N_j^(1/4)
        m[0] = 0.0
        self.margin = m

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        m = self.margin.to(logits.device, logits.dtype)[labels]
        adjusted = logits.scatter_add(1, labels[:, None], -m[:, None])
        return F.cross_entropy(adjusted, labels)

    def config(self) -> dict:
        return {"name": self.name, "k": self.k}


def build_classification_loss(
    name: str, instance_counts: Sequence[int] | None = None, **kw
) -> ClassificationLoss:
    """``name`` in :data:`LOSSES`; ``instance_counts[j-1]`` = train instances of class j (reweight, margin)."""
    if name == "ce":
        return ClassificationLoss()
    if name == "focal":
        return FocalCE(**{k: v for k, v in kw.items() if k == "gamma" and v is not None})
    if name in ("reweight", "margin"):
        if instance_counts is None:
            raise ValueError(f"loss {name!r} needs the per-class train instance counts")
        if name == "reweight":
            return ReweightedCE(instance_counts, kw.get("n"), kw.get("background_weight", 1.0))
        return MarginCE(instance_counts, kw.get("k"))
    raise ValueError(f"unknown classification loss {name!r}; choose from {', '.join(LOSSES)}")
