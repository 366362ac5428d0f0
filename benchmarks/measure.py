"""What the benchmarks measure the same way: a child process's time and peak memory, the page cache, the disk.

- :func:`run_child`: wall seconds, peak RSS and exit status of one command (``os.wait4``), its output
  in a log file, so each measured step has its own peak;
- :class:`Forker`: the same for Python commands, each forked from one process that has imported the
  heavy libraries once (torch alone takes seconds to import: a run of many short steps spent most of its
  time importing it again);
- :func:`evict` / :func:`warm`: drop a folder's files from the page cache (``posix_fadvise(DONTNEED)``,
  no root needed) or read them into it;
- :func:`disk_rates`: the disk's own sequential and random read rates, cold, on a scratch file.

Standard library and numpy only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

_BLOCK = 16 * 2**20


#: The launcher :func:`run_child` starts: it runs ``argv[2:]`` and writes "peak-RSS-KiB exit-code" to ``argv[1]``.
#: Linux records a process's peak RSS as at least that of the address space it ``exec``'d from: a child
#: spawned straight from the measuring process reports the measuring process's own peak when that is larger
#: (a benchmark that generated a big case in-process, or loaded an index). The launcher's address space is
#: a bare interpreter's, so the command's peak is its own.
_LAUNCHER = ("import os, subprocess, sys\n"
             "p = subprocess.Popen(sys.argv[2:])\n"
             "_, status, usage = os.wait4(p.pid, 0)\n"
             "open(sys.argv[1], 'w').write(f'{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}')\n")


def run_child(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MiB) and exit code of ``cmd``, its stdout and stderr written to ``log``; the peak
    is ``cmd``'s own, whatever this process holds (:data:`_LAUNCHER`)."""
    result = Path(f"{log}.rusage")
    with open(log, "w") as f:
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-c", _LAUNCHER, str(result), *map(str, cmd)], stdout=f,
                             stderr=subprocess.STDOUT, env=env)
        dt = time.perf_counter() - t0
    if not result.exists():  # the launcher itself failed
        return dt, float("nan"), rc or 1
    kib, code = result.read_text().split()
    result.unlink()
    return dt, int(kib) / 1024.0, int(code)


class Forker:
    """Runs Python commands (``["-m", module, *args]`` or ``[script.py, *args]``) as :func:`run_child` does,
    each in a process forked from one that imported ``preload`` (and nothing else) first.

    A forked step starts where a fresh interpreter stands after those imports: same modules, no work done,
    no threads started (the imports start none). Its peak RSS counts the pages it inherited and touches,
    like a fresh process's imports; the wall time excludes the imports. ``env`` is the environment of the
    forking process, so of every step (set thread counts there).
    """

    def __init__(self, preload: Sequence[str], env: dict[str, str] | None = None) -> None:
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import measure; measure._fork_loop()"
        self._p = subprocess.Popen([sys.executable, "-c", code, *preload], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, env=env)

    def run(self, argv: Sequence[str], log: Path) -> tuple[float, float, int]:
        """Wall seconds, peak RSS (MiB) and exit code of ``argv``, its stdout and stderr written to ``log``."""
        self._p.stdin.write(json.dumps({"argv": list(map(str, argv)), "log": str(log)}) + "\n")
        self._p.stdin.flush()
        line = self._p.stdout.readline()
        if not line:
            raise RuntimeError(f"the forking process exited {self._p.wait()}")
        done = json.loads(line)
        return done["wall_s"], done["peak_rss_mb"], done["rc"]

    def close(self) -> None:
        self._p.stdin.close()
        self._p.wait()

    def __enter__(self) -> "Forker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fork_loop() -> None:
    """The forking process: import ``sys.argv[1:]``, then fork one child per job line read from stdin."""
    import importlib

    for name in sys.argv[1:]:
        importlib.import_module(name)
    for line in sys.stdin:
        job = json.loads(line)
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            _run_forked(job["argv"], job["log"])  # never returns
        _, status, usage = os.wait4(pid, 0)
        done = {"wall_s": time.perf_counter() - t0, "peak_rss_mb": usage.ru_maxrss / 1024.0,
                "rc": os.waitstatus_to_exitcode(status)}
        print(json.dumps(done), flush=True)


def _run_forked(argv: list[str], log: str) -> None:
    """In the forked child: stdin from /dev/null, stdout and stderr to ``log``, ``argv`` run as ``python argv``."""
    import runpy
    import traceback

    null, out = os.open(os.devnull, os.O_RDONLY), os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    code = 0
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if isinstance(e.code, int) or e.code is None:
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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
