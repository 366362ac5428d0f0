"""Numbers as the tables print them."""

from __future__ import annotations


def pct(v: float | None) -> str:
    """A fraction as percent with one decimal; '-' for an empty group (-1) or a missing value."""
    if v is None or v < 0 or v != v:
        return "-"
    return f"{100.0 * v:.1f}"
