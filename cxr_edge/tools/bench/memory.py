"""Peak memory (RSS) of a command in a fresh child process, and of ``cxr-edge predict`` beside two baselines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .harness import child_env, cli_command, run_child

__all__ = ['peak_rss', 'peak_rss_of']


# Run in a small fresh Python: Linux folds the address space a child was forked from into its
# ru_maxrss, so measuring straight from a big benchmark process would report that process's size.
_RSS_HELPER = """
import os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
print(time.perf_counter() - t0, usage.ru_maxrss * (1 if sys.platform == 'darwin' else 1024),
      os.waitstatus_to_exitcode(status))
"""


def peak_rss_of(args: list[str], env: dict | None = None) -> tuple[float, float, int]:
    """Run a command; returns (wall seconds, peak RSS in MB, exit code). Needs ``os.wait4`` (Linux, macOS)."""
    if not hasattr(os, "wait4"):
        wall, rc = run_child(args, env)
        return wall, float("nan"), rc
    out = subprocess.run([sys.executable, "-c", _RSS_HELPER, *args], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    return float(out[0]), int(out[1]) / 2**20, int(out[2])


def peak_rss(pack: Path, image: Path, batch_dir: Path, batch_n: int, *, workers: int = 2) -> list[dict]:
    """Peak RSS (MB) of ``cxr-edge predict`` on one image and on a folder, beside two baselines."""
    cmd, env = cli_command(), child_env()
    runs = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python + numpy + Pillow + interpreter import": [sys.executable, "-c", _IMPORTS],
        # --all-models: every model runs on the stand-in film, which a real gate rejects (then only the gate
        # would run, and the classifiers' memory would not be counted)
        "cxr-edge predict, 1 image": cmd + ["predict", "--json", "--all-models", "--pack", str(pack), str(image)],
        f"cxr-edge predict, {batch_n} images (--workers {workers})":
            cmd + ["predict", "--json", "--all-models", "--workers", str(workers), "--pack", str(pack),
                   str(batch_dir)],
    }
    rows = []
    for name, args in runs.items():
        wall, rss, rc = peak_rss_of(args, env)
        rows.append({"name": name, "peak_rss_mb": round(rss, 1), "seconds": round(wall, 2), "exit_code": rc})
    base = rows[0]["peak_rss_mb"]
    for r in rows:
        r["ratio"] = round(r["peak_rss_mb"] / base, 2) if base else None
    return rows


_IMPORTS = ("import numpy, PIL.Image\n"
            "from cxr_edge.runtime.interpreter import pick_backend\n"
            "pick_backend(None)")  # imports the first backend that works, as predict does

