"""What each photo-augmentation addition buys, by a cheap proxy: a linear probe on a pack model's features.

Run (~1 minute per variant for cxr4 on 2 cores):

    python benchmarks/photo_augment_ablation.py --pack cxr_edge/packs/default --data prepared/cxr4 \
        [--severity moderate] [--variants all,-tight_crop,...] [--json out.json]

Retraining a MobileNetV2 per augmentation variant costs an hour each here, so each variant is scored
by a proxy that isolates what the augmentation teaches a classifier: the pack's own int8 model for the
data's task (frozen, run through the device path) gives pooled features of

* the train split: every digital film, plus one view of each film made by the training augmentation's
  photo path (``cxr_edge.training.augment.photo_view``: ``simulate_rectified`` with the variant's effects,
  then the device's film finishing unless the variant turns it off);
* three fixed evaluation sets: the test split's digital films; simulated phone photos of the test films
  (``simulate_photo`` at ``--severity``, 1280 px, JPEG 90, found and straightened by the device pipeline
  exactly as ``benchmarks/photo_pipeline.py accuracy`` does, the raw photo where no film is found); and the
  real photos in ``../shared/data/real_photos_dev`` (the film the pipeline finds, else the whole photo with
  the film finishing, as a tightly cropped photo is taken).

A linear probe (``cxr_edge.training.probe``, one C for all variants) is fitted per variant and scored on
the three sets: macro-F1 and accuracy on digital and simulated photos, and for the real photos the number
whose manifest label (COVID-19 for 15 of 17) is the probe's answer. A variant better on photos and no
worse on digital films is worth keeping; the final models are measured by the rebuild itself.

Variants: ``none`` (digital films only), ``before`` (the effects and odds of the simulator before issue 15,
no finishing), ``before+finish``, ``all`` (today's defaults), ``all-EFFECT`` (all without one effect) and
``all-finish``; and three that make views the way evaluation makes its photos rather than on the film
itself: ``scene`` (every view a whole ``simulate_photo`` of the film at 640 px, warped upright with its true
corners and finished: training's ``augment.photo_scene = 1``), ``mix`` (``photo_scene = 0.5``: half such
views, half ``all``'s) and ``device`` (the whole photo through the device's film finder, ``rectify``,
the whole photo finished where it finds none).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _timing import shared_dir  # noqa: E402

CACHE = Path(os.environ.get("CXR_EDGE_BENCH_CACHE", "/tmp/cxr-edge-bench-cache"))
BEFORE = {"corner_error": 1.0, "film_contrast": 0.8, "glare": 0.35, "moire": 0.15, "defocus": 0.5,
          "motion_blur": 0.25, "vignetting": 0.6, "color_cast": 0.6, "exposure": 0.5, "noise": 1.0, "jpeg": 0.9}
NEW = ("tight_crop", "pixel_grid", "low_contrast", "recompress", "moire", "color_cast")
DEFAULT_VARIANTS = ["none", "before", "before+finish", "all", "all-finish"] + [f"all-{e}" for e in NEW]
C = 0.003


SCENE_SIDE = 640


def device_views(pixels, severity, rng, spec) -> np.ndarray:
    """One simulated phone photo per film (``simulate_photo`` at SCENE_SIDE px) straightened by the device's
    film finder (the whole photo where it finds none), finished and fitted to the model's input."""
    from cxr_edge.runtime.photo.film import finish_film as device_finish
    from cxr_edge.runtime.photo.rectify import rectify
    from cxr_edge.runtime.preprocess import fit_to_square
    from cxr_edge.tools.photosim import simulate_photo

    out = []
    for film in pixels:
        photo = simulate_photo(film, severity, int(rng.integers(2 ** 63 - 1)), long_side=SCENE_SIDE).to_image()
        r = rectify(photo)
        out.append(fit_to_square(r.film if r.ok else device_finish(np.asarray(photo.convert("L"))), spec))
    return np.stack(out)


