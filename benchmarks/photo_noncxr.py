"""Photographed non-CXR images must still be rejected now that photos without film edges are answered.

Every image of ``../shared/data/noncxr`` (CT, MRI, ultrasound, natural photos, documents, screenshots,
charts...) is photographed twice with the simulator, tightly cropped as field photos are -- on a
monitor (:func:`cxr_edge.tools.photosim.simulate_screen_photo`: pixel grid, moiré, colour cast) and printed
on paper (:func:`cxr_edge.tools.photosim.simulate_print_photo`: uneven light, a warm cast) -- and predicted
by the pack as ``cxr-edge predict`` does. Reports, per category and in all, the share the gate
rejects and the path the photos took. The bundled gate trained on these images (its negatives), so the
rate is optimistic for unseen documents: it checks that the photo path does not turn a rejected image
into an accepted one.

    python benchmarks/photo_noncxr.py --pack cxr_edge/packs/default [--severity moderate] [--categories document_page,screenshot]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _timing import shared_data  # noqa: E402

from cxr_edge.runtime.images import load_image  # noqa: E402
from cxr_edge.tools.photosim import simulate_print_photo, simulate_screen_photo  # noqa: E402
from cxr_edge.runtime.pipeline import Pipeline  # noqa: E402

DOCUMENTS = ("document_page", "document_scan", "screenshot", "chart")


def photographs(image, severity, seed: int, long_side: int) -> dict[str, bytes]:
    """JPEG bytes of a screen photo and a photo of a paper print of ``image``, both cropped tightly."""
    out = {}
    for name, sim in (("screen", simulate_screen_photo(image, severity, seed, long_side=long_side)),
                      ("print", simulate_print_photo(image, severity, seed, long_side=long_side))):
        buf = io.BytesIO()
        sim.to_image().save(buf, "JPEG", quality=90)
        out[name] = buf.getvalue()
    return out


def run(args) -> dict:
    data = shared_data()
    with open(data / "noncxr" / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if not args.categories or r["category"] in args.categories]
    pipe = Pipeline(args.pack)
    results = []
    for i, r in enumerate(rows):
        image = load_image(data / r["file"], mode="L")
        for kind, jpeg in photographs(image, args.severity, args.seed + i, args.long_side).items():
            pred = pipe.predict(jpeg, f"{r['file']} ({kind} photo)")
            results.append({"file": r["file"], "category": r["category"], "photo": kind, "status": pred.status,
                            "gate": None if pred.gate is None else round(pred.gate.score, 4),
                            "path": (pred.rectify or {}).get("path")})
    by_cat = {}
    for cat in sorted({x["category"] for x in results}):
        sel = [x for x in results if x["category"] == cat]
        by_cat[cat] = {"photos": len(sel), "rejected": sum(x["status"] == "rejected" for x in sel)}

    def rate(sel):
        return {"photos": len(sel), "rejected": sum(x["status"] == "rejected" for x in sel),
                "rejection_rate": float(np.mean([x["status"] == "rejected" for x in sel])) if sel else None,
                "paths": dict(Counter(x["path"] for x in sel))}

    docs = [x for x in results if x["category"] in DOCUMENTS]
    return {"pack": str(args.pack), "severity": args.severity, "seed": args.seed, "long_side": args.long_side,
            "all": rate(results), "documents_screenshots_charts": rate(docs),
            "screen_photos": rate([x for x in results if x["photo"] == "screen"]),
            "print_photos": rate([x for x in results if x["photo"] == "print"]),
            "by_category": by_cat,
            "accepted": [x for x in results if x["status"] != "rejected"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", required=True, type=Path)
    ap.add_argument("--severity", default="moderate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--long-side", type=int, default=1024)
    ap.add_argument("--categories", type=lambda s: tuple(s.split(",")), default=())
    args = ap.parse_args()
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
