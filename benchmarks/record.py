"""Run one benchmark and keep what it printed as a record for docs/benchmarks.md.

    python benchmarks/record.py NAME -- CMD ARGS...

Runs ``CMD ARGS...`` (in the current directory; its stdout is passed through, its
stderr goes straight to the terminal), takes the **last** line of its stdout that
parses as a JSON object, and writes ``benchmarks/results/NAME.json``::

    {"benchmark": NAME,
     "command": "the exact command line",
     "commit": "git short sha of HEAD, + '-dirty' when tracked files have uncommitted changes",
     "date": "YYYY-MM-DD (UTC)",
     "machine": "cores, RAM, GPU or none, OS and architecture",
     "figures": {... the JSON object the command printed ...}}

The record is written atomically (a temporary file in the same folder, then
``os.replace``). Changes under ``benchmarks/results/`` and to ``docs/benchmarks.md`` and
``docs/scale.md`` do not make a commit dirty: they are this tool's own outputs. If the command fails
or prints no JSON object, nothing is written and the exit status is non-zero.
``python benchmarks/render.py`` turns the records into docs/benchmarks.md.

Standard library only: it runs without the project's dependencies.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from simcal.core.atomic import write_text  # the project's one atomic writer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
#: Paths whose changes do not make a recorded commit dirty (this tool's and render.py's outputs).
OWN_OUTPUTS = ("benchmarks/results", "docs/benchmarks.md", "docs/scale.md")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def commit() -> str:
    """Short sha of HEAD, with ``-dirty`` when tracked files (other than this tool's outputs) differ from it."""
    sha = _git("rev-parse", "--short", "HEAD")
    if not sha:
        return "unknown"
    excludes = [f":(exclude){p}" for p in OWN_OUTPUTS]
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *excludes)
    return sha + ("-dirty" if status else "")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what nproc reports
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _ram_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, ValueError, OSError):
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or None


def _gpus() -> str:
    if not shutil.which("nvidia-smi"):
        return "no GPU"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "no GPU"
    names = [n.strip() for n in out.splitlines() if n.strip()]
    if not names:
        return "no GPU"
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return ", ".join(f"{k} x {n}" if k > 1 else n for n, k in counts.items())


def machine() -> str:
    """A short description: cores (and model), RAM, GPU or none, OS and architecture."""
    cores = _cores()
    parts = [f"{cores} core{'s' if cores != 1 else ''}" + (f" ({m})" if (m := _cpu_model()) else "")]
    ram = _ram_gib()
    if ram is not None:
        parts.append(f"{ram:.0f} GiB RAM" if ram >= 10 else f"{ram:.1f} GiB RAM")
    parts.append(_gpus())
    parts.append(f"{platform.system()} {platform.machine()}".strip())
    return ", ".join(parts)


def last_json_object(lines: list[str]) -> dict | None:
    """The last line that parses as a JSON object, parsed; None when there is none."""
    for line in reversed(lines):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return None




def fail(msg: str, code: int = 1) -> int:
    print(f"record.py: {msg}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[1] != "--":
        return fail("usage: python benchmarks/record.py NAME -- CMD ARGS...", 2)
    name, cmd = argv[0], argv[2:]
    if not NAME_RE.match(name):
        return fail(f"{name!r} is not a usable record name; use letters, digits, '_', '.' and '-' only.", 2)

    lines: list[str] = []
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
    except OSError as e:
        return fail(f"{name}: could not start {cmd[0]!r} ({e.strerror or e}); no record written.")
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line)
    rc = proc.wait()
    if rc != 0:
        return fail(f"{name}: the command exited with status {rc}; no record written.", rc if 0 < rc < 256 else 1)
    figures = last_json_object(lines)
    if figures is None:
        return fail(f"{name}: the command printed no JSON object on stdout; no record written.")

    record = {
        "benchmark": name,
        "command": shlex.join(cmd),
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "machine": machine(),
        "figures": figures,
    }
    out = RESULTS / f"{name}.json"
    write_text(out, json.dumps(record, indent=2) + "\n")
    print(f"record.py: wrote {out.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
