"""One writer per output: a lock file beside it, created atomically, naming its owner.

``with output_lock(out, "extract"):`` creates ``OUT.lock`` with ``O_CREAT | O_EXCL``
(only one process can), holding ``{"pid", "host", "command", "token"}``, and removes
it when the block ends. A second run refuses in one sentence naming the owner. A
lock left by a process that is gone (same host, pid no longer alive) is taken over
with one informational line; the takeover itself is serialised by a second
``O_EXCL`` file, so two runs finding the same stale lock cannot both win. Under
torchrun only rank 0 takes the lock (the caller broadcasts the outcome), so the
ranks of one run never block each other.

:func:`remove_dead_temps` clears the atomic writer's temporary copies
(``.NAME.tmp-PID``) left by processes that are gone, which a killed run leaves
behind (a consolidation copy can be as large as the output).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from simcal.core.atomic import TEMP_MARK
from simcal.core.errors import input_error

#: An empty lock younger than this is being written by its creator, not abandoned.
_FRESH_S = 5.0
_RETRY_S = 0.05
_HELD: set[str] = set()  # lock files this process holds


def lock_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".lock")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (one owned by another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_owner(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(doc, dict) and isinstance(doc.get("pid"), int) and isinstance(doc.get("host"), str)
    return doc if ok else None


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _create(path: Path, doc: dict[str, Any]) -> bool:
    """Create ``path`` holding ``doc`` if it does not exist; False if it does."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, json.dumps(doc).encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return True


def _is_stale(owner: dict[str, Any], path: Path) -> bool:
    """The owner is this host's process that is gone (or this very process, no longer holding ``path``)."""
    if owner["host"] != socket.gethostname():
        return False
    if owner["pid"] == os.getpid():
        return str(path) not in _HELD
    return not pid_alive(owner["pid"])


def _take_over(path: Path, owner: dict[str, Any]) -> bool:
    """Remove the stale lock ``path`` (still held by ``owner``) under a takeover guard; False to retry."""
    guard = path.with_name(path.name + ".takeover")
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    if not _create(guard, me):
        other = _read_owner(guard)
        gone = _is_stale(other, guard) if other is not None else _age_s(guard) > _FRESH_S
        if gone:
            guard.unlink(missing_ok=True)
        return False
    try:
        if _read_owner(path) == owner:
            path.unlink(missing_ok=True)
    finally:
        guard.unlink(missing_ok=True)
    return True


def _refusal(out: Path, path: Path, owner: dict[str, Any] | None):
    if owner is None:
        return input_error(out, f"is locked by {path}, which does not say which process holds it",
                           f"wait for the other run or remove {path} if no run is writing {out.name}")
    what = f"'simcal {owner['command']}'" if isinstance(owner.get("command"), str) else "a process"
    return input_error(out, f"is being written by {what} (process {owner['pid']} on host {owner['host']})",
                       f"wait for it, or remove {path} if that process is gone")


def acquire(out: str | os.PathLike, command: str, wait_s: float = 10.0) -> dict[str, Any]:
    """Take the lock of ``out`` or raise an ``InputError`` naming its owner; returns what the lock holds."""
    out = Path(out)
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "token": uuid.uuid4().hex}
    deadline = time.monotonic() + wait_s
    owner = None
    while time.monotonic() < deadline:
        if _create(path, doc):
            _HELD.add(str(path))
            return doc
        owner = _read_owner(path)
        if owner is None and _age_s(path) > _FRESH_S:
            break  # not being written: unreadable, so nobody can tell whether it is stale
        if owner is not None and not _is_stale(owner, path):
            break
        if owner is not None and _take_over(path, owner):
            print(f"simcal {command}: taking over {path}: process {owner['pid']} on host {owner['host']} "
                  "is gone")
            continue
        time.sleep(_RETRY_S)
    raise _refusal(out, path, owner)


def release(out: str | os.PathLike, doc: dict[str, Any]) -> None:
    """Remove the lock of ``out`` if it is still the one ``doc`` describes."""
    path = lock_path(out)
    _HELD.discard(str(path))
    owner = _read_owner(path)
    if owner is not None and owner.get("token") == doc["token"]:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, command: str) -> Iterator[dict[str, Any]]:
    """``with output_lock(out, "extract"):`` -- this process is the only writer of ``out`` inside the block."""
    doc = acquire(out, command)
    try:
        yield doc
    finally:
        release(out, doc)


def remove_dead_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove atomic-writer temporaries in ``folder`` (of ``name`` only, if given) whose process is gone."""
    folder = Path(folder)
    pattern = f".{name}{TEMP_MARK}*" if name is not None else f".*{TEMP_MARK}*"
    removed = []
    for p in sorted(folder.glob(pattern)) if folder.is_dir() else []:
        pid = p.name.rsplit(TEMP_MARK, 1)[1]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed
