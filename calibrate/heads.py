"""Calibration heads over the cached tap (paper Fig. 4b, docs/design.md §5).

Input: ``(B, D)`` flattened RoIAlign features (D = 12544 for R50-FPN, 3136 for tiny);
output: ``(B, C+1)`` logits, index 0 = background. ``h`` is the detector's box-head
width (1024 for R50-FPN, 256 for tiny), so ``3fc_ft`` can copy the detector's layers.

- ``linear``    D -> C+1
- ``2fc_rand``  D -> h -> C+1, random init
- ``3fc_rand``  D -> h -> h -> C+1, random init
- ``3fc_ft``    as 3fc_rand, initialised from the detector's fc6, fc7 and cls_score: it
                starts *equal* to the detector's classifier and is fine-tuned
- ``2fc_ncm``   nearest class mean on the detector's frozen 2fc representation
                (fc6 -> fc7): logits = s * cos(phi(x), mu_c), class means mu_c averaged
                over the rows the sampler draws; no gradient step
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simcal.core.names import HEADS, HEADS_FROM_DETECTOR

#: name -> (head class, hidden layers)
_LAYERS = {"linear": 0, "2fc_rand": 1, "3fc_rand": 2, "3fc_ft": 2}


class MLPHead(nn.Module):
    """``fc6 -> relu -> fc7 -> relu -> cls_score`` with as many hidden layers as asked (0, 1 or 2)."""

    def __init__(self, dim: int, num_classes: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.layers = layers
        width = dim
        if layers >= 1:
            self.fc6 = nn.Linear(dim, hidden)
            width = hidden
        if layers >= 2:
            self.fc7 = nn.Linear(hidden, hidden)
        self.cls_score = nn.Linear(width, num_classes + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layers >= 1:
            x = F.relu(self.fc6(x))
        if self.layers >= 2:
            x = F.relu(self.fc7(x))
        return self.cls_score(x)


class NCMHead(nn.Module):
    """Cosine nearest-class-mean classifier on the detector's frozen 2fc representation."""

    def __init__(self, dim: int, num_classes: int, hidden: int, scale: float = 16.0) -> None:
        super().__init__()
        self.fc6 = nn.Linear(dim, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.requires_grad_(False)
        self.register_buffer("sums", torch.zeros(num_classes + 1, hidden, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(num_classes + 1, dtype=torch.float64))
        self.scale = scale

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x))))

    @torch.no_grad()
    def accumulate(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        phi = F.normalize(self.represent(x), dim=1).double()
        self.sums.index_add_(0, labels, phi)
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = F.normalize((self.sums / self.counts.clamp(min=1)[:, None]).float(), dim=1)
        return self.scale * F.normalize(self.represent(x), dim=1) @ means.t()


def build_head(name: str, dim: int, num_classes: int, hidden: int) -> nn.Module:
    """A freshly initialised head by name: ``(B, dim)`` features -> ``(B, C+1)`` logits.

    ``3fc_ft`` and ``2fc_ncm`` start from the detector only after :func:`init_from_detector`;
    a head loaded from a checkpoint takes its weights from there instead.
    """
    if name == "2fc_ncm":
        return NCMHead(dim, num_classes, hidden)
    if name in _LAYERS:
        return MLPHead(dim, num_classes, hidden, _LAYERS[name])
    raise ValueError(f"unknown head {name!r}; choose from {', '.join(HEADS)}")


def init_from_detector(head: nn.Module, name: str, detector_head: Mapping[str, np.ndarray]) -> nn.Module:
    """Copy the detector's fc6, fc7 (and, for ``3fc_ft``, cls_score) into ``head``; other heads are left as built."""
    if name not in HEADS_FROM_DETECTOR:
        return head
    layers = ("fc6", "fc7", "cls_score") if name == "3fc_ft" else ("fc6", "fc7")
    with torch.no_grad():
        for layer in layers:
            mod = getattr(head, layer)
            mod.weight.copy_(torch.from_numpy(np.asarray(detector_head[f"{layer}.weight"])))
            mod.bias.copy_(torch.from_numpy(np.asarray(detector_head[f"{layer}.bias"])))
    return head
