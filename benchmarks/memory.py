"""Peak RSS of ``cxr-edge predict`` on one image and on a batch: what a 1 GB Raspberry Pi has to spare.

Run:

    nice -n 10 .venv/bin/python benchmarks/memory.py [--pack cxr_edge/packs/default] [--runs-dir runs] \
        [--images 1000] [--repeat 3]

Each command runs in a fresh child of a small helper Python: the peak resident set size of its largest
process comes from ``wait4`` (``ru_maxrss``), and the sums of RSS and PSS over it and any processes
it starts are sampled from /proc every 20 ms (``cxr_edge.tools.bench.memory.peak_rss``). Beside
it, in the same run, two baselines: ``python -c pass`` and Python with numpy, Pillow and the
interpreter imported (the floor any Python predictor pays). The batch is the shared 256-px
PNGs (``benchmarks/batch_predict.py``'s images, linked into a temporary folder). Repeated
``--repeat`` times; the table shows the largest peak of the repeats.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _models  # noqa: E402
from _timing import header  # noqa: E402
from batch_predict import image_files, linked_folder  # noqa: E402

from cxr_edge.tools.bench.formatting import format_memory  # noqa: E402
from cxr_edge.tools.bench.memory import peak_rss  # noqa: E402


def main():
    ap = _models.pack_arguments(__doc__)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    pack_path, what = _models.bench_pack(args.pack, args.runs_dir)
    files = image_files(args.images)
    with tempfile.TemporaryDirectory(prefix="cxr-bench-rss-") as tmp:
        folder = linked_folder(files, Path(tmp) / "images")
        repeats = [peak_rss(pack_path, files[0], folder, len(files)) for _ in range(args.repeat)]
    rows = []
    for i, row in enumerate(repeats[0]):
        worst = max((r[i] for r in repeats), key=lambda r: r["peak_rss_mb"])
        rows.append(dict(worst, ratio=round(worst["peak_rss_mb"] / max(r[0]["peak_rss_mb"] for r in repeats), 2)))
    print(header("Peak RSS of cxr-edge predict"))
    print(_models.pack_lines(pack_path, what))
    print("\n".join(format_memory(rows)))
    print(f"\n(largest of {args.repeat} repeats; one image: {files[0].name})")


if __name__ == "__main__":
    main()
