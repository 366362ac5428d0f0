"""Calibration speed from the cache vs the online source, measured in one run (issue [5/6]).

    python benchmarks/calibrate_speed.py --checkpoint runs/demo/baseline_tiny.pth \
        --data runs/demo/data --cache runs/demo/train.zarr [--quick]

Same detector, same data, same head (3fc_ft) and bi-level sampler:
1. steps/s training from the cache (features read from the store every step);
2. steps/s training online (frozen detector forward every step, the released code's way);
3. sampler + read throughput (bytes of features per second, bi-level batches read from
   the store) as a fraction of one raw contiguous read of the same number of bytes, both
   after a warm-up pass so that both read from the page cache.
The last line is a JSON object with ``steps_per_s_cache``, ``steps_per_s_online``,
``speedup`` and ``read_fraction_of_raw``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--cache", required=True, help="train cache extracted with --checkpoint")
    p.add_argument("--steps", type=int, default=300, help="cache steps (online runs a tenth, at least 10)")
    p.add_argument("--quick", action="store_true", help="100 cache steps, 10 online steps")
    p.add_argument("--device", default="cpu", help="cpu or cuda (both sources run there)")
    args = p.parse_args()

    from simcal.calibrate.online import OnlineSource
    from simcal.calibrate.reader import FeatureReader
    from simcal.calibrate.samplers import CacheIndex, build_sampler
    from simcal.calibrate.trainer import CalibConfig, DetectorSpec, train_head
    from simcal.data.annotations import load_annotations
    from simcal.detector.checkpoint import load_checkpoint
    from simcal.extract.schema import Cache

    steps = 100 if args.quick else args.steps
    online_steps = max(10, steps // 10)
    cache = Cache(args.cache)
    device = torch.device(args.device)
    model, ck = load_checkpoint(args.checkpoint, device)
    if ck["detector_fingerprint"] != cache.attrs["detector_fingerprint"]:
        raise SystemExit(f"{args.cache} was not extracted with {args.checkpoint}")
    model.requires_grad_(False)

    _, cache_info = train_head(cache, CalibConfig(head="3fc_ft", steps=steps, seed=0), device)
    ann = load_annotations(Path(args.data) / "annotations" / "train.json")
    source = OnlineSource(model, ann, Path(args.data) / "images" / "train", seed=0)
    spec = DetectorSpec(model, ck, args.checkpoint)
    _, online_info = train_head(spec, CalibConfig(head="3fc_ft", steps=online_steps, seed=0), device,
                                source=source)

    # sampler + read vs one raw contiguous read of the same bytes
    index = CacheIndex.from_cache(cache)
    reader = FeatureReader(cache, "none")
    sampler = build_sampler("bilevel", index, seed=1)
    row_bytes = cache.dim * cache["features"].dtype.itemsize
    for a in range(0, cache.num_rows, 65536):  # warm the page cache: both timings then read from memory
        np.asarray(cache["features"][a : a + 65536])
    t = time.perf_counter()
    n_rows = 0
    for _ in range(steps):
        x, _ = reader.read(sampler.sample().rows)
        n_rows += len(x)
    sampled_s = time.perf_counter() - t
    raw_rows = min(n_rows, cache.num_rows)
    start = (cache.num_rows - raw_rows) // 2
    t = time.perf_counter()
    raw = np.asarray(cache["features"][start : start + raw_rows])
    torch.from_numpy(raw).float()
    raw_s = time.perf_counter() - t
    sampled_bps = n_rows * row_bytes / sampled_s
    raw_bps = raw_rows * row_bytes / raw_s

    out = {
        "steps_per_s_cache": round(cache_info["steps_per_s"], 2),
        "steps_per_s_online": round(online_info["steps_per_s"], 3),
        "speedup": round(cache_info["steps_per_s"] / online_info["steps_per_s"], 1),
        "cache_steps": steps,
        "online_steps": online_steps,
        "sampled_read_mb_per_s": round(sampled_bps / 1e6, 1),
        "raw_read_mb_per_s": round(raw_bps / 1e6, 1),
        "read_fraction_of_raw": round(sampled_bps / raw_bps, 3),
        "rows_per_batch": round(n_rows / steps, 1),
        "dim": cache.dim,
        "device": str(device),
    }
    print(f"cache: {out['steps_per_s_cache']} steps/s; online: {out['steps_per_s_online']} steps/s; "
          f"speed-up {out['speedup']}x; bi-level reads at {out['sampled_read_mb_per_s']} MB/s = "
          f"{100 * out['read_fraction_of_raw']:.0f}% of a raw contiguous read")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
