"""What the cache's integrity costs, measured in one run on this machine.

    python benchmarks/verify_speed.py --gb 4 --work /tmp/verify_bench

Writes a cache of about ``--gb`` GB with LVIS's tap (``--dim 12544``, float16) through the
project's own writer (``extract.store.write_part`` + ``consolidate``: the code ``simcal extract``
runs after the detector), with random features, then measures:

- ``record_s``: the crc32c record taken at consolidation (a share of ``consolidate_s``);
- ``open_s``: opening the cache (every recorded file's size, attributes against shapes);
- ``verify_s_warm`` / ``verify_s_cold``: ``simcal cache verify`` with the files in the page
  cache, and after evicting them (``posix_fadvise(DONTNEED)``);
- ``disk_read_gb_s_cold``: the same files read cold with plain sequential reads, the limit
  a cold verify approaches.

Prints one JSON object as its last line; deletes what it wrote.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.measure import evict  # noqa: E402
from benchmarks.measure import warm as read_all  # noqa: E402
from simcal.extract.cache_tools import verify  # noqa: E402
from simcal.extract.integrity import record_store  # noqa: E402
from simcal.extract.schema import SCHEMA_VERSION, TAP, Cache, empty_rows  # noqa: E402
from simcal.extract.store import consolidate, write_part  # noqa: E402


def write_cache(out: Path, gb: float, dim: int, classes: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rows_per_image, images_per_part = 100, 64
    images = max(1, int(gb * 1e9 / (dim * 2) / rows_per_image))
    parts = -(-images // images_per_part)
    for p in range(parts):
        lo, hi = p * images_per_part, min((p + 1) * images_per_part, images)
        n = (hi - lo) * rows_per_image
        arrays = empty_rows("float16", dim)
        arrays.update(features=rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16),
                      labels=rng.integers(0, classes + 1, n).astype(np.int16), ious=rng.random(n, dtype=np.float32),
                      boxes=np.tile(np.array([0, 0, 10, 10], np.float32), (n, 1)),
                      image_index=np.repeat(np.arange(lo, hi, dtype=np.int32), rows_per_image),
                      is_gt=np.zeros(n, bool), flipped=np.zeros(n, bool),
                      rows_per_image=np.full(hi - lo, rows_per_image, np.int64))
        write_part(out, p, arrays)
    cats = [{"id": c, "name": f"c{c}", "instance_count": 10, "image_count": 10, "frequency": "c"}
            for c in range(1, classes + 1)]
    head = {"fc6.weight": np.zeros((16, dim), np.float32), "fc6.bias": np.zeros(16, np.float32),
            "fc7.weight": np.zeros((16, 16), np.float32), "fc7.bias": np.zeros(16, np.float32),
            "cls_score.weight": np.zeros((classes + 1, 16), np.float32),
            "cls_score.bias": np.zeros(classes + 1, np.float32)}
    attrs = {"schema_version": SCHEMA_VERSION, "detector_fingerprint": "bench", "annotation_fingerprint": "bench",
             "tap": TAP, "dim": dim, "categories": cats, "bins": "lvis", "params": {}}
    t = time.perf_counter()
    consolidate(out, parts, np.arange(images, dtype=np.int64), dim, "float16", classes, attrs, head)
    return {"images": images, "consolidate_s": time.perf_counter() - t}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gb", type=float, default=4.0, help="cache size to write (default 4)")
    p.add_argument("--dim", type=int, default=12544, help="feature width (default 12544, R50-FPN)")
    p.add_argument("--classes", type=int, default=1230)
    p.add_argument("--work", default="/tmp/simcal_verify_bench", help="scratch folder (deleted afterwards)")
    args = p.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    out = work / "cache.zarr"
    try:
        info = write_cache(out, args.gb, args.dim, args.classes)
        files = [f for f in out.rglob("*") if f.is_file()]
        size = sum(f.stat().st_size for f in files)
        t = time.perf_counter()
        record_store(out)
        record_s = time.perf_counter() - t
        t = time.perf_counter()
        cache = Cache(out)
        open_s = time.perf_counter() - t
        t = time.perf_counter()
        assert verify(cache) == []
        warm = time.perf_counter() - t
        evict(out)
        t = time.perf_counter()
        assert verify(Cache(out)) == []
        cold = time.perf_counter() - t
        evict(out)
        t = time.perf_counter()
        read_all(out)
        disk = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gb = size / 1e9
    print(json.dumps({"gb": round(gb, 3), "rows": info["images"] * 100, "dim": args.dim,
                      "files": len(files), "consolidate_s": round(info["consolidate_s"], 2),
                      "record_s": round(record_s, 2), "open_s": round(open_s, 4), "verify_s_warm": round(warm, 2),
                      "verify_s_cold": round(cold, 2), "verify_s_per_gb_warm": round(warm / gb, 2),
                      "verify_s_per_gb_cold": round(cold / gb, 2), "disk_read_gb_s_cold": round(gb / disk, 3),
                      "verify_cold_vs_disk_read": round(cold / disk, 2)}))


if __name__ == "__main__":
    main()
