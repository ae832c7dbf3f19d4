"""Does a colour cast cost the 4-class model accuracy, and from what strength? (issue 15)

Run (workstation; about 2.5 minutes for the 270 cxr4 test films, ``--every 2`` half that):

    python benchmarks/photo_cast.py --pack cxr_edge/packs/default --data prepared/cxr4 [--every 1] [--json out.json]
    python benchmarks/photo_cast.py --data prepared/nih14        # the 201 NIH test films: nih14's mean AUROC

The quality checks call a cast "fail" from a strength of ``QualitySpec.cast_fail`` (max |ln(R/G)|, |ln(B/G)| of the
film's brighter half) and then warn that the result "may be unreliable". At 0.40 (until 2026-12-08) three of the 17
real dev photos (violet screen photos) failed it. This measures whether casts of such strengths change the answers.

Each test film of ``--data`` (its original file, grey) is tinted with a cast of strength ``s`` in one of the
three hues seen in real photos (``cxr_edge.tools.photosim.CAST_HUES``: teal, violet, warm) with channel gains
exp(s * direction) relative to green, scaled so that the luma stays the same and clipped at 255 as a camera clips
(so strong casts lose highlights in one channel). The tinted RGB image goes through ``Pipeline.predict`` as a
photo of a screen or film without edges does (the 'cropped' path: trim, grey, level stretch; the quality checks
measure the cast). Printed per hue and strength:
the data's model's figure (cxr4: accuracy; nih14: mean AUROC over the labels with positives), the gate's
acceptances, on how many films nih14's findings (the labels over their thresholds)
differ from the same film's at the reference, the quality check's median cast score and its verdicts; and the
digital films' accuracy (the grey film as it is, the 'digital' path) beside them. The weakest strength, 0.05, is
the reference for the same path.
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
from cxr_edge.tools.photosim import CAST_HUES  # noqa: E402
from cxr_edge.tools.metrics import accuracy, auroc  # noqa: E402

#: ln(R/G), ln(B/G) per unit of strength (the larger one 1): the simulator's hues of real photos' casts
HUES = {name: tuple(float(v) for v in np.log([r / g, b / g]) / np.abs(np.log([r / g, b / g])).max())
        for name, (r, g, b) in CAST_HUES.items()}
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
    ap.add_argument("--data", required=True, help="a prepared cxr4 or nih14 data set (its test films are tinted; "
                    "its task picks the model scored)")
    ap.add_argument("--every", type=int, default=1, help="every n-th test film (default: all)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    pipe = Pipeline(args.pack)
    prep = open_prepared(args.data)
    slot = prep.task.family
    if slot not in ("cxr4", "nih14") or slot not in pipe.models:
        sys.exit(f"{args.data}: a {prep.task.name} data set; give a prepared cxr4 or nih14 set whose model the "
                 "pack has")
    table = prep.table("test")
    labels = list(pipe.models[slot].spec.labels)
    idx = list(range(0, len(table), args.every))
    y = prep.labels("test")[idx]
    metric_name = "accuracy" if slot == "cxr4" else "mean AUROC"

    def score(probs: list) -> float:
        """cxr4: accuracy of the top class; nih14: mean AUROC over the labels with positives and negatives."""
        if any(p is None for p in probs):
            return float("nan")
        P = np.array(probs)
        if slot == "cxr4":
            return accuracy(y.argmax(1), P.argmax(1))
        keep = [k for k in range(len(labels)) if 0 < y[:, k].sum() < len(y)]
        return float(np.mean([auroc(y[:, k], P[:, k]) for k in keep]))

    def run(image, name):
        pred = pipe.predict(image, name)
        res = pred.results.get(slot)
        probs = None if res is None else [res.probabilities[lbl] for lbl in labels]
        return pred, probs

    rows, digital = {}, []
    for n, i in enumerate(idx):
        grey = np.asarray(load_image(table["path"][i], mode="L"))
        digital.append(run(Image.fromarray(grey), "digital")[1])
        for hue, direction in HUES.items():
            for s in STRENGTHS:
                pred, probs = run(tint(grey, direction, s), f"{hue}-{s}")
                cast = next((c for c in pred.quality or [] if c.name == "color_cast"), None)
                row = rows.setdefault((hue, s), {"probs": [], "score": [], "verdict": [], "path": [], "gate": [],
                                                 "nih14": []})
                row["probs"].append(probs)
                row["gate"].append(bool(pred.gate and pred.gate.accepted))
                nih = pred.results.get("nih14")
                row["nih14"].append(None if nih is None else tuple(sorted(nih.positive)))
                row["score"].append(None if cast is None else float(cast.score))
                row["verdict"].append("not checked" if cast is None else cast.verdict)
                row["path"].append((pred.rectify or {}).get("path"))
        print(f"\r{n + 1}/{len(idx)} films", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    print(f"pack {args.pack}; {len(idx)} test films of {args.data}; {slot} {metric_name} of the films as they are "
          f"(grey, digital path): {score(digital):.3f}\n")
    print(f"| hue | strength | {slot} {metric_name} | change vs 0.05 | gate accepted | "
          "nih14 findings changed vs 0.05 | cast score (median) | quality verdicts | paths |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    out = {"films": len(idx), "slot": slot, "metric": metric_name, "digital": score(digital), "rows": []}
    for hue in HUES:
        ref = score(rows[(hue, STRENGTHS[0])]["probs"])
        ref_nih = rows[(hue, STRENGTHS[0])]["nih14"]
        for s in STRENGTHS:
            r = rows[(hue, s)]
            a = score(r["probs"])
            gate = sum(r["gate"])
            moved = sum(x != y_ for x, y_ in zip(r["nih14"], ref_nih))
            scores = [v for v in r["score"] if v is not None]
            med = float(np.median(scores)) if scores else float("nan")
            verdicts = dict(Counter(r["verdict"]))
            paths = dict(Counter(r["path"]))
            print(f"| {hue} | {s:.2f} | {a:.3f} | {a - ref:+.3f} | {gate}/{len(idx)} | {moved} | {med:.2f} | "
                  f"{', '.join(f'{k} {v}' for k, v in sorted(verdicts.items()))} | "
                  f"{', '.join(f'{k} {v}' for k, v in sorted(paths.items(), key=str))} |")
            out["rows"].append({"hue": hue, "strength": s, "metric": a, "change": a - ref, "gate_accepted": gate,
                                "nih14_changed": moved, "cast_score": med, "verdicts": verdicts,
                                "paths": {str(k): v for k, v in paths.items()}})
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
