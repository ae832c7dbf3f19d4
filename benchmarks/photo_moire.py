"""Screen photos: how to take a monitor's pixel grid and moiré out before the models see the film.

For every image of a prepared split, a phone photo of the image on a monitor, cropped tightly to it,
is simulated (:func:`cxr_edge.tools.photosim.simulate_screen_photo`: the screen's sub-pixel grid integrated
by the camera's pixels, moiré where they beat, lens blur, a colour cast, noise, JPEG) and goes down
the device's photo path (:func:`cxr_edge.runtime.photo.rectify.rectify`). Its film is then finished with each
moiré reduction of :func:`cxr_edge.runtime.photo.moire.reduce_moire` (the level stretch after it, as
:func:`cxr_edge.runtime.photo.film.finish_film` does) and given to the pack's models. Per method:

* the gate's acceptance and mean score, and cxr4 accuracy (all photos, and the ones with a pattern found);
* fidelity to the digital film: the finished film mapped back onto the film's own frame through the true
  corners, both at the model's 224 px, Pearson r and PSNR after a least-squares level fit, over the
  pixels the photo shows;
* the time the method takes on the film.

With ``--dev DIR`` it also runs every method on the real photos in DIR (a folder with a manifest.csv
with file and label columns): gate acceptance and cxr4 hits (top class = label) per method, on the
photos with a pattern found and on all.

    python benchmarks/photo_moire.py --pack cxr_edge/packs/default --data prepared/cxr4 --severity moderate \\
        --dev ../shared/data/real_photos_dev
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from photo_pipeline import photo_arguments, split_setup  # noqa: E402

from cxr_edge.runtime.photo.film import level_film  # noqa: E402
from cxr_edge.runtime.images import load_image  # noqa: E402
from cxr_edge.runtime.photo.moire import REDUCTION_METHODS, reduce_moire  # noqa: E402
from cxr_edge.tools.photosim import simulate_screen_photo  # noqa: E402
from cxr_edge.runtime.pipeline import Pipeline  # noqa: E402
from cxr_edge.runtime.photo.rectify import rectify, warp_film  # noqa: E402

SIZE = 224


def _film_corners(r, truth: np.ndarray) -> np.ndarray:
    """The film's true corners (photo pixels) in the pixels of ``r.image`` (cropped or straightened)."""
    if r.path == "cropped":
        x0, y0, x1, y1 = r.box
        return (truth - [x0, y0]) * [r.image.size[0] / (x1 - x0), r.image.size[1] / (y1 - y0)]
    from cxr_edge.runtime.photo.rectify import homography, apply_homography
    w, h = r.image.size
    return apply_homography(homography(r.corners, [[0, 0], [w, 0], [w, h], [0, h]]), truth)


def fidelity(finished: Image.Image, corners: np.ndarray, digital: Image.Image) -> tuple[float, float]:
    """(Pearson r, PSNR dB after a least-squares level fit) of the finished film mapped back onto the
    film's frame against the digital film, at SIZE px, over the pixels the photo shows."""
    back = np.asarray(warp_film(finished, corners, size=(SIZE, SIZE)), np.float64)
    seen = np.asarray(warp_film(Image.new("L", finished.size, 255), corners, size=(SIZE, SIZE))) > 250
    ref = np.asarray(digital.convert("L").resize((SIZE, SIZE), Image.BILINEAR), np.float64)
    x, y = back[seen], ref[seen]
    if len(x) < 100 or x.std() == 0:
        return float("nan"), float("nan")
    r = float(np.corrcoef(x, y)[0, 1])
    a, b = np.polyfit(x, y, 1)
    mse = float(np.mean((a * x + b - y) ** 2))
    return r, 10 * np.log10(255.0 ** 2 / max(mse, 1e-6))


