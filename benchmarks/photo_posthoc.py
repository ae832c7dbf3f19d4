"""Can the photo accuracy be won back after the model, without retraining? (issue 15)

Run (workstation; ~7 minutes for the cxr4 val and test splits with the int8 pack, one core):

    python benchmarks/photo_posthoc.py --pack cxr_edge/packs/default --data prepared/cxr4 \
        [--fit-split val] [--split test] [--photos ../shared/data/real_photos_dev] [--every 1]

Two corrections that need no new model, each fitted or chosen on ``--fit-split`` and judged on ``--split``:

* **tone matching**: the finished film's grey levels mapped (histogram specification) onto the mean grey-level
  quantile function of up to 300 digital films of the data set's train split -- a film from a photo given the grey
  distribution a digitised film has, where the device's level stretch only stretches it linearly;
* **photo-path class offsets**: one logit offset per class, added after the model's calibration to films from photos
  only, fitted on the fit split's simulated photos by maximum likelihood (softmax models; the first class fixed at 0).
  The real photos of ``--photos`` (a folder with ``manifest.csv``, as ``cxr-edge evaluate --real-photos`` takes) are
  answered by ``Pipeline.predict`` and counted with and without the offsets, against their ``label`` column.

The photos are ``cxr-edge evaluate --photos SEVERITY``'s (``photo_seed``, ``simulate_photo`` at 1280 px) through the
device path (``rectify`` and its finished ``film``); 'digital' is the film itself. Printed: accuracy per row and
split, and the change against the device path.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_edge.data.prepared import open_prepared  # noqa: E402
from cxr_edge.runtime.images import load_image  # noqa: E402
from cxr_edge.runtime.photo.rectify import rectify  # noqa: E402
from cxr_edge.runtime.pipeline import Pipeline  # noqa: E402
from cxr_edge.runtime.preprocess import fit_to_square, normalize  # noqa: E402
from cxr_edge.tools.evaluate import photo_seed  # noqa: E402
from cxr_edge.tools.metrics import accuracy  # noqa: E402
from cxr_edge.tools.photosim import resolve_severity, simulate_photo  # noqa: E402
from cxr_edge.tools.split_runner import open_model  # noqa: E402

QUANTILES = np.linspace(0, 100, 257)
ROWS = ("digital", "device path", "tone matched")


def reference_quantiles(prep, n: int = 300) -> np.ndarray:
    """The mean grey-level quantile function of up to ``n`` digital train films (every k-th)."""
    t = prep.table("train")
    step = max(1, len(t) // n)
    return np.mean([np.percentile(np.asarray(load_image(t["path"][j], mode="L"))[::2, ::2], QUANTILES)
                    for j in range(0, len(t), step)], axis=0)


def tone_match(img: Image.Image, ref: np.ndarray) -> Image.Image:
    """``img`` ('L') with its grey levels mapped onto the reference quantile function."""
    a = np.asarray(img.convert("L"))
    hist = np.bincount(a.ravel(), minlength=256).astype(np.float64)
    cdf = (np.cumsum(hist) - hist / 2) / hist.sum() * 100
    lut = np.clip(np.round(np.interp(cdf, QUANTILES, ref)), 0, 255).astype(np.uint8)
    return Image.fromarray(lut[a], "L")


def split_probs(model, prep, split, severity, seed, every, ref) -> tuple[np.ndarray, dict]:
    """(labels, {row: calibrated probabilities (N, K)}) on one split's simulated photos."""
    spec = model.spec
    table = prep.table(split)

    def model_input(img):
        return fit_to_square(load_image(img, mode="L", min_size=spec.input.size), spec)

    idx = list(range(0, len(table), every))
    probs = {r: [] for r in ROWS}
    for k, i in enumerate(idx):
        film = np.asarray(load_image(table["path"][i], mode="L"))
        photo = simulate_photo(film, severity, photo_seed(seed, table["sha256"][i], i), long_side=1280).to_image()
        r = rectify(photo)
        found = (r.film if r.ok else photo).convert("L")
        inputs = {"digital": model_input(table["path"][i]), "device path": model_input(found),
                  "tone matched": model_input(tone_match(found, ref))}
        raw = model.infer(normalize(np.stack([inputs[n] for n in ROWS]), spec))[0]
        for n, p in zip(ROWS, model.probabilities(raw)):
            probs[n].append(p)
        if k % 40 == 0:
            print(f"{split} {k + 1}/{len(idx)}", file=sys.stderr, flush=True)
    return prep.labels(split)[idx].argmax(1), {n: np.array(v) for n, v in probs.items()}


