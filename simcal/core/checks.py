"""Numeric rules for user-given numbers, one definition for flags, sweep grids and variant files.

A :class:`Rule` says what a number may be (integer or finite real, and its bounds).
:func:`check` applies it to a value from a json file; :func:`arg` turns it into an
``argparse`` ``type=`` so a flag is refused by argparse's own one-line error, before
any work starts. NaN and infinities never pass a rule.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Rule:
    """``integer`` or finite real in ``lo..hi`` (each bound inclusive unless ``*_open``; None: unbounded)."""

    integer: bool = False
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {_fmt(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {_fmt(self.hi)}")
        return kind + (" " + " and ".join(parts) if parts else "")

    def accepts(self, v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if self.integer and not isinstance(v, int):
            return False
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return True


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE_INT = Rule(integer=True, lo=1)
NONNEG_INT = Rule(integer=True, lo=0)
POSITIVE = Rule(lo=0, lo_open=True)
NONNEG = Rule(lo=0)
FRACTION = Rule(lo=0, hi=1)
FRACTION_POSITIVE = Rule(lo=0, hi=1, lo_open=True)
FINITE = Rule()


def check(value: Any, rule: Rule, what: str) -> Any:
    """``value`` if ``rule`` accepts it, else ValueError("<what> must be <rule>, not <value>")."""
    if not rule.accepts(value):
        raise ValueError(f"{what} must be {rule.describe()}, not {value!r}")
    return value


def field(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str, where: str = "") -> Any:
    """``doc[key]`` when present and a ``kind`` (a bool is no int), else ValueError naming ``where + key``.

    For documents read from files (checkpoints, heads): one rule for "required key of this type",
    so each loader states its schema instead of catching KeyError and TypeError wherever a value is used.
    """
    name = f"{where}{key}"
    if key not in doc:
        raise ValueError(f"has no {name!r}")
    value = doc[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple)
                                                                                else (kind,))):
        raise ValueError(f"has {name!r} of type {type(value).__name__}, not {what}")
    return value


def arg(rule: Rule) -> Callable[[str], Any]:
    """An argparse ``type=`` parsing a flag's text by ``rule`` (the message names the rule)."""

    def parse(text: str) -> Any:
        try:
            v: Any = int(text) if rule.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule.describe()}, not {text!r}")
        if not rule.accepts(v):
            raise argparse.ArgumentTypeError(f"must be {rule.describe()}, not {text!r}")
        return v

    parse.__name__ = "integer" if rule.integer else "number"  # argparse names the type in some messages
    return parse


def arg_list(rule: Rule) -> Callable[[str], list]:
    """An argparse ``type=`` for a comma-separated list, each item by ``rule`` (e.g. ``--lr-steps 0.75,0.92``)."""
    one = arg(rule)

    def parse(text: str) -> list:
        try:
            return [one(t.strip()) for t in text.split(",") if t.strip()]
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list, each item {rule.describe()}, "
                                             f"not {text!r}")

    parse.__name__ = "list"
    return parse


__all__ = ["FINITE", "FRACTION", "FRACTION_POSITIVE", "NONNEG", "NONNEG_INT", "POSITIVE", "POSITIVE_INT", "Rule", "arg",
           "arg_list", "check", "field"]
