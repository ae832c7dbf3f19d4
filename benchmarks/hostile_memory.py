"""Peak memory of `cxr-edge predict` on image bombs and on the largest images the decode budget lets through.

Each file runs in its own process (`cxr-edge predict FILE --json --workers 0`, under a 6 GiB address-space
cap so a bomb that gets through cannot take the machine down); its peak RSS is the kernel's high-water
mark of that process (VmHWM). A normal chest X-ray in the same run is the baseline; the table gives each file's peak
and its ratio to it. A last row runs four of the largest colour images in one batch with two workers.

    python benchmarks/hostile_memory.py [--pack PACK]

The bombs are built by tests/hostile/hostile_corpus.py (bounded memory; about 10 s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "hostile"))

CAP = 6 << 30


#: The child runs the CLI and writes its peak RSS (VmHWM: the process image since exec; ru_maxrss would also
#: count the forked copy of this parent) to the file named by $HOSTILE_PEAK_FILE as it exits.
_WRAPPER = """
import atexit, os, sys
def _peak():
    with open("/proc/self/status") as fh, open(os.environ["HOSTILE_PEAK_FILE"], "w") as out:
        out.write(next((line.split()[1] for line in fh if line.startswith("VmHWM:")), "0"))
atexit.register(_peak)
from cxr_edge.cli import main
sys.argv[0] = "cxr-edge"
main()
"""


def peak_of(args: list[str]) -> tuple[float, str]:
    """(peak RSS in MB, the outcome of each image) of ``cxr-edge ARGS`` in a child process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.NamedTemporaryFile("r") as peak:
        pid = os.fork()
        if pid == 0:   # the child: a memory cap, then cxr-edge itself
            try:
                resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))
                os.dup2(out.fileno(), 1)
                os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
                os.environ["HOSTILE_PEAK_FILE"] = peak.name
                os.execv(sys.executable, [sys.executable, "-c", _WRAPPER, *args])
            finally:
                os._exit(127)
        _, status, _ = os.wait4(pid, 0)
        out.seek(0)
        rows = [json.loads(line) for line in out if line.startswith("{")]
        kb = int(peak.read() or 0)
    outcome = ", ".join(r["status"] if r["status"] != "error" else r["error"]["kind"] for r in rows)
    return kb / 1024, outcome or f"exit {os.waitstatus_to_exitcode(status)}"


def build(folder: Path) -> dict[str, Path]:
    from hostile_corpus import dicom_bytes, gif_bomb, png_bytes, tiff_bytes

    made = {
        "16-bit grey PNG 10500x10500 (110 MP)": ("png16.png", lambda: png_bytes(10500, 10500, bit_depth=16)),
        "deflated DICOM 15000x15000": ("deflated.dcm", lambda: dicom_bytes(15000, 15000, deflate=True)),
        "RLE DICOM 400 frames of 1024x1024": ("rle400.dcm", lambda: dicom_bytes(1024, 1024, frames=400, bits=8,
                                                                                  rle_frames=True)),
        "RGB PNG 6000x6000 (36 MP, over the budget)": ("rgb36.png", lambda: png_bytes(6000, 6000, color_type=2)),
        "GIF 65535x65535": ("bomb.gif", gif_bomb),
        "16-bit TIFF 9000x9000": ("bomb.tif", lambda: tiff_bytes(9000, 9000, bits=16)),
        "RGB PNG 5700x5700 (largest colour under the budget)": ("rgb33.png", lambda: png_bytes(5700, 5700,
                                                                                            color_type=2)),
        "grey PNG 10000x10000 (largest grey under the pixel limit)": ("grey100.png", lambda: png_bytes(10000, 10000)),
    }
    paths = {}
    for label, (name, make) in made.items():
        paths[label] = folder / name
        paths[label].write_bytes(make())
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pack", default=None, help="model pack (default: the bundled one)")
    args = ap.parse_args()
    pack = ["--pack", args.pack] if args.pack else []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = build(folder)
        base = folder / "normal.png"
        import numpy as np
        from PIL import Image

        yy, xx = np.mgrid[0:512, 0:512]
        Image.fromarray((128 + 60 * np.sin(xx / 40) * np.cos(yy / 50)).astype(np.uint8)).save(base)
        baseline, outcome = peak_of(["predict", str(base), "--json", "--workers", "0", *pack])
        print("| file | size | peak RSS | x baseline | result |\n| --- | --- | --- | --- | --- |")
        print(f"| baseline: a 512x512 grey PNG | {base.stat().st_size / 1e3:.0f} KB | {baseline:.0f} MB | 1.00 | "
              f"{outcome} |")
        worst = ("", 0.0)
        for label, path in files.items():
            peak, outcome = peak_of(["predict", str(path), "--json", "--workers", "0", *pack])
            print(f"| {label} | {path.stat().st_size / 1e3:.0f} KB | {peak:.0f} MB | {peak / baseline:.2f} | {outcome} |")
            if "budget)" in label or "limit)" in label:
                continue
            worst = max(worst, (label, peak), key=lambda t: t[1])
        batch = [str(files["RGB PNG 5700x5700 (largest colour under the budget)"])] * 4
        peak, outcome = peak_of(["predict", *batch, "--json", "--workers", "2", *pack])
        print(f"| batch: 4 x RGB PNG 5700x5700, --workers 2 | - | {peak:.0f} MB | {peak / baseline:.2f} | {outcome} |")
        print(f"\nworst bomb: {worst[0]}, peak RSS {worst[1]:.0f} MB ({worst[1] / baseline:.2f} x baseline)")


if __name__ == "__main__":
    main()
