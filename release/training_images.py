#!/usr/bin/env python3
"""Exactly which images each model of a pack was trained, validated and tested on: one CSV.

    .venv/bin/python release/training_images.py prepared/gate prepared/cxr4 prepared/nih14 \
        --out release/training_images.csv

Columns: ``task``, ``split`` (train/val/test), ``file`` (relative to the shared data folder when the
image lies in it, else as prepared), ``sha256`` (of the file read), ``labels`` (the positive labels,
``;``-joined; empty = none), ``dataset``, ``license``. Rows are sorted, so the same prepared folders
give a byte-identical file and ``git diff`` shows what changed. The pack's metadata records each
prepared folder's ``data_sha256``; this list is the human-readable half of that record.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

SPLITS = ("train", "val", "test")
HEADER = ("task", "split", "file", "sha256", "labels", "dataset", "license")


def rows_of(prepared: Path) -> list[tuple]:
    info = json.loads((prepared / "prepared.json").read_text())
    if not info.get("complete"):
        raise SystemExit(f"{prepared} is not a complete prepared folder (run cxr-edge data prepare first)")
    labels = info["labels"]
    roots = sorted({s.get("root") for s in info["sources"] if s.get("root")}, key=len, reverse=True)
    out = []
    for split in SPLITS:
        with open(prepared / "splits" / f"{split}.csv", newline="") as fh:
            for r in csv.DictReader(fh):
                path = r["path"]
                for root in roots:
                    if path.startswith(root.rstrip("/") + "/"):
                        path = os.path.relpath(path, root)
                        break
                pos = ";".join(lbl for lbl in labels if r.get(lbl) == "1")
                out.append((info["task"], split, path, r["sha256"], pos, r.get("dataset", ""), r.get("license", "")))
    return out


def kept_rows(spec: str) -> list[tuple]:
    """``TASK=CSV``: the rows of TASK in an earlier list (this file's own format)."""
    task, sep, path = spec.partition("=")
    if not sep or not task or not path:
        raise SystemExit(f"--keep {spec!r}: expected TASK=CSV")
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        if tuple(next(reader, ())) != HEADER:
            raise SystemExit(f"--keep {spec!r}: {path} is not a training-image list (header {HEADER})")
        rows = [tuple(r) for r in reader if r and r[0] == task]
    if not rows:
        raise SystemExit(f"--keep {spec!r}: {path} lists no {task} images")
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("prepared", nargs="*", type=Path, help="prepared folders (cxr-edge data prepare)")
    p.add_argument("--out", type=Path, required=True, help="CSV to write (atomically)")
    p.add_argument("--keep", action="append", default=[], metavar="TASK=CSV",
                   help="TASK's rows from an earlier list, for a model taken as it is from another pack")
    args = p.parse_args(argv)
    rows = sorted([r for folder in args.prepared for r in rows_of(folder)]
                  + [r for spec in args.keep for r in kept_rows(spec)])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    w.writerows(rows)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, args.out)
    print(f"{args.out}: {len(rows)} images", file=sys.stderr)


if __name__ == "__main__":
    main()
