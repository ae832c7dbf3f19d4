"""Speed of the phone-photo pieces, with baselines measured in the same run.

* ``find_film`` and ``rectify`` on a 12-MP (4000 x 3000) phone photo, against
  the cheapest thing any method must do with it: Pillow's ``convert('L')``.
* ``simulate_rectified`` per 256-px film (the training augmentation), against
  one Pillow JPEG round trip of the same film.
* ``simulate_photo`` per 1280-px photo (evaluation).
* ``check_quality`` on a rectified film.
* ``clahe`` at 224 and 1024 px against ``skimage.exposure.equalize_adapthist``
  (if installed), with the largest pixel difference between the two.

    python benchmarks/photo_speed.py [--repeat 5]

Medians of ``--repeat`` runs after one warm-up; single thread. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _timing import shared_data, timeit  # noqa: E402

from cxr_edge.runtime.enhance import clahe  # noqa: E402
from cxr_edge.tools.photosim import simulate_photo, simulate_rectified  # noqa: E402
from cxr_edge.runtime.photo.quality import check_quality  # noqa: E402
from cxr_edge.runtime.photo.rectify import find_film, rectify  # noqa: E402

FILM = "nih_cxr14/images/00000061_012.png"


def timed(fn, repeat: int) -> float:
    """Median milliseconds of ``repeat`` calls after one warm-up call."""
    return statistics.median(timeit(fn, repeat, warmup=1))


def row(name: str, ms: float, base_name: str = "", base_ms: float = 0.0) -> None:
    ratio = f"  ({ms / base_ms:5.1f} x {base_name}, {base_ms:.1f} ms)" if base_ms else ""
    print(f"{name:44s} {ms:9.1f} ms{ratio}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n = args.repeat
    data = shared_data()
    film = Image.open(data / FILM).convert("L")
    film_arr = np.asarray(film)

    sim = simulate_photo(film, "moderate", 3, background="lightbox", long_side=1280)
    big = sim.to_image().resize((3000, 4000), Image.BICUBIC)               # 12 MP, portrait
    base = timed(lambda: big.convert("L"), n)
    row("find_film, 12-MP photo", timed(lambda: find_film(big), n), "convert('L')", base)
    row("rectify (find + warp to 1024 px), 12-MP photo", timed(lambda: rectify(big), n), "convert('L')", base)
    photo_1280 = sim.to_image()
    row("find_film, 1280 x 960 photo", timed(lambda: find_film(photo_1280), n))
    det = find_film(big)
    err = np.abs(det.corners / (3000 / 960) - sim.corners).max() if det.found else float("nan")
    print(f"{'':44s} (12-MP corners vs truth: worst {err:.2f} px at 1280-px scale)")

    def jpeg_round_trip():
        buf = io.BytesIO()
        film.save(buf, "JPEG", quality=80)
        buf.seek(0)
        return np.asarray(Image.open(buf))

    rng = np.random.default_rng(0)
    row("simulate_rectified, 256-px film, moderate", timed(lambda: simulate_rectified(film_arr, "moderate", rng), 5 * n),
        "JPEG round trip", timed(jpeg_round_trip, 5 * n))
    row("simulate_rectified, 256-px film, severe", timed(lambda: simulate_rectified(film_arr, "severe", rng), 5 * n))
    row("simulate_photo, 1280-px photo, moderate", timed(lambda: simulate_photo(film, "moderate", rng), n))

    rect = rectify(sim.photo)
    row("check_quality (film + photo + corners)", timed(lambda: check_quality(rect.image, sim.photo, rect.corners), n))

    try:
        from skimage.exposure import equalize_adapthist
    except ImportError:
        equalize_adapthist = None
    for size in (224, 1024):
        img = np.asarray(film.resize((size, size), Image.BICUBIC))
        ours = timed(lambda: clahe(img), n)
        if equalize_adapthist is None:
            row(f"clahe {size} px", ours)
            continue
        ref = equalize_adapthist(img) * 255
        diff = np.abs(clahe(img) - ref)
        row(f"clahe {size} px", ours, "skimage", timed(lambda: equalize_adapthist(img), n))
        print(f"{'':44s} (vs skimage x 255: mean {diff.mean():.3f}, max {diff.max():.3f} grey levels)")


if __name__ == "__main__":
    main()
