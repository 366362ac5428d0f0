"""The one atomic writer: an output is whole or absent, never half-written.

Every file SimCal writes goes through :func:`atomic_write`: the content is written
to a temporary name in the same directory (so the rename cannot cross file
systems), flushed and fsynced, then renamed over the target; on any failure the
temporary file is removed and the target is left as it was. A full disk, however
a library reports it, is re-raised as an ``OSError`` (ENOSPC/EDQUOT) naming the
target, so the CLI can say which output did not fit (see :mod:`simcal.core.disk`).
The helpers below are the shapes outputs take: bytes, text, json, a torch object,
a matplotlib figure as PNG.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from simcal.core.disk import disk_full_cause, naming

TEMP_MARK = ".tmp-"


def require_output(path: str | os.PathLike | None, kind: str, flag: str, example: str) -> None:
    """Refuse, before any work, an output of the wrong kind: ``kind`` is ``file`` or ``folder``.

    A file output that is an existing folder (or the reverse) would otherwise fail at the final
    rename, after the whole run.
    """
    from simcal.core.errors import input_error

    if path is None:
        return
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise input_error(path, f"is a folder, and {flag} names a file", f"pass a file name such as {example}")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise input_error(path, f"is a file, and {flag} names a folder", f"pass a folder name such as {example}")


def temp_path(path: str | os.PathLike) -> Path:
    """A temporary sibling of ``path``, unique to this process (hidden, same directory)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def _name_disk_full(exc: BaseException, tmp: Path, path: Path) -> None:
    """Re-raise a full disk met while writing ``tmp`` as an ``OSError`` naming ``path``; other errors pass."""
    cause = disk_full_cause(exc)
    if cause is None:
        return
    inner = cause.filename is None or os.fspath(cause.filename).startswith(os.fspath(tmp))
    if cause is not exc or inner:
        raise naming(cause, path if inner else cause.filename) from exc


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_open(p) as f: f.write(...)``: ``p`` appears, complete, when the block ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        _name_disk_full(e, tmp, path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """For libraries that write by name (h5py, zarr, a whole folder): yields a temporary path.

    When the block ends without error, the temporary file or folder replaces ``path``
    (an existing folder at ``path`` is removed first); on error it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except Exception as e:
        _name_disk_full(e, tmp, path)
        raise
    finally:
        _remove(tmp)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(binary_file)`` and move the result to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        write(f)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, doc: Any, **kw: Any) -> Path:
    """``json.dumps(doc, **kw)`` written atomically (pass ``indent=2`` for files people read)."""
    return write_text(path, json.dumps(doc, **kw) + ("\n" if kw.get("indent") is not None else ""))


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save(obj)`` written atomically (torch is imported only here, when asked)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def save_png(path: str | os.PathLike, fig: Any, **kw: Any) -> Path:
    """A matplotlib figure as PNG, written atomically."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", **kw))
