"""How noisy are real phone photos of films, against the simulator's? (issue 15)

Run (workstation; ~1 minute):

    python benchmarks/photo_noise.py --data prepared/cxr4 [--films 60] [--severity moderate] [--side 1280]
                                     [--json out.json]

``benchmarks/photo_accuracy_loss.py --ablate off`` found the simulator's sensor noise to be what costs cxr4 most of
its accuracy on simulated photos. Whether real photos are that noisy decides what to do about it (calibrate the
simulator, or denoise on the device), so this measures both the same way:

* every photo is made grey and shrunk (box filter) to 1280 px on its longer side, the size evaluation's simulated
  photos have (a 12-MP phone photo shrunk to 1280 px has had its pixel noise averaged, as the simulator's 1280-px
  photo stands for);
* the noise is Immerkær's estimate (Immerkær 1996, "Fast noise variance estimation"): the mean absolute response
  to the 3x3 mask [[1, -2, 1], [-2, 4, -2], [1, -2, 1]], which cancels smooth image content, times
  sqrt(pi / 2) / 6, in grey levels -- measured inside the film only (the central 60 % of the photo for the real
  photos, most of them cropped to the film; the true film quadrilateral's central 60 % for the simulated ones);
* and relative to the film's grey range there (1st to 99th percentile), since the device's level stretch scales
  the noise by 255 / range.

Rows: the real photos in ``../shared/data/real_photos_dev`` (every image in its manifest); simulated photos of the
first ``--films`` test films at ``--severity`` with every default effect, and the same photos with the noise effect
off (the estimator's floor: film grain, edges and JPEG read as noise too). Printed: the median and the 10th / 90th
percentiles of sigma and of sigma / range.

A second table compares what the MODEL sees (the 224-px input, after the device's finishing): the digital test
films; the real dev photos as ``cxr-edge predict`` prepares them (``Pipeline.film``: straightened, cropped or
digital, finished, then fitted to the model's square); evaluate's simulated photos straightened with their true
corners, finished and fitted; the same without the noise effect; and training's photo views of the same films (``cxr_edge.training.augment.photo_view`` with the
default augmentation's photo settings at ``--severity``, finished as training finishes them; and with
``photo_scene = 1``, every view a straightened 640-px photo). If training's views carry less noise than
evaluation's photos, training never showed the model the noise that costs it.

``--side`` is the long side the simulated photos are rendered at (evaluate's ``--photo-size``; 1280 by default).
The simulator's sensor noise, chroma blotches and JPEG blocks are per pixel of that photo, so a 1280-px photo stands
for a 1.6-MP camera; 4000 px is a 12-MP phone. The first table still measures every photo shrunk to 1280 px.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _timing import shared_dir  # noqa: E402

SIDE = 1280
MASK = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)


def immerkaer_sigma(a: np.ndarray) -> float:
    """Immerkær's noise sigma of a grey image (float array), in its units."""
    h, w = a.shape
    if h < 3 or w < 3:
        return float("nan")
    acc = np.zeros((h - 2, w - 2))
    for dy in range(3):
        for dx in range(3):
            acc += MASK[dy, dx] * a[dy:dy + h - 2, dx:dx + w - 2]
    return float(np.abs(acc).mean() * math.sqrt(math.pi / 2) / 6)


def at_common_size(img: Image.Image) -> np.ndarray:
    """Grey, shrunk with a box filter to SIDE px on the longer side (never enlarged)."""
    grey = img.convert("L")
    s = SIDE / max(grey.size)
    if s < 1:
        grey = grey.resize((max(1, round(grey.width * s)), max(1, round(grey.height * s))), Image.Resampling.BOX)
    return np.asarray(grey, np.float64)


