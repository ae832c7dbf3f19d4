"""Peak memory of a command in a fresh child process (and of the processes it starts), and of
``cxr-edge predict`` beside two baselines.

A command that starts other processes uses the memory of all of them,
so three numbers come back: the largest process's peak RSS (``wait4``'s ``ru_maxrss``: what one
process needs), and the peaks of the sums over the command's process tree of RSS (shared library
pages counted once per process: an upper bound) and of PSS (shared pages split between the
processes that share them: what the command costs the machine). The sums are sampled every
20 ms from ``/proc`` (Linux); elsewhere they are None.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .harness import child_env, cli_command, run_child

__all__ = ['SAMPLE_S', 'peak_memory_of', 'peak_rss', 'peak_rss_of']

#: How often the process tree's memory is sampled.
SAMPLE_S = 0.02

# Run in a small fresh Python: Linux folds the address space a child was forked from into its
# ru_maxrss, so measuring straight from a big benchmark process would report that process's size.
_HELPER = """
import json, os, subprocess, sys, time

def tree(pid):
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    out += tree(int(child))
    except OSError:
        pass
    return out

def memory(pid):
    rss = pss = None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss

t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
total_rss = total_pss = None
most = 0
sample = os.path.exists(f"/proc/{os.getpid()}/smaps_rollup")
while True:
    pid, status, usage = os.wait4(p.pid, os.WNOHANG if sample else 0)
    if pid:
        break
    found = [m for m in map(memory, tree(p.pid)) if m[0] is not None]
    if found:
        most = max(most, len(found))
        total_rss = max(total_rss or 0, sum(m[0] for m in found))
        if all(m[1] is not None for m in found):
            total_pss = max(total_pss or 0, sum(m[1] for m in found))
    time.sleep(float(sys.argv[1]))
kib = lambda v: None if v is None else v / 1024
print(json.dumps({"seconds": time.perf_counter() - t0, "exit_code": os.waitstatus_to_exitcode(status),
                  "largest_rss_mb": usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024),
                  "total_rss_mb": kib(total_rss), "total_pss_mb": kib(total_pss), "processes": most or None}))
"""


def peak_memory_of(args: list[str], env: dict | None = None) -> dict:
    """Run a command; its wall seconds, exit code and peak memory in MB: ``largest_rss_mb`` (the largest
    process of its tree), ``total_rss_mb`` and ``total_pss_mb`` (sums over its tree, sampled; None where
    /proc cannot tell) and ``processes`` (the most seen at once). Needs ``os.wait4`` (Linux, macOS)."""
    if not hasattr(os, "wait4"):
        wall, rc = run_child(args, env)
        return {"seconds": wall, "exit_code": rc, "largest_rss_mb": float("nan"), "total_rss_mb": None,
                "total_pss_mb": None, "processes": None}
    out = subprocess.run([sys.executable, "-c", _HELPER, str(SAMPLE_S), *args], capture_output=True, text=True,
                         env=env, check=True).stdout
    return json.loads(out)


def peak_rss_of(args: list[str], env: dict | None = None) -> tuple[float, float, int]:
    """Run a command; returns (wall seconds, peak RSS in MB of its largest process, exit code)."""
    m = peak_memory_of(args, env)
    return m["seconds"], m["largest_rss_mb"], m["exit_code"]


def peak_rss(pack: Path, image: Path, batch_dir: Path, batch_n: int, *, workers: int = 2,
             mixed_dir: Path | None = None) -> list[dict]:
    """Peak memory (MB) of ``cxr-edge predict`` on one image, on a folder and (``mixed_dir``) on a folder of
    large films and 12-MP photos, beside two baselines."""
    cmd, env = cli_command(), child_env()
    # --all-models: every model runs on the stand-in film, which a real gate rejects (then only the gate
    # would run, and the classifiers' memory would not be counted)
    predict = cmd + ["predict", "--json", "--all-models", "--pack", str(pack)]
    runs = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python + numpy + Pillow + interpreter import": [sys.executable, "-c", _IMPORTS],
        "cxr-edge predict, 1 image": predict + [str(image)],
        f"cxr-edge predict, {batch_n} images (--workers {workers})": predict + ["--workers", str(workers),
                                                                                 str(batch_dir)],
    }
    if mixed_dir is not None:
        n = len(list(mixed_dir.iterdir()))
        runs[f"cxr-edge predict, {n} 1024-px PNGs and 12-MP JPEGs (--workers {workers})"] = \
            predict + ["--workers", str(workers), str(mixed_dir)]
        runs["cxr-edge predict, the same (--workers 0)"] = predict + ["--workers", "0", str(mixed_dir)]
    rows = []
    for name, args in runs.items():
        m = peak_memory_of(args, env)
        rows.append({"name": name, "peak_rss_mb": round(m["largest_rss_mb"], 1),
                     "total_rss_mb": _round(m["total_rss_mb"]), "total_pss_mb": _round(m["total_pss_mb"]),
                     "processes": m["processes"], "seconds": round(m["seconds"], 2), "exit_code": m["exit_code"]})
    base = rows[0]["peak_rss_mb"]
    for r in rows:
        r["ratio"] = round(r["peak_rss_mb"] / base, 2) if base else None
    return rows


def _round(v):
    return None if v is None else round(v, 1)


_IMPORTS = ("import numpy, PIL.Image\n"
            "from cxr_edge.runtime.interpreter import pick_backend\n"
            "pick_backend(None)")  # imports the first backend that works, as predict does
