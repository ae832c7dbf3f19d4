"""The comparison, memory-limit and report side of ``benchmarks/aarch64_emulated.sh``.

Host-side only (standard library; it never imports cxr_edge, so it runs with any python3):

* ``run``: run one command with its stdout in ``OUT/NAME.out``, under a memory limit (a cgroup where one
  can be made, else ``RLIMIT_AS``), and record its exit code, wall time and peak RSS in ``OUT/NAME.run.json``.
* ``compare``: compare ``cxr-edge predict --json`` outputs against a baseline, value by value, and print
  Markdown tables; exit 1 on any mismatch (or, with ``--expect-differ``, report the differences as the
  expected pitfall).
* ``bench``: summarise an emulated ``cxr-edge bench --json`` report, marked as emulated.
* ``project``: project int8 latency on a Pi 4 / Pi 5 / Jetson Orin from a native bench report's GMAC/s.
* ``limit-kind``: say which memory limit ``run`` would apply here.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

#: Keys of a prediction that are not answers: wall-clock timings and the file name (the join key).
IGNORED = {"timings_ms", "file"}
CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_V1 = Path("/sys/fs/cgroup/memory")


# ----------------------------------------------------------------------------------------- memory limit
class MemoryLimit:
    """A memory limit for one child process: a fresh cgroup (v2, else v1) when this host lets root make one,
    else ``RLIMIT_AS``. A cgroup limits resident memory, as a small board's RAM does; ``RLIMIT_AS`` limits
    address space, which under QEMU also counts the emulator's own reservations, so it is the weaker
    stand-in and is reported as such."""

    def __init__(self, mb: int):
        self.mb = mb
        self.kind = "none"
        self.path: Path | None = None
        if mb <= 0:
            return
        name = f"cxr-edge-arm64-{os.getpid()}"
        # CXR_EDGE_ARM64_LIMIT=rlimit skips the cgroups (to compare the two, or where making one misbehaves)
        cgroups = [] if os.environ.get("CXR_EDGE_ARM64_LIMIT") == "rlimit" else [
                ("cgroup v2 memory.max", CGROUP_V2, {"memory.max": mb << 20, "memory.swap.max": 0}),
                ("cgroup v1 memory.limit_in_bytes", CGROUP_V1, {"memory.limit_in_bytes": mb << 20,
                                                               "memory.memsw.limit_in_bytes": mb << 20})]
        for kind, base, files in cgroups:
            if kind.startswith("cgroup v2") and "memory" not in _read(base / "cgroup.controllers").split():
                continue
            if kind.startswith("cgroup v1") and not (base / "memory.limit_in_bytes").exists():
                continue
            try:
                (base / name).mkdir()
            except OSError:
                continue
            try:
                # a v2 child has memory.max only when its parent hands the memory controller down
                if not (base / name / _limit_file(kind)).exists():
                    raise OSError("no memory controller in this cgroup")
                for fname, value in files.items():
                    if (base / name / fname).exists():   # memsw / swap files exist only with swap accounting
                        (base / name / fname).write_text(str(value))
                if int(_read(base / name / _limit_file(kind))) > (mb << 20):
                    raise OSError("limit not taken")
            except (OSError, ValueError):
                (base / name).rmdir()
                continue
            self.kind, self.path = kind, base / name
            return
        self.kind = "RLIMIT_AS (ulimit -v)"

    def enter(self) -> None:
        """Run in the child between fork and exec."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))
        elif self.mb > 0:
            resource.setrlimit(resource.RLIMIT_AS, (self.mb << 20, self.mb << 20))

    def report(self) -> dict:
        out = {"kind": self.kind, "mb": self.mb}
        if self.path is None:
            return out
        if self.kind.startswith("cgroup v2"):
            peak = _read(self.path / "memory.peak")
            events = dict(line.split() for line in _read(self.path / "memory.events").splitlines() if line)
            out.update(peak_mb=round(int(peak) / 2**20, 1) if peak else None,
                       oom_kills=int(events.get("oom_kill", 0)))
        else:
            oom = dict(line.split() for line in _read(self.path / "memory.oom_control").splitlines() if line)
            out.update(peak_mb=round(int(_read(self.path / "memory.max_usage_in_bytes")) / 2**20, 1),
                       hit_limit_times=int(_read(self.path / "memory.failcnt") or 0),
                       oom_kills=int(oom.get("oom_kill", 0)))
        return out

    def close(self) -> None:
        if self.path is not None:
            for _ in range(50):   # the cgroup empties a moment after the child is reaped
                try:
                    self.path.rmdir()
                    return
                except OSError:
                    time.sleep(0.1)
            print(f"could not remove the cgroup {self.path}: a process is still in it", file=sys.stderr)


