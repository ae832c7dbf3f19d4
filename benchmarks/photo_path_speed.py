"""A 12-MP phone photo to all results, this tree against a baseline revision, in the same run.

Issue 18's target: one 12-MP photo to every result in <= 60 ms on one thread. A speed-up of the photo
path is only worth having if the film is still found as well, so beside the time this prints what each
tree does with photos:

* **time**: a 3000 x 4000 phone JPEG (``cxr-edge bench``'s end-to-end photo: its synthetic film, or
  ``--film`` a real CXR, rendered by :func:`cxr_edge.photosim.simulate_photo` on a desk, moderate, at
  quality 90) through
  ``Pipeline.predict`` (all three models, 1 interpreter thread, BLAS/OpenMP at 1 thread), per stage from
  the pipeline's own ``timings_ms`` and the wall time per call. Each tree runs in its own worker process;
  rounds alternate between them, so both see the same machine load. Ratios are this tree / baseline.
* **corner error** on simulated photos (:func:`simulate_photo`, mild / moderate / severe x lightbox / desk /
  dark / monitor, ``--per-cell`` each, 1280 px): films found, the worst corner's error in % of the film's
  diagonal (median, p90) and the share within 2 %.
* **real photos**: ``../shared/data/real_photos_dev`` predicted by each tree: answered / total.

    python benchmarks/photo_path_speed.py --baseline-rev main [--rounds 15] [--per-cell 8]

``--baseline-rev`` takes any revision of this repository (exported with ``git archive`` into a temporary
folder); ``--baseline-tree DIR`` a checkout instead. Without either, only this tree is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEVERITIES = ("mild", "moderate", "severe")
BACKGROUNDS = ("lightbox", "desk", "dark", "monitor")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def shared_data() -> Path:
    """``$CXR_EDGE_SHARED/data`` or ``<repo>/../shared/data`` (not through _timing: that imports this tree's
    cxr_edge, and a worker must import its own tree's)."""
    env = os.environ.get("CXR_EDGE_SHARED")
    path = (Path(env) if env else REPO.parent / "shared") / "data"
    if not path.is_dir():
        sys.exit(f"needs the shared data folder, not found at {path}; set CXR_EDGE_SHARED")
    return path


# --------------------------------------------------------------------------- the worker (runs in a tree)

def worker(tree: Path, photo: Path, cpu: int | None) -> None:
    """Serve requests on stdin, one JSON object per line: {"time": n} / {"corners": per_cell} / {"dev": dir}."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    sys.path.insert(0, str(tree))
    try:
        from cxr_edge.runtime.pipeline import Pipeline
    except ImportError:       # a baseline from before the layout move (issue 17)
        from cxr_edge.pipeline import Pipeline

    pipe = Pipeline(tree / "cxr_edge" / "packs" / "default", threads=1, gate_first=False)
    jpeg = photo.read_bytes()
    for _ in range(3):
        pipe.predict(jpeg, "photo")
    for line in sys.stdin:
        req = json.loads(line)
        if "time" in req:
            out = []
            for _ in range(req["time"]):
                import time

                t0, c0 = time.perf_counter(), time.thread_time()
                pred = pipe.predict(jpeg, "photo")
                out.append(dict(pred.timings_ms, wall=(time.perf_counter() - t0) * 1e3,
                                cpu=(time.thread_time() - c0) * 1e3))
            print(json.dumps(out), flush=True)
        elif "corners" in req:
            print(json.dumps(_corners(req["corners"], req["seed"])), flush=True)
        elif "corners12" in req:
            print(json.dumps(_corners(req["corners12"], req["seed"], pipe)), flush=True)
        elif "dev" in req:
            preds = [pipe.predict(p, p.name) for p in sorted(Path(req["dev"]).iterdir())
                     if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
            print(json.dumps({"answered": sum(p.status == "ok" for p in preds), "n": len(preds)}), flush=True)


def _corners(per_cell: int, seed: int, pipe=None) -> list:
    """(severity, background, found, worst-corner error in % of the diagonal) per simulated photo: found
    by ``find_film`` on the 1280-px photo, or with ``pipe``, through ``pipe.predict`` on the photo scaled
    to 3024 x 4032 and saved as JPEG (what the 12-MP path decodes, searches and refines)."""
    import csv
    import io

    import numpy as np
    from PIL import Image

    try:
        from cxr_edge.runtime.photo.rectify import find_film
        from cxr_edge.tools.photosim import simulate_photo
    except ImportError:       # a baseline from before the layout move (issue 17)
        from cxr_edge.photosim import simulate_photo
        from cxr_edge.rectify import find_film

    data = shared_data()
    with open(data / "gate" / "manifest.csv", newline="") as f:
        files = [r["file"] for r in csv.DictReader(f) if r["is_cxr"] == "1"]
    rng = np.random.default_rng(seed)
    rows = []
    for sev in SEVERITIES:
        for bg in BACKGROUNDS:
            for _ in range(per_cell):
                film = Image.open(data / files[int(rng.integers(len(files)))])
                sim = simulate_photo(film, sev, int(rng.integers(2 ** 31)), background=bg, long_side=1280)
                t = sim.corners
                if pipe is None:
                    det = find_film(sim.photo)
                    found, corners = det.found, det.corners
                else:
                    big = sim.to_image().resize((3024, 4032), Image.BICUBIC)
                    buf = io.BytesIO()
                    big.save(buf, "JPEG", quality=90)
                    r = pipe.predict(buf.getvalue(), "photo").rectify or {}
                    found = r.get("path", "quadrilateral" if r.get("found") else "") == "quadrilateral" and r["found"]
                    corners, t = np.array(r.get("corners") or np.zeros((4, 2))), t * (4032 / 1280)
                err = None
                if found:
                    diag = 0.5 * (np.linalg.norm(t[2] - t[0]) + np.linalg.norm(t[3] - t[1]))
                    err = float(np.linalg.norm(corners - t, axis=1).max() / diag * 100)
                rows.append((sev, bg, bool(found), err))
    return rows


# --------------------------------------------------------------------------- the parent


class Worker:
    def __init__(self, name: str, tree: Path, photo: Path, cpu: int | None):
        self.name, self.tree = name, tree
        env = dict(os.environ, **ONE_THREAD, PYTHONPATH=str(tree), CXR_EDGE_SHARED=str(shared_data().parent))
        cmd = [sys.executable, __file__, "--worker", str(tree), "--photo", str(photo)]
        self.proc = subprocess.Popen(cmd + (["--cpu", str(cpu)] if cpu is not None else []),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, **req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.name} worker ({self.tree}) died; run it alone to see why")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def corner_summary(rows) -> dict:
    import numpy as np

    found = [r for r in rows if r[2]]
    err = np.array([r[3] for r in found]) if found else np.zeros(0)
    return {"photos": len(rows), "found": len(found) / len(rows),
            "median_pct": float(np.median(err)) if len(err) else None,
            "p90_pct": float(np.percentile(err, 90)) if len(err) else None,
            "ok_within_2pct": float(np.sum(err < 2.0) / len(rows))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--photo", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, default=0,
                    help="the CPU both workers are pinned to (-1: not pinned). On a shared machine the scheduler "
                         "keeps each process on its own core, and one core can be busier: pinned to one, both "
                         "trees see the same (a tree against itself measured 1.35x unpinned, see the notes)")
    ap.add_argument("--baseline-rev", default=None)
    ap.add_argument("--baseline-tree", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--runs", type=int, default=2, help="predictions per tree per round")
    ap.add_argument("--per-cell", type=int, default=8, help="simulated photos per severity x background")
    ap.add_argument("--per-cell-12mp", type=int, default=3,
                    help="the same as 12-MP JPEGs through predict (slower: each is rendered and encoded)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--film", type=Path, default=None,
                    help="the film to photograph (default: cxr-edge bench's synthetic film)")
    args = ap.parse_args()
    cpu = None if args.cpu < 0 else args.cpu
    if args.worker:
        worker(args.worker, args.photo, cpu)
        return
    from PIL import Image

    sys.path.insert(0, str(REPO))
    from cxr_edge.tools.bench.inputs import phone_jpeg, synthetic_film

    with tempfile.TemporaryDirectory(prefix="cxr-photo-speed-") as tmp:
        trees = {"this tree": REPO}
        if args.baseline_rev:
            base = Path(tmp) / "baseline"
            base.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline_rev], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
            trees = {f"baseline {args.baseline_rev}": base, **trees}
        elif args.baseline_tree:
            trees = {f"baseline {args.baseline_tree}": args.baseline_tree.resolve(), **trees}
        photo = Path(tmp) / "photo_12mp.jpg"
        film = Image.open(args.film).convert("L") if args.film else synthetic_film()
        photo.write_bytes(phone_jpeg(film, long_side=4000, quality=90))
        workers = {name: Worker(name, tree, photo, cpu) for name, tree in trees.items()}
        try:
            runs = {name: [] for name in workers}
            for i in range(args.rounds):
                order = list(workers.items())
                for name, w in order if i % 2 == 0 else order[::-1]:   # alternate who goes first
                    runs[name] += w.ask(time=args.runs)
            quality = {name: {"corners": corner_summary(w.ask(corners=args.per_cell, seed=args.seed)),
                              "corners12": corner_summary(w.ask(corners12=args.per_cell_12mp, seed=args.seed)),
                              "dev": w.ask(dev=str(shared_data() / "real_photos_dev"))}
                       for name, w in workers.items()}
        finally:
            for w in workers.values():
                w.close()
    report(runs, quality, args)


def report(runs: dict, quality: dict, args) -> None:
    names = list(runs)
    stages = list(dict.fromkeys(k for name in names for r in runs[name] for k in r
                                if k not in ("total", "wall", "cpu")))
    totals = ["total", "wall", "cpu"]
    med = {name: {k: statistics.median(r.get(k, 0.0) for r in runs[name]) for k in stages + totals}
           for name in names}
    print(f"12-MP phone JPEG (3000 x 4000) to all results, 1 thread: medians of {args.rounds} rounds x "
          f"{args.runs} runs per tree, interleaved, both pinned to one CPU; ms. Stages and 'total' are the "
          "pipeline's own timings_ms (wall clock), 'wall' the whole call, 'cpu' its CPU time (this thread): on "
          "a shared machine 'cpu' is the steadiest, the stages the most exposed to other processes.")
    print()
    print("| stage | " + " | ".join(names) + (" | ratio |" if len(names) == 2 else " |"))
    print("|---|" + "---:|" * (len(names) + (len(names) == 2)))
    for k in stages + totals:
        cells = [f"{med[n][k]:.1f}" for n in names]
        ratio = (f" {med[names[1]][k] / med[names[0]][k]:.2f} |" if len(names) == 2 and med[names[0]][k] > 0
                 else " - |" if len(names) == 2 else "")
        print(f"| {k} | " + " | ".join(cells) + " |" + ratio)
    print()
    print(f"What the photo path finds (simulated photos, seed {args.seed}: {args.per_cell} per severity x background at "
          f"1280 px through find_film, {args.per_cell_12mp} per cell as 12-MP JPEGs through predict; real: "
          "../shared/data/real_photos_dev)")
    print()
    print("| tree | photos | films found | worst corner, median % of diagonal | p90 % | within 2 % |")
    print("|---|---|---:|---:|---:|---:|")
    for n in names:
        for key, what in (("corners", "1280 px"), ("corners12", "12 MP")):
            c = quality[n][key]
            print(f"| {n} | {c['photos']} at {what} | {c['found']:.0%} | {c['median_pct']:.3f} | {c['p90_pct']:.2f} | "
                  f"{c['ok_within_2pct']:.0%} |")
    print()
    print("| tree | real photos answered |")
    print("|---|---:|")
    for n in names:
        d = quality[n]["dev"]
        print(f"| {n} | {d['answered']}/{d['n']} |")


if __name__ == "__main__":
    main()
