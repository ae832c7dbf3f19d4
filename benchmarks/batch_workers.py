"""Batch scaling on a mixed batch: the plain loop vs ``predict_many(workers=2)``, with memory.

Run (on an idle machine: a ratio against the plain loop needs both cores free; check `uptime`):

    .venv/bin/python benchmarks/batch_workers.py [--pack cxr_edge/packs/default] [--films 4] \
        [--repeat 12] [--rounds 3]

The batch: ``--films`` real NIH CXRs of ../shared/data, each as a 1024-px PNG (enlarged, LANCZOS: a
digitised film) and as a simulated 12-MP phone JPEG of it (``cxr_edge.tools.bench.inputs.phone_jpeg``),
alternating, repeated ``--repeat`` times (linked, not copied), in a temporary folder. Every image runs
all models (the pipeline with ``gate_first=False``), 1 interpreter thread.

Variants, interleaved in the same run (``interleave``: rounds, the order rotated), each over the whole
batch per round:

* plain loop: ``Pipeline.predict`` on one image after the other (the baseline, 1.00x);
* ``Pipeline.predict_many(workers=2)``: two worker threads, each running whole predictions with
  interpreters of its own (loaded per call, as ``cxr-edge predict`` pays it).

Then peak memory of each variant run once in a fresh process over the same folder
(``cxr_edge.tools.bench.memory.peak_memory_of``): the largest process's RSS, and the sums of RSS and
PSS over the process and any it starts.

Worker processes were measured against threads with this script on 2026-12-05 (RESULTS.md, "Issue 18
final run"): on the faster photo path threads won on speed and memory, and ``predict_many`` went back to
threads.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _models  # noqa: E402
from _timing import header, interleave, table, timed  # noqa: E402

from cxr_edge.tools.bench.inputs import phone_jpeg  # noqa: E402
from cxr_edge.tools.bench.memory import peak_memory_of  # noqa: E402

VARIANTS = ("plain loop", "predict_many(workers=2): 2 worker threads")


def run_variant(pipeline, name: str, files: list) -> list:
    if name == VARIANTS[0]:
        return [pipeline.predict(f, str(f)) for f in files]
    return list(pipeline.predict_many(files, workers=2))


def make_batch(folder: Path, films: int, repeat: int) -> list[Path]:
    from PIL import Image

    originals = []
    for i, src in enumerate(_models.real_cxrs(films)):
        film = Image.open(src).convert("L").resize((1024, 1024), Image.LANCZOS)
        film.save(folder / f"film_{i}.png")
        (folder / f"photo_{i}.jpg").write_bytes(phone_jpeg(film, seed=i))
        originals += [folder / f"film_{i}.png", folder / f"photo_{i}.jpg"]
    batch = folder / "batch"
    batch.mkdir()
    files = []
    for r in range(repeat):
        for f in originals:
            files.append(batch / f"{r:03d}_{f.name}")
            os.symlink(f, files[-1])
    return files


def child(pack: str, name: str, folder: str) -> None:
    """One variant over the folder's files, in this fresh process (for its peak memory)."""
    from cxr_edge.runtime.pipeline import Pipeline

    files = sorted(Path(folder).iterdir())
    preds = run_variant(Pipeline(pack, gate_first=False), name, files)
    assert len(preds) == len(files)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(*sys.argv[2:5])
    ap = _models.pack_arguments(__doc__)
    ap.add_argument("--films", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from cxr_edge.runtime.pipeline import Pipeline

    pack_path, what = _models.bench_pack(args.pack, args.runs_dir)
    pipeline = Pipeline(pack_path, gate_first=False)
    with tempfile.TemporaryDirectory(prefix="cxr-bench-workers-") as tmp:
        files = make_batch(Path(tmp), args.films, args.repeat)
        stats = interleave({v: timed(lambda v=v: run_variant(pipeline, v, files)) for v in VARIANTS},
                           rounds=args.rounds, runs=1)
        memory = {v: peak_memory_of([sys.executable, __file__, "--child", str(pack_path), v, str(files[0].parent)])
                  for v in VARIANTS}
    base = stats[VARIANTS[0]].median
    print(header(f"Batch scaling: {len(files)} images, half 1024-px PNGs, half 12-MP phone JPEGs"))
    print(_models.pack_lines(pack_path, what))
    print(table(["variant", "seconds (median)", "images/s", "vs plain loop", "largest process: peak RSS MB",
                 "all processes: RSS MB", "all processes: PSS MB", "processes"],
                [[v, f"{s.median / 1e3:.2f}", f"{len(files) / (s.median / 1e3):.1f}", f"{base / s.median:.2f}x",
                  f"{memory[v]['largest_rss_mb']:.0f}", _mb(memory[v]['total_rss_mb']),
                  _mb(memory[v]['total_pss_mb']), memory[v]["processes"] or "-"] for v, s in stats.items()]))
    print(f"\n{args.rounds} interleaved rounds (medians); load average at the end {os.getloadavg()}. Memory: each "
          "variant once in a fresh process over the same folder, sampled every 20 ms.")


def _mb(v) -> str:
    return "-" if v is None else f"{v:.0f}"


if __name__ == "__main__":
    main()
