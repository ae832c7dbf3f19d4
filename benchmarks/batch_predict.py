"""Batch: ``predict`` on 1,000 images (256-px PNGs), in images/s: the pipelined ``predict_many`` vs a plain loop.

Run:

    nice -n 10 .venv/bin/python benchmarks/batch_predict.py [--pack cxr_edge/packs/default] \
        [--runs-dir runs] [--images 1000] [--rounds 3] [--workers 2]

The images are the real 256x256 grey PNGs of ../shared/data (NIH first, then the 4-class set;
cycled if ``--images`` is larger than what is there), read from where they lie. Variants,
interleaved in the same run (``cxr_edge.tools.bench.sections.batch``), each over all the images per round:

* plain loop: ``Pipeline.predict`` on one image after the other, 1 interpreter thread (the baseline);
* ``Pipeline.predict_many(workers=2)``: 2 worker threads, each running whole predictions (decode,
  preprocessing and the three models) with interpreters of its own, at most 4 images in flight,
  1 interpreter thread (their start-up included);
* the same with 2 interpreter threads per model.

Then the command users run, ``cxr-edge predict FOLDER --json`` in a fresh process (start-up and
model loading included). Last, the ceiling: the pack's models alone (no decoding) at 1 and 2
interpreter threads, one image per invoke and eight. Without ``--pack`` the stand-in int8 pack of
``benchmarks/_models.py`` is used with its gate accepting everything, so every image runs all
three models.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _models  # noqa: E402
from _timing import header, shared_data, table  # noqa: E402

from cxr_edge.tools.bench.formatting import format_batch  # noqa: E402
from cxr_edge.tools.bench.harness import cli_command, run_child  # noqa: E402
from cxr_edge.tools.bench.sections import accepting_profile, batch  # noqa: E402


def image_files(n: int) -> list[Path]:
    """``n`` shared PNGs: NIH, then the 4-class set's own files, cycled when more are asked for."""
    data = shared_data()
    files = sorted((data / "nih_cxr14" / "images").glob("*.png")) + sorted((data / "cxr4" / "images").glob("*.png"))
    return [files[i % len(files)] for i in range(n)]


def linked_folder(files: list[Path], folder: Path) -> Path:
    """A folder of symbolic links to ``files`` (``cxr-edge predict`` takes a folder; nothing is copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        os.symlink(f, folder / f"{i:05d}_{f.name}")
    return folder


def model_ceiling(pack, thread_counts, batch_sizes=(1, 8), rounds: int = 5) -> list[list]:
    """Images/s of the pack's models alone (no decoding), per interpreter threads and invoke batch size:
    the most any predict loop could reach here."""
    import numpy as np

    from cxr_edge.tools.bench.harness import interleave, timed
    from cxr_edge.runtime.interpreter import TFLiteModel

    measures = {}
    for t in thread_counts:
        for b in batch_sizes:
            models = [TFLiteModel(m.content, threads=t) for m in pack.models.values()]
            xs = [np.zeros((b, *m.input_shape), np.float32) for m in models]
            measures[(t, b)] = timed(lambda ms=models, xs=xs: [m.run(x) for m, x in zip(ms, xs)])
    stats = interleave(measures, rounds=rounds, runs=5)
    base = stats[(thread_counts[0], batch_sizes[0])].median
    return [[t, b, f"{s.median / b:.1f}", f"{1e3 * b / s.median:.0f}", f"{base / (s.median / b):.2f}x"]
            for (t, b), s in stats.items()]


def main():
    ap = _models.pack_arguments(__doc__)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="interpreter threads to compare")
    args = ap.parse_args()
    from cxr_edge.runtime.pack import load_pack

    pack_path, what = _models.bench_pack(args.pack, args.runs_dir)
    pack = load_pack(pack_path)
    files = image_files(args.images)
    profile = accepting_profile(pack)
    result = batch(pack, files, thread_counts=args.threads, workers=args.workers, rounds=args.rounds, profile=profile)
    ceiling = model_ceiling(pack, args.threads)
    with tempfile.TemporaryDirectory(prefix="cxr-bench-batch-") as tmp:
        folder = linked_folder(files, Path(tmp) / "images")
        cmd = cli_command() + ["predict", "--json", "--workers", str(args.workers), "--pack", str(pack_path)]
        cmd += ["--profile", profile] if profile else []
        wall, rc = run_child(cmd + [str(folder)])
    print(header(f"Batch: predict on {len(files)} images"))
    print(_models.pack_lines(pack_path, what))
    print("\n".join(format_batch(result)))
    print()
    print(table(["command (fresh process: start-up and model loading included)", "seconds", "images/s", "exit"],
                [[f"`cxr-edge predict FOLDER --json --workers {args.workers}`", f"{wall:.1f}",
                  f"{len(files) / wall:.0f}", rc]]))
    print(f"\nThe models alone ({', '.join(pack.models)} on every image, no decoding), by interpreter threads and "
          "images per invoke: the ceiling for any predict loop on this machine.\n")
    print(table(["threads", "images per invoke", "ms per image", "images/s", "vs 1 thread, 1 image"], ceiling))


if __name__ == "__main__":
    main()