def fit_offsets(p: np.ndarray, y: np.ndarray, steps: int = 500, ridge: float = 1e-3) -> np.ndarray:
    """Per-class logit offsets (first fixed at 0) maximising the mean log-likelihood of ``y`` less ``ridge`` |b|^2
    / 2 (which only keeps a perfectly separable sample finite): Newton's method on a convex problem."""
    logp = np.log(np.clip(p, 1e-7, 1.0))
    k = p.shape[1]
    b = np.zeros(k)
    onehot = np.eye(k)[y]
    for _ in range(steps):
        z = logp + b
        q = np.exp(z - z.max(1, keepdims=True))
        q /= q.sum(1, keepdims=True)
        grad = (q - onehot).mean(0)[1:] + ridge * b[1:]
        hess = (np.einsum("ni,ij->nij", q, np.eye(k)) - np.einsum("ni,nj->nij", q, q)).mean(0)[1:, 1:]
        step = np.linalg.solve(hess + ridge * np.eye(k - 1), grad)
        b[1:] -= step
        if np.abs(step).max() < 1e-8:
            break
    return b


def shifted(p: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (np.log(np.clip(p, 1e-7, 1.0)) + b).argmax(-1)


def real_photo_hits(pack, folder: Path, slot: str, b: np.ndarray):
    """(labelled photos, hits without, hits with the offsets, rows) for the real photos of ``folder``."""
    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    pipeline = Pipeline.from_pack(pack)
    out, n, base, moved = [], 0, 0, 0
    for row in rows:
        result = pipeline.predict(str(folder / row["file"])).to_dict().get(slot)
        if not result:
            out.append((row["file"], row.get("label", ""), "not answered", "not answered"))
            continue
        labels = list(result["probabilities"])
        p = np.array([result["probabilities"][lbl] for lbl in labels])
        before, after = labels[int(p.argmax())], labels[int(shifted(p, b))]
        out.append((row["file"], row.get("label", ""), before, after))
        if row.get("label") in labels:
            n += 1
            base += before == row["label"]
            moved += after == row["label"]
    return n, base, moved, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="cxr_edge/packs/default", help="a model pack (its int8 model)")
    ap.add_argument("--data", required=True, help="a prepared data set (cxr-edge data prepare)")
    ap.add_argument("--fit-split", default="val", help="where the offsets are fitted and the rows chosen")
    ap.add_argument("--split", default="test", help="where they are judged")
    ap.add_argument("--severity", default="moderate")
    ap.add_argument("--seed", type=int, default=0, help="evaluate's --seed")
    ap.add_argument("--every", type=int, default=1, help="every K-th film of each split (1 = all)")
    ap.add_argument("--photos", type=Path, help="a folder of real photos with manifest.csv (label column)")
    args = ap.parse_args()
    if args.photos and not (args.photos / "manifest.csv").is_file():
        ap.error(f"{args.photos}: no manifest.csv; give a real-photo folder such as ../shared/data/real_photos_dev")
    prep = open_prepared(args.data)
    model = open_model(args.pack, prep, threads=1)
    if model.spec.activation != "softmax":
        ap.error(f"{model.spec.name} is not a softmax model: class offsets are for one-answer models such as cxr4")
    severity = resolve_severity(args.severity)
    ref = reference_quantiles(prep)
    data = {s: split_probs(model, prep, s, severity, args.seed, args.every, ref) for s in (args.fit_split, args.split)}
    y_fit, p_fit = data[args.fit_split]
    b = fit_offsets(p_fit["device path"], y_fit)
    print(f"{args.pack} on {args.data}, {args.severity} photos, seed {args.seed}; fitted on {args.fit_split}, judged on "
          f"{args.split}\n")
    print("offsets fitted on the " + args.fit_split + " photos (device path): "
          + ", ".join(f"{lbl} {v:+.2f}" for lbl, v in zip(model.spec.labels, b)) + "\n")
    cols = [args.fit_split, args.split]
    print(f"| model input | {' | '.join(f'{c} accuracy | vs device path' for c in cols)} |")
    print("|---|" + "---:|---:|" * len(cols))
    lines = [(n, lambda p, n=n: p[n].argmax(1)) for n in ROWS]
    lines.append(("device path + class offsets", lambda p: shifted(p["device path"], b)))
    for name, decide in lines:
        cells = []
        for s in cols:
            y, p = data[s]
            acc, base = accuracy(y, decide(p)), accuracy(y, p["device path"].argmax(1))
            cells.append(f"{acc:.3f} | " + ("" if name == "digital" else f"{acc - base:+.3f}"))
        print(f"| {name} | {' | '.join(cells)} |")
    if args.photos:
        n, base, moved, rows = real_photo_hits(args.pack, args.photos, model.spec.name, b)
        print(f"\nreal photos ({args.photos}): {model.spec.name} top = label on {base} of {n} without the offsets, "
              f"{moved} of {n} with them\n")
        print("| photo | label | answer | with the offsets |\n|---|---|---|---|")
        for f, lbl, before, after in rows:
            print(f"| {f} | {lbl} | {before} | {after} |")


if __name__ == "__main__":
    main()
