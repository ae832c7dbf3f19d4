"""Where a pack's classifier loses accuracy on simulated phone photos: the film finder, the finishing step,
the scene, or the camera effects (issue 15).

Run (workstation; ~3 minutes for the 270 cxr4 test films on one core):

    python benchmarks/photo_accuracy_loss.py --pack cxr_edge/packs/default --data prepared/cxr4 \
        [--split test] [--severity moderate] [--every 1]

The photos are the ones ``cxr-edge evaluate PACK --data DATA --photos SEVERITY`` builds, with the same
seeds (``cxr_edge.tools.evaluate.photo_seed``), the same simulator (``cxr_edge.tools.photosim.simulate_photo``,
1280 px), the same device path (``cxr_edge.runtime.photo.rectify.rectify`` and its ``film``, which runs
``finish_film``) and the same model input (``fit_to_square`` + ``normalize``, the pack's int8 model). Beside
that device path, the same photo

* warped with its TRUE film corners (the simulator's), then ``finish_film`` ("true corners"): what a perfect
  film finder would give;
* through the device path and through the true corners without ``finish_film``;
* simulated with no camera effects at all (``effects={}``: the scene alone, upright);

and every row split by the simulated background (dark room, desk, lightbox, monitor). Printed: accuracy and
macro-F1 per row, and the commonest flips (right on the digital film, wrong here).

Every row of a film starts from a fresh copy of that film's random stream (``photo_seed`` gives a generator,
and the simulator draws from it), so the rows are the SAME photo with the stated difference: the background,
placement and each effect's draw are shared, and row-to-row differences are paired. (Before 2026-12-06 each row
drew on from the one generator, so every row was another photo and its per-background columns used the first
row's backgrounds: the rows compared distributions, not photos.)

``--ablate off``: which camera effect costs the accuracy. The rows become the photo with every default effect
("true corners, all effects") and, per effect, the same photo with that one effect turned off ("true corners,
no EFFECT"), all warped with the true corners and finished as above. Every other effect keeps its draw (the
simulator draws each effect from a stream of its own), and the scene is the default photo's, so "true corners,
all effects" is the default mode's "true corners" row. ``--ablate only``: the same with each effect alone ("true
corners, only EFFECT": the scene, the film's rotation and perspective, and that one effect at its default odds)
beside "true corners, no effects".
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_edge.data.prepared import open_prepared  # noqa: E402
from cxr_edge.runtime.images import load_image  # noqa: E402
from cxr_edge.runtime.photo.film import finish_film  # noqa: E402
from cxr_edge.runtime.photo.rectify import rectify, warp_film  # noqa: E402
from cxr_edge.runtime.preprocess import fit_to_square, normalize  # noqa: E402
from cxr_edge.tools.evaluate import photo_seed  # noqa: E402
from cxr_edge.tools.metrics import accuracy, macro_f1  # noqa: E402
from cxr_edge.tools.photosim import (MONITOR_MOIRE_PROB, PHOTO_EFFECT_PROBS, resolve_severity,  # noqa: E402
                                    simulate_photo)
from cxr_edge.tools.split_runner import open_model  # noqa: E402

ROWS = ("digital", "device path", "true corners", "device path, no finish_film", "true corners, no finish_film",
        "scene only, device path", "scene only, true corners")


def variants(film: np.ndarray, severity: float, seed, model_input) -> dict:
    """Model inputs of every row but 'digital' for one film; ``seed()`` gives the film's random stream afresh."""
    out = {}
    for tag, effects in (("", None), ("scene only, ", {})):
        sim = simulate_photo(film, severity, seed(), long_side=1280, effects=effects)
        photo = sim.to_image()
        r = rectify(photo)
        truth = warp_film(photo.convert("L"), sim.corners, max_side=1024, mode="L")
        out[f"{tag}device path"] = model_input(r.film if r.ok else photo)
        out[f"{tag}true corners"] = model_input(finish_film(truth))
        if not tag:
            out["device path, no finish_film"] = model_input(r.image if r.ok else photo)
            out["true corners, no finish_film"] = model_input(truth)
            out["background"] = sim.background
    return out


#: the effects --ablate turns off one at a time (rotation and perspective are what the true corners undo)
ABLATED = tuple(e for e in PHOTO_EFFECT_PROBS if e not in ("rotation", "perspective"))
ABLATE_ROWS = {
    "off": ("digital", "true corners, all effects") + tuple(f"true corners, no {e}" for e in ABLATED),
    "only": ("digital", "true corners, no effects") + tuple(f"true corners, only {e}" for e in ABLATED),
}


