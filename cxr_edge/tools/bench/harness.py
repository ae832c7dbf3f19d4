"""Timing on a shared machine: samples, medians, interleaved rounds and child processes.

Shared machines are noisy, so every variant is measured in interleaved rounds (round-robin, the
order rotated each round) and compared by medians against a baseline measured in the same run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

__all__ = ['Measure', 'Stats', 'child_env', 'cli_command', 'default_threads', 'interleave', 'run_child', 'stat_rows', 'time_calls', 'timed']


Measure = Callable[[int], list]  # measure(runs) -> that many samples in milliseconds


def time_calls(fn: Callable[[], object], runs: int, warmup: int = 0) -> list[float]:
    """Milliseconds of ``runs`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def timed(fn: Callable[[], object]) -> Measure:
    """A measure (runs -> samples) timing ``fn`` in this process."""
    return lambda runs: time_calls(fn, runs)


@dataclass(frozen=True)
class Stats:
    """Summary of samples in milliseconds."""

    median: float
    p90: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, samples) -> "Stats":
        a = np.asarray(samples, dtype=float)
        return cls(float(np.median(a)), float(np.percentile(a, 90)), float(a.min()), float(a.max()), int(a.size))

    def to_dict(self, digits: int = 3) -> dict:
        return {k: round(v, digits) if isinstance(v, float) else v for k, v in asdict(self).items()}


def interleave(measures: Mapping[str, Measure], *, rounds: int, runs: int | Mapping[str, int],
               warmup: int = 1) -> dict[str, Stats]:
    """Run every measure in ``rounds`` round-robin rounds (order rotated each round); Stats per name.

    ``runs``: samples per measure per round (one number, or per name). Each measure first runs
    ``warmup`` untimed samples. Interleaving spreads a shared machine's changing load over all
    variants alike, so their ratios hold even when absolute times drift.
    """
    names = list(measures)
    per = {n: (runs[n] if isinstance(runs, Mapping) else runs) for n in names}
    for n in names:
        if warmup:
            measures[n](warmup)
    samples: dict[str, list] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names) if names else 0
        for n in names[k:] + names[:k]:
            samples[n].extend(measures[n](per[n]))
    return {n: Stats.of(s) for n, s in samples.items()}


def run_child(args: list[str], env: dict | None = None) -> tuple[float, int]:
    """Run a command with its output discarded; returns (wall seconds, exit code)."""
    t0 = time.perf_counter()
    rc = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env).returncode
    return time.perf_counter() - t0, rc


def cli_command() -> list[str]:
    """How users start cxr-edge here: the console script beside this Python, else ``python -m cxr_edge``."""
    script = Path(sys.executable).parent / "cxr-edge"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cxr_edge"]


def child_env() -> dict:
    env = dict(os.environ)
    env.pop("CXR_EDGE_PACK", None)  # every command here names its pack
    return env


def stat_rows(stats: Mapping[str, Stats], base: str | None) -> list[dict]:
    rows = []
    for name, s in stats.items():
        row = {"name": name, "median_ms": round(s.median, 3), "p90_ms": round(s.p90, 3), "n": s.n}
        if base is not None:
            row["ratio"] = round(s.median / stats[base].median, 2)
        rows.append(row)
    return rows


def default_threads() -> tuple[int, ...]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return tuple(sorted({1, min(usable, 4)}))

