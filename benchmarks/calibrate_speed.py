"""Calibration speed from the cache vs the online source, measured in one run (issue [5/6]).

    python benchmarks/calibrate_speed.py --checkpoint runs/demo/baseline_tiny.pth \
        --data runs/demo/data --cache runs/demo/train.zarr [--quick]

Same detector, same data, same head (3fc_ft) and bi-level sampler:
1. steps/s training from the cache with the default ``--preload auto`` (RAM when the
   features fit), and reading the store every step (``--preload none``);
2. steps/s training online (frozen detector forward every step, the released code's way);
3. sampler + read throughput (useful feature bytes per second of bi-level batches) from
   RAM and from the store, each as a fraction of one raw contiguous read of the same
   number of bytes (after a warm-up pass, so every read comes from the page cache).
The last line is a JSON object with ``steps_per_s_cache``, ``steps_per_s_online``,
``speedup`` (both from 1), ``steps_per_s_store`` and the read fractions.
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
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast in both sources (calibrate --amp)")
    p.add_argument("--h5", help="the cache's h5 export ('simcal cache export'): also time reads from it")
    args = p.parse_args()

    from simcal.calibrate.online import OnlineSource
    from simcal.calibrate.reader import FeatureReader
    from simcal.calibrate.samplers import CacheIndex, build_sampler
    from simcal.calibrate.trainer import CalibConfig, DetectorSpec, feature_dtype, train_head
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

    dtype = feature_dtype(args.amp)
    ram_reader = FeatureReader(cache, "auto", device, dtype)
    _, cache_info = train_head(cache, CalibConfig(head="3fc_ft", steps=steps, seed=0, amp=args.amp), device, reader=ram_reader)
    store_reader = FeatureReader(cache, "none", device, dtype)
    _, store_info = train_head(cache, CalibConfig(head="3fc_ft", steps=max(steps // 3, 10), seed=0, amp=args.amp), device,
                               reader=store_reader)
    ann = load_annotations(Path(args.data) / "annotations" / "train.json")
    source = OnlineSource(model, ann, Path(args.data) / "images" / "train", seed=0)
    spec = DetectorSpec(model, ck, args.checkpoint)
    _, online_info = train_head(spec, CalibConfig(head="3fc_ft", steps=online_steps, seed=0, amp=args.amp), device,
                                source=source)

    # sampler + read vs one raw contiguous read of the same bytes
    index = CacheIndex.from_cache(cache)
    row_bytes = cache.dim * cache["features"].dtype.itemsize
    for a in range(0, cache.num_rows, 65536):  # warm the page cache: every timing then reads from memory
        np.asarray(cache["features"][a : a + 65536])

    def sampled_bps(reader, n_batches):
        sampler = build_sampler("bilevel", index, seed=1)
        t = time.perf_counter()
        n = 0
        for _ in range(n_batches):
            x, _ = reader.read(sampler.sample().rows)
            n += len(x)
        return n * row_bytes / (time.perf_counter() - t), n

    ram_bps, n_rows = sampled_bps(ram_reader, steps)
    store_bps, _ = sampled_bps(store_reader, max(steps // 3, 10))
    raw_rows = min(n_rows, cache.num_rows)
    start = (cache.num_rows - raw_rows) // 2
    t = time.perf_counter()
    raw = np.asarray(cache["features"][start : start + raw_rows])
    torch.from_numpy(raw).float()
    raw_bps = raw_rows * row_bytes / (time.perf_counter() - t)

    h5 = {}
    if args.h5:
        hc = Cache(args.h5)
        h5_reader = FeatureReader(hc, "none", device, dtype)
        _, h5_info = train_head(hc, CalibConfig(head="3fc_ft", steps=steps, seed=0, amp=args.amp), device, reader=h5_reader)
        for a in range(0, hc.num_rows, 65536):
            np.asarray(hc["features"][a : a + 65536])
        h5_bps, _ = sampled_bps(h5_reader, steps)
        t = time.perf_counter()
        torch.from_numpy(np.asarray(hc["features"][start : start + raw_rows])).float()
        h5_raw_bps = raw_rows * row_bytes / (time.perf_counter() - t)
        h5 = {"steps_per_s_h5": round(h5_info["steps_per_s"], 2), "h5_read_mb_per_s": round(h5_bps / 1e6, 1),
              "h5_raw_read_mb_per_s": round(h5_raw_bps / 1e6, 1),
              "h5_read_fraction_of_raw": round(h5_bps / h5_raw_bps, 3)}

    out = {
        "steps_per_s_cache": round(cache_info["steps_per_s"], 2),
        "steps_per_s_online": round(online_info["steps_per_s"], 3),
        "speedup": round(cache_info["steps_per_s"] / online_info["steps_per_s"], 1),
        "preload": ram_reader.preload,
        "steps_per_s_store": round(store_info["steps_per_s"], 2),
        "speedup_store": round(store_info["steps_per_s"] / online_info["steps_per_s"], 1),
        "cache_steps": steps,
        "online_steps": online_steps,
        "ram_read_mb_per_s": round(ram_bps / 1e6, 1),
        "store_read_mb_per_s": round(store_bps / 1e6, 1),
        "raw_read_mb_per_s": round(raw_bps / 1e6, 1),
        "read_fraction_of_raw": round(ram_bps / raw_bps, 3),
        "store_read_fraction_of_raw": round(store_bps / raw_bps, 3),
        "rows_per_batch": round(n_rows / steps, 1),
        "dim": cache.dim,
        "device": str(device),
        "amp": args.amp,
        **h5,
    }
    print(f"cache ({out['preload']}): {out['steps_per_s_cache']} steps/s; store: {out['steps_per_s_store']} "
          f"steps/s; online: {out['steps_per_s_online']} steps/s; speed-up {out['speedup']}x "
          f"({out['speedup_store']}x from the store); bi-level reads {out['ram_read_mb_per_s']} MB/s from RAM, "
          f"{out['store_read_mb_per_s']} MB/s from the store, raw contiguous {out['raw_read_mb_per_s']} MB/s")
    if h5:
        print(f"h5 export: {h5['steps_per_s_h5']} steps/s; bi-level reads {h5['h5_read_mb_per_s']} MB/s vs raw "
              f"contiguous {h5['h5_raw_read_mb_per_s']} MB/s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
