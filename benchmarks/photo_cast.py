"""Does a colour cast cost the 4-class model accuracy, and from what strength? (issue 15)

Run (workstation; about 5 minutes for the 270 cxr4 test films, ``--every 2`` half that):

    python benchmarks/photo_cast.py --pack cxr_edge/packs/default --data prepared/cxr4 [--every 1] [--json out.json]

The quality checks call a cast "fail" from a strength of ``QualitySpec.cast_fail`` (max |ln(R/G)|, |ln(B/G)| of the
film's brighter half; 0.40 in the bundled pack) and then warn that the result "may be unreliable". Three of the 17
real dev photos (violet screen photos) fail it. This measures whether casts of that strength change the answers.

Each test film (its original file, grey) is tinted with a cast of strength ``s`` in one of three hues seen in the
real dev photos -- violet, teal, warm -- with channel gains exp(s * direction) relative to green, scaled so that
the luma stays the same and clipped at 255 as a camera clips (so strong casts lose highlights in one channel). The
tinted RGB image goes through ``Pipeline.predict`` as a photo of a screen or film without edges does (the
'cropped' path: trim, grey, level stretch; the quality checks measure the cast). Printed per hue and strength:
cxr4 accuracy, the quality check's median cast score and its verdicts; and the digital films' accuracy (the grey
film as it is, the 'digital' path) beside them. The weakest strength, 0.05, is the reference for the same path.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_edge import Pipeline  # noqa: E402
from cxr_edge.data.prepared import open_prepared  # noqa: E402
from cxr_edge.runtime.images import load_image  # noqa: E402

#: ln(R/G), ln(B/G) per unit of strength (the larger component 1): hues of the real dev photos
HUES = {"violet": (0.55, 1.0), "teal": (-1.0, -0.1), "warm": (1.0, -0.8)}
STRENGTHS = (0.05, 0.2, 0.3, 0.4, 0.5, 0.65, 0.8)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def tint(grey: np.ndarray, hue: tuple[float, float], s: float) -> Image.Image:
    """The grey film (uint8 HxW) under a cast of strength ``s``: an RGB image, luma kept, clipped at 255."""
    gains = np.exp(np.array([hue[0] * s, 0.0, hue[1] * s], np.float32))
    gains /= float(gains @ LUMA)
    rgb = grey.astype(np.float32)[..., None] * gains
    return Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8), "RGB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="cxr_edge/packs/default")
    ap.add_argument("--data", required=True, help="a prepared cxr4 data set (its test films are tinted)")
    ap.add_argument("--every", type=int, default=1, help="every n-th test film (default: all)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    pipe = Pipeline(args.pack)
    prep = open_prepared(args.data)
    table = prep.table("test")
    labels = list(pipe.models["cxr4"].spec.labels)
    idx = list(range(0, len(table), args.every))
    truth = [labels[k] for k in prep.labels("test")[idx].argmax(1)]
    rows = {}
    digital = []
    for n, i in enumerate(idx):
        grey = np.asarray(load_image(table["path"][i], mode="L"))
        pred = pipe.predict(Image.fromarray(grey), "digital")
        digital.append(pred.results["cxr4"].top if "cxr4" in pred.results else None)
        for hue, direction in HUES.items():
            for s in STRENGTHS:
                pred = pipe.predict(tint(grey, direction, s), f"{hue}-{s}")
                cast = next((c for c in pred.quality or [] if c.name == "color_cast"), None)
                row = rows.setdefault((hue, s), {"top": [], "score": [], "verdict": [], "path": []})
                row["top"].append(pred.results["cxr4"].top if "cxr4" in pred.results else None)
                row["score"].append(None if cast is None else float(cast.score))
                row["verdict"].append("not checked" if cast is None else cast.verdict)
                row["path"].append((pred.rectify or {}).get("path"))
        print(f"\r{n + 1}/{len(idx)} films", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    def acc(tops):
        return float(np.mean([t == y for t, y in zip(tops, truth)]))

    print(f"pack {args.pack}; {len(idx)} test films of {args.data}; digital (grey, as given): accuracy "
          f"{acc(digital):.3f}\n")
    print("| hue | strength | cxr4 accuracy | change vs 0.05 | cast score (median) | quality verdicts | paths |")
    print("|---|---:|---:|---:|---:|---|---|")
    out = {"films": len(idx), "digital_accuracy": acc(digital), "rows": []}
    for hue in HUES:
        ref = acc(rows[(hue, STRENGTHS[0])]["top"])
        for s in STRENGTHS:
            r = rows[(hue, s)]
            a = acc(r["top"])
            scores = [v for v in r["score"] if v is not None]
            med = float(np.median(scores)) if scores else float("nan")
            verdicts = dict(Counter(r["verdict"]))
            paths = dict(Counter(r["path"]))
            print(f"| {hue} | {s:.2f} | {a:.3f} | {a - ref:+.3f} | {med:.2f} | "
                  f"{', '.join(f'{k} {v}' for k, v in sorted(verdicts.items()))} | "
                  f"{', '.join(f'{k} {v}' for k, v in sorted(paths.items(), key=str))} |")
            out["rows"].append({"hue": hue, "strength": s, "accuracy": a, "change": a - ref, "cast_score": med,
                                "verdicts": verdicts, "paths": {str(k): v for k, v in paths.items()}})
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
