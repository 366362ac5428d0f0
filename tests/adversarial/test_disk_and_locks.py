"""A full disk and a second writer: one sentence, exit code 2, nothing half-written left behind.

A disk that fills is simulated in-process at the layer that writes (numpy's part writer, the
consolidation's zarr writes, torch.save), in the shapes the libraries really raise: a bare
``OSError(ENOSPC)`` without a file name, or torch's ``RuntimeError`` whose context is one.
Concurrent runs meet ``OUT.lock``: a live owner is named and waited for, a dead one is taken
over together with the temporary copies it left.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from simcal.core.errors import InputError

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _one_line(r, *words) -> None:
    """Exit code 2 and the error as the one line on stderr (progress lines go to stdout)."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def _temps(root: Path) -> list[Path]:
    """The atomic writer's hidden temporaries anywhere under ``root``."""
    return sorted(root.rglob(".*.tmp-*"))


def _extract(cli, detector, few_val, out, *extra):
    """``simcal extract`` of 8 val images in two parts of 4."""
    return cli("extract", "--checkpoint", detector, *few_val, "--out", out, "--images-per-part", "4", *extra)


def _disk_fills(after: int):
    """A writer that writes ``after`` times, then writes a little and finds the disk full (as np.savez would)."""
    real = np.savez
    calls = []

    def savez(f, **arrays):
        calls.append(1)
        if len(calls) <= after:
            return real(f, **arrays)
        f.write(b"\0" * 4096)
        raise ENOSPC

    return savez


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.fixture
def sleeper():
    """A live process of this host that is not the test (a run that still holds a lock)."""
    p = subprocess.Popen(["sleep", "60"])
    yield p.pid
    p.kill()
    p.wait()


def _write_lock(out: Path, pid: int, host: str | None = None) -> Path:
    lock = out.with_name(out.name + ".lock")
    doc = {"pid": pid, "host": host or socket.gethostname(), "command": "extract", "token": "other"}
    lock.write_text(json.dumps(doc))
    return lock


def test_disk_full_in_the_first_part_leaves_nothing(quick_detector, few_val, tmp_path, cli, monkeypatch):
    """Nothing finished: no temporary file, no empty staging folder, no manifest; the sentence names --out."""
    monkeypatch.setattr(np, "savez", _disk_fills(after=0))
    out = tmp_path / "val.zarr"
    r = _extract(cli, quick_detector, few_val, out)
    _one_line(r, f"{out}: no space left on device", "the cache with its staging parts needs about", "are free",
              "free space or choose another --out")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_disk_full_mid_run_keeps_finished_parts_and_resumes(quick_detector, few_val, tmp_path, cli, monkeypatch):
    """Full while staging part 2, then full while consolidating: each time one sentence, only finished parts
    stay, and the same command then finishes the cache from them."""
    from simcal.extract import store

    out = tmp_path / "val.zarr"
    monkeypatch.setattr(np, "savez", _disk_fills(after=1))
    r = _extract(cli, quick_detector, few_val, out)
    _one_line(r, f"{out}: no space left on device", "run the same command again (it resumes from the 1 finished "
              "part(s) in val.zarr.parts), or choose another --out")
    assert not _temps(tmp_path) and not out.exists()
    assert [p.name for p in (tmp_path / "val.zarr.parts").iterdir()] == ["part_000000.npz"]
    monkeypatch.undo()

    def full(self):
        raise ENOSPC

    monkeypatch.setattr(store.ShardAlignedWriter, "close", full)
    r = _extract(cli, quick_detector, few_val, out)
    _one_line(r, f"{out}: no space left on device", "the 2 finished part(s)")
    assert "resuming: 1 of 2 parts already extracted" in r.stdout
    assert not _temps(tmp_path) and not out.exists()
    monkeypatch.undo()

    r = _extract(cli, quick_detector, few_val, out)
    assert r.returncode == 0 and "resuming: 2 of 2 parts" in r.stdout, r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val.zarr", "val.zarr.manifest.json"]


def test_too_little_free_space_is_refused_before_the_detector_runs(quick_detector, few_val, tmp_path, cli,
                                                                   monkeypatch):
    """The estimate covers the cache plus the staged parts; a disk with less is refused with both figures."""
    from simcal.extract import extract

    def no_detector(*a, **k):
        raise AssertionError("the detector ran")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 2 * 10**6, 2 * 10**6))
    monkeypatch.setattr(extract, "_extract_part", no_detector)
    out = tmp_path / "val.zarr"
    r = _extract(cli, quick_detector, few_val, out, "--flip")
    _one_line(r, f"{out}: not enough free space (the cache needs up to ", "MB while its staging parts exist, and "
              "2.0 MB are free); free space or choose another --out.")
    assert sorted(tmp_path.iterdir()) == []


