"""A full disk is a failed environment, said in one sentence: which path, how much space, what to do.

Libraries report a full disk in several shapes: an ``OSError`` with errno ENOSPC or
EDQUOT (numpy, zarr, h5py, plain writes), or another exception whose context is one
(torch.save raises a ``RuntimeError`` from its zip writer). :func:`disk_full_cause`
finds it in any of them; the atomic writer re-raises it naming the output it was
writing, and ``simcal <command>`` turns it into :func:`disk_full_error`'s sentence.
Long jobs that know how much they will write compare it with :func:`free_bytes` up front.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from simcal.core.errors import InputError, input_error

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full_cause(exc: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT ``OSError`` that ``exc`` is or was raised from (``__cause__``/``__context__``), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def naming(cause: OSError, path: str | os.PathLike) -> OSError:
    """The same disk-full error, naming ``path`` (the output being written, not a library's inner file)."""
    return OSError(cause.errno, os.strerror(cause.errno), os.fspath(path))


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system that holds (or would hold) ``path``; None when it cannot be told."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return int(shutil.disk_usage(p).free)
    except OSError:
        return None


def human_bytes(n: float) -> str:
    """``12.3 GB``, ``45.6 MB``, ``7.0 kB``: decimal units, as ``df -H`` prints them."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


def disk_full_error(path: str | os.PathLike | None, cause: OSError | None = None, needed: int | None = None,
                    what: str = "the output", fix: str = "free space or write the output elsewhere") -> InputError:
    """``PATH: no space left on device (WHAT needs about N, M are free); FIX.`` as an :class:`InputError`."""
    code = cause.errno if cause is not None and cause.errno in DISK_FULL_ERRNOS else errno.ENOSPC
    problem = os.strerror(code)
    problem = problem[0].lower() + problem[1:]
    free = free_bytes(path) if path is not None else None
    figures = []
    if needed is not None:
        figures.append(f"{what} needs about {human_bytes(needed)}")
    if free is not None:
        figures.append(f"{human_bytes(free)} are free")
    if figures:
        problem += f" ({', '.join(figures)})"
    return input_error(path, problem, fix)

