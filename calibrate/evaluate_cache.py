"""Proposal classification accuracy per bin on a cache extracted from val: a cheap signal before inference.

For every row of the val cache the head predicts a class; foreground rows are
scored by the bin (by *train* instance count, paper Table 1) of their true class:
(the bin scheme the cache records, ``lvis`` or ``coco-lt``);
``acc_bin1..4`` is the fraction classified correctly, ``fg_acc`` over all
foreground rows, ``bg_acc`` the fraction of background rows called background.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from simcal.data.statistics import instance_bin


@torch.no_grad()
def proposal_accuracy(head: torch.nn.Module, cache, reader=None, block: int = 8192,
                      device: torch.device | str = "cpu") -> dict[str, Any]:
    return proposal_accuracies([head], cache, reader, block, device)[0]


@torch.no_grad()
def proposal_accuracies(heads: Sequence[torch.nn.Module], cache, reader=None, block: int = 8192,
                        device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """:func:`proposal_accuracy` of every head, reading each block of ``(block, D)`` val features once for all."""
    from simcal.extract.reader import FeatureReader

    reader = reader or FeatureReader(cache, "auto", device)
    R = cache.num_rows
    preds = np.empty((len(heads), R), dtype=np.int32)  # class indices
    for head in heads:
        head.eval()
    for a in range(0, R, block):
        x, _ = reader.read(np.arange(a, min(a + block, R)))
        for h, head in enumerate(heads):
            preds[h, a : a + len(x)] = head(x).argmax(1).cpu().numpy()
    labels = reader.labels.cpu().numpy()
    bins = np.array([0] + [instance_bin(c["instance_count"], cache.bins) for c in cache.attrs["categories"]])
    return [_scores(p, labels, bins) for p in preds]


def _scores(preds: np.ndarray, labels: np.ndarray, bins: np.ndarray) -> dict[str, Any]:
    """Accuracies of ``(R,)`` predictions against ``(R,)`` labels, whose classes fall in ``bins[label]``."""
    out: dict[str, Any] = {}
    fg = labels > 0
    out["fg_acc"] = float((preds[fg] == labels[fg]).mean()) if fg.any() else -1.0
    out["bg_acc"] = float((preds[~fg] == 0).mean()) if (~fg).any() else -1.0
    for b in (1, 2, 3, 4):
        m = fg & (bins[labels] == b)
        out[f"acc_bin{b}"] = float((preds[m] == labels[m]).mean()) if m.any() else -1.0
        out[f"rows_bin{b}"] = int(m.sum())
    return out
