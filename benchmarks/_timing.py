"""What every benchmark script shares: timing, the shared data folder and the table header.

The timing primitives (``time_calls``, ``interleave``, ``Stats``, ``run_child``) live in
:mod:`cxr_edge.tools.bench`, the device-side library behind ``cxr-edge bench``, so a Raspberry Pi
and these scripts measure the same way; this module re-exports them and adds what only the
scripts need.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr_edge.tools.bench.harness import Stats, interleave, run_child, time_calls, timed  # noqa: E402,F401
from cxr_edge.tools.bench.machine import describe_machine, machine_info  # noqa: E402,F401
from cxr_edge.tools.bench.memory import peak_rss_of  # noqa: E402,F401


def shared_dir() -> Path:
    """``$CXR_EDGE_SHARED`` or ``<repo>/../shared``; exits with a message when it has no data folder."""
    env = os.environ.get("CXR_EDGE_SHARED")
    path = Path(env) if env else REPO.parent / "shared"
    if not (path / "data").is_dir():
        sys.exit(f"needs the shared data folder, not found at {path}/data; set CXR_EDGE_SHARED")
    return path


def shared_data() -> Path:
    return shared_dir() / "data"


def timeit(fn, runs: int, warmup: int = 10) -> list[float]:
    """Milliseconds of ``runs`` calls after ``warmup`` untimed ones."""
    return time_calls(fn, runs, warmup)


def summary(ms) -> tuple[float, float]:
    """(median, p90) of samples."""
    return statistics.median(ms), float(np.percentile(ms, 90))


def header(title: str) -> str:
    """A Markdown section heading with the command that made it, the date and the machine."""
    m = machine_info()
    cmd = " ".join([Path(sys.executable).name, *[a if " " not in a else repr(a) for a in sys.argv]])
    return (f"## {title}\n\n"
            f"- command: `{cmd}`\n"
            f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}\n"
            f"- machine: {describe_machine(m)}\n")


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def ms(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"