def variant_config(name: str, severity):
    """(AugmentConfig or None for digital only) of a variant name."""
    from cxr_edge.tools.photosim import FILM_EFFECT_PROBS
    from cxr_edge.training.augment import AugmentConfig

    base = replace(AugmentConfig.off(), photo_prob=1.0, photo_severity=severity)
    if name == "none":
        return None
    if name.startswith("before"):
        return replace(base, photo_effects=dict(BEFORE), photo_finish=name.endswith("+finish"))
    if name == "all":
        return base
    if name in ("scene", "mix"):
        return replace(base, photo_scene=1.0 if name == "scene" else 0.5)
    if name == "all-finish":
        return replace(base, photo_finish=False)
    if name.startswith("all-") and name[4:] in FILM_EFFECT_PROBS:
        return replace(base, photo_effects={k: v for k, v in FILM_EFFECT_PROBS.items() if k != name[4:]})
    raise SystemExit(f"unknown variant {name!r}; valid: none, before, before+finish, all, all-finish, scene, mix, "
                     f"device, all-EFFECT "
                     f"with EFFECT in {', '.join(FILM_EFFECT_PROBS)}")


class Features:
    """Pooled features of the pack's model for the data's task, one image at a time through the device path."""

    def __init__(self, pack, prepared):
        from cxr_edge.runtime.pack import load_pack
        from cxr_edge.runtime.pipeline import LoadedModel
        from cxr_edge.tools.split_runner import select_pack_model

        pm = select_pack_model(load_pack(pack), prepared)
        self.model = LoadedModel.from_pack(pm, threads=2, backend=None)
        self.spec = pm.spec

    def __call__(self, pixels) -> np.ndarray:
        from cxr_edge.runtime.preprocess import normalize

        out = []
        for p in pixels:
            f = self.model.infer(normalize(np.asarray(p)[None], self.spec)[0])["features"]
            out.append(f.mean(axis=(0, 1)) if f.ndim == 3 else f.reshape(-1))
        return np.stack(out).astype(np.float32)


def photo_films(prepared, split, severity, spec, pack) -> np.ndarray:
    """fit_to_square pixels of the film predict finds in a simulated photo of each film (raw photo if none)."""
    from cxr_edge.errors import ImageError
    from cxr_edge.runtime.images import load_image
    from cxr_edge.runtime.pipeline import Pipeline
    from cxr_edge.runtime.preprocess import fit_to_square
    from cxr_edge.tools.photosim import simulate_photo

    pipe = Pipeline(pack, gate_first=False, ood=False)
    out = []
    for i, path in enumerate(prepared.table(split)["path"]):
        sim = simulate_photo(load_image(path, mode="L"), severity, i, long_side=1280)
        buf = io.BytesIO()
        sim.to_image().save(buf, format="JPEG", quality=90)
        try:
            film = pipe.film(buf.getvalue(), "photo").image
        except ImageError:
            film = pipe.film(buf.getvalue(), "photo", rectify=False).image
        out.append(fit_to_square(film, spec))
    return np.stack(out)


def dev_films(folder: Path, spec, pack):
    """(pixels, labels, paths) of the real dev photos: the film found, else the whole photo finished."""
    from PIL import Image

    from cxr_edge.errors import ImageError
    from cxr_edge.runtime.pipeline import Pipeline
    from cxr_edge.runtime.preprocess import fit_to_square
    from cxr_edge.training.augment import finish_film

    pipe = Pipeline(pack, gate_first=False, ood=False)
    rows = list(csv.DictReader(open(folder / "manifest.csv", newline="")))
    pixels, labels, found = [], [], 0
    for r in rows:
        path = folder / r["file"]
        try:
            film = pipe.film(str(path), r["file"]).image
            found += 1
        except ImageError:
            whole = np.asarray(pipe.film(str(path), r["file"], rectify=False).image.convert("L"))
            film = Image.fromarray(finish_film(whole), "L")
        pixels.append(fit_to_square(film, spec))
        labels.append(r["label"])
    return np.stack(pixels), labels, found


