"""LVIS scale without LVIS: an LVIS-shaped feature cache, larger than memory, written and used end to end.

    python benchmarks/lvis_scale.py --version v1 --sizes 7,28 --out /big/disk/lvis_scale     # the full run
    python benchmarks/lvis_scale.py --version v0.5 --gb 2 --out /tmp/lvis_scale              # one size
    python benchmarks/lvis_scale.py --quick --out /tmp/lvis_quick                           # smoke (~0.1 GB)

For each size (GB of train cache; ``--sizes G,4G`` with 4G above this machine's RAM shows that memory
does not grow with the cache), in this order, each measured step in its own process (its own peak RSS;
``--quick`` forks them from one process that imported numpy, torch and zarr, benchmarks/measure.py's
``Forker``, so a smoke run does not spend most of its time importing torch):

1. **write**: ``benchmarks/lvis_shape.py write``: an LVIS-shaped train cache (``--version``'s real class
   structure, rows per image and fg/bg mix as ``simcal extract`` keeps them, class-conditional features;
   see that file) through the project's cache writer (parts, consolidation, CSR index, crc32c record,
   manifest). ``write_gb_s`` = bytes on disk / (staging the parts + consolidation), the feature synthesis
   (the detector's share) excluded; plus, once, a small val cache with the same class means.
2. **verify**: ``simcal cache verify``, the cache evicted from the page cache first.
3. **sampler**: the bi-level sampler's batches/s at the class count (in this process), and the rows and
   feature bytes a batch reads (``bytes_per_step``).
4. **disk** (first size): this disk's cold sequential and random read rates on a scratch file
   (benchmarks/measure.py), random reads of one feature row each.
5. **calibrate** ``3fc_ft`` bi-level for ``--steps`` steps: from the store with a **cold** page cache
   (every file of the cache evicted with ``posix_fadvise(DONTNEED)``), with a **warm** one (the files read
   first; only where they fit in memory), from **RAM** (``--preload ram``; only where the features fit in
   45 % of memory); steps/s is the trainer's own (head file's ``train_info``).
6. **sweep6**: six heads (3fc_ft with ce, reweight and focal; 2fc_ncm; 2fc_rand; linear) in one ``--sweep``
   with ``--eval-cache``, cold; its wall time, and each head's proposal accuracy on the val cache. The
   sanity check that a head can learn from the cache: 2fc_ncm, whose class means come only from the rows
   it is given, scores far above chance (1 / classes).
7. **int8** (unless ``--no-int8``; after the float16 cache is deleted): the same rows with ``--dtype int8``,
   written and calibrated from a cold store.

The last stdout line is one JSON object: the first size's figures at the top level (``version``,
``classes``, ``rows``, ``gb``, ``write_gb_s``, ``write_peak_rss_mb``, ``verify_s``, ``steps_s_ram``,
``steps_s_store_warm``, ``steps_s_store_cold``, ``steps_s_int8``, ``disk_seq_gb_s``, ``disk_rand_gb_s``,
``bytes_per_step``, ``calib_peak_rss_mb``, ``sweep6_s``, ``sampler_batches_s``, ``cache_dir``, ...), every
size under ``sizes``, the peak-RSS ratios of the last size to the first under ``memory``, and the cold-store
target under ``cold_store``. A figure that cannot be measured at a size is null with a ``*_skipped`` reason.
At 12544-d, sizes below a few GB are dominated by the floor of one image per class (every class must
appear in train): fewer images with more rows each than LVIS's (``rows_per_image_vs_full`` says by how
much); from about 5 GB on the rows per image are LVIS's. What it writes goes under ``--out`` and is
deleted size by size (``--keep`` keeps the last caches), so the
disk holds about the largest cache plus the val cache at any time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.lvis_facts import LVIS, rows_per_image  # noqa: E402
from benchmarks.lvis_shape import categories, table  # noqa: E402
from benchmarks.measure import Forker, disk_rates, evict, ram_bytes, run_child, size_on_disk, warm  # noqa: E402

#: Six heads on one batch stream: 3fc_ft with three losses, the nearest-class-mean head (learns the class
#: means from the rows it is given: the sanity check that the cache's features carry their labels' signal),
#: and two heads from random weights.
SWEEP = [{"head": ["3fc_ft"], "loss": ["ce", "reweight", "focal"]}, {"head": ["2fc_ncm", "2fc_rand", "linear"]}]
RAM_PRELOAD_FRACTION = 0.45  # preload to RAM only where the features take at most this share of memory
WARM_FRACTION = 0.6  # a warm page cache only where the cache takes at most this share of memory
QUICK = {"sizes": [0.05], "dim": 256, "val_gb": 0.01, "steps": 10, "sweep_steps": 10, "sampler_batches": 200,
         "scratch_gb": 0.032, "threads": 1}


_T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[lvis_scale {time.perf_counter() - _T0:7.1f} s] {msg}", flush=True)


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.n = 0
        self.ram = int(args.ram_gb * 1e9) if args.ram_gb else ram_bytes()  # what "fits in memory" is judged by
        self.env = dict(os.environ)
        if args.threads:  # torch's threads in every child; on a shared machine 1 keeps step rates steady
            self.env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        # --quick: short steps, mostly torch's import; each is forked after it instead (its peak RSS then counts
        # only the imported pages it touches: a smoke figure, not one to plan memory with)
        self.forker = Forker(["numpy", "torch", "zarr"], self.env) if args.quick else None

    def child(self, name: str, argv: list) -> tuple[float, float, Path]:
        """Run one measured step, ``python ARGV``; (wall s, peak RSS MiB, log). Fails loudly with the log's tail."""
        self.n += 1
        log = self.logs / f"{self.n:02d}_{name}.log"
        if self.forker is not None:
            dt, rss, rc = self.forker.run(argv, log)
        else:
            dt, rss, rc = run_child([sys.executable, *argv], log, self.env)
        if rc != 0:
            tail = log.read_text()[-3000:]
            raise SystemExit(f"lvis_scale: step {name} exited {rc}:\n{tail}")
        return dt, rss, log

    def write(self, name: str, out: Path, split: str, gb: float, dtype: str) -> dict:
        a = self.args
        dt, rss, log = self.child(name, [ROOT / "benchmarks" / "lvis_shape.py", "write", "--version",
                                         a.version, "--split", split, "--gb", gb, "--dim", a.dim, "--dtype", dtype,
                                         "--seed", a.seed, "--out", out])
        figures = json.loads(log.read_text().strip().splitlines()[-1])
        return {**figures, "wall_s": round(dt, 2), "peak_rss_mb": round(rss, 1)}

    def calibrate(self, name: str, cache: Path, preload: str, work: Path, steps: int) -> dict:
        import torch

        head = work / f"{name}.pth"
        dt, rss, _ = self.child(name, ["-m", "simcal", "calibrate", "--cache", cache, "--head", "3fc_ft",
                                       "--steps", steps, "--preload", preload, "--device", self.args.device, "--seed",
                                       self.args.seed, "--out", head])
        info = torch.load(head, map_location="cpu", weights_only=True)["train_info"]
        return {"steps_s": round(info["steps_per_s"], 3), "peak_rss_mb": round(rss, 1), "wall_s": round(dt, 2)}

    def sweep(self, cache: Path, val: Path, work: Path, steps: int) -> dict:
        grid = work / "grid.json"
        grid.write_text(json.dumps([{**g, "steps": [steps]} for g in SWEEP]))
        a = self.args
        dt, rss, _ = self.child("sweep6", ["-m", "simcal", "calibrate", "--cache", cache, "--sweep", grid,
                                           "--eval-cache", val, "--preload", "none", "--device", a.device, "--seed",
                                           a.seed, "--out", work / "sweep"])
        rows = json.loads((work / "sweep" / "results.json").read_text())
        acc = {f"{r['head']}_{r['loss']}": {k: round(r[k], 4) for k in ("fg_acc", "bg_acc", "acc_bin1", "acc_bin2",
                                                                          "acc_bin3", "acc_bin4")} for r in rows}
        return {"sweep6_s": round(dt, 2), "sweep6_peak_rss_mb": round(rss, 1), "sweep6_heads": len(rows),
                "sweep6_steps": steps, "sweep6_head_steps_s": rows[0].get("head_steps_per_s"), "sweep6_acc": acc}


