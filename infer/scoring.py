"""Per-RoI class scores at test time: dual head (paper Eq. 2) and post-hoc baselines.

Shapes: ``(R, C+1)`` logits or probabilities, column 0 = background; ``counts`` has
C entries, ``counts[z - 1]`` = N_z, the train instance count of class z.

Dual head (DESIGN.md §6, as the authors' mmdet ``get_det_bboxes``): both heads are
softmaxed; for a class z with ``N_z <= T`` (Eq. 2; the released code writes ``<``)
the calibrated column replaces the original one; background and every other column
stay original; the result is **not** renormalised.

    orig  p = softmax(orig)
    cal   p = softmax(cal)
    sel   p[:, z] = softmax(cal)[:, z] if N_z <= T else softmax(orig)[:, z];  p[:, 0] = softmax(orig)[:, 0]
    avg   p = (softmax(orig) + softmax(cal)) / 2

Post-hoc, from the original head alone (no training):

    norcal        p_z <- p_z / N_z^gamma for z >= 1, background kept, then renormalised (NorCal)
    logit_adjust  l_z <- l_z - gamma * log(pi_z), pi_z = N_z / sum N, background logit kept
    tau_norm      classifier rows W_z <- W_z / ||W_z||^tau (applied to the weights, see infer.py)
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

MODES = ("orig", "cal", "sel", "avg")
POSTHOC = ("none", "norcal", "logit_adjust", "tau_norm")


def rare_mask(counts: Sequence[int], T: float) -> torch.Tensor:
    """(C+1,) bool: classes the calibrated head answers for (N_z <= T); background never."""
    return torch.tensor([False] + [int(n) <= T for n in counts])


def combine(p_orig: torch.Tensor, p_cal: torch.Tensor, mode: str, rare: torch.Tensor) -> torch.Tensor:
    """(R, C+1) probabilities of the two heads -> the scores the detector ranks (Eq. 2)."""
    if mode == "orig":
        return p_orig
    if mode == "cal":
        return p_cal
    if mode == "sel":
        return torch.where(rare.to(p_orig.device)[None, :], p_cal, p_orig)
    if mode == "avg":
        return (p_orig + p_cal) / 2
    raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


def norcal(p: torch.Tensor, counts: torch.Tensor, gamma: float) -> torch.Tensor:
    w = counts.to(p).clamp(min=1) ** -gamma
    w[0] = 1.0
    q = p * w[None, :]
    return q / q.sum(dim=1, keepdim=True)


def logit_adjust(logits: torch.Tensor, counts: torch.Tensor, gamma: float) -> torch.Tensor:
    prior = counts.to(logits).clamp(min=1)
    prior = prior / prior[1:].sum()
    adj = gamma * prior.log()
    adj[0] = 0.0
    return F.softmax(logits - adj[None, :], dim=1)


def make_score_fn(
    counts: Sequence[int],
    mode: str = "orig",
    head: torch.nn.Module | None = None,
    T: float = 300,
    posthoc: str = "none",
    gamma: float = 1.0,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The ``score_fn`` hook of :class:`simcal.detector.roi_heads.LongTailRoIHeads` (None = plain softmax)."""
    if mode != "orig" and head is None:
        raise ValueError(f"mode {mode!r} needs a calibrated head")
    if mode == "orig" and posthoc in ("none", "tau_norm"):
        return None
    n = torch.tensor([0.0] + [float(c) for c in counts])
    rare = rare_mask(counts, T)

    def score(logits: torch.Tensor, tap: torch.Tensor) -> torch.Tensor:
        if posthoc == "logit_adjust":
            p_orig = logit_adjust(logits, n, gamma)
        else:
            p_orig = F.softmax(logits, dim=1)
            if posthoc == "norcal":
                p_orig = norcal(p_orig, n, gamma)
        if head is None:
            return p_orig
        p_cal = F.softmax(head(tap.float()), dim=1)
        return combine(p_orig, p_cal, mode, rare)

    return score


@torch.no_grad()
def tau_normalize_(cls_score: torch.nn.Linear, tau: float) -> None:
    """tau-normalised classifier (Kang et al. 2020): foreground rows W_z / ||W_z||^tau, in place."""
    norms = cls_score.weight.norm(dim=1, keepdim=True).clamp(min=1e-12)
    scale = norms**-tau
    scale[0] = 1.0  # background row unchanged
    cls_score.weight.mul_(scale)
