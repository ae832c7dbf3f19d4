"""The bundled default pack's answers on 50 fixed shared images: the golden file and how to remake it.

``tests/golden/default_pack_50.jsonl`` holds one JSON object per image, exactly what
``cxr-edge predict --json`` prints with the bundled pack and default settings, with three things
taken out so that the file is the same on every machine: ``timings_ms`` is dropped, the shared data
folder's path is cut from every string (file names are relative to ``../shared/data``), and keys are
sorted. :mod:`test_golden_pack` runs the same command on the same images and compares byte for byte.

The images are a seeded mix (``select``): NIH ChestX-ray14, the four cxr4 classes, other CXRs
(lateral views) and non-CXRs the gate should reject, all 256-px grey PNGs; and four real photos named
in ``PHOTOS`` (colour or large, so they go through the film search): two where a film is found and
quality-checked, one where none is found, one digital image kept as it is. Only their paths are
committed, never the images.

Regenerate (``python tests/golden_pack.py``) only when the answers are meant to change:

* the bundled pack was rebuilt (``release/build_default_pack.py --install``), or
* a deliberate behaviour change of the device path (decoding, the photo stage, preprocessing,
  thresholds, OOD, the JSON it prints), said so in the commit that regenerates the file.

A code move or refactoring must leave it unchanged: that is what the test is for.

"Unchanged" is exact for everything but the last printed digit of a rounded number (``same_answer``):
the OOD score is float32 linear algebra whose last bits depend on the CPU's BLAS kernels, and on
2026-12-07 one score lay at 0.7244995 here and rounded to 0.725 on the machine that wrote the file. So
strings, decisions, keys and list order must match byte for byte, and two numbers may differ by at most
one unit in the last decimal of the finer of the two as printed (0.725 against 0.724 passes, against
0.723 fails; 0.0 against 0.0001 passes; an unrounded threshold such as 0.04017428952334447 must match to
its 17th digit).
"""

from __future__ import annotations

import csv
import json
import os
import random
import sys
from decimal import Decimal
from pathlib import Path

TESTS = Path(__file__).resolve().parent
GOLDEN = TESTS / "golden" / "default_pack_50.jsonl"
SEED = 17
#: (subset, how many), drawn with SEED; with PHOTOS, 50 images in all
MIX = (("nih_cxr14", 14), ("cxr4", 16), ("cxr_other", 6), ("noncxr", 10))
#: real photos chosen by what the photo stage does with them today (see the module docstring)
PHOTOS = ("real_photos_dev/raiprabh__covid-chestxray-dataset__yxppt-2020-02-19_00-51-27_287214-day12.jpg",
          "real_photos_dev/s-mostafa-a__covid-chestxray-dataset__case_76_1-3.png",
          "real_photos_dev/raiprabh__covid-chestxray-dataset__gr1_lrg-a.jpg",
          "real_photos_dev/agchung__Figure1-COVID-chestxray-dataset__COVID-00008.jpg")


def _rows(data: Path, subset: str) -> list[dict]:
    with open(data / subset / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def select(data: Path, seed: int = SEED) -> list[str]:
    """The 50 image paths, relative to ``data``: a seeded mix (cxr4: the same number per class), then PHOTOS."""
    rng = random.Random(seed)
    chosen: list[str] = []
    for subset, n in MIX:
        rows = _rows(data, subset)
        if subset == "cxr4":
            classes = sorted({r["label"] for r in rows})
            for label in classes:
                pool = sorted(r["file"] for r in rows if r["label"] == label)
                chosen += rng.sample(pool, n // len(classes))
        else:
            chosen += rng.sample(sorted(r["file"] for r in rows), n)
    return chosen + list(PHOTOS)


def predict_lines(data: Path, files: list[str]) -> list[str]:
    """``cxr-edge predict --json`` with the bundled pack on ``files`` (relative to ``data``), normalised."""
    from click.testing import CliRunner

    from cxr_edge.cli import main

    env = {"CXR_EDGE_PACK": None, "CXR_EDGE_CONFIG": os.devnull}   # the bundled pack, whatever is set here
    root = str(data.resolve()) + os.sep
    res = CliRunner().invoke(main, ["predict", "--json", "--workers", "0", *(root + f for f in files)], env=env)
    if res.exit_code not in (0, 1):   # 1: some image failed, which the golden file records
        raise RuntimeError(f"cxr-edge predict exited {res.exit_code}: {res.output}")
    lines = []
    for line in res.stdout.splitlines():
        if not line.startswith("{"):
            continue
        obj = json.loads(line)
        obj.pop("timings_ms", None)
        lines.append(json.dumps(obj, sort_keys=True).replace(root, ""))
    return lines


def _differences(got, want, where: str = "") -> list[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        if sorted(got) != sorted(want):
            return [f"{where or '/'}: keys {sorted(got)} instead of {sorted(want)}"]
        return [d for k in sorted(want) for d in _differences(got[k], want[k], f"{where}/{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items instead of {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in _differences(g, w, f"{where}[{i}]")]
    if isinstance(want, Decimal) and isinstance(got, Decimal):
        unit = Decimal(1).scaleb(min(want.as_tuple().exponent, got.as_tuple().exponent))   # the finer printing
        return [] if abs(got - want) <= unit else [f"{where}: {got} instead of {want}"]
    if type(got) is not type(want) or got != want:
        return [f"{where}: {got!r} instead of {want!r}"]
    return []


def same_answer(got_line: str, want_line: str) -> list[str]:
    """What differs between two golden lines, beyond one unit in the last printed digit of a number ([] if nothing)."""
    return _differences(json.loads(got_line, parse_float=Decimal), json.loads(want_line, parse_float=Decimal))


def main() -> int:
    sys.path.insert(0, str(TESTS))
    from conftest import find_shared

    shared = find_shared()
    if shared is None:
        print("needs ../shared/data (or $CXR_EDGE_SHARED)", file=sys.stderr)
        return 2
    data = shared / "data"
    lines = predict_lines(data, select(data))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} results to {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
