"""How well ``find_film`` / ``rectify`` find the film in simulated phone photos of real CXRs.

For each severity (mild, moderate, severe) and background (lightbox, desk,
dark room, monitor) it renders photos of randomly drawn real CXRs from
``../shared/data`` with :func:`cxr_edge.tools.photosim.simulate_photo` (which knows
the true corners) and reports:

* found: the share of photos where a film was found;
* corner error of the found ones: per photo the mean distance of the four
  corners from the truth, in photo pixels and in % of the film's diagonal;
  median and 90th percentile;
* ok: the share of all photos found with every corner within 2 % of the diagonal.

Then the other direction, which must not find films that are not there:
digital CXRs from the data set must pass through untouched, and colour
"photos" of non-CXR images (natural photos, documents, charts...; each given
camera noise and a colour cast), plain and noise images must give "no film
found".

    python benchmarks/photo_rectify_accuracy.py [--per-cell 25] [--seed 0] [--long-side 1280]

Deterministic for a seed. Needs ../shared/data (or $CXR_EDGE_SHARED).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _timing import shared_data  # noqa: E402

from cxr_edge.tools.photosim import BACKGROUNDS, simulate_photo  # noqa: E402
from cxr_edge.runtime.photo.rectify import find_film, rectify  # noqa: E402

SEVERITIES = ("mild", "moderate", "severe")


def manifest_files(data: Path, manifest: str, **where) -> list[str]:
    with open(data / manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["file"] for r in rows if all(r.get(k) == v for k, v in where.items())]


def corner_errors(found: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Mean and max corner distance in px, and the film diagonal in px."""
    d = np.linalg.norm(found - truth, axis=1)
    diag = 0.5 * (np.linalg.norm(truth[2] - truth[0]) + np.linalg.norm(truth[3] - truth[1]))
    return float(d.mean()), float(d.max()), float(diag)


def accuracy(data: Path, per_cell: int, seed: int, long_side: int, backgrounds=BACKGROUNDS) -> None:
    files = manifest_files(data, "gate/manifest.csv", is_cxr="1")
    rng = np.random.default_rng(seed)
    print(f"Corner error on simulated photos (long side {long_side} px, {per_cell} photos per cell)")
    print(f"{'severity':9s} {'background':10s} {'found':>6s} {'ok<2%':>6s} {'median px':>10s} "
          f"{'p90 px':>8s} {'median %':>9s} {'p90 %':>7s} {'ms/find':>8s}")
    for sev in SEVERITIES:
        pooled = []
        for bg in BACKGROUNDS:
            rows = []
            for _ in range(per_cell):
                film_file, photo_seed = files[int(rng.integers(len(files)))], int(rng.integers(2**31))
                if bg not in backgrounds:
                    continue                      # keep the draws, so a subset sees the same photos
                film = Image.open(data / film_file)
                photo = simulate_photo(film, sev, photo_seed, background=bg, long_side=long_side)
                t = time.perf_counter()
                det = find_film(photo.photo)
                ms = (time.perf_counter() - t) * 1000
                if det.found:
                    mean, worst, diag = corner_errors(det.corners, photo.corners)
                    rows.append((True, mean, 100 * mean / diag, 100 * worst / diag, ms))
                else:
                    rows.append((False, np.nan, np.nan, np.nan, ms))
            if rows:
                pooled += rows
                _print_row(sev, bg, rows)
        _print_row(sev, "all", pooled)


def _print_row(sev, bg, rows):
    found = np.array([r[0] for r in rows])
    px = np.array([r[1] for r in rows if r[0]])
    pct = np.array([r[2] for r in rows if r[0]])
    worst = np.array([r[3] for r in rows if r[0]])
    ms = np.median([r[4] for r in rows])
    ok = (worst < 2.0).sum() / len(rows)
    q = (lambda a, p: np.percentile(a, p) if len(a) else np.nan)
    print(f"{sev:9s} {bg:10s} {found.mean():6.0%} {ok:6.0%} {q(px, 50):10.1f} {q(px, 90):8.1f} "
          f"{q(pct, 50):9.2f} {q(pct, 90):7.2f} {ms:8.0f}")


def camera_photo_of(img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """A frame-filling colour 'photo' of a digital image: its letterbox bars cropped, a warm cast
    and sensor noise added (what pointing the phone at a scene without a film gives)."""
    grey = img.convert("L")
    box = Image.eval(grey, lambda v: 255 if v > 8 else 0).getbbox() or (0, 0, *grey.size)
    grey = np.asarray(grey.crop(box).resize((768, 1024), Image.BILINEAR), np.float32)
    rgb = grey[..., None] * np.array([1.05, 1.0, 0.9], np.float32) + rng.normal(0, 3, grey.shape + (3,))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def false_positives(data: Path, n_digital: int, seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    cxrs = manifest_files(data, "gate/manifest.csv", is_cxr="1")
    picks = [cxrs[i] for i in rng.choice(len(cxrs), min(n_digital, len(cxrs)), replace=False)]
    passed = 0
    for f in picks:
        img = Image.open(data / f)
        res = rectify(img)
        passed += res.passthrough and res.image is img
    print(f"\nDigital CXRs passed through untouched: {passed}/{len(picks)}")

    with open(data / "noncxr" / "manifest.csv", newline="") as f:
        others = [(r["file"], r["category"]) for r in csv.DictReader(f)]
    found: dict[str, list[bool]] = {}
    for i, (f, category) in enumerate(others):
        photo = camera_photo_of(Image.open(data / f), np.random.default_rng(seed + i))
        found.setdefault(category, []).append(find_film(photo).found)
    total = sum(sum(v) for v in found.values())
    print(f"Colour photos of the {len(others)} non-CXR images with a film 'found': {total} "
          f"(natural photos {sum(found.get('natural_photo', []))}/{len(found.get('natural_photo', []))})")
    print("  by category: " + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in sorted(found.items()) if any(v)))
    plain = [np.full((1024, 768, 3), v, np.uint8) for v in (0, 128, 255)]
    noise = [np.random.default_rng(i).integers(0, 256, (1024, 768, 3), dtype=np.uint8) for i in range(3)]
    print(f"Plain and noise images with a film 'found': "
          f"{sum(find_film(p).found for p in plain + noise)}/{len(plain) + len(noise)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-cell", type=int, default=25, help="photos per severity x background")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--long-side", type=int, default=1280)
    ap.add_argument("--digital", type=int, default=200, help="digital CXRs for the passthrough check")
    ap.add_argument("--backgrounds", default=",".join(BACKGROUNDS), help="comma-separated subset")
    ap.add_argument("--skip-negatives", action="store_true")
    args = ap.parse_args()
    data = shared_data()
    accuracy(data, args.per_cell, args.seed, args.long_side, tuple(args.backgrounds.split(",")))
    if not args.skip_negatives:
        false_positives(data, args.digital, args.seed)


if __name__ == "__main__":
    main()