def measure(a: np.ndarray, box) -> dict:
    """sigma and sigma / range inside ``box`` = (x0, y0, x1, y1) of ``a``."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    part = a[max(0, y0):y1, max(0, x0):x1]
    lo, hi = np.percentile(part, [1, 99])
    sigma = immerkaer_sigma(part)
    return {"sigma": sigma, "range": float(hi - lo), "relative": sigma / max(1.0, float(hi - lo))}


def central(box, share=0.6):
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * (1 - share) / 2, (y1 - y0) * (1 - share) / 2
    return (x0 + dx, y0 + dy, x1 - dx, y1 - dy)


def summary(rows: list[dict]) -> dict:
    out = {"n": len(rows)}
    for key in ("sigma", "relative"):
        v = np.array([r[key] for r in rows if np.isfinite(r[key])])
        out[key] = {q: float(np.percentile(v, p)) for q, p in (("p10", 10), ("median", 50), ("p90", 90))}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="a prepared data set (its test films are photographed)")
    ap.add_argument("--films", type=int, default=60)
    ap.add_argument("--severity", default="moderate")
    ap.add_argument("--side", type=int, default=SIDE,
                    help="long side of the simulated photos in px (evaluate's --photo-size); default %(default)s")
    ap.add_argument("--train-noise", type=float, default=1.0,
                    help="augment.photo_noise for the training-view rows (the gain on their sensor noise)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from cxr_edge.data.prepared import open_prepared
    from cxr_edge.runtime.images import load_image
    from cxr_edge.tools.evaluate import photo_seed
    from cxr_edge.tools.photosim import MONITOR_MOIRE_PROB, PHOTO_EFFECT_PROBS, simulate_photo

    folder = shared_dir() / "data" / "real_photos_dev"
    real = []
    for r in csv.DictReader(open(folder / "manifest.csv", newline="")):
        a = at_common_size(load_image(str(folder / r["file"]), mode="RGB"))
        real.append({"file": r["file"], **measure(a, central((0, 0, a.shape[1], a.shape[0])))})

    prep = open_prepared(args.data)
    table = prep.table("test")
    sims = {"simulated": [], "simulated, noise off": []}
    for i in range(min(args.films, len(table))):
        film = np.asarray(load_image(table["path"][i], mode="L"))
        sha = table["sha256"][i]
        first = simulate_photo(film, args.severity, photo_seed(0, sha, i), long_side=args.side)
        defaults = dict(PHOTO_EFFECT_PROBS, moire=MONITOR_MOIRE_PROB if first.background == "monitor" else 0.0)
        for name, effects in (("simulated", None), ("simulated, noise off", {**defaults, "noise": 0.0})):
            sim = first if effects is None else simulate_photo(film, args.severity, photo_seed(0, sha, i),
                                                               long_side=args.side, effects=effects)
            q = sim.corners * (min(1.0, SIDE / args.side))     # at_common_size shrinks larger photos to SIDE
            box = (q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max())
            sims[name].append({**measure(at_common_size(sim.to_image()), central(box)),
                               "background": sim.background})

    from dataclasses import replace

    from cxr_edge.runtime.photo.film import finish_film
    from cxr_edge.runtime.photo.rectify import warp_film
    from cxr_edge.runtime.preprocess import fit_to_square
    from cxr_edge.training.augment import AugmentConfig, photo_view

    from cxr_edge import Pipeline

    spec = prep.task
    pipe = Pipeline.from_pack("default")     # only its photo path runs: Pipeline.film, no model
    view = replace(AugmentConfig.off(), photo_prob=1.0, photo_severity=args.severity, photo_noise=args.train_noise)
    inputs = {"digital films": [], "real photos (dev), as predict prepares them": [],
              "evaluate's photos, true corners, finished": [],
              "the same, noise off": [], f"training's photo views, photo_noise = {args.train_noise:g}": [],
              "training's photo views, photo_scene = 1": []}
    whole = (0, 0, spec.input.size, spec.input.size)
    for r in csv.DictReader(open(folder / "manifest.csv", newline="")):
        x = fit_to_square(pipe.film(str(folder / r["file"]), checks=False).image, spec).astype(np.float64)
        inputs["real photos (dev), as predict prepares them"].append(measure(x, central(whole)))
    for i in range(min(args.films, len(table))):
        film = np.asarray(load_image(table["path"][i], mode="L"))
        sha = table["sha256"][i]
        inputs["digital films"].append(measure(np.asarray(prep.images("test")[i], np.float64), central(whole)))
        first = simulate_photo(film, args.severity, photo_seed(0, sha, i), long_side=args.side)
        defaults = dict(PHOTO_EFFECT_PROBS, moire=MONITOR_MOIRE_PROB if first.background == "monitor" else 0.0)
        for name, effects in (("evaluate's photos, true corners, finished", None),
                              ("the same, noise off", {**defaults, "noise": 0.0})):
            sim = first if effects is None else simulate_photo(film, args.severity, photo_seed(0, sha, i),
                                                               long_side=args.side, effects=effects)
            straight = warp_film(sim.to_image().convert("L"), sim.corners, max_side=1024, mode="L")
            x = fit_to_square(finish_film(straight), spec).astype(np.float64)
            inputs[name].append(measure(x, central(whole)))
        pixels = np.asarray(prep.images("test")[i])
        seed = int(np.random.default_rng([i, 7]).integers(2 ** 63 - 1))
        plain = photo_view(pixels, view, seed).astype(np.float64)
        inputs[f"training's photo views, photo_noise = {args.train_noise:g}"].append(measure(plain, central(whole)))
        scene = photo_view(pixels, replace(view, photo_scene=1.0), seed).astype(np.float64)
        inputs["training's photo views, photo_scene = 1"].append(measure(scene, central(whole)))

    groups = {"real photos (dev)": real, **sims}
    print(f"noise at {SIDE} px on the longer side, inside the film (Immerkær sigma, grey levels)\n")
    print("| photos | n | sigma p10 / median / p90 | sigma / film range p10 / median / p90 |")
    print("|---|---:|---|---|")
    result = {}
    for name, rows in groups.items():
        s = result[name] = summary(rows)
        print(f"| {name} | {s['n']} | {s['sigma']['p10']:.2f} / {s['sigma']['median']:.2f} / {s['sigma']['p90']:.2f} "
              f"| {s['relative']['p10']:.4f} / {s['relative']['median']:.4f} / {s['relative']['p90']:.4f} |")
    print(f"(simulated photos rendered at {args.side} px on the longer side)")
    print(f"\nwhat the model sees: the {spec.input.size}-px input after the device's finishing (the same estimate)\n")
    print("| input | n | sigma p10 / median / p90 | sigma / range p10 / median / p90 |")
    print("|---|---:|---|---|")
    for name, rows in inputs.items():
        s = result[name] = summary(rows)
        print(f"| {name} | {s['n']} | {s['sigma']['p10']:.2f} / {s['sigma']['median']:.2f} / {s['sigma']['p90']:.2f} "
              f"| {s['relative']['p10']:.4f} / {s['relative']['median']:.4f} / {s['relative']['p90']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps({"summary": result, "real": real, "simulated": sims}, indent=2) + "\n")


if __name__ == "__main__":
    main()
