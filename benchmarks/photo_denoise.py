"""Would a denoise before the model win back the photo accuracy that sensor noise costs? (issue 15)

Run (workstation; ~2.5 minutes for the 270 cxr4 test films with the int8 pack):

    python benchmarks/photo_denoise.py --pack cxr_edge/packs/default --data prepared/cxr4 [--every 1]

The photos are evaluate's (``cxr_edge.tools.evaluate.photo_seed``, ``simulate_photo`` at 1280 px, moderate),
through the device path (``rectify`` and its finished ``film``), then each candidate filter, then the model input
(``fit_to_square``); the 'digital' row is the film itself. Filters: a Gaussian blur or a median on the 224-px
model input, or a Gaussian / median on the finished film at its own size (up to 1024 px) before it is shrunk.
``benchmarks/photo_accuracy_loss.py --ablate off`` found the sensor noise to be the camera effect that costs the
accuracy; this asks whether taking noise out at the model's input gives it back. Printed: accuracy per row and
the change against the device path, and the median Immerkaer noise sigma of the model input (grey levels).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cxr_edge.data.prepared import open_prepared  # noqa: E402
from cxr_edge.runtime.images import load_image  # noqa: E402
from cxr_edge.runtime.photo.rectify import rectify  # noqa: E402
from cxr_edge.runtime.preprocess import fit_to_square  # noqa: E402
from cxr_edge.tools.evaluate import photo_seed  # noqa: E402
from cxr_edge.tools.metrics import accuracy  # noqa: E402
from cxr_edge.tools.photosim import resolve_severity, simulate_photo  # noqa: E402
from cxr_edge.tools.split_runner import open_model  # noqa: E402
from photo_accuracy_loss import answer_rows  # noqa: E402
from photo_noise import immerkaer_sigma  # noqa: E402


def rows(model_input):
    """name -> film (finished 'L' image) -> model input (uint8 S x S)."""
    def at_input(f):
        return lambda film: np.asarray(f(Image.fromarray(model_input(film))))

    return {
        "device path (no filter)": model_input,
        "Gaussian 0.7 px at the model input": at_input(lambda im: im.filter(ImageFilter.GaussianBlur(0.7))),
        "Gaussian 1.0 px at the model input": at_input(lambda im: im.filter(ImageFilter.GaussianBlur(1.0))),
        "median 3 px at the model input": at_input(lambda im: im.filter(ImageFilter.MedianFilter(3))),
        "Gaussian 1.5 px on the film": lambda film: model_input(film.filter(ImageFilter.GaussianBlur(1.5))),
        "Gaussian 3 px on the film": lambda film: model_input(film.filter(ImageFilter.GaussianBlur(3.0))),
        "median 5 px on the film": lambda film: model_input(film.filter(ImageFilter.MedianFilter(5))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="cxr_edge/packs/default", help="a model pack (its int8 model) or a training "
                    "run folder (its Keras float model)")
    ap.add_argument("--data", required=True, help="a prepared data set (cxr-edge data prepare)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--severity", default="moderate")
    ap.add_argument("--seed", type=int, default=0, help="evaluate's --seed")
    ap.add_argument("--every", type=int, default=1, help="every K-th film of the split (1 = all)")
    args = ap.parse_args()
    prep = open_prepared(args.data)
    table = prep.table(args.split)
    run_opener = None
    if (Path(args.pack) / "run.json").is_file():
        from cxr_edge.training.run_model import open_run_model as run_opener
    model = open_model(args.pack, prep, threads=1, run_opener=run_opener)
    spec = model.spec
    severity = resolve_severity(args.severity)

    def model_input(img):
        return fit_to_square(load_image(img, mode="L", min_size=spec.input.size), spec)

    filters = rows(model_input)
    names = ["digital", *filters]
    idx = list(range(0, len(table), args.every))
    preds = {n: [] for n in names}
    sigma = {n: [] for n in names}
    for k, i in enumerate(idx):
        film = np.asarray(load_image(table["path"][i], mode="L"))
        photo = simulate_photo(film, severity, photo_seed(args.seed, table["sha256"][i], i), long_side=1280).to_image()
        r = rectify(photo)
        found = (r.film if r.ok else photo).convert("L")
        inputs = {"digital": model_input(table["path"][i]), **{n: f(found) for n, f in filters.items()}}
        for n in names:
            sigma[n].append(immerkaer_sigma(inputs[n].astype(np.float64)))
        answer_rows(model, inputs, names, preds)
        if k % 20 == 0:
            print(f"{k + 1}/{len(idx)}", file=sys.stderr, flush=True)
    y = prep.labels(args.split)[idx].argmax(1)
    base = accuracy(y, np.array(preds["device path (no filter)"]))
    print(f"{args.pack} on {args.data} {args.split} ({len(idx)} films), {args.severity} photos, seed {args.seed}\n")
    print("| model input | accuracy | vs the device path | median noise sigma |")
    print("|---|---:|---:|---:|")
    for n in names:
        acc = accuracy(y, np.array(preds[n]))
        delta = "" if n == "digital" else f"{acc - base:+.3f}"
        print(f"| {n} | {acc:.3f} | {delta} | {np.median(sigma[n]):.2f} |")


if __name__ == "__main__":
    main()
