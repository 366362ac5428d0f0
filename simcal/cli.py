"""``simcal <command>``: one CLI over the pipeline stages.

Each stage folder has a ``cli.py`` with ``add_parser(subparsers)`` that imports
nothing heavy; the parser stores the stage's ``main(args)`` as ``args.func``.
Heavy libraries (torch, zarr, pycocotools) are imported inside those ``main``
functions, so ``simcal --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from simcal import __version__

# (module, commands it registers) in pipeline order; the order is the --help order.
_STAGE_CLIS = (
    "simcal.data.cli",
    "simcal.detector.cli",
    "simcal.extract.cli",
    "simcal.calibrate.cli",
    "simcal.infer.cli",
    "simcal.evaluate.cli",
    "simcal.demo",
)


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit code 2, as every other refusal (subcommands inherit it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'.\n")


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="simcal",
        description=(
            "SimCal: fix the classification bias of a trained Mask R-CNN toward frequent "
            "classes. Pipeline: data -> train -> extract (feature cache) -> calibrate "
            "(retrain the classification head from the cache) -> infer (dual head) -> evaluate."
        ),
        epilog="Run 'simcal <command> --help' for the inputs and outputs of each command.",
    )
    parser.add_argument("--version", action="version", version=f"simcal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    for name in _STAGE_CLIS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from simcal.core.disk import disk_full_cause, disk_full_error
    from simcal.core.errors import InputError

    args = get_args_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except InputError as e:
        print(f"simcal {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"simcal {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a full disk is the environment failing, not a bug: one sentence, as bad input
        cause = disk_full_cause(e)
        if cause is None:
            raise
        err = disk_full_error(cause.filename, cause)
        print(f"simcal {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0 if rc is None else int(rc)


if __name__ == "__main__":
    sys.exit(main())
