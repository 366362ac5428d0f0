"""Pause Python's cyclic garbage collector while millions of acyclic objects are built or consumed.

Each collection of the oldest generation walks every live container: the parsed
annotation files and results included. Parsing a results file, validating it and
building the per-detection records faster-coco-eval reads allocate millions of dicts
and lists, which triggers such collections over and over; none of these objects is
part of a reference cycle, so the collector finds nothing to free. The pause ends
with the block (the collector's previous state is restored), so a cycle made inside
it is collected afterwards.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic garbage collector while the block runs (reference counting still frees)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