def test_the_space_estimate_bounds_what_is_written(quick_detector, few_val, tmp_path, cli, monkeypatch):
    """The up-front figure is an upper bound of the finished cache, or the check would let a disk fill."""
    from simcal.extract import extract

    seen = []
    real = extract._check_space
    monkeypatch.setattr(extract, "_check_space", lambda out, needed: (seen.append(needed), real(out, needed)))
    out = tmp_path / "val.zarr"
    assert _extract(cli, quick_detector, few_val, out, "--flip").returncode == 0
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    (total, store), = seen
    assert 0 < written <= store < total


def test_torch_save_on_a_full_disk_names_the_checkpoint(quick_bench, tmp_path, cli, monkeypatch):
    """torch.save reports a full disk as a RuntimeError; train still says one sentence naming --out, and the
    log of a run that leaves no resume checkpoint goes with it."""
    import torch

    def full(obj, f, *a, **k):
        f.write(b"PK\0\0")
        try:
            raise ENOSPC
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "tiny.pth"
    r = cli("train", "--data", quick_bench, "--out", out, "--iters", "2", "--batch-size", "2", "--log-every", "1",
            "--device", "cpu")
    _one_line(r, f"simcal train: error: {out}: no space left on device (", "are free")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pth.config.json"]


def test_atomic_target_names_the_output_not_the_library_file(tmp_path):
    """zarr and h5py name a file inside the temporary copy; the user is told about the output they asked for."""
    from simcal.core.atomic import atomic_target

    out = tmp_path / "c.zarr"
    with pytest.raises(OSError) as e:
        with atomic_target(out) as tmp:
            tmp.mkdir()
            (tmp / "x").write_bytes(b"1")
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(tmp / "x"))
    assert e.value.errno == errno.EDQUOT and e.value.filename == str(out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("host", [None, "another-host"])
def test_a_live_or_foreign_lock_is_refused(host, quick_detector, few_val, tmp_path, cli, sleeper):
    """A lock whose process may still be writing is never broken: the owner is named, the lock left alone."""
    out = tmp_path / "val.zarr"
    lock = _write_lock(out, sleeper, host)
    before = lock.read_text()
    r = _extract(cli, quick_detector, few_val, out)
    owner = f"process {sleeper} on host {host or socket.gethostname()}"
    _one_line(r, f"{out}: is being written by 'simcal extract' ({owner})", f"remove {lock} if that process is gone")
    assert lock.read_text() == before and sorted(tmp_path.iterdir()) == [lock]


def test_a_dead_owner_is_taken_over_with_its_temporary_copies(quick_detector, few_val, tmp_path, cli, sleeper):
    """A killed run leaves its lock and a hidden copy as large as the cache: both go, a live run's copy stays."""
    out = tmp_path / "val.zarr"
    dead = _dead_pid()
    lock = _write_lock(out, dead)
    (tmp_path / f".val.zarr.tmp-{dead}" / "features").mkdir(parents=True)
    (tmp_path / f".val.zarr.tmp-{dead}" / "features" / "c").write_bytes(b"\0" * 1000)
    (tmp_path / f".val.zarr.manifest.json.tmp-{dead}").write_text("{")
    (tmp_path / f".val.zarr.tmp-{sleeper}").mkdir()
    r = _extract(cli, quick_detector, few_val, out)
    assert r.returncode == 0, r.stderr
    assert f"taking over {lock}: process {dead}" in r.stdout and "removed 2 temporary file(s)" in r.stdout
    assert out.is_dir() and not lock.exists()
    assert [p.name for p in _temps(tmp_path)] == [f".val.zarr.tmp-{sleeper}"]


def test_one_process_cannot_lock_an_output_twice(tmp_path):
    """The lock names its holder even when that is this very process; released, it can be taken again."""
    from simcal.core.lock import acquire, release

    out = tmp_path / "x.zarr"
    doc = acquire(out, "extract")
    with pytest.raises(InputError, match=f"process {os.getpid()} on host"):
        acquire(out, "extract", wait_s=0.2)
    release(out, doc)
    assert not (tmp_path / "x.zarr.lock").exists()
    release(out, acquire(out, "extract"))


def test_two_real_runs_into_one_output(quick_detector, few_val, tmp_path, cli):
    """The race as users meet it: the second run is refused in one sentence, the first finishes alone."""
    out = tmp_path / "val.zarr"
    lock = out.with_name("val.zarr.lock")
    first = subprocess.Popen([sys.executable, "-m", "simcal", "extract", "--checkpoint", str(quick_detector),
                              *map(str, few_val), "--out", str(out), "--images-per-part", "4"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    r = _extract(cli, quick_detector, few_val, out)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    _one_line(r, f"process {first.pid} on host")
    assert out.is_dir() and not lock.exists() and not _temps(tmp_path)
