"""The one exception type for bad user input.

Every stage raises :class:`InputError` for problems a user can fix (a bad file,
a wrong flag combination). The CLI turns it into one sentence on stderr and exit
code 2, never a traceback. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations

import os


class InputError(Exception):
    """A user-fixable problem, phrased as one sentence: what, where, how to fix."""

    exit_code = 2


def input_error(path: str | os.PathLike | None, problem: str, fix: str | None = None) -> InputError:
    """Build an :class:`InputError` naming ``path``: ``"<path>: <problem>; <fix>."``."""
    msg = f"{os.fspath(path)}: {problem}" if path is not None else problem
    if fix:
        msg += f"; {fix}"
    if not msg.endswith("."):
        msg += "."
    return InputError(msg)
