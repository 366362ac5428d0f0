"""The one json reader: every way a json file can fail becomes one :class:`InputError` sentence."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from simcal.core.errors import input_error


def parse_json(raw: bytes, path: str | os.PathLike, what: str = "a JSON file", fix: str | None = None) -> Any:
    """Decode ``raw`` (the bytes of ``path``); ``what``/``fix`` phrase the message."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise input_error(path, f"is not valid JSON at line {e.lineno} column {e.colno} (truncated or corrupt?)",
                          fix or f"pass {what}")
    except UnicodeDecodeError:
        raise input_error(path, "is not valid JSON (not UTF-8 text)", fix or f"pass {what}")
    except RecursionError:
        raise input_error(path, "nests JSON too deeply to read", fix or f"pass {what}")


def read_bytes(path: str | os.PathLike, what: str = "a JSON file") -> bytes:
    """The bytes of ``path``; a missing, directory or unreadable path is an InputError."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise input_error(path, "does not exist", "check the path")
    except IsADirectoryError:
        raise input_error(path, f"is a directory, not {what}", "pass the file")
    except OSError as e:
        raise input_error(path, f"cannot be read ({e.strerror})")


def read_json(path: str | os.PathLike, what: str = "a JSON file", fix: str | None = None) -> Any:
    """Read and decode a json file; ``what`` names the expected content in messages."""
    return parse_json(read_bytes(path, what), path, what, fix)


def read_json_or_none(path: str | os.PathLike) -> Any:
    """The decoded file, or None when it is missing or unreadable (for optional state such as a previous run's)."""
    try:
        return json.loads(Path(path).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
