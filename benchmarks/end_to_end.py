"""End to end per image: a 12-MP phone JPEG through decode -> rectify -> quality -> gate -> classifiers -> heatmaps.

Run:

    nice -n 10 .venv/bin/python benchmarks/end_to_end.py [--pack cxr_edge/packs/default] \
        [--runs-dir runs] [--rounds 8] [--runs 3] [--threads 1]

The photo: a real NIH CXR from ../shared/data rendered as a phone photo by
``cxr_edge.tools.photosim.simulate_photo`` (moderate severity, desk background, long side 4000 px:
3000x4000 = 12 MP) and saved as JPEG quality 90 in a temporary folder (never kept).
Variants, interleaved in the same run (``cxr_edge.tools.bench.sections.end_to_end``):

* full JPEG decoding (the baseline, ratio 1.0) against reduced-size decoding (Pillow
  ``draft``: the 4000x3000 JPEG decodes at 1/4, 1000x750, still 3-4x the 224-px model input);
* all three models against a gate that rejects (gate-first: the classifiers never run);
* with heatmaps: the class activation map of each classifier's top label, from the feature map
  the models already output and the head weights the pack embeds.

Then each stage alone. Without ``--pack`` (or when it does not exist) the pack is the stand-in
int8 pack of ``benchmarks/_models.py`` (same architecture and sizes, random heads), whose gate
gets an 'accept-all' profile here so that every model runs.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _models  # noqa: E402
from _timing import header  # noqa: E402

from cxr_edge.tools.bench.formatting import format_end_to_end  # noqa: E402
from cxr_edge.tools.bench.inputs import phone_jpeg  # noqa: E402
from cxr_edge.tools.bench.sections import accepting_profile, end_to_end  # noqa: E402


def main():
    ap = _models.pack_arguments(__doc__)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3, help="samples per variant per round")
    ap.add_argument("--threads", type=int, default=1, help="interpreter threads per model")
    ap.add_argument("--film", type=Path, default=None, help="the CXR to photograph (default: the first NIH image)")
    args = ap.parse_args()
    from PIL import Image

    from cxr_edge.runtime.pack import load_pack

    pack_path, what = _models.bench_pack(args.pack, args.runs_dir)
    pack = load_pack(pack_path)
    film_path = args.film or _models.real_cxrs(1)[0]
    with tempfile.TemporaryDirectory(prefix="cxr-bench-photo-") as tmp:
        photo = Path(tmp) / "phone_photo.jpg"
        photo.write_bytes(phone_jpeg(Image.open(film_path).convert("L"), long_side=4000, quality=90))
        result = end_to_end(pack, photo, threads=args.threads, rounds=args.rounds, runs=args.runs,
                            profile=accepting_profile(pack))
    print(header("End to end: one 12-MP phone JPEG to all results"))
    print(f"film: {film_path}")
    print(_models.pack_lines(pack_path, what))
    print("\n".join(format_end_to_end(result)))


if __name__ == "__main__":
    main()
