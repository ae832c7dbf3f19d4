"""Films shown in an image viewer's window, as a screenshot or a photo of the screen sends them (issue 15)

Run (workstation; about 1 minute for the 270 cxr4 test films):

    python benchmarks/viewer_screens.py --pack cxr_edge/packs/default --data prepared/cxr4 [--every 1] [--json out.json]

A monitor photo or a screenshot often shows the viewer around the film: a toolbar, a strip of thumbnails, overlay
text. Each test film is drawn into such a window -- toolbar with buttons and a coloured patient line, four thumbnails
of the film on the left (the first outlined in orange), the film in the viewport, window/level and zoom text in
yellow -- on two backgrounds, dark (near-black, as most radiology viewers are; a film with black margins then has
no visible edge) and grey (mid-grey, where the film's edge shows), with the film zoomed to fit the viewport, and
zoomed out to 55 % of that (a small image, or a user who zoomed out). Each
screen is saved as a JPEG (quality 90) and predicted by ``Pipeline.predict`` as ``cxr-edge predict`` would.
Printed per theme: answered, the gate's acceptances, the paths taken, and cxr4 accuracy over all films (a film not
answered counts as wrong) and over the answered ones; the films as they are beside them.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_edge import Pipeline  # noqa: E402
from cxr_edge.data.prepared import open_prepared  # noqa: E402
from cxr_edge.runtime.images import load_image  # noqa: E402

#: name -> (background, zoom: the film's size as a share of the size that fits the viewport)
THEMES = {"dark, fitted": ((18, 18, 22), 1.0), "grey, fitted": ((70, 72, 78), 1.0),
          "dark, zoomed out": ((18, 18, 22), 0.55), "grey, zoomed out": ((70, 72, 78), 0.55)}
SIZE = (1600, 1000)


def viewer_screen(film: Image.Image, background: tuple, zoom: float = 1.0) -> bytes:
    """``film`` in a viewer window on ``background``, at ``zoom`` of the size that fits the viewport, as JPEG
    bytes."""
    W, H = SIZE
    ui = Image.new("RGB", SIZE, background)
    d = ImageDraw.Draw(ui)
    d.rectangle((0, 0, W, 48), fill=(60, 62, 70))
    for k in range(12):
        d.rectangle((10 + k * 44, 8, 42 + k * 44, 40), fill=(120, 124, 135))
    d.text((700, 16), "PATIENT^NAME  CR CHEST PA  2020-03-14", fill=(230, 230, 230))
    thumb = film.convert("RGB")
    thumb.thumbnail((150, 150))
    for k in range(4):
        ui.paste(thumb, (20, 70 + k * 220))
        d.rectangle((18, 68 + k * 220, 22 + thumb.width, 72 + k * 220 + thumb.height),
                    outline=(200, 160, 40) if k == 0 else (80, 80, 80))
    scale = zoom * min(1300 / film.width, 920 / film.height)   # fitted to the viewport, as a viewer zooms
    view = film.convert("RGB").resize((round(film.width * scale), round(film.height * scale)), Image.BICUBIC)
    ui.paste(view, (220 + (1360 - view.width) // 2, 60 + (930 - view.height) // 2))
    d.text((230, 70), "W: 2048 L: 1024", fill=(230, 230, 60))
    d.text((230, 950), "Zoom 68%", fill=(230, 230, 60))
    buf = io.BytesIO()
    ui.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="cxr_edge/packs/default")
    ap.add_argument("--data", required=True, help="a prepared cxr4 data set (its test films are shown)")
    ap.add_argument("--every", type=int, default=1, help="every n-th test film (default: all)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    pipe = Pipeline(args.pack)
    prep = open_prepared(args.data)
    table = prep.table("test")
    labels = list(pipe.models["cxr4"].spec.labels)
    idx = list(range(0, len(table), args.every))
    truth = [labels[k] for k in prep.labels("test")[idx].argmax(1)]
    rows = {name: [] for name in ("films as they are", *THEMES)}
    for n, i in enumerate(idx):
        film = load_image(table["path"][i], mode="L")
        for name in rows:
            source = table["path"][i] if name == "films as they are" else viewer_screen(film, *THEMES[name])
            pred = pipe.predict(source, f"{name}-{i}")
            cxr4 = pred.results.get("cxr4")
            rows[name].append({"status": pred.status, "gate": bool(pred.gate and pred.gate.accepted),
                               "path": (pred.rectify or {}).get("path"), "top": cxr4.top if cxr4 else None})
        print(f"\r{n + 1}/{len(idx)} films", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    print(f"pack {args.pack}; {len(idx)} test films of {args.data} in a {SIZE[0]}x{SIZE[1]} viewer window\n")
    print("| shown as | answered | gate accepted | paths | cxr4 accuracy, all films | cxr4 accuracy, answered |")
    print("|---|---:|---:|---|---:|---:|")
    out = {"films": len(idx), "rows": {}}
    for name, rs in rows.items():
        answered = [r["status"] == "ok" for r in rs]
        hits = [r["top"] == y for r, y in zip(rs, truth)]
        n_ok = sum(answered)
        acc_all = float(np.mean(hits))
        acc_ok = float(np.mean([h for h, a in zip(hits, answered) if a])) if n_ok else float("nan")
        paths = dict(Counter(str(r["path"]) for r in rs))
        print(f"| {name} | {n_ok}/{len(rs)} | {sum(r['gate'] for r in rs)}/{len(rs)} | "
              f"{', '.join(f'{k} {v}' for k, v in sorted(paths.items()))} | {acc_all:.3f} | {acc_ok:.3f} |")
        out["rows"][name] = {"answered": n_ok, "gate_accepted": sum(r["gate"] for r in rs), "paths": paths,
                             "accuracy_all": acc_all, "accuracy_answered": acc_ok}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