def _limit_file(kind: str) -> str:
    return "memory.max" if kind.startswith("cgroup v2") else "memory.limit_in_bytes"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def cmd_run(args) -> int:
    """Run one command; stdout to OUT/NAME.out, stderr to OUT/NAME.err, facts to OUT/NAME.run.json."""
    out = Path(args.out)
    # Terminated (the script's Ctrl-C or kill reaches the whole process group): unwind, so that
    # subprocess.run kills the child and the cgroup is removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    limit = MemoryLimit(args.mem_mb)
    t0 = time.perf_counter()
    try:
        with open(out / f"{args.name}.out", "wb") as so, open(out / f"{args.name}.err", "wb") as se:
            rc = subprocess.run(args.cmd, stdout=so, stderr=se, preexec_fn=limit.enter).returncode
            rc = rc if rc >= 0 else 128 - rc   # killed by a signal (the OOM killer: 137), as a shell says it
        wall = time.perf_counter() - t0
        facts = {"name": args.name, "cmd": args.cmd, "rc": rc, "wall_s": round(wall, 1),
                 # ru_maxrss of the largest reaped descendant: under QEMU that is the emulator process,
                 # i.e. the guest's memory plus the translator's own
                 "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
                 "limit": limit.report()}
    finally:
        limit.close()
    (out / f"{args.name}.run.json").write_text(json.dumps(facts, indent=1))
    print(f"{args.name}: exit {rc}, {facts['wall_s']} s, peak RSS {facts['peak_rss_mb']} MB, "
          f"limit {facts['limit']}", file=sys.stderr)
    return rc


def cmd_limit_kind(args) -> int:
    limit = MemoryLimit(args.mem_mb)
    print(limit.kind)
    limit.close()
    return 0


# ----------------------------------------------------------------------------------------- comparison
def load_predictions(path: str | Path) -> dict[str, dict]:
    """``cxr-edge predict --json`` output (JSON Lines) keyed by file; an empty or broken file is an error."""
    rows = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: not JSON ({e}); is this `cxr-edge predict --json` output?")
            rows[row["file"]] = row
    if not rows:
        raise SystemExit(f"{path}: no predictions (see {Path(path).with_suffix('.err')})")
    return rows