def ablation_plans(defaults: dict, kind: str):
    """(row, effect probabilities) of the --ablate KIND rows."""
    if kind == "off":
        yield "true corners, all effects", dict(defaults)
        for e in ABLATED:
            yield f"true corners, no {e}", {k: (0.0 if k == e else v) for k, v in defaults.items()}
        return
    geometry = {k: (v if k in ("rotation", "perspective") else 0.0) for k, v in defaults.items()}
    yield "true corners, no effects", geometry
    for e in ABLATED:
        yield f"true corners, only {e}", {**geometry, e: defaults[e]}   # moire: monitor photos only, as by default


def ablation_variants(film: np.ndarray, severity: float, seed, model_input, kind: str = "off") -> dict:
    """Model inputs of the --ablate KIND rows but 'digital' for one film; ``seed()`` gives its stream afresh."""
    background = simulate_photo(film, severity, seed(), long_side=1280).background
    defaults = dict(PHOTO_EFFECT_PROBS, moire=MONITOR_MOIRE_PROB if background == "monitor" else 0.0)
    out = {"background": background}
    for row, effects in ablation_plans(defaults, kind):
        sim = simulate_photo(film, severity, seed(), long_side=1280, effects=effects)
        assert sim.background == background
        truth = warp_film(sim.to_image().convert("L"), sim.corners, max_side=1024, mode="L")
        out[row] = model_input(finish_film(truth))
    return out


def answer_rows(model, inputs: dict, rows, preds: dict) -> None:
    """One model run over every row's input of one film; each row's top class appended to ``preds[row]``."""
    raw = model.infer(normalize(np.stack([inputs[r] for r in rows]), model.spec))[0]
    for row, p in zip(rows, model.probabilities(raw).argmax(1)):
        preds[row].append(int(p))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="cxr_edge/packs/default",
                    help="a model pack (its int8 model), or a training run folder (its Keras float model)")
    ap.add_argument("--data", required=True, help="a prepared data set (cxr-edge data prepare)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--severity", default="moderate")
    ap.add_argument("--seed", type=int, default=0, help="evaluate's --seed")
    ap.add_argument("--every", type=int, default=1, help="every K-th film of the split (1 = all)")
    ap.add_argument("--ablate", choices=("off", "only"),
                    help="rows: true corners with all effects and with each camera effect turned off in turn (off), "
                         "or with no effect and each effect alone (only)")
    args = ap.parse_args()
    if args.ablate:
        rows = ABLATE_ROWS[args.ablate]

        def make(*a):
            return ablation_variants(*a, kind=args.ablate)
    else:
        rows, make = ROWS, variants
    prep = open_prepared(args.data)
    table = prep.table(args.split)
    run_opener = None
    if (Path(args.pack) / "run.json").is_file():   # a training run: its float model needs TensorFlow
        from cxr_edge.training.run_model import open_run_model as run_opener
    model = open_model(args.pack, prep, threads=1, run_opener=run_opener)
    spec = model.spec
    severity = resolve_severity(args.severity)

    def model_input(img):
        return fit_to_square(load_image(img, mode="L", min_size=spec.input.size), spec)

    idx = list(range(0, len(table), args.every))
    preds = {row: [] for row in rows}
    backgrounds = []
    for n, i in enumerate(idx):
        film = np.asarray(load_image(table["path"][i], mode="L"))
        sha = table["sha256"][i]
        inputs = make(film, severity, lambda: photo_seed(args.seed, sha, i), model_input)
        backgrounds.append(inputs.pop("background"))
        inputs["digital"] = model_input(table["path"][i])
        answer_rows(model, inputs, rows, preds)
        if n % 20 == 0:
            print(f"{n + 1}/{len(idx)}", file=sys.stderr, flush=True)
    y = prep.labels(args.split)[idx].argmax(1)
    names = list(spec.labels)
    k = len(names)
    bgs = sorted(set(backgrounds))
    bg = np.array(backgrounds)
    digital = np.array(preds["digital"])
    print(f"{args.pack} on {args.data} {args.split} ({len(idx)} films), {args.severity} photos, seed {args.seed}\n")
    print("| variant | accuracy | macro-F1 | " + " | ".join(f"{b} ({(bg == b).sum()})" for b in bgs)
          + " | commonest flips (right digitally, wrong here) |")
    print("|---|---|---|" + "---|" * len(bgs) + "---|")
    for row in rows:
        p = np.array(preds[row])
        flips = Counter((names[t], names[q]) for d, q, t in zip(digital, p, y) if d == t and q != t)
        flip_text = ", ".join(f"{a} -> {b} {c}" for (a, b), c in flips.most_common(3)) if row != "digital" else ""
        per_bg = " | ".join(f"{accuracy(y[bg == b], p[bg == b]):.3f}" for b in bgs)
        print(f"| {row} | {accuracy(y, p):.3f} | {macro_f1(y, p, k):.3f} | {per_bg} | {flip_text} |")


if __name__ == "__main__":
    main()
