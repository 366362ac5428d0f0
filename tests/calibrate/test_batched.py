"""Heads that share a batch stream train together (calibrate/batched.py) and end where they would alone.

Every comparison trains the same configurations with ``train_head`` (one after another, the reference)
and with ``train_group`` over one in-memory feature source (calibrate/memory_cache.py), and holds the
weights to a max abs difference of 1e-5 (the stack's fused first-layer update rounds apart). The sweep's
CLI comparison, which needs a real cache, is in test_calibrate.py beside the other sweep tests.
"""

import itertools

import pytest
import torch

from simcal.calibrate.batched import group_configs, train_group
from simcal.calibrate.evaluate_cache import proposal_accuracies, proposal_accuracy
from simcal.calibrate.heads import build_head
from simcal.calibrate.memory_cache import MemoryCache, MemoryReader, memory_index
from simcal.calibrate.stacked import StackedMLP
from simcal.calibrate.trainer import CalibConfig, initial_head, train_head
from simcal.core.errors import InputError
from simcal.core.names import HEADS, LOSSES

TOLERANCE = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Matmuls this small gain nothing from threads, and on shared cores their synchronisation dominates."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def source():
    cache = MemoryCache(seed=0)
    return cache, MemoryReader(cache), memory_index(cache)


def _cfg(**kw) -> CalibConfig:
    return CalibConfig(**{"classes_per_batch": 4, "lr": 0.5, **kw})


def _max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


def _check_against_sequential(source, cfgs) -> list:
    """Train ``cfgs`` as one group and each alone: same weights, info and log lines; the group's results."""
    cache, reader, index = source
    trained = train_group(cache, cfgs, "cpu", reader, index)
    for cfg, t in zip(cfgs, trained):
        log = []
        alone, info = train_head(cache, cfg, "cpu", reader, index, log.append)
        assert t.error is None and not t.head.training
        assert _max_difference(alone, t.head) <= TOLERANCE, cfg
        assert t.info["steps"] == info["steps"] == cfg.steps and t.info["group_heads"] == len(cfgs)
        assert [(r["step"], r["lr"], r["rows"]) for r in t.log] == [(r["step"], r["lr"], r["rows"]) for r in log]
        assert [r["loss"] for r in t.log] == pytest.approx([r["loss"] for r in log], abs=TOLERANCE)
    return trained


def test_every_head_and_loss_in_one_group_trains_as_alone(source):
    """One batch stream: every head type (MLP shapes stacked apart, nearest class mean on its own) and loss."""
    cfgs = [_cfg(head=h, loss=loss, steps=12) for h, loss in itertools.product(HEADS, LOSSES)]
    assert len(group_configs(cfgs)) == 1
    trained = _check_against_sequential(source, cfgs)
    for cfg, t in zip(cfgs, trained):  # every head learned something
        assert _max_difference(initial_head(source[0], cfg), t.head) > 1e-3, cfg


def test_configs_that_differ_in_steps_keep_their_own_schedule(source):
    """20, 40 and 80 steps in one group: each drops its lr at 75 % and 92 % of its own steps, and stops there."""
    cfgs = [_cfg(head="3fc_rand", steps=n) for n in (80, 20, 40)]
    trained = _check_against_sequential(source, cfgs)
    short = trained[1].log
    assert [r["step"] for r in short] == [20] and short[-1]["lr"] == pytest.approx(0.5 * 0.01)
    assert [r["step"] for r in trained[0].log] == [50, 80]
    assert _max_difference(trained[0].head, trained[1].head) > 1e-3


def test_heads_with_their_own_lr(source):
    cfgs = [_cfg(head="2fc_rand", lr=lr, steps=15) for lr in (0.01, 0.3, 1.0)]
    trained = _check_against_sequential(source, cfgs)
    assert _max_difference(trained[0].head, trained[2].head) > 1e-3


def test_amp_groups_train_as_alone(source):
    """--amp: the stacked matmuls run in bfloat16 as each head's own do (to the bit here; 1e-5 asked)."""
    _check_against_sequential(source, [_cfg(head=h, loss=loss, steps=10, amp=True)
                                       for h, loss in (("3fc_ft", "ce"), ("linear", "focal"), ("2fc_ncm", "ce"))])


def test_streams_are_grouped_by_what_draws_the_batches():
    cfgs = [_cfg(head="3fc_ft"), _cfg(head="linear", loss="focal", steps=7, lr=0.1), _cfg(seed=1),
            _cfg(sampler="random"), _cfg(classes_per_batch=8), _cfg(bg_ratio=2.0), _cfg(amp=True),
            _cfg(head="2fc_ncm", seed=1)]
    assert group_configs(cfgs) == [[0, 1], [2, 7], [3], [4], [5], [6]]


def test_a_diverging_head_is_refused_as_alone_and_the_others_train_on(source):
    cache, reader, index = source
    cfgs = [_cfg(head="2fc_rand", steps=60), _cfg(head="2fc_rand", steps=60, lr=1e30)]
    ok, bad = train_group(cache, cfgs, "cpu", reader, index)
    with pytest.raises(InputError) as alone:
        train_head(cache, cfgs[1], "cpu", reader, index)
    assert bad.head is None and str(bad.error) == str(alone.value)
    assert "calibration diverged" in str(bad.error)
    assert ok.error is None
    assert _max_difference(ok.head, train_head(cache, cfgs[0], "cpu", reader, index)[0]) <= TOLERANCE


def test_val_scores_of_many_heads_from_one_read(source):
    cache, reader, index = source
    heads = [train_head(cache, _cfg(head=h, steps=10), "cpu", reader, index)[0] for h in ("3fc_ft", "2fc_ncm")]
    assert proposal_accuracies(heads, cache, reader, block=50) == [proposal_accuracy(h, cache, reader) for h in heads]


def test_heads_of_different_shapes_do_not_stack():
    with pytest.raises(ValueError, match="do not stack"):
        StackedMLP.from_heads([build_head("2fc_rand", 8, 3, 4), build_head("3fc_rand", 8, 3, 4)])


def test_the_sgd_step_is_fused_into_the_backward():
    """stack(x, lrs) + backward updates every weight itself (no gradient kept) by what SGD on its gradient would,
    each head at its own rate (a rate of 0 leaves a head as it was)."""
    torch.manual_seed(0)
    heads = [build_head("3fc_rand", 16, 5, hidden=8) for _ in range(3)]
    x, y, lrs = torch.randn(7, 16), torch.randint(0, 6, (7,)), [0.1, 0.0, 0.3]
    plain, fused = StackedMLP.from_heads(heads), StackedMLP.from_heads(heads)
    before = {k: v.detach().clone() for k, v in plain.params.items()}
    torch.autograd.backward([torch.nn.functional.cross_entropy(lg, y) for lg in plain(x).unbind(0)])
    torch.autograd.backward([torch.nn.functional.cross_entropy(lg, y) for lg in fused(x, lrs).unbind(0)])
    assert all(p.grad is None for p in fused.params.values())
    for k, p in plain.params.items():
        want = before[k] - torch.tensor(lrs).view(-1, *[1] * (p.dim() - 1)) * p.grad
        assert torch.allclose(fused.params[k].detach(), want, atol=1e-7, rtol=0), k
        assert torch.equal(fused.params[k][1], before[k][1]) and not torch.equal(fused.params[k][2], before[k][2]), k
    plain.sgd_step(lrs)
    fused.sgd_step(lrs)  # nothing left to do
    assert all(torch.allclose(fused.params[k], plain.params[k], atol=1e-7, rtol=0) for k in plain.params)
