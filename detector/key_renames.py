"""Renaming a source checkpoint's weights by rules, and the checks the mmdetection converters share.

A rule is ``(compiled pattern, target)``: the target is a ``re.Match.expand`` template or a function
of the match. The first rule whose pattern matches a key renames it; keys matching ``ignored`` are
bookkeeping and dropped; the rest are returned as unknown, for the converter to name.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence, Union

import torch

Rule = tuple[re.Pattern, Union[str, Callable[[re.Match], str]]]

#: Anchors per position of an R50-FPN RPN (ratios 0.5, 1, 2 at one scale).
ANCHORS = 3


def first_keys(keys: Sequence[str], n: int = 3) -> str:
    """``'a', 'b', 'c' and 4 more``: the first ``n`` keys, for a message."""
    return ", ".join(repr(k) for k in keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def rename_keys(weights: dict[str, torch.Tensor], rules: Sequence[Rule],
                ignored: re.Pattern) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(renamed weights, the keys no rule matched), ``ignored`` keys dropped."""
    out, unknown = {}, []
    for key, value in weights.items():
        if ignored.match(key):
            continue
        for pattern, to in rules:
            m = pattern.match(key)
            if m:
                out[to(m) if callable(to) else m.expand(to)] = value
                break
        else:
            unknown.append(key)
    return out, unknown


def check_head_weights(weights: dict[str, torch.Tensor], heads: Sequence[str], what: str) -> None:
    """ValueError unless every key of ``heads`` (weights whose first dimension says what a head scores) is there
    with at least one dimension; ``what`` names the architecture in the message."""
    missing = [k for k in heads if k not in weights]
    if missing:
        raise ValueError(f"has no {first_keys(missing)} (not {what}?)")
    flat = [k for k in heads if weights[k].dim() == 0]
    if flat:
        raise ValueError(f"has a scalar where {flat[0]!r} needs one row per output")


def check_sigmoid_rpn(weights: dict[str, torch.Tensor], key: str, default: str) -> None:
    """ValueError unless the RPN classifier ``key`` scores each anchor with one sigmoid logit (``default`` says
    whose default that is)."""
    rpn = int(weights[key].shape[0])
    if rpn != ANCHORS:
        kind = "a softmax RPN (use_sigmoid=False, 2 scores per anchor)" if rpn == 2 * ANCHORS else \
            f"an RPN of {rpn} scores per position"
        raise ValueError(f"has {kind}, which is not supported: SimCal's RPN scores each of the {ANCHORS} anchors "
                         f"of a position with one sigmoid logit ({default}, use_sigmoid=True)")
