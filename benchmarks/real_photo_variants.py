"""Real phone photos, varied as other real photos vary: does the answered rate hold?

The held-back judge of the photo path is other real photos than the 17 in ``real_photos_dev``. This
script takes each dev photo and makes the variations the field produces -- the photo turned (90 and 180
degrees, 7-degree tilt), sent small (256 px wide) or recompressed (JPEG quality 30), the film photographed
with its surroundings (desk, dark room, light table: a 4-degree-rotated film on a noisy background),
colour casts (warm, green), low contrast and blur -- then runs every variant folder through
:func:`cxr_edge.tools.evaluate_photos.evaluate_photos` exactly as ``cxr-edge evaluate --real-photos`` does.
It prints one row per variant (answered, gate acceptance, the path each photo took, how many the orientation
check turned upright, cxr4 hits) and the
photos that were not answered. Variants are written to a temporary folder and deleted afterwards.

    .venv/bin/python benchmarks/real_photo_variants.py --pack cxr_edge/packs/default \\
        --photos ../shared/data/real_photos_dev [--variants rot90,desk_frame] [--json build/measure/variants.json]

The dev set's labels are all COVID-19 (or blank), so "hits" says little about accuracy: a turned film is
*more* often called COVID-19 than an upright one (an unusual film looks like the heterogeneous COVID
sources). The answered rate and the gate are what this measures.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr_edge.runtime.images import load_image  # noqa: E402
from cxr_edge.runtime.pipeline import Pipeline  # noqa: E402
from cxr_edge.tools.evaluate_photos import evaluate_photos, read_photo_manifest  # noqa: E402


def _framed(background: tuple, angle: float):
    """The film photographed with its surroundings: rotated by ``angle`` on a noisy ``background``."""
    def make(im: Image.Image, rng) -> Image.Image:
        side = max(im.size)
        size = (int(side * 1.6), int(side * 1.5))
        noise = rng.normal(0, 6, (size[1], size[0], 3))
        canvas = Image.fromarray((np.array(background, np.float32) + noise).clip(0, 255).astype(np.uint8))
        turned = im.rotate(angle, expand=True, fillcolor=background, resample=Image.BICUBIC)
        canvas.paste(turned, ((size[0] - turned.size[0]) // 2, (size[1] - turned.size[1]) // 2))
        return canvas
    return make


def _tint(rgb: tuple):
    return lambda im, rng: Image.fromarray((np.asarray(im, np.float32) * np.array(rgb, np.float32))
                                           .clip(0, 255).astype(np.uint8))


def _jpeg(quality: int):
    def make(im: Image.Image, rng) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return make


VARIANTS = {
    "as_is": lambda im, rng: im,
    "rot90": lambda im, rng: im.rotate(90, expand=True),
    "rot180": lambda im, rng: im.rotate(180, expand=True),
    "tilt7": lambda im, rng: im.rotate(7, expand=True, fillcolor=(0, 0, 0), resample=Image.BICUBIC),
    "small256": lambda im, rng: im.resize((256, max(1, round(256 * im.size[1] / im.size[0]))), Image.LANCZOS),
    "jpeg_q30": _jpeg(30),
    "desk_frame": _framed((120, 90, 60), 4),
    "dark_frame": _framed((15, 15, 18), -3),
    "light_frame": _framed((235, 235, 230), 2),
    "warm_tint": _tint((1.0, 0.85, 0.6)),
    "green_tint": _tint((0.7, 1.0, 0.75)),
    "low_contrast": lambda im, rng: Image.fromarray((64 + 0.3 * np.asarray(im, np.float32)).astype(np.uint8)),
    "blur": lambda im, rng: im.filter(ImageFilter.GaussianBlur(3)),
}


def make_variant(name: str, folder: Path, rows: list[dict], out: Path, seed: int = 0) -> None:
    """Write ``name``'s version of every listed photo (as JPEG) and a manifest with the same labels."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            image = load_image(folder / row["file"], mode="RGB")   # upright (EXIF), RGBA and palette flattened
            file = Path(row["file"]).stem + ".jpg"
            VARIANTS[name](image, rng).convert("RGB").save(out / file, quality=92)
            writer.writerow(dict(row, file=file))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default=str(REPO / "cxr_edge" / "packs" / "default"))
    ap.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "real_photos_dev",
                    help="a folder of real photos with manifest.csv (default: ../shared/data/real_photos_dev)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--json", type=Path, help="also write every variant's full result here")
    args = ap.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    if not (args.photos / "manifest.csv").is_file():
        ap.error(f"{args.photos}: no manifest.csv; give a real-photo folder such as ../shared/data/real_photos_dev")
    rows = read_photo_manifest(args.photos)
    pipe = Pipeline(args.pack)
    print(f"pack {args.pack}; {len(rows)} photos from {args.photos}\n")
    print("| variant | answered | gate accepted | paths | turned upright | cxr4 hits | not answered | s |")
    print("|---|---:|---:|---|---:|---:|---|---:|")
    results, total, answered = {}, 0, 0
    tmp = Path(tempfile.mkdtemp(prefix="cxr-variants-"))
    try:
        for name in names:
            started = time.perf_counter()
            make_variant(name, args.photos, rows, tmp / name)
            r = evaluate_photos(pipe, tmp / name)
            s = r["summary"]
            total, answered = total + s["n"], answered + s["answered"]
            missed = [f"{p['file'][-24:]} ({p['status']}, gate {p['gate_score']:.2f})" if p["gate_score"] is not None
                      else f"{p['file'][-24:]} ({p['status']})" for p in r["photos"] if p["status"] != "ok"]
            paths = ", ".join(f"{k} {v}" for k, v in sorted(s["paths"].items()))
            print(f"| {name} | {s['answered']}/{s['n']} | {s['gate_accepted']}/{s['n']} | {paths} | "
                  f"{s.get('turned_upright', 0)} | {s['hits']}/{s['labelled']} | {'; '.join(missed) or '-'} | {time.perf_counter() - started:.1f} |",
                  flush=True)
            results[name] = r
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nall variants: {answered}/{total} answered ({100 * answered / max(total, 1):.1f}%)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
