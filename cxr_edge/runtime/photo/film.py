"""What the models see of a film that came from a photo: :func:`finish_film`, the one last step.

Every photo path ends here -- a film straightened out of a photo, or a photo taken as cropped to the
film or screen -- in ``cxr-edge predict``, ``cxr-edge rectify``, ``evaluate --photos``, ``bench``, the
app, and training (the photo augmentation calls it too, so training and device cannot drift).
Digital images never do: they reach the models untouched.

1. grey (ITU-R 601 luma, as Pillow's ``convert('L')``);
2. a screen's pixel grid or moiré, when :func:`cxr_edge.runtime.photo.moire.detect_moire` finds one, taken out
   (:data:`MOIRE_METHOD`, chosen by measurement in ``benchmarks/photo_moire.py``);
3. the grey levels stretched to the full range (:func:`level_film`).

numpy + Pillow only.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ..images import load_image
from .moire import MoireDetection, detect_moire, reduce_moire

__all__ = ["finish_film", "grey_percentiles", "level_film", "LEVELS_MIN_RANGE", "LEVELS_PERCENTILES", "MOIRE_METHOD"]

#: How a detected grid / moiré is taken out (:func:`cxr_edge.runtime.photo.moire.reduce_moire`). Measured with
#: ``benchmarks/photo_moire.py`` (bundled pack, cxr4 test split, 270 simulated tight monitor photos per
#: severity): against no reduction, cxr4 accuracy -0.011 / +0.004 / +0.018 at mild / moderate / severe
#: (notch -0.004 / +0.004 / 0.000, median -0.008 / +0.004 / -0.004, downscale -0.019 / -0.037 / -0.037),
#: the best fidelity to the digital film of the five at every severity, gate unchanged, and about a
#: quarter of the notch filter's time. The models are not very sensitive to a screen's grid: their 224-px
#: input averages most of it away; the low-pass mainly keeps the rest from aliasing into that input.
MOIRE_METHOD = "gaussian"

LEVELS_PERCENTILES = (0.5, 99.5)
LEVELS_MIN_RANGE = 16     # grey levels; a flatter film (blank, badly exposed) is left as it is


def finish_film(image, *, moire: MoireDetection | bool | None = None) -> Image.Image:
    """The film as the models see it: grey, moiré taken out when found, levels stretched.

    ``image``: a film from a photo (straightened, or the photo cropped to the film / screen) as a PIL
    image of any mode or a uint8 array (H, W) / (H, W, 3). ``moire``: None to detect here, an earlier
    :func:`~cxr_edge.runtime.photo.moire.detect_moire` result on the same image to reuse it, False to skip. Returns
    a new 'L' image of the same size. Deterministic and thread-safe. Never apply it to a digital image.
    """
    img = _as_pil(image)
    grey = img.copy() if img.mode == "L" else load_image(img, mode="L")   # RGBA / P as the data set did
    if moire is None:
        moire = detect_moire(grey)
    if moire is not False and moire.found:
        grey = reduce_moire(grey, moire, MOIRE_METHOD)
    out = level_film(grey)
    return out if out is not image else out.copy()


def level_film(image: Image.Image, percentiles=LEVELS_PERCENTILES,
               min_range: int = LEVELS_MIN_RANGE) -> Image.Image:
    """Stretch a photographed film's grey levels to 0-255 between two percentiles.

    A digitised film spans the whole grey range; the same film photographed does not: a lightbox greys its
    whites, a dark room lifts its blacks, a film lying on a desk may peak near 70/255. Measured with
    ``benchmarks/photo_pipeline.py levels`` (cxr4 test films, int8 pack, simulated photos straightened with
    their true corners): accuracy 0.637 -> 0.700 over all backgrounds; on a desk without camera effects 0.477
    -> 0.708. Applied to films found in photos only, never to digital images; an 'L' image in, an 'L' image
    out (an RGB film is stretched on its luma, every channel by the same map).
    """
    img = image if image.mode in ("L", "RGB") else image.convert("L")
    grey = img if img.mode == "L" else img.convert("L")
    a = np.asarray(grey)
    step = max(1, int(math.sqrt(a.size / 65536)))      # ~64k samples are plenty for two percentiles
    lo, hi = grey_percentiles(a[::step, ::step], percentiles)
    if hi - lo < min_range:
        return img
    lut = np.clip(np.round((np.arange(256) - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8).tolist()
    return img.point(lut * (3 if img.mode == "RGB" else 1))


def grey_percentiles(a: np.ndarray, qs) -> tuple[float, ...]:
    """``np.percentile(a, qs)`` (linear interpolation) of a uint8 image, from its histogram: the same
    numbers without sorting (several times faster on a film)."""
    cum = np.cumsum(np.bincount(np.asarray(a, np.uint8).ravel(), minlength=256))
    out = []
    for q in qs:
        idx = q / 100 * (cum[-1] - 1)
        k = int(math.floor(idx))
        lo = int(np.searchsorted(cum, k, side="right"))
        hi = int(np.searchsorted(cum, min(k + 1, cum[-1] - 1), side="right"))
        out.append(lo + (idx - k) * (hi - lo))
    return tuple(float(v) for v in out)


def _as_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"finish_film takes a PIL image or a uint8 (H, W) / (H, W, 3) array, "
                         f"got {a.dtype} {a.shape}")
    return Image.fromarray(a if a.ndim == 2 else a[..., :3], "L" if a.ndim == 2 else "RGB")
