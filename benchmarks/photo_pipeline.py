"""Phone photos end to end through the Pipeline ``cxr-edge predict`` runs; TTA; the OOD guard; photo-path speed.

Three measurements, each a subcommand:

``accuracy --pack P --data PREPARED [--split test] [--severity moderate] [--limit N]``
    For every image of the split: the original (digital), a simulated phone
    photo of its original file (:func:`cxr_edge.tools.photosim.simulate_photo`,
    JPEG-encoded, film on a drawn background in perspective) used raw
    (``rectify=False``: the whole photo to the models) and rectified (the
    default pipeline), and with ``--tta`` the digital and rectified variants
    again with test-time augmentation. Reports the film-corner error, the
    share of photos with no film found (those fall back to the raw photo for
    the metrics, as ``cxr-edge evaluate`` does), the gate's acceptance rate,
    the task's primary metric (cxr4 accuracy, nih14 mean AUROC) and the
    median model time per image. The classifiers run on every image
    (``gate_first=False``) so the metrics cover the whole split.

``ood --pack P --data PREPARED [--split test]``
    Scores the split's CXRs and ``../shared/data`` ``cxr_other`` (lateral
    views etc.) and ``noncxr`` with every pack model that has OOD statistics;
    AUROC of CXR vs each, the flag rate at the stored threshold, and the same
    among the images the gate accepts (the ones the guard is for).

``levels --pack P --data PREPARED [--split test] [--severity moderate] [--limit N]``
    Where the rectified-photo gap comes from, with the geometry taken out: each
    photo is straightened with its TRUE corners, as simulated (full camera
    effects) and as the scene alone (background, lighting and perspective,
    no camera effects), each fed to the models with and without the film's
    level stretch (:func:`cxr_edge.runtime.photo.rectify.level_film`), per background and in
    all. The same draws as ``accuracy`` (seed + image index).

``speed --pack P [--rounds 30]``
    Interleaved rounds with medians: a 256-px digital PNG with the photo path
    on (the default) and off (the baseline), a 1280-px and a 12-MP phone photo
    with and without rectification, and TTA against no TTA.

    python benchmarks/photo_pipeline.py accuracy --pack cxr_edge/packs/default --data prepared/cxr4 --tta
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr_edge.data.prepared import open_prepared  # noqa: E402
from cxr_edge.runtime.images import load_image  # noqa: E402
from cxr_edge.tools.metrics import auroc, task_metrics  # noqa: E402
from cxr_edge.tools.photosim import simulate_photo  # noqa: E402
from cxr_edge.runtime.pipeline import Pipeline  # noqa: E402


def shared_data() -> Path:
    env = os.environ.get("CXR_EDGE_SHARED")
    return (Path(env) if env else REPO.parent / "shared") / "data"


def photo_jpeg(path, severity, seed: int, long_side: int) -> tuple[bytes, np.ndarray]:
    film = load_image(path, mode="L")
    sim = simulate_photo(film, severity, seed, long_side=long_side)
    buf = io.BytesIO()
    sim.to_image().save(buf, format="JPEG", quality=90)
    return buf.getvalue(), sim.corners


def _probs(pred, slot, labels):
    r = getattr(pred, slot)
    if slot == "gate":
        return None if r is None else [r.score]
    return None if r is None else [r.probabilities[k] for k in labels]


def _model_ms(pred) -> float:
    return sum(pred.timings_ms.get(k, 0.0) for k in ("gate", "cxr4", "nih14"))


# --------------------------------------------------------------------------- accuracy


def split_setup(args):
    """(prepared, task spec, pack slot, split table, images used, labels) for ``--data/--split/--limit``."""
    prepared = open_prepared(args.data)
    table = prepared.table(args.split)
    n = min(len(table), args.limit or len(table))
    return prepared, prepared.task, prepared.task.family, table, n, prepared.labels(args.split)[:n]


def accuracy(args) -> dict:
    prepared, spec, slot, table, n, y = split_setup(args)
    plain = Pipeline(args.pack, gate_first=False, ood=False)
    tta = Pipeline(args.pack, gate_first=False, ood=False, tta=True) if args.tta else None
    labels = plain.models[slot].spec.labels
    rows = {k: [] for k in ("digital", "photo_raw", "photo_rectified", "digital_tta", "photo_rectified_tta")}
    corner_err, no_film = [], 0
    for i in range(n):
        path = table["path"][i]
        jpeg, truth = photo_jpeg(path, args.severity, args.seed + i, args.long_side)
        runs = {"digital": plain.predict(path), "photo_raw": plain.predict(jpeg, "photo", rectify=False),
                "photo_rectified": plain.predict(jpeg, "photo")}
        if tta:
            runs["digital_tta"] = tta.predict(path)
            runs["photo_rectified_tta"] = tta.predict(jpeg, "photo")
        for key in ("photo_rectified", "photo_rectified_tta"):
            if key in runs and runs[key].status == "error":       # no film found: evaluated unrectified
                no_film += key == "photo_rectified"
                runs[key] = runs["photo_raw"] if key == "photo_rectified" else tta.predict(jpeg, "photo", rectify=False)
        r = runs["photo_rectified"].rectify or {}
        if r.get("found"):
            d = np.linalg.norm(np.array(r["corners"]) - truth, axis=1)
            diag = np.linalg.norm(truth[2] - truth[0])
            corner_err.append((d.mean(), 100 * d.max() / diag))
        for key, pred in runs.items():
            rows[key].append((pred.gate.accepted if pred.gate else None, _probs(pred, slot, labels), _model_ms(pred)))
        if args.progress and (i + 1) % 25 == 0:
            print(f"  {i + 1}/{n}", file=sys.stderr)
    out = {"pack": str(args.pack), "data": str(prepared.path), "task": spec.name, "split": args.split, "n": n,
           "severity": args.severity, "photo_long_side": args.long_side, "seed": args.seed,
           "no_film_found": no_film, "variants": {}}
    err = np.array(corner_err) if corner_err else np.zeros((0, 2))
    out["corner_error"] = {"found": len(err), "median_px": _q(err[:, 0], 50), "p90_px": _q(err[:, 0], 90),
                           "median_pct_of_diag_worst_corner": _q(err[:, 1], 50),
                           "ok_within_2pct": float(np.sum(err[:, 1] < 2.0) / n) if n else None}
    positive = y[:, 0] > 0.5 if spec.num_labels == 1 else np.ones(n, bool)   # gate data: CXRs and the rest
    for key, vals in rows.items():
        if not vals:
            continue
        accepted = np.array([bool(a) for a, _, _ in vals])
        p = np.array([v for _, v, _ in vals], np.float64)
        metrics = task_metrics(spec, y, p, n_resamples=0)
        out["variants"][key] = {"gate_acceptance": float(accepted[positive].mean()) if vals[0][0] is not None
                                else None,
                                "gate_acceptance_of_negatives": float(accepted[~positive].mean())
                                if (~positive).any() else None,
                                "accuracy": metrics["accuracy"]["value"],
                                "mean_auroc": metrics["mean_auroc"]["value"],
                                metrics["primary"]["name"]: metrics["primary"]["value"],
                                "model_ms_median": statistics.median(ms for _, _, ms in vals)}
    return out


def levels(args) -> dict:
    from cxr_edge.runtime.photo.rectify import level_film, warp_film

    prepared, spec, slot, table, n, y = split_setup(args)
    pipe = Pipeline(args.pack, gate_first=False, ood=False)
    labels = pipe.models[slot].spec.labels
    keys = ("photo", "photo_levelled", "scene_only", "scene_only_levelled")
    probs = {k: [] for k in ("digital",) + keys}
    backgrounds = []
    for i in range(n):
        path = table["path"][i]
        film = load_image(path, mode="L")
        probs["digital"].append(_probs(pipe.predict(path), slot, labels))
        for name, effects in (("photo", None), ("scene_only", {"rotation": 1.0, "perspective": 1.0})):
            sim = simulate_photo(film, args.severity, args.seed + i, effects=effects, long_side=args.long_side)
            if name == "photo":
                backgrounds.append(sim.background)
            buf = io.BytesIO()
            sim.to_image().save(buf, format="JPEG", quality=90)
            warped = warp_film(load_image(buf.getvalue(), mode="RGB"), sim.corners, mode="L")
            for key, image in ((name, warped), (f"{name}_levelled", level_film(warped))):
                probs[key].append(_probs(pipe.predict(image, rectify=False), slot, labels))
        if args.progress and (i + 1) % 25 == 0:
            print(f"  {i + 1}/{n}", file=sys.stderr)
    bg = np.array(backgrounds)

    def score(sel):
        if sel.sum() < 2:
            return None
        res = {}
        for key, vals in probs.items():
            m = task_metrics(spec, y[sel], np.array(vals, np.float64)[sel], n_resamples=0)
            res[key] = {"accuracy": m["accuracy"]["value"], m["primary"]["name"]: m["primary"]["value"]}
        return res

    return {"pack": str(args.pack), "data": str(prepared.path), "task": spec.name, "split": args.split, "n": n,
            "severity": args.severity, "photo_long_side": args.long_side, "seed": args.seed,
            "corners": "true (as simulated)", "all": score(np.ones(n, bool)),
            "by_background": {b: dict(n=int((bg == b).sum()), **(score(bg == b) or {})) for b in sorted(set(bg))}}


def _q(a, p):
    return float(np.percentile(a, p)) if len(a) else None


# --------------------------------------------------------------------------- ood


def ood_auroc(args) -> dict:
    import csv

    prepared = open_prepared(args.data)
    table, y = prepared.table(args.split), prepared.labels(args.split)
    cxr_rows = y[:, 0] > 0.5 if prepared.task.num_labels == 1 else np.ones(len(table), bool)  # gate data: its CXRs
    cxrs = [p for p, keep in zip(table["path"], cxr_rows) if keep][: args.limit or None]
    data = shared_data()
    groups = {"cxr": cxrs}
    trained = {str(Path(p).resolve()) for p in prepared.table("train")["path"]}
    excluded = {}
    for sub in ("cxr_other", "noncxr"):     # images the models trained on (the gate's) do not count
        with open(data / sub / "manifest.csv", newline="") as f:
            files = [str((data / r["file"]).resolve()) for r in csv.DictReader(f)]
        groups[sub] = [f for f in files if f not in trained]
        excluded[sub] = len(files) - len(groups[sub])
    pipe = Pipeline(args.pack, gate_first=False)
    slots = [s for s, m in pipe.models.items() if m.ood_stats is not None]
    if not slots:
        sys.exit(f"{args.pack} has no OOD statistics: fit them first with cxr-edge ood fit")
    scores = {g: {s: [] for s in slots} for g in groups}
    accepted = {g: [] for g in groups}
    for g, files in groups.items():
        for f in files:
            pred = pipe.predict(f)
            accepted[g].append(bool(pred.gate and pred.gate.accepted))
            for s in slots:
                scores[g][s].append(pred.ood[s]["score"])
    out = {"pack": str(args.pack), "cxr": f"{prepared.path} {args.split}", "n": {g: len(v) for g, v in groups.items()},
           "excluded_as_training_images": excluded,
           "gate_acceptance": {g: float(np.mean(v)) for g, v in accepted.items()}, "slots": {}}
    for s in slots:
        thr = pipe.models[s].ood_stats.threshold
        res = {"threshold": thr, "flagged": {g: float(np.mean(np.array(scores[g][s]) > thr)) for g in groups}}
        for other in ("cxr_other", "noncxr", "cxr_other+noncxr"):
            names = other.split("+")
            neg, pos = np.array(scores["cxr"][s]), np.concatenate([scores[o][s] for o in names])
            res[f"auroc_{other}"] = auroc(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos])
            acc_neg = neg[np.array(accepted["cxr"])]
            acc_pos = np.concatenate([np.array(scores[o][s])[np.array(accepted[o])] for o in names])
            if len(acc_neg) and len(acc_pos):
                res[f"auroc_{other}_gate_accepted"] = auroc(np.r_[np.zeros(len(acc_neg)), np.ones(len(acc_pos))],
                                                            np.r_[acc_neg, acc_pos])
                res[f"n_{other}_gate_accepted"] = len(acc_pos)
                res[f"flagged_{other}_gate_accepted"] = float(np.mean(acc_pos > thr))
        out["slots"][s] = res
    return out


# --------------------------------------------------------------------------- speed


def speed(args) -> dict:
    data = shared_data()
    png = data / "nih_cxr14" / "images" / "00000061_012.png"
    film = load_image(png)
    photo = simulate_photo(film, "moderate", 0, background="lightbox", long_side=1280).to_image()
    small_jpeg, big_jpeg = io.BytesIO(), io.BytesIO()
    photo.save(small_jpeg, format="JPEG", quality=90)
    photo.resize((3024, 4032)).save(big_jpeg, format="JPEG", quality=90)
    on, off = Pipeline(args.pack), Pipeline(args.pack, rectify=False)
    tta = Pipeline(args.pack, tta=True)
    cases = {
        "256-px PNG, photo path off (baseline)": lambda: off.predict(png),
        "256-px PNG, photo path on (default)": lambda: on.predict(png),
        "256-px PNG, TTA": lambda: tta.predict(png),
        "1280-px photo JPEG, raw (rectify off)": lambda: off.predict(small_jpeg.getvalue(), "p"),
        "1280-px photo JPEG, rectified": lambda: on.predict(small_jpeg.getvalue(), "p"),
        "12-MP photo JPEG, raw (rectify off)": lambda: off.predict(big_jpeg.getvalue(), "p"),
        "12-MP photo JPEG, rectified": lambda: on.predict(big_jpeg.getvalue(), "p"),
    }
    times = {k: [] for k in cases}
    parts = {k: {} for k in cases}
    for fn in cases.values():
        fn()
    for _ in range(args.rounds):
        for k, fn in cases.items():       # interleaved: drift on a shared machine hits every case alike
            t0 = time.perf_counter()
            pred = fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
            for part, ms in pred.timings_ms.items():
                parts[k].setdefault(part, []).append(ms)
    base = statistics.median(times["256-px PNG, photo path off (baseline)"])
    return {"pack": str(args.pack), "rounds": args.rounds, "cases": {
        k: {"median_ms": statistics.median(v), "p90_ms": float(np.percentile(v, 90)),
            "ratio_to_baseline": statistics.median(v) / base,
            "parts_median_ms": {p: round(statistics.median(x), 2) for p, x in parts[k].items()}}
        for k, v in times.items()}}


def photo_arguments() -> argparse.ArgumentParser:
    """The options of a benchmark over simulated photos of a prepared split (a parent parser)."""
    photos = argparse.ArgumentParser(add_help=False)
    photos.add_argument("--pack", required=True, type=Path)
    photos.add_argument("--data", required=True, type=Path)
    photos.add_argument("--split", default="test")
    photos.add_argument("--severity", default="moderate")
    photos.add_argument("--long-side", type=int, default=1280)
    photos.add_argument("--seed", type=int, default=0)
    photos.add_argument("--limit", type=int, default=0)
    photos.add_argument("--progress", action="store_true")
    return photos


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    photos = photo_arguments()                           # what accuracy and levels share
    a = sub.add_parser("accuracy", parents=[photos])
    a.add_argument("--tta", action="store_true")
    o = sub.add_parser("ood")
    o.add_argument("--pack", required=True, type=Path)
    o.add_argument("--data", required=True, type=Path)
    o.add_argument("--split", default="test")
    o.add_argument("--limit", type=int, default=0)
    sub.add_parser("levels", parents=[photos])
    s = sub.add_parser("speed")
    s.add_argument("--pack", required=True, type=Path)
    s.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    out = {"accuracy": accuracy, "ood": ood_auroc, "levels": levels, "speed": speed}[args.cmd](args)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
