"""Sweep speed: a group of heads trained batched vs one after another, against the compute bound, in one run.

    python benchmarks/sweep_speed.py [--tap tiny|r50] [--cache CACHE] [--steps N] [--repeat R] [--device cpu|cuda]
    python benchmarks/sweep_speed.py --quick        # a tiny run, to check that it works

Twelve configurations that share one batch stream (bi-level sampler, seed 0): ``3fc_ft`` with each of
the 4 losses at lr 0.01, 0.005 and 0.02 (``--heads`` to change the count), all ``--steps`` long:

1. sequential: ``train_head`` for each, one after another (``simcal calibrate --sweep --sequential``);
2. batched: ``train_group`` over all of them (the default ``--sweep`` path: one draw and one read of
   each batch, the heads stacked);
3. compute bounds: the same heads' forward + backward on batches already in memory (16 batches of the
   same stream, cycled; no sampling, no read, no update), each head through its own module
   (``bound_heads``), and all heads through the stack as the batched trainer runs it (``bound_stacked``:
   its backward includes the first layer's fused SGD step, calibrate/stacked.py; the other updates not).

Rates are head-steps per second (heads x steps / seconds). One untimed warm-up pass of each path
comes first; then ``--repeat`` rounds (default 5) each time the four in turn (sequential, batched, stacked
bound, own-module bound), and every rate and ratio is the median over the rounds of that round's figure:
on a shared machine the speed drifts by tens of percent within minutes, so a ratio is taken between
measurements made seconds apart (the per-round ratios are printed too). Features: ``--cache`` (a cache from
``simcal extract``, read as ``--preload ram``), or by default an in-memory synthetic cache of the tap's
sizes (simcal/calibrate/memory_cache.py): ``tiny`` 3136-d features, hidden 256, 42 classes (the demo's
detector); ``r50`` 12544-d, hidden 1024, 1230 classes (LVIS). The batched heads are checked against the
sequential ones (max abs weight difference). The last line is a JSON object with the rates, their ratios
and that difference, and where a batched step's time goes (torch.profiler: the top ops' share of self
time, over a 20-step group run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch

#: Synthetic taps: feature width, hidden width, classes, images.
TAPS = {"tiny": (3136, 256, 42, 400), "r50": (12544, 1024, 1230, 300), "quick": (256, 32, 12, 60)}
LOSSES = ("ce", "reweight", "focal", "margin")
LRS = (0.01, 0.005, 0.02)


def _source(args: argparse.Namespace, device: torch.device):
    """(cache, reader, index, description) from --cache or a synthetic cache of the tap's sizes."""
    from simcal.calibrate.memory_cache import MemoryCache, MemoryReader, memory_index
    from simcal.calibrate.samplers import CacheIndex

    if args.cache:
        from simcal.extract.reader import FeatureReader
        from simcal.extract.schema import Cache

        cache = Cache(args.cache)
        return cache, FeatureReader(cache, "ram", device), CacheIndex.from_cache(cache), f"cache {args.cache}"
    dim, hidden, classes, images = TAPS["quick" if args.quick else args.tap]
    cache = MemoryCache(seed=0, images=images, classes=classes, dim=dim, hidden=hidden, fg_per_class=8,
                        bg_per_image=32)
    return cache, MemoryReader(cache, device), memory_index(cache), f"synthetic {'quick' if args.quick else args.tap}"