def sampler_figures(cache_path: Path, batches: int, seed: int) -> dict:
    """Bi-level batches/s over the cache's index, and what a batch reads (rows, feature bytes)."""
    import numpy as np

    from simcal.calibrate.samplers import BilevelSampler, CacheIndex
    from simcal.extract.schema import Cache

    t = time.perf_counter()
    cache = Cache(cache_path)
    index = CacheIndex.from_cache(cache)
    load_s = time.perf_counter() - t
    sampler = BilevelSampler(index, seed=seed)
    sampler.sample()
    rows = np.empty(batches, dtype=np.int64)
    t = time.perf_counter()
    for k in range(batches):
        rows[k] = len(sampler.sample().rows)
    dt = time.perf_counter() - t
    feats = cache["features"]
    row_feature_bytes = int(feats.shape[1]) * feats.dtype.itemsize
    return {"sampler_batches_s": round(batches / dt, 1), "index_load_s": round(load_s, 3),
            "rows_per_step": round(float(rows.mean()), 1), "bytes_per_step": int(rows.mean() * row_feature_bytes),
            "row_feature_bytes": row_feature_bytes}


def measure_size(r: Runner, gb: float, val: Path, first: bool, last: bool, shared: dict) -> dict:
    a = r.args
    work = r.out / f"size_{gb:g}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cache = work / "train.zarr"
    say(f"{gb:g} GB: writing the train cache ({a.version}, {a.dim}-d {a.dtype})")
    w = r.write(f"write_{gb:g}", cache, "train", gb, a.dtype)
    fig = {"gb_target": gb, "gb": w["gb"], "images": w["images"], "rows": w["rows"], "fg_rows": w["fg_rows"],
           "rows_per_image": round(w["rows"] / w["images"], 1), "classes_with_rows": w["classes_with_rows"],
           "write_gb_s": w["write_gb_s"], "write_s": w["write_s"], "consolidate_s": w["consolidate_s"],
           "consolidate_gb_s": w["consolidate_gb_s"], "generate_s": w["generate_s"],
           "write_peak_rss_mb": w["peak_rss_mb"]}
    say(f"  {w['rows']} rows, {w['gb']} GB, {w['write_gb_s']} GB/s, peak RSS {w['peak_rss_mb']} MiB")
    fig["rows_per_image_vs_full"] = round(fig["rows_per_image"] / rows_per_image(a.version), 2)
    if fig["rows_per_image_vs_full"] > 1.5:
        say(f"  note: {fig['rows_per_image']} rows per image, {fig['rows_per_image_vs_full']}x LVIS's: at this size "
            "the one-image-per-class floor dominates (a larger --gb gives LVIS's rows per image and batches)")

    evict(cache)
    dt, rss, _ = r.child(f"verify_{gb:g}", ["-m", "simcal", "cache", "verify", cache])
    fig.update(verify_s=round(dt, 2), verify_gb_s=round(w["gb"] / dt, 3), verify_peak_rss_mb=round(rss, 1))
    say(f"  verify (cold) {dt:.1f} s, peak RSS {rss:.0f} MiB")

    fig.update(sampler_figures(cache, a.sampler_batches, a.seed))
    say(f"  sampler {fig['sampler_batches_s']} batches/s, {fig['rows_per_step']} rows/step")
    if first:
        shared.update(disk_rates(r.out / "scratch.bin", int(a.scratch_gb * 1e9), fig["row_feature_bytes"]))
        say(f"  disk: sequential {shared['disk_seq_gb_s']} GB/s, random {shared['disk_rand_gb_s']} GB/s (QD1), "
            f"{shared['disk_rand_qd8_gb_s']} GB/s (QD8)")

    evict(cache)
    c = r.calibrate(f"cold_{gb:g}", cache, "none", work, a.steps)
    fig.update(steps_s_store_cold=c["steps_s"], calib_peak_rss_mb=c["peak_rss_mb"])
    say(f"  calibrate from a cold store: {c['steps_s']} steps/s, peak RSS {c['peak_rss_mb']} MiB")

    nbytes, ram = size_on_disk(cache), r.ram
    if nbytes <= WARM_FRACTION * ram:
        warm(cache)
        c = r.calibrate(f"warm_{gb:g}", cache, "none", work, a.steps)
        fig.update(steps_s_store_warm=c["steps_s"], warm_peak_rss_mb=c["peak_rss_mb"])
        say(f"  calibrate from a warm store: {c['steps_s']} steps/s")
    else:
        fig.update(steps_s_store_warm=None, steps_s_store_warm_skipped=f"the cache ({nbytes / 1e9:.1f} GB) is over "
                   f"{WARM_FRACTION:.0%} of memory ({ram / 1e9:.1f} GB): the page cache cannot hold it")
    features = fig["rows"] * fig["row_feature_bytes"]
    if features <= RAM_PRELOAD_FRACTION * ram:
        c = r.calibrate(f"ram_{gb:g}", cache, "ram", work, a.steps)
        fig.update(steps_s_ram=c["steps_s"], ram_peak_rss_mb=c["peak_rss_mb"])
        say(f"  calibrate from RAM: {c['steps_s']} steps/s, peak RSS {c['peak_rss_mb']} MiB")
    else:
        fig.update(steps_s_ram=None, steps_s_ram_skipped=f"the features ({features / 1e9:.1f} GB) are over "
                   f"{RAM_PRELOAD_FRACTION:.0%} of memory ({ram / 1e9:.1f} GB)")

    evict(cache)
    evict(val)
    fig.update(r.sweep(cache, val, work, a.sweep_steps))
    say(f"  sweep of 6 heads x {a.sweep_steps} steps with --eval-cache: {fig['sweep6_s']} s")

    keep = a.keep and last
    if not keep:  # the disk holds one size's cache at a time
        shutil.rmtree(cache)
        (work / "train.zarr.manifest.json").unlink(missing_ok=True)
    if a.int8:
        q = work / "train_int8.zarr"
        w8 = r.write(f"write_int8_{gb:g}", q, "train", gb, "int8")
        evict(q)
        c = r.calibrate(f"int8_cold_{gb:g}", q, "none", work, a.steps)
        fig.update(steps_s_int8=c["steps_s"], int8_peak_rss_mb=c["peak_rss_mb"], int8_gb=w8["gb"],
                   int8_rows=w8["rows"], int8_write_gb_s=w8["write_gb_s"])
        say(f"  int8 ({w8['gb']} GB): calibrate from a cold store {c['steps_s']} steps/s")
    elif a.dtype == "int8":  # the main cache is the int8 one
        fig.update(steps_s_int8=fig["steps_s_store_cold"], int8_peak_rss_mb=fig["calib_peak_rss_mb"],
                   int8_gb=fig["gb"], int8_rows=fig["rows"], int8_write_gb_s=fig["write_gb_s"])
    else:
        fig.update(steps_s_int8=None, steps_s_int8_skipped="--no-int8")
    if not keep:
        shutil.rmtree(work)
    return fig


