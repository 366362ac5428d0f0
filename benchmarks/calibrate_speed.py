"""Calibration speed from the cache vs the online source, measured in one run.

    python benchmarks/calibrate_speed.py --checkpoint runs/demo/baseline_tiny.pth \
        --data runs/demo/data --cache runs/demo/train.zarr [--quick]

Same detector, same data, same head (3fc_ft) and bi-level sampler:
1. steps/s training from the cache with the default ``--preload auto`` (RAM when the
   features fit), and reading the store every step (``--preload none``);
2. steps/s training online (frozen detector forward every step, the released code's way).
   Each source runs twice, the same number of steps, seeds 1 then 0: the second run is the
   headline (a sweep's steady state), the first is reported as ``*_cold``;
3. sampler + read throughput (feature bytes per second of bi-level batches, sampler
   included) from RAM and from the store (the shard byte-range reader), each as a
   fraction of contiguous reads of the same sizes through the same reader, and zarr's
   own read of a contiguous slab for reference (after a warm-up pass, so every read
   comes from the page cache).
The last line is a JSON object with ``steps_per_s_cache``, ``steps_per_s_online``,
``speedup`` (both from 1), ``steps_per_s_store`` and the read rates and fractions.
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
    from simcal.calibrate.samplers import CacheIndex, build_sampler
    from simcal.calibrate.trainer import CalibConfig, DetectorSpec, feature_dtype, train_head
    from simcal.data.annotations import load_annotations
    from simcal.detector.checkpoint import load_checkpoint
    from simcal.extract.reader import FeatureReader
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

    def rates(n, cache_or_spec, reader=None, sources=None):
        """steps/s of a first run (seed 1: cold) and a second one (seed 0: warm) of the same length.

        The first bfloat16 steps of each batch size create oneDNN kernels, so a cold run
        under-states the rate a sweep or a long run sees; the online source has no such warm-up.
        """
        out = []
        for seed in (1, 0):
            cfg = CalibConfig(head="3fc_ft", steps=n, seed=seed, amp=args.amp)
            src = None if sources is None else sources(seed)
            out.append(train_head(cache_or_spec, cfg, device, reader=reader, source=src)[1]["steps_per_s"])
        return out

    ram_reader = FeatureReader(cache, "auto", device, dtype)
    cache_cold, cache_warm = rates(steps, cache, reader=ram_reader)
    store_reader = FeatureReader(cache, "none", device, dtype)
    _, store_warm = rates(steps, cache, reader=store_reader)
    ann = load_annotations(Path(args.data) / "annotations" / "train.json")
    online_cold, online_warm = rates(online_steps, DetectorSpec(model, ck, args.checkpoint),
                                     sources=lambda seed: OnlineSource(model, ann, Path(args.data) / "images" / "train",
                                                                       seed=seed))

    # sampler + read vs contiguous reads of the same sizes, through the same reader
    index = CacheIndex.from_cache(cache)
    row_bytes = cache.dim * cache["features"].dtype.itemsize

    def warm(c):  # every timing then reads from the page cache
        for a in range(0, c.num_rows, 65536):
            np.asarray(c["features"][a : a + 65536])

    def read_rates(reader, n_batches):
        """(MB/s of bi-level batches incl. the sampler, MB/s of contiguous reads of the same sizes)."""
        sampler = build_sampler("bilevel", index, seed=1)
        t, sizes = time.perf_counter(), []
        for _ in range(n_batches):
            x, _ = reader.read(sampler.sample().rows)
            sizes.append(len(x))
        sampled = sum(sizes) * row_bytes / (time.perf_counter() - t)
        starts = np.random.default_rng(2).integers(0, cache.num_rows - max(sizes), size=n_batches)
        t = time.perf_counter()
        for s0, m in zip(starts, sizes):
            reader.read(np.arange(s0, s0 + m))
        contiguous = sum(sizes) * row_bytes / (time.perf_counter() - t)
        return sampled, contiguous, sum(sizes)

    warm(cache)
    ram_bps, ram_contig, n_rows = read_rates(ram_reader, steps)
    store_bps, store_contig, _ = read_rates(store_reader, steps)
    raw_rows = min(n_rows // steps * 20, cache.num_rows)  # zarr's own read of one contiguous 20-batch slab
    t = time.perf_counter()
    torch.from_numpy(np.asarray(cache["features"][:raw_rows])).float().to(dtype)  # the reader's cast
    zarr_bps = raw_rows * row_bytes / (time.perf_counter() - t)

    h5 = {}
    if args.h5:
        hc = Cache(args.h5)
        h5_reader = FeatureReader(hc, "none", device, dtype)
        _, h5_warm = rates(steps, hc, reader=h5_reader)
        warm(hc)
        h5_bps, h5_contig, _ = read_rates(h5_reader, steps)
        h5 = {"h5_reader": "memmap" if h5_reader.store_rows is not None else "h5py",
              "steps_per_s_h5": round(h5_warm, 2), "h5_read_mb_per_s": round(h5_bps / 1e6, 1),
              "h5_contiguous_mb_per_s": round(h5_contig / 1e6, 1),
              "h5_read_fraction_of_contiguous": round(h5_bps / h5_contig, 3)}

    out = {
        "steps_per_s_cache": round(cache_warm, 2),
        "steps_per_s_online": round(online_warm, 3),
        "speedup": round(cache_warm / online_warm, 1),
        "steps_per_s_cache_cold": round(cache_cold, 2),
        "steps_per_s_online_cold": round(online_cold, 3),
        "speedup_cold": round(cache_cold / online_cold, 1),
        "preload": ram_reader.preload,
        "steps_per_s_store": round(store_warm, 2),
        "speedup_store": round(store_warm / online_warm, 1),
        "cache_steps": steps,
        "online_steps": online_steps,
        "ram_read_mb_per_s": round(ram_bps / 1e6, 1),
        "ram_contiguous_mb_per_s": round(ram_contig / 1e6, 1),
        "read_fraction_of_contiguous": round(ram_bps / ram_contig, 3),
        "store_reader": "mapped shard files" if store_reader.store_rows is not None else "zarr",
        "store_read_mb_per_s": round(store_bps / 1e6, 1),
        "store_contiguous_mb_per_s": round(store_contig / 1e6, 1),
        "store_read_fraction_of_contiguous": round(store_bps / store_contig, 3),
        "zarr_contiguous_mb_per_s": round(zarr_bps / 1e6, 1),
        "store_read_fraction_of_zarr_contiguous": round(store_bps / zarr_bps, 3),
        "rows_per_batch": round(n_rows / steps, 1),
        "dim": cache.dim,
        "device": str(device),
        "amp": args.amp,
        **h5,
    }
    print(f"cache ({out['preload']}): {out['steps_per_s_cache']} steps/s; store: {out['steps_per_s_store']} "
          f"steps/s; online: {out['steps_per_s_online']} steps/s; speed-up {out['speedup']}x "
          f"({out['speedup_store']}x from the store); first runs (cold): {out['steps_per_s_cache_cold']} vs "
          f"{out['steps_per_s_online_cold']} steps/s, {out['speedup_cold']}x")
    print(f"bi-level batches vs contiguous reads of the same sizes: RAM {out['ram_read_mb_per_s']} vs "
          f"{out['ram_contiguous_mb_per_s']} MB/s ({out['read_fraction_of_contiguous']:.0%}); store "
          f"({out['store_reader']}) {out['store_read_mb_per_s']} vs {out['store_contiguous_mb_per_s']} MB/s "
          f"({out['store_read_fraction_of_contiguous']:.0%}); zarr's own contiguous read "
          f"{out['zarr_contiguous_mb_per_s']} MB/s")
    if h5:
        print(
            f"h5 export ({h5['h5_reader']}): {h5['steps_per_s_h5']} steps/s; "
            f"bi-level reads {h5['h5_read_mb_per_s']} MB/s vs "
            f"contiguous {h5['h5_contiguous_mb_per_s']} MB/s ({h5['h5_read_fraction_of_contiguous']:.0%})"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
