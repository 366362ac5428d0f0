"""What the benchmarks measure the same way: a child process's time and peak memory, the page cache, the disk.

- :func:`run_child`: wall seconds, peak RSS and exit status of one command (``os.wait4``), its output
  in a log file, so each measured step has its own peak;
- :func:`evict` / :func:`warm`: drop a folder's files from the page cache (``posix_fadvise(DONTNEED)``,
  no root needed) or read them into it;
- :func:`disk_rates`: the disk's own sequential and random read rates, cold, on a scratch file.

Standard library and numpy only.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Sequence

_BLOCK = 16 * 2**20


def run_child(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MiB) and exit code of ``cmd``, its stdout and stderr written to ``log``."""
    with open(log, "w") as f:
        t0 = time.perf_counter()
        p = subprocess.Popen(list(map(str, cmd)), stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return dt, usage.ru_maxrss / 1024.0, p.returncode


def files_of(root: Path) -> list[Path]:
    root = Path(root)
    return [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())


def evict(root: Path) -> None:
    """Drop every file under ``root`` (or the file ``root``) from the page cache, dirty pages written first."""
    for f in files_of(root):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(root: Path) -> int:
    """Read every file under ``root`` once (so the page cache holds what fits); returns the bytes read."""
    n = 0
    for f in files_of(root):
        with open(f, "rb", buffering=0) as fh:
            while block := fh.read(_BLOCK):
                n += len(block)
    return n


def size_on_disk(root: Path) -> int:
    return sum(f.stat().st_size for f in files_of(root))


def ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def disk_rates(scratch: Path, size: int, read_bytes: int, seconds: float = 3.0, seed: int = 0) -> dict[str, float]:
    """Cold read rates of this disk, in GB/s, on a scratch file of ``size`` bytes (deleted afterwards).

    ``disk_seq_gb_s``: the whole file in 16 MiB reads. ``disk_rand_gb_s``: reads of ``read_bytes`` (a feature
    row) at random ``read_bytes``-aligned offsets, one at a time, for about ``seconds``;
    ``disk_rand_qd8_gb_s``: the same with 8 reads in flight (threads). The page cache is emptied of the file
    before each.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    rng = np.random.default_rng(seed)
    block = rng.integers(0, 256, size=_BLOCK, dtype=np.uint8).tobytes()
    try:
        with open(scratch, "wb") as f:
            for _ in range(max(1, size // _BLOCK)):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        size = scratch.stat().st_size
        evict(scratch)
        t = time.perf_counter()
        n = warm(scratch)
        seq = n / (time.perf_counter() - t) / 1e9
        slots = size // read_bytes
        fd = os.open(scratch, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)

            def timed(offsets: np.ndarray, threads: int) -> float:
                evict(scratch)
                done = 0
                t0 = time.perf_counter()
                if threads == 1:
                    for off in offsets.tolist():
                        done += len(os.pread(fd, read_bytes, off))
                        if (done // read_bytes) % 64 == 0 and time.perf_counter() - t0 > seconds:
                            break
                else:
                    with ThreadPoolExecutor(threads) as ex:
                        for k in range(0, len(offsets), 256):
                            done += sum(ex.map(lambda o: len(os.pread(fd, read_bytes, o)), offsets[k:k + 256].tolist()))
                            if time.perf_counter() - t0 > seconds:
                                break
                return done / (time.perf_counter() - t0) / 1e9

            offsets = rng.permutation(slots)[: 200_000] * read_bytes
            rand = timed(offsets, 1)
            rand8 = timed(rng.permutation(slots)[: 200_000] * read_bytes, 8)
        finally:
            os.close(fd)
    finally:
        scratch.unlink(missing_ok=True)
    return {"disk_seq_gb_s": round(seq, 3), "disk_rand_gb_s": round(rand, 3), "disk_rand_qd8_gb_s": round(rand8, 3),
            "disk_scratch_gb": round(size / 1e9, 3), "disk_read_bytes": int(read_bytes)}