def cached_eval_sets(args, prepared, feats: Features) -> dict:
    key = f"ablation-eval-{prepared.task.name}-{prepared.data_sha256[:12]}-{args.severity}-{Path(args.pack).name}"
    path = CACHE / f"{key}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=True)
        return {k: z[k] for k in z.files}
    t = time.perf_counter()
    digital = np.asarray(prepared.images("test"))
    photos = photo_films(prepared, "test", args.severity, feats.spec, args.pack)
    dev, dev_labels, found = dev_films(shared_dir() / "data" / "real_photos_dev", feats.spec, args.pack)
    out = {"digital": feats(digital), "photo": feats(photos), "dev": feats(dev),
           "dev_labels": np.array(dev_labels, dtype=object), "dev_found": np.array(found)}
    print(f"  evaluation sets in {time.perf_counter() - t:.0f} s (dev photos with a film found: {found})", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--severity", default="moderate")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from cxr_edge.data.prepared import open_prepared
    from cxr_edge.tools.metrics import task_metrics
    from cxr_edge.training.augment import photo_batch
    from cxr_edge.training.probe import fit_probe

    prepared = open_prepared(args.data)
    spec = prepared.task
    feats = Features(args.pack, prepared)
    ev = cached_eval_sets(args, prepared, feats)
    train_pixels = np.asarray(prepared.images("train"))
    y_train, groups = prepared.labels("train"), prepared.patients("train")
    digital_train = feats(train_pixels)
    y_test = prepared.labels("test")
    dev_y = [spec.labels.index(lbl) if lbl in spec.labels else -1 for lbl in ev["dev_labels"]]
    results = []
    print(f"{'variant':<22} {'digital F1':>10} {'acc':>6} {'photo F1':>9} {'acc':>6} {'dev hits':>9}  seconds")
    for name in args.variants.split(","):
        t = time.perf_counter()
        config = None if name == "device" else variant_config(name, args.severity)
        x, y, g = digital_train, y_train, groups
        if name == "device":
            views = device_views(train_pixels, args.severity, np.random.default_rng([args.seed, 11]), spec)
            x = np.concatenate([x, feats(views)])
            y, g = np.concatenate([y, y_train]), np.concatenate([groups, groups])
        elif config is not None:
            views = photo_batch(train_pixels, config, np.random.default_rng([args.seed, 11]))
            x = np.concatenate([x, feats(views)])
            y, g = np.concatenate([y, y_train]), np.concatenate([groups, groups])
        probe = fit_probe(x, y, spec.activation, groups=g, c_grid=(C,))
        row = {"variant": name}
        for key in ("digital", "photo"):
            m = task_metrics(spec, y_test, probe.predict(ev[key]), n_resamples=0)
            row[key] = {"macro_f1": m["primary"]["value"], "accuracy": m["accuracy"]["value"]}
        pred = probe.predict(ev["dev"]).argmax(axis=1)
        labelled = [i for i, k in enumerate(dev_y) if k >= 0]
        row["dev_hits"] = int(sum(pred[i] == dev_y[i] for i in labelled))
        row["dev_labelled"] = len(labelled)
        row["dev_answers"] = [spec.labels[k] for k in pred]
        row["seconds"] = round(time.perf_counter() - t, 1)
        results.append(row)
        print(f"{name:<22} {row['digital']['macro_f1']:>10.3f} {row['digital']['accuracy']:>6.3f} "
              f"{row['photo']['macro_f1']:>9.3f} {row['photo']['accuracy']:>6.3f} "
              f"{row['dev_hits']:>4}/{row['dev_labelled']:<4}  {row['seconds']:.0f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"pack": str(args.pack), "data": str(prepared.path), "severity": args.severity,
                                         "C": C, "dev_found": int(ev["dev_found"]), "results": results},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
