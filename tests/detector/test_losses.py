"""The long-tail classification losses against hand-computed values."""

import math

import pytest
import torch

from simcal.detector.losses import build_classification_loss

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])  # (R=2, C+1=3)
LABELS = torch.tensor([0, 1])
COUNTS = [400, 16]  # train instances of class 1 and class 2


def _logp(row, k):
    return row[k] - math.log(sum(math.exp(v) for v in row))


def test_ce():
    rows = LOGITS.tolist()
    expected = -(_logp(rows[0], 0) + _logp(rows[1], 1)) / 2
    assert build_classification_loss("ce")(LOGITS, LABELS).item() == pytest.approx(expected, rel=1e-6)


def test_reweight_uses_clamped_inverse_frequency():
    loss = build_classification_loss("reweight", COUNTS, n=100.0, background_weight=0.5)
    # w_1 = 100/400 = 0.25, w_2 = 100/16 = 6.25, background weight 0.5
    assert loss.weight.tolist() == pytest.approx([0.5, 0.25, 6.25])
    rows = LOGITS.tolist()
    expected = (-0.5 * _logp(rows[0], 0) - 0.25 * _logp(rows[1], 1)) / 2
    assert loss(LOGITS, LABELS).item() == pytest.approx(expected, rel=1e-6)
    clamped = build_classification_loss("reweight", [1, 100000], n=1000.0)
    assert clamped.weight[1:].tolist() == pytest.approx([10.0, 0.1])  # clamped to [0.1, 10]
    median_default = build_classification_loss("reweight", [1, 9, 100])
    assert median_default.n == 9.0


def test_focal():
    rows = LOGITS.tolist()
    gamma = 2.0
    terms = [(1 - math.exp(_logp(rows[i], k))) ** gamma * -_logp(rows[i], k) for i, k in enumerate([0, 1])]
    loss = build_classification_loss("focal", gamma=gamma)
    assert loss(LOGITS, LABELS).item() == pytest.approx(sum(terms) / 2, rel=1e-6)
    assert build_classification_loss("focal", gamma=0.0)(LOGITS, LABELS).item() == pytest.approx(
        build_classification_loss("ce")(LOGITS, LABELS).item(), rel=1e-6)


def test_margin():
    loss = build_classification_loss("margin", COUNTS, k=2.0)
    # D_1 = 2 / 400^(1/4), D_2 = 2 / 16^(1/4) = 1.0; background has none
    assert loss.margin.tolist() == pytest.approx([0.0, 2 / 400 ** 0.25, 1.0])
    rows = LOGITS.tolist()
    r1 = list(rows[1])
    r1[1] -= 2 / 400 ** 0.25
    expected = (-_logp(rows[0], 0) - _logp(r1, 1)) / 2
    assert loss(LOGITS, LABELS).item() == pytest.approx(expected, rel=1e-6)
    default = build_classification_loss("margin", COUNTS)
    assert default.margin.max().item() == pytest.approx(0.5)  # rarest class gets LDAM's 0.5


def test_unknown_loss_and_missing_counts():
    with pytest.raises(ValueError, match="unknown classification loss"):
        build_classification_loss("hinge")
    with pytest.raises(ValueError, match="needs the per-class train instance counts"):
        build_classification_loss("margin")