def _configs(n: int, steps: int):
    from simcal.calibrate.trainer import CalibConfig

    grid = list(itertools.product(LRS, LOSSES))
    return [CalibConfig(head="3fc_ft", loss=loss, lr=lr, steps=steps) for lr, loss in itertools.islice(
        itertools.cycle(grid), n)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sequential(cache, cfgs, device, reader, index):
    from simcal.calibrate.trainer import train_head

    _sync(device)
    t0 = time.perf_counter()
    heads = [train_head(cache, c, device, reader, index)[0] for c in cfgs]
    _sync(device)
    return heads, time.perf_counter() - t0


def _batched(cache, cfgs, device, reader, index):
    from simcal.calibrate.batched import train_group

    _sync(device)
    t0 = time.perf_counter()
    trained = train_group(cache, cfgs, device, reader, index)
    _sync(device)
    seconds = time.perf_counter() - t0
    bad = next((t.error for t in trained if t.error is not None), None)
    if bad is not None:
        raise SystemExit(f"a head diverged: {bad}")
    return [t.head for t in trained], seconds


def _bounds(cache, cfgs, device, batches, steps: int) -> tuple[float, float]:
    """Seconds of ``steps`` forward + backward passes of every head on in-memory batches: own modules, stacked."""
    from simcal.calibrate.stacked import StackedMLP
    from simcal.calibrate.trainer import head_loss, initial_head

    heads = [initial_head(cache, c, device).train() for c in cfgs]
    losses = [head_loss(cache, c) for c in cfgs]
    stack = StackedMLP.from_heads(heads)
    params = [p for h in heads for p in h.parameters()] + list(stack.params.values())

    def own(x, y):
        for head, loss in zip(heads, losses):
            loss(head(x), y).backward()

    lrs = [c.lr for c in cfgs]

    def stacked(x, y):
        torch.autograd.backward([loss(lg, y) for loss, lg in zip(losses, stack(x, lrs).unbind(0))])

    out = []
    for step_fn in (stacked, own):  # the stacked bound right after the batched run it is compared with
        step_fn(*batches[0])  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for s in range(steps):
            step_fn(*batches[s % len(batches)])
            for p in params:
                p.grad = None
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out[1], out[0]


def _profile(cache, cfgs, device, reader, index, top: int = 8) -> dict[str, float]:
    """Where a batched step's time goes: torch.profiler over a short group run, the ``top`` ops by self time, as
    percentages of the profiled self time (the rest summed under ``other``)."""
    from torch.profiler import ProfilerActivity, profile

    from simcal.calibrate.batched import train_group

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train_group(cache, cfgs, device, reader, index)
    events = [(e.key, e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total)
              for e in prof.key_averages()]
    total = sum(t for _, t in events) or 1.0
    events.sort(key=lambda kv: -kv[1])
    out = {k: round(100 * t / total, 1) for k, t in events[:top]}
    out["other"] = round(100 - sum(out.values()), 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tap", choices=("tiny", "r50"), default="tiny", help="synthetic feature sizes (default tiny)")
    p.add_argument("--cache", help="train on this cache's features instead of synthetic ones")
    p.add_argument("--heads", type=int, default=12, help="heads in the group (default 12)")
    p.add_argument("--steps", type=int, default=200, help="steps per head (default 200)")
    p.add_argument("--repeat", type=int, default=5, help="timed rounds; figures are their medians (default 5)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (256-d, hidden 32) and 8 steps: a smoke run")
    p.add_argument("--device", default="cpu", help="cpu or cuda (features, heads and steps there)")
    args = p.parse_args()

    from simcal.calibrate.trainer import batch_stream

    device = torch.device(args.device)
    steps = 8 if args.quick else args.steps
    cache, reader, index, what = _source(args, device)
    cfgs = _configs(args.heads, steps)
    warm = _configs(args.heads, 3)
    _sequential(cache, warm, device, reader, index)
    _batched(cache, warm, device, reader, index)

    produce = batch_stream(cfgs[0], index, reader)
    batches = [produce()[1:] for _ in range(min(16, steps))]
    rounds = []
    for _ in range(args.repeat):  # interleaved, so that a slow spell of the machine hits every path
        seq_heads, seq_s = _sequential(cache, cfgs, device, reader, index)
        bat_heads, bat_s = _batched(cache, cfgs, device, reader, index)
        rounds.append((seq_s, bat_s, *_bounds(cache, cfgs, device, batches, steps)))

    profile_pct = _profile(cache, _configs(args.heads, min(steps, 20)), device, reader, index)

    diff = max((a.double() - b.double()).abs().max().item() for h, g in zip(seq_heads, bat_heads)
               for a, b in zip(h.state_dict().values(), g.state_dict().values()))
    head_steps = len(cfgs) * steps
    rates = [dict(zip(("sequential", "batched", "bound_heads", "bound_stacked"), (head_steps / s for s in r)))
             for r in rounds]

    def median(f) -> float:
        return float(np.median([f(r) for r in rates]))

    ratios = {"batched_vs_sequential": ("batched", "sequential"), "batched_vs_bound_heads": ("batched", "bound_heads"),
              "batched_vs_bound_stacked": ("batched", "bound_stacked"),
              "sequential_vs_bound_heads": ("sequential", "bound_heads")}
    out = {
        **{f"head_steps_per_s_{k}": round(median(lambda r: r[k]), 1) for k in rates[0]},
        **{name: round(median(lambda r: r[a] / r[b]), 3) for name, (a, b) in ratios.items()},
        **{f"{name}_per_round": [round(r[a] / r[b], 3) for r in rates] for name, (a, b) in ratios.items()
           if name != "sequential_vs_bound_heads"},
        "max_abs_weight_diff": diff,
        "heads": len(cfgs),
        "steps": steps,
        "rows_per_batch": round(float(np.mean([len(y) for _, y in batches])), 1),
        "dim": cache.dim,
        "hidden": int(cache.detector_head()["fc6.weight"].shape[0]),
        "classes": len(cache.attrs["categories"]),
        "source": what,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "profile_batched_self_time_pct": profile_pct,
    }
    print(f"{len(cfgs)} heads x {steps} steps ({what}, {out['rows_per_batch']} rows a batch): batched "
          f"{out['head_steps_per_s_batched']} head-steps/s, sequential {out['head_steps_per_s_sequential']} "
          f"({out['batched_vs_sequential']}x); compute bound {out['head_steps_per_s_bound_heads']} (own modules), "
          f"{out['head_steps_per_s_bound_stacked']} (stacked): batched at {out['batched_vs_bound_heads']:.0%} and "
          f"{out['batched_vs_bound_stacked']:.0%}; max abs weight difference {diff:.2g}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