def flatten(value, prefix: str = "") -> dict[str, object]:
    """Every leaf of a prediction as {dotted.path: value}, leaving out timings and the file name."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not prefix and k in IGNORED:
                continue
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): value}


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def compare_one(base: dict, other: dict, tol: float) -> dict:
    """Compare two predictions of one image: numbers within ``tol``, everything else identical."""
    a, b = flatten(base), flatten(other)
    numeric = identical = 0
    max_diff = 0.0
    bad = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, "<absent>"), b.get(key, "<absent>")
        if is_number(x) and is_number(y):
            numeric += 1
            d = abs(x - y) if not (math.isnan(x) and math.isnan(y)) else 0.0
            identical += d == 0
            max_diff = max(max_diff, d)
            if d > tol:
                bad.append(f"{key} {x} vs {y}")
        elif x == y:
            identical += 1
        else:
            bad.append(f"{key} {x!r} vs {y!r}")
    # the verdicts first, so a table cell shows the difference that matters (a status, not a missing key)
    bad.sort(key=lambda d: (not d.startswith("status "), not d.startswith("gate.score "), not d.startswith("gate.")))
    return {"values": len(set(a) | set(b)), "numeric": numeric, "identical": identical,
            "max_diff": max_diff, "bad": bad}


def compare_runs(base: dict[str, dict], others: dict[str, dict[str, dict]], tol: float) -> dict:
    """{run: {file: compare_one result}}; a file missing from a run is a mismatch."""
    result = {}
    for run, rows in others.items():
        per = {}
        for f in base:
            if f not in rows:
                per[f] = {"values": 0, "numeric": 0, "identical": 0, "max_diff": math.inf,
                          "bad": ["missing from this run"]}
            else:
                per[f] = compare_one(base[f], rows[f], tol)
        for f in set(rows) - set(base):
            per[f] = {"values": 0, "numeric": 0, "identical": 0, "max_diff": math.inf,
                      "bad": ["not in the baseline"]}
        result[run] = per
    return result


def _cell(r: dict, tol: float) -> str:
    if r["bad"]:
        return f"**differs** ({len(r['bad'])}: {'; '.join(r['bad'][:2])}{' ...' if len(r['bad']) > 2 else ''})"
    if r["max_diff"] == 0:
        return f"identical ({r['values']})"
    return f"within {tol:g} (max {r['max_diff']:.2g})"


def _short(f: str) -> str:
    name = f.split("/")[-1]
    return name if len(name) <= 34 else name[:31] + "..."


def render(base: dict[str, dict], result: dict, tol: float, facts: dict[str, dict], base_name: str) -> str:
    runs = list(result)
    lines = [f"| image | {base_name}: status | gate score | " + " | ".join(runs) + " |",
             "|---|---|---|" + "---|" * len(runs)]
    for f, row in base.items():
        gate = row["gate"]["score"] if row.get("gate") else "-"
        status = row["status"] + (f" ({row['error']['kind']})" if row.get("error") else "")
        lines.append(f"| {_short(f)} | {status} | {gate} | " +
                     " | ".join(_cell(result[r][f], tol) for r in runs) + " |")
    lines += ["", "| run | images | values compared (numbers) | identical | max abs difference | differing images "
              "| wall s | peak RSS MB | memory limit |", "|---|---|---|---|---|---|---|---|---|"]
    for name in [base_name] + runs:
        fx = facts.get(name, {})
        lim = fx.get("limit", {})
        lim_s = (f"{lim['mb']} MB, {lim['kind']}" + (f", cgroup peak {lim['peak_mb']} MB" if lim.get("peak_mb") else "")
                 + (f", OOM kills {lim['oom_kills']}" if lim.get("oom_kills") else "")) if lim.get("mb") else "none"
        if name == base_name:
            lines.append(f"| {name} (baseline) | {len(base)} | - | - | - | - | {fx.get('wall_s', '-')} | "
                         f"{fx.get('peak_rss_mb', '-')} | {lim_s} |")
            continue
        per = result[name].values()
        lines.append(f"| {name} | {len(result[name])} | {sum(r['values'] for r in per)} "
                     f"({sum(r['numeric'] for r in per)}) | {sum(r['identical'] for r in per)} | "
                     f"{max(r['max_diff'] for r in per):.3g} | {sum(bool(r['bad']) for r in per)} | "
                     f"{fx.get('wall_s', '-')} | {fx.get('peak_rss_mb', '-')} | {lim_s} |")
    return "\n".join(lines)


def cmd_compare(args) -> int:
    out = Path(args.out)
    base = load_predictions(out / f"{args.base}.out")
    others = {r: load_predictions(out / f"{r}.out") for r in args.runs}
    facts = {n: json.loads((out / f"{n}.run.json").read_text())
             for n in [args.base, *args.runs] if (out / f"{n}.run.json").exists()}
    result = compare_runs(base, others, args.tol)
    print(render(base, result, args.tol, facts, args.base))
    differing = {r: sum(bool(x["bad"]) for x in per.values()) for r, per in result.items()}
    print()
    if args.expect_differ:
        for r, n in differing.items():
            print(f"- {r}: {n} of {len(base)} images differ from {args.base}" +
                  (" (the pitfall: pin QEMU_CPU)" if n else " (this QEMU's default CPU gave right answers)"))
        return 0
    if any(differing.values()):
        print("**MISMATCH**: " + ", ".join(f"{r} differs on {n} images" for r, n in differing.items() if n) +
              f" (tolerance {args.tol:g}); the first difference of each image is in the table")
        return 1
    print(f"**Parity holds**: every value of {len(base)} predictions is "
          + ("bit-identical (as printed)" if all(max(x["max_diff"] for x in per.values()) == 0
                                                 for per in result.values()) else f"within {args.tol:g}")
          + f" between {args.base} and " + ", ".join(args.runs) + ".")
    return 0


# ----------------------------------------------------------------------------------------- bench reports
def cmd_bench(args) -> int:
    """Print what an emulated `cxr-edge bench --json` measured, marked so nobody quotes it as a device time."""
    rep = json.loads(Path(args.report).read_text())
    print("**EMULATED: these times are QEMU translating aarch64 code on an x86_64 host. They are NOT Raspberry "
          "Pi or Jetson times and must not be quoted as such.** They show that every section of `cxr-edge bench` "
          "runs on aarch64.\n")
    print(f"- bench: `{rep.get('command')}`; backend {rep['backend'].get('backend')} "
          f"{rep['backend'].get('backend_version')} ({rep['backend'].get('delegate')}); machine as Python sees it: "
          f"{rep['machine'].get('machine')}, {rep['machine'].get('cpus')} CPUs")
    sections = [k for k in ("models", "keras", "end_to_end", "batch", "memory", "startup", "sizes", "targets")
                if rep.get(k)]
    print(f"- sections that completed: {', '.join(sections)}")
    for note in rep.get("notes") or []:
        print(f"- note: {note}")
    print("\n| emulated measurement | value |\n|---|---|")
    for m in rep.get("models", []):
        print(f"| int8 {m['task']} @{m['input'][0]}, {m['threads']} thread(s): median ms | {m['run']['median']} |")
    for r in (rep.get("end_to_end") or {}).get("rows", [])[:1]:
        print(f"| {r['name']}: median ms | {r['median_ms']} |")
    for r in rep.get("memory") or []:
        print(f"| peak RSS, {r['name']} (emulator included): MB | {r['peak_rss_mb']} |")
    return 0


#: MobileNetV2 1.0 int8 at 224 px with 3 input channels: the MACs the public figures below ran (counted by
#: `cxr_edge.bench.count_macs` on the ImageNet model, benchmarks/RESULTS.md "Anchors").
ANCHOR_MACS_M = 300.8
#: Device throughput for that model, in GMAC/s over all cores. Each row says where its number comes from;
#: only the Pi 4 figure is a measurement of this model, the others are scaled from it.
DEVICES = [
    ("Raspberry Pi 4 (4x Cortex-A72)", ANCHOR_MACS_M / 22.0,
     "measured by others: MobileNetV2 1.0 224 quant in TFLite at 45.5 images/s = 22.0 ms, 4 threads, 64-bit OS, "
     "overclocked to 1950 MHz (Q-engineering, TensorFlow_Lite_Classification_RPi_64-bits; one timed invoke; "
     "the figure the README quotes)"),
    ("Raspberry Pi 5 (4x Cortex-A76, 2.4 GHz)", ANCHOR_MACS_M / 22.0 * 112.6 / 23.5,
     "scaled: the Pi 4 figure x 4.79, the Pi 5 / Pi 4 ratio of TFLite MobileNetV2 (SSD, 300 px) in Alasdair "
     "Allan's benchmarking-ml-on-the-edge (112.6 ms on a Pi 4, 23.5 ms on a Pi 5)"),
    ("Jetson Orin Nano (6x Cortex-A78AE, 1.5 GHz)", ANCHOR_MACS_M / 22.0 * 112.6 / 23.5 * 1.5 / 2.4,
     "estimated, no public figure found: the Pi 5 figure x 1.5/2.4 GHz, assuming an A78AE does per clock what "
     "an A76 does (4 of its 6 cores used, as on the Pis)"),
]


def cmd_project(args) -> int:
    """Int8 GMAC/s measured natively here, and the models' time projected on a Pi 4 / Pi 5 / Jetson Orin."""
    rep = json.loads(Path(args.report).read_text())
    rows = rep.get("models") or []
    if not rows:
        raise SystemExit(f"{args.report}: no int8 rows (run `cxr-edge bench --only models --json`)")
    print(f"Measured natively in this run: `{rep.get('command')}` on {rep['machine'].get('cpu')} "
          f"({rep['machine'].get('machine')}, {rep['machine'].get('cpus')} CPUs), {rep['machine'].get('date')}, "
          f"load average {rep['machine'].get('load_avg')} (a busy host measures fewer GMAC/s).\n")
    print("| model | px | threads | M MACs (counted) | int8 median ms | GMAC/s |\n|---|---|---|---|---|---|")
    for m in sorted(rows, key=lambda m: (m["task"], m["threads"])):
        print(f"| {m['task']} | {m['input'][0]} | {m['threads']} | {m['macs_m']} | {m['run']['median']} | "
              f"{m['gmac_per_s']} |")
    one = {m["task"]: m for m in rows if m["threads"] == 1}
    host = sorted(m["gmac_per_s"] for m in one.values())[len(one) // 2]
    host_ms = sum(m["run"]["median"] for m in one.values())
    macs = {t: m["macs_m"] for t, m in one.items()}
    total = sum(macs.values())
    print(f"\nThis host, one core: **{host} GMAC/s** (median over the models), all {len(one)} models "
          f"({total:.0f} M MACs) in {host_ms:.1f} ms.\n")
    print("**Projection, not a measurement.** Time = the MACs counted in these models / the device's GMAC/s for "
          f"MobileNetV2 1.0 int8 ({ANCHOR_MACS_M} M MACs per 224-px image). It covers the models only (decoding, "
          "preprocessing and the photo path run in numpy and Pillow and do not scale with MACs), assumes the "
          "device's own GMAC/s holds for our grey-input models, and is only as good as its sources:\n")
    tasks = sorted(one)
    print("| device | GMAC/s (all cores) | one core here / device | " +
          " | ".join(f"{t} @{one[t]['input'][0]} ms" for t in tasks) + " | all models ms | source |")
    print("|---|---|---|" + "---|" * len(tasks) + "---|---|")
    for name, gmacs, source in DEVICES:
        print(f"| {name} | {gmacs:.1f} | {host / gmacs:.1f}x | " +
              " | ".join(f"{macs[t] / gmacs:.1f}" for t in tasks) + f" | {total / gmacs:.1f} | {source} |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="run one command under the memory limit, recording exit code and peak RSS")
    r.add_argument("--name", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--mem-mb", type=int, default=0)
    r.add_argument("cmd", nargs="+")
    lk = sub.add_parser("limit-kind", help="which memory limit `run` would apply here")
    lk.add_argument("--mem-mb", type=int, default=1024)
    c = sub.add_parser("compare", help="compare predict --json runs value by value")
    c.add_argument("--out", required=True)
    c.add_argument("--base", required=True)
    c.add_argument("--tol", type=float, default=0.0)
    c.add_argument("--expect-differ", action="store_true")
    c.add_argument("runs", nargs="+")
    b = sub.add_parser("bench", help="summarise an emulated bench report")
    b.add_argument("report")
    pr = sub.add_parser("project", help="GMAC/s from a native bench report")
    pr.add_argument("report")
    args = p.parse_args(argv)
    return {"run": cmd_run, "limit-kind": cmd_limit_kind, "compare": cmd_compare, "bench": cmd_bench,
            "project": cmd_project}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
