"""Flags several commands share, spelt once.

Each ``add_*`` adds one concept to an ``argparse`` parser (or argument group) with the
same name, meaning and help everywhere it appears.
"""

from __future__ import annotations

from simcal.core.checks import NONNEG_INT, arg
from simcal.core.names import AMP


def add_dataset_args(p, split: str, what: str = "images") -> None:
    """``--data DIR [--split S]`` (a folder from 'simcal data synth') or ``--ann FILE --images DIR``."""
    g = p.add_argument_group(f"{what} (--data DIR with --split, or --ann FILE with --images DIR)")
    g.add_argument("--data", metavar="DIR", help="a folder written by 'simcal data synth'")
    g.add_argument("--split", default=split, help=f"split of --data (default {split})")
    g.add_argument("--ann", metavar="FILE", help="LVIS/COCO annotation json (instead of --data)")
    g.add_argument("--images", metavar="DIR", help="image root for --ann")


def add_device_arg(p) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (default): cuda when available, else cpu")


def add_seed_arg(p, what: str = "every random draw") -> None:
    p.add_argument("--seed", type=arg(NONNEG_INT), default=0,
                   help=f"seed of {what} (default 0); same seed, same output")


def add_amp_arg(p, default: str, what: str) -> None:
    p.add_argument("--amp", choices=AMP, default=default,
                   help=f"mixed precision for {what}: on, off, or auto = on where CUDA runs (default {default})")


def describe(names: dict[str, str]) -> str:
    """``name: meaning; ...`` for a help text."""
    return "; ".join(f"{k}: {v}" for k, v in names.items())


__all__ = ["add_amp_arg", "add_dataset_args", "add_device_arg", "add_seed_arg", "describe"]
