"""Real phone photos through the pack as a user runs it: the table for RESULTS.md and the model card.

Runs :func:`cxr_edge.tools.evaluate_photos.evaluate_photos` (every photo a folder's manifest.csv lists,
predicted as ``cxr-edge predict`` does) and prints, as markdown: the model card's "Real photos" section
(:func:`cxr_edge.tools.evaluate_photos.card_section`) and one row per photo (kind, path taken, status, gate
score, the 4-class top against the label, moiré, OOD flags, quality verdict). ``--json FILE`` also writes
the full result, which the model card generator renders with ``card_section``.

    python benchmarks/real_photos.py --pack cxr_edge/packs/default --photos ../shared/data/real_photos_dev \\
        [--json build/measure/real_photos.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr_edge.tools.evaluate_photos import card_section, evaluate_photos  # noqa: E402
from cxr_edge.runtime.pipeline import Pipeline  # noqa: E402


def photo_rows(r: dict) -> str:
    head = ["file", "kind", "path", "status", "gate", "cxr4 top", "label", "moiré", "OOD", "quality"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for p in r["photos"]:
        gate = "-" if p["gate_score"] is None else f"{p['gate_score']:.3f}"
        lines.append("| " + " | ".join([p["file"][-48:], p["kind"], str(p["path"]), p["status"], gate,
                                        str(p["cxr4_top"] or "-"), p["label"], "yes" if p["moire"] else "",
                                        ", ".join(p["ood_unusual"]), str(p["quality"] or "-")]) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", required=True, type=Path)
    ap.add_argument("--photos", required=True, type=Path, help="a folder with the photos and a manifest.csv")
    ap.add_argument("--manifest", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the full result here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    r = evaluate_photos(Pipeline(args.pack), args.photos, args.manifest)
    seconds = time.perf_counter() - t0
    print(card_section(r, title="Real photos (bundled pack)" if "packs/default" in str(args.pack) else "Real photos"))
    print(f"\n`python benchmarks/real_photos.py --pack {args.pack} --photos {args.photos}` "
          f"({time.strftime('%Y-%m-%d')}, {seconds:.0f} s for {r['summary']['n']} photos)\n")
    print(photo_rows(r))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
