"""The one rule for "this output is complete and was made from the same inputs".

A command writes its output (a file or a folder) atomically, then, last, a manifest
beside it, ``OUT.manifest.json``::

    {"format": "simcal.manifest/1", "command": "calibrate",
     "identity": {...},   # input fingerprints and every parameter that changes the output
     "record": {...}}     # what the run wants remembered (resolved arguments, a results row, timings)

An output counts as done for a request when it exists and its manifest carries the
same command and identity (compared as JSON). Anything else -- no manifest, a
manifest for other inputs or parameters -- is not done: the command redoes the work,
or refuses to overwrite. Train, extract, calibrate, infer, ``data synth`` and the
demo all decide "already done" through :func:`completed`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from simcal.core.atomic import write_json
from simcal.core.jsonio import read_json_or_none

FORMAT = "simcal.manifest/1"


def manifest_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".manifest.json")


def _canonical(obj: Any) -> Any:
    """``obj`` as JSON sees it (tuples become lists, keys strings), so identities compare as written."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    return "sha256:" + hashlib.sha256(json.dumps(_canonical(obj), sort_keys=True).encode()).hexdigest()


def fingerprint_file(path: str | os.PathLike, block: int = 2**20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def write_manifest(out: str | os.PathLike, command: str, identity: dict[str, Any],
                   record: dict[str, Any] | None = None) -> Path:
    """Mark ``out`` complete for ``identity``; call only after ``out`` itself is in place."""
    doc = {"format": FORMAT, "command": command, "identity": _canonical(identity), "record": _canonical(record or {})}
    return write_json(manifest_path(out), doc, indent=2)


def read_manifest(out: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of ``out``, or None when there is none (or it is not one)."""
    doc = read_json_or_none(manifest_path(out))
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def same_identity(manifest: dict[str, Any] | None, command: str, identity: dict[str, Any]) -> bool:
    return (manifest is not None and manifest.get("command") == command
            and manifest.get("identity") == _canonical(identity))


def completed(out: str | os.PathLike, command: str, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest when ``out`` exists and was made by ``command`` from ``identity``, else None."""
    if not Path(out).exists():
        return None
    manifest = read_manifest(out)
    return manifest if same_identity(manifest, command, identity) else None


def remove_manifest(out: str | os.PathLike) -> None:
    """Forget that ``out`` is complete (before overwriting it)."""
    manifest_path(out).unlink(missing_ok=True)