def simulated(args, pipe: Pipeline) -> dict:
    _, _, _, table, n, y = split_setup(args)
    y = y.argmax(1)
    labels = pipe.models["cxr4"].spec.labels
    rows = {m: [] for m in REDUCTION_METHODS}
    digital_top, paths, found, periods = [], [], [], []
    for i in range(n):
        film = load_image(table["path"][i], mode="L")
        sim = simulate_screen_photo(film, args.severity, args.seed + i, long_side=args.long_side)
        photo = Image.fromarray(sim.photo, "RGB")
        r = rectify(photo)
        paths.append(r.path)
        det = r.moire
        found.append(det.found)
        periods.append(sim.effects["period"])
        corners = _film_corners(r, sim.corners)
        d = pipe.predict(film, rectify=False)
        digital_top.append(labels.index(d.results["cxr4"].top))
        for m in REDUCTION_METHODS:
            t0 = time.perf_counter()
            finished = level_film(reduce_moire(r.image, det, m))
            ms = (time.perf_counter() - t0) * 1e3
            pred = pipe.predict(finished, rectify=False)
            fr, psnr = fidelity(finished, corners, film)
            rows[m].append((pred.gate.score, pred.gate.accepted, labels.index(pred.results["cxr4"].top), fr, psnr, ms))
        if args.progress and (i + 1) % 25 == 0:
            print(f"  {i + 1}/{n}", file=sys.stderr)
    found = np.array(found)
    out = {"split": args.split, "n": n, "severity": args.severity, "seed": args.seed, "long_side": args.long_side,
           "paths": {p: paths.count(p) for p in sorted(set(paths))}, "pattern_found": int(found.sum()),
           "found_by_period": _by_period(np.array(periods), found),
           "digital_cxr4_accuracy": float(np.mean(np.array(digital_top) == y)), "methods": {}}
    for m, vals in rows.items():
        v = np.array(vals, np.float64)
        res = {}
        for name, sel in (("all", np.ones(n, bool)), ("pattern_found", found)):
            if not sel.any():
                continue
            res[name] = {"gate_acceptance": float(v[sel, 1].mean()), "gate_score_mean": float(v[sel, 0].mean()),
                         "cxr4_accuracy": float(np.mean(v[sel, 2] == y[sel])),
                         "fidelity_r": float(np.nanmedian(v[sel, 3])), "fidelity_psnr_db": float(np.nanmedian(v[sel, 4]))}
        res["ms_median_when_found"] = float(np.median(v[found, 5])) if found.any() else None
        out["methods"][m] = res
    return out


def _by_period(periods, found) -> dict:
    bins = [(1.3, 2.0), (2.0, 3.0), (3.0, 4.0), (4.0, 6.01)]
    return {f"{a:g}-{b:g} px": f"{int(found[(periods >= a) & (periods < b)].sum())}/"
            f"{int(((periods >= a) & (periods < b)).sum())}" for a, b in bins}


def dev(folder: Path, pipe: Pipeline) -> dict:
    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    per = {m: {"accepted": [], "hit": [], "found": []} for m in REDUCTION_METHODS}
    for row in rows:
        photo = load_image(folder / row["file"], mode="RGB", min_size=720)
        r = rectify(photo)
        if r.passthrough:
            continue
        for m in REDUCTION_METHODS:
            pred = pipe.predict(level_film(reduce_moire(r.image, r.moire, m)), rectify=False)
            per[m]["accepted"].append(pred.gate.accepted)
            per[m]["hit"].append(pred.results["cxr4"].top == row["label"])
            per[m]["found"].append(r.moire.found)
    out = {}
    for m, d in per.items():
        found = np.array(d["found"], bool)
        acc, hit = np.array(d["accepted"]), np.array(d["hit"])
        out[m] = {"photos": len(found), "pattern_found": int(found.sum()),
                  "gate_accepted": int(acc.sum()), "cxr4_hits": int(hit.sum()),
                  "gate_accepted_where_found": int(acc[found].sum()), "cxr4_hits_where_found": int(hit[found].sum())}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 parents=[photo_arguments()])
    ap.add_argument("--dev", type=Path, default=None, help="a folder of real photos with a manifest.csv")
    args = ap.parse_args()
    pipe = Pipeline(args.pack, gate_first=False, ood=False)
    out = {"pack": str(args.pack), "simulated": simulated(args, pipe)}
    if args.dev:
        out["dev"] = dev(args.dev, pipe)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
