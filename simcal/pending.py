"""Commands whose stage has not landed yet: documented, but refuse to run.

A pending command shows its planned inputs and outputs in ``--help`` and, when
run, says in one line that it is not built yet and exits 2. It never pretends.
"""

from __future__ import annotations

import argparse
import sys


def add_pending_command(sub, name: str, summary: str, description: str, issue: str) -> None:
    p = sub.add_parser(
        name,
        help=f"{summary} [not built yet]",
        description=f"{description}\n\nStatus: not built yet (issue {issue}).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def run(args: argparse.Namespace) -> int:
        print(f"simcal {name}: not built yet (issue {issue}); nothing was done.", file=sys.stderr)
        return 2

    # Planned flags are not parsed yet; the CLI lets them through so the message below is what users see.
    p.set_defaults(func=run, accepts_extra_args=True)
