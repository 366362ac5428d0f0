"""Per-RoI class scores at test time: dual head (paper Eq. 2) and post-hoc baselines.

Shapes: ``(R, C+1)`` logits or probabilities, column 0 = background; ``counts`` has
C entries, ``counts[z - 1]`` = N_z, the train instance count of class z.

Dual head (docs/design.md §6, as the authors' mmdet ``get_det_bboxes``): both heads are
softmaxed; for a class z with ``N_z <= T`` (Eq. 2; the released code writes ``<``)
the calibrated column replaces the original one; background and every other column
stay original; the result is **not** renormalised.

    orig  p = softmax(orig)
    cal   p = softmax(cal)
    sel   p[:, z] = softmax(cal)[:, z] if N_z <= T else softmax(orig)[:, z];  p[:, 0] = softmax(orig)[:, 0]
    avg   p = (softmax(orig) + softmax(cal)) / 2   (every class; T does not apply)

Post-hoc, from the original head alone (no training):

    norcal        p_z <- p_z / N_z^gamma for z >= 1, background kept, then renormalised (NorCal)
    logit_adjust  l_z <- l_z - gamma * log(pi_z), pi_z = N_z / sum N, background logit kept
    tau_norm      classifier rows W_z <- W_z / ||W_z||^tau (Kang et al. 2020), computed on the logits:
                  l_z <- (l_z - b_z) / ||W_z||^tau + b_z, exactly the re-weighted layer's output

Diagnostic upper bound (paper Fig. 1c, ``props-gt``): a proposal whose best ground-truth
IoU is >= 0.5 gets that box's class, scored with the detector's own foreground
confidence 1 - p_bg; every other proposal scores 0 for every class. Localisation
(proposals, box regression, masks, NMS) stays the detector's: only classification is an oracle.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from simcal.core.names import MODES


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


def tau_norm_logits(logits: torch.Tensor, cls_score: torch.nn.Linear, tau: float) -> torch.Tensor:
    """(R, C+1) logits of ``cls_score`` -> those of the tau-normalised layer (background row unchanged)."""
    w, b = cls_score.weight.detach().to(logits), cls_score.bias.detach().to(logits)
    scale = w.norm(dim=1).clamp(min=1e-12) ** -tau
    scale[0] = 1.0
    return (logits - b[None, :]) * scale[None, :] + b[None, :]


class PropsGT:
    """The ``props-gt`` oracle (see the module docstring); ``bind`` gives it each batch's proposals and GT.

    ``bind(proposals, targets)``: proposals ``[(R_i, 4)]`` and targets ``[{"boxes": (G_i, 4),
    "labels": (G_i,)}]`` in the same (resized) frame the RoI heads see, images in row order.
    """

    def __init__(self, iou_threshold: float = 0.5) -> None:
        self.iou_threshold = iou_threshold
        self.proposals: list[torch.Tensor] = []
        self.targets: list[dict[str, torch.Tensor]] = []

    def bind(self, proposals: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> None:
        self.proposals, self.targets = proposals, targets

    def __call__(self, logits: torch.Tensor, tap: torch.Tensor) -> torch.Tensor:
        p = F.softmax(logits, dim=1)
        out = torch.zeros_like(p)
        out[:, 0] = p[:, 0]
        start = 0
        for props, t in zip(self.proposals, self.targets):
            n = len(props)
            if n and len(t["boxes"]):
                best, idx = box_iou(props, t["boxes"].to(props)).max(dim=1)
                hit = torch.where(best >= self.iou_threshold)[0]
                out[start + hit, t["labels"].to(p.device)[idx[hit]]] = 1.0 - p[start + hit, 0]
            start += n
        if start != len(p):
            raise RuntimeError(f"props-gt bound to {start} proposals but scoring {len(p)} RoIs")
        return out


def make_score_fn(
    counts: Sequence[int],
    mode: str = "orig",
    head: torch.nn.Module | None = None,
    T: float = 300,
    posthoc: str = "none",
    gamma: float = 1.0,
    cls_score: torch.nn.Linear | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """A variant's ``score_fn`` for :meth:`simcal.detector.roi_heads.LongTailRoIHeads.forward_variants` (None =
    plain softmax).

    ``cls_score`` is the detector's classifier layer, needed by ``tau_norm``.
    """
    if mode != "orig" and head is None:
        raise ValueError(f"mode {mode!r} needs a calibrated head")
    if posthoc == "tau_norm" and cls_score is None:
        raise ValueError("tau_norm needs the detector's cls_score layer")
    if mode == "orig" and posthoc == "none":
        return None
    n = torch.tensor([0.0] + [float(c) for c in counts])
    rare = rare_mask(counts, T)

    def score(logits: torch.Tensor, tap: torch.Tensor) -> torch.Tensor:
        if posthoc == "tau_norm":
            logits = tau_norm_logits(logits, cls_score, gamma)
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


def make_cascade_score_fn(counts: Sequence[int], mode: str, stage_heads: Sequence[torch.nn.Module | None],
                          T: float = 300) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A cascade variant's ``score_fn`` for :meth:`simcal.detector.cascade.CascadeRoIHeads.forward_variants`:
    ``(S, R, C+1)`` stage logits and ``(S, R, D)`` stage taps -> ``(R, C+1)`` scores.

    As the authors' ``HybridTaskCascade.simple_test``: the original head's logits are averaged over the stages,
    the calibrated heads' logits likewise (a stage without a calibrated head contributes its own logits), each
    average is softmaxed, and ``mode`` combines the two (:func:`combine`, paper Eq. 2 for ``sel``).
    """
    if len(stage_heads) != 0 and all(h is None for h in stage_heads) and mode != "orig":
        raise ValueError(f"mode {mode!r} needs a calibrated head for at least one stage")
    rare = rare_mask(counts, T)

    def score(logits: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
        p_orig = F.softmax(logits.mean(0), dim=1)
        if mode == "orig":
            return p_orig
        cal = torch.stack([lg if h is None else h(tap.float()) for h, lg, tap in zip(stage_heads, logits, taps)])
        return combine(p_orig, F.softmax(cal.mean(0), dim=1), mode, rare)

    return score