def cold_store_target(fig: dict, ram_steps_s: float | None, disk: dict) -> dict:
    """The issue's bar: cold >= min(50 % of the RAM rate, 80 % of what the disk allows for a step's bytes)."""
    disk_bound = disk["disk_rand_gb_s"] * 1e9 / max(fig["bytes_per_step"], 1)
    out = {"steps_s_store_cold": fig["steps_s_store_cold"], "steps_s_ram": ram_steps_s,
           "disk_bound_steps_s": round(disk_bound, 2)}
    bars = {"disk": 0.8 * disk_bound}
    if ram_steps_s:
        bars["ram"] = 0.5 * ram_steps_s
        out["cold_vs_ram"] = round(fig["steps_s_store_cold"] / ram_steps_s, 3)
    out["cold_vs_disk_bound"] = round(fig["steps_s_store_cold"] / disk_bound, 4)
    bound = min(bars, key=bars.get)
    out.update(bound=bound, target_steps_s=round(bars[bound], 3), holds=fig["steps_s_store_cold"] >= bars[bound])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", choices=tuple(LVIS), default="v1")
    p.add_argument("--gb", type=float, help="one train cache size, GB (default 7; --sizes for several)")
    p.add_argument("--sizes", help="comma-separated train cache sizes in GB, e.g. 7,28 (4x, above RAM)")
    p.add_argument("--dim", type=int, help="feature width (default 12544, R50-FPN; --quick 512)")
    p.add_argument("--dtype", choices=("float16", "int8"), default="float16", help="the main cache's features")
    p.add_argument("--no-int8", dest="int8", action="store_false", help="skip the int8 copy of each size")
    p.add_argument("--out", required=True, type=Path, help="scratch folder (caches, logs); emptied as it goes")
    p.add_argument("--quick", action="store_true", help="a smoke run: 0.1 GB, 512-d, a few steps")
    p.add_argument("--keep", action="store_true", help="keep the last size's caches (and the val cache)")
    p.add_argument("--steps", type=int, help="calibration steps per single-head measurement (default 200)")
    p.add_argument("--sweep-steps", type=int, help="steps of each sweep head (default 60)")
    p.add_argument("--val-gb", type=float, help="val cache size (default 0.25)")
    p.add_argument("--sampler-batches", type=int, help="batches timed for sampler throughput (default 3000)")
    p.add_argument("--scratch-gb", type=float, help="scratch file for the disk rates (default 2)")
    p.add_argument("--ram-gb", type=float, help="judge what fits in memory against this many GB (default: this "
                   "machine's RAM; a smaller value exercises the larger-than-memory paths on a small run)")
    p.add_argument("--threads", type=int, help="torch threads of each child (default: torch's own; --quick 1)")
    p.add_argument("--device", default="cpu", help="where calibration runs (default cpu; cuda on a GPU node)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.dtype == "int8":
        a.int8 = False  # the main cache is the int8 one: its cold rate is steps_s_int8
    defaults = {"sizes": [7.0], "dim": 12544, "val_gb": 0.25, "steps": 200, "sweep_steps": 60,
                "sampler_batches": 3000, "scratch_gb": 2.0, "threads": None}
    for k, v in (QUICK if a.quick else defaults).items():
        if k != "sizes" and getattr(a, k) is None:
            setattr(a, k, v)
    sizes = ([float(s) for s in a.sizes.split(",")] if a.sizes else [a.gb] if a.gb else
             (QUICK if a.quick else defaults)["sizes"])

    t0 = time.perf_counter()
    r = Runner(a)
    cats = categories(a.version)
    val = r.out / "val" / "val.zarr"
    shared: dict = {}
    figs = []
    try:
        say(f"val cache ({a.val_gb} GB)")
        v = r.write("write_val", val, "val", a.val_gb, a.dtype)
        for k, gb in enumerate(sizes):
            figs.append(measure_size(r, gb, val, k == 0, k == len(sizes) - 1, shared))
    finally:
        if r.forker is not None:
            r.forker.close()
        if not a.keep:
            shutil.rmtree(r.out / "val", ignore_errors=True)
    ram_rate = next((f["steps_s_ram"] for f in figs if f.get("steps_s_ram")), None)
    for f in figs:
        f["cold_store"] = cold_store_target(f, ram_rate, shared)
    first, last = figs[0], figs[-1]
    memory = {k: round(last[k] / first[k], 3) for k in ("write_peak_rss_mb", "verify_peak_rss_mb",
                                                        "calib_peak_rss_mb")}
    memory.update(sizes_gb=[first["gb"], last["gb"]], holds=all(x <= 1.2 for x in memory.values()) if len(figs) > 1
                  else None, ram_gb=round(r.ram / 1e9, 1))
    rpi = rows_per_image(a.version)
    t = table(cats)
    out = {"version": a.version, "classes": len(cats), "dim": a.dim, "dtype": a.dtype, "quick": a.quick,
           "threads": a.threads or os.cpu_count(), "device": a.device,
           **{k: first[k] for k in first if k not in ("cold_store",)},
           "chance_fg_acc": round(1 / len(cats), 5), **shared,
           "lvis_train_images": LVIS[a.version]["train_images"], "lvis_val_images": LVIS[a.version]["val_images"],
           "lvis_bins": t["bins"], "lvis_rcf": t["rcf"], "lvis_instances": t["instances"],
           "rows_per_image_full": round(rpi, 1),
           "bytes_per_row": round(first["gb"] * 1e9 / first["rows"], 1),
           "val": {k: v[k] for k in ("images", "rows", "gb", "classes_with_rows")},
           "cold_store": last["cold_store"], "memory": memory, "sizes": figs,
           "total_s": round(time.perf_counter() - t0, 1), "cache_dir": str(r.out)}
    if not a.keep:
        shutil.rmtree(r.logs, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
