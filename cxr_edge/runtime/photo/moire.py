"""Moiré and screen pixel grids in photos of monitors: find them, and take them out before the models.

A photo of a monitor carries the screen's pixel grid: a fine lattice where the camera resolves it,
and bands (moiré) where the grid beats against the camera's own pixels. Both are periodic, so they
stand out in the 2-D power spectrum as sharp peaks away from its centre, while a radiograph's own
spectrum is smooth (its structures are not periodic; edges make lines through the centre, not points).

:func:`detect_moire` averages the windowed power spectra of up to nine tiles of the film (Welch) and
takes as peaks the bins that are local maxima and stand more than :data:`PEAK_RATIO` times above
every one of their eight neighbours at :data:`PEAK_DISTANCE` bins -- so a line through the spectrum
(an edge in the image, the spread of a curved moiré band) is not a peak, an isolated point is. JPEG's
8-pixel block grid (peaks at multiples of 1/8 cycle per pixel on the axes) is not a screen.

:func:`reduce_moire` takes the peaks out (method chosen by measurement: ``benchmarks/photo_moire.py``,
the table in its docstring). numpy + Pillow only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["detect_moire", "MAX_PEAKS", "MAX_PERIOD", "MIN_PERIOD", "MoireDetection", "NONE", "PEAK_DISTANCE",
           "PEAK_RATIO", "power_spectrum", "reduce_moire", "REDUCTION_METHODS", "TILE"]

TILE = 128                 # tile side for the spectrum (px of the film as given): on 1024-px films as
                           # sensitive as 256-px tiles (more so with noise and JPEG), no more false alarms,
                           # ~1/8 of the time
PEAK_DISTANCE = 3          # bins to the neighbours a peak must stand above
PEAK_RATIO = 20.0          # ... by this factor of power, on all eight sides
MIN_PERIOD = 2.05          # px: shorter periods are at the sampling limit (Nyquist is 2)
MAX_PERIOD = 24.0          # px: longer "periods" are image content
MAX_PEAKS = 24             # at most this many (the strongest) are kept


@dataclass(frozen=True)
class MoireDetection:
    """What :func:`detect_moire` found. ``peaks``: (fx, fy) in cycles per pixel of the image it was
    given, strongest first, one of each conjugate pair (fx >= 0); ``period_px`` and ``angle_deg`` are
    the strongest peak's; ``prominence`` its power over the highest of its neighbours (a ratio)."""

    found: bool
    period_px: float | None = None
    angle_deg: float | None = None
    prominence: float = 0.0
    peaks: tuple = field(default_factory=tuple)
    size: tuple[int, int] | None = None       # (width, height) of the image the peaks refer to

    def to_dict(self) -> dict:
        return {"found": self.found,
                "period_px": None if self.period_px is None else round(self.period_px, 2),
                "angle_deg": None if self.angle_deg is None else round(self.angle_deg, 1),
                "prominence": round(float(self.prominence), 1), "peaks": len(self.peaks)}


NONE = MoireDetection(False)


def _grey(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode == "L" else image.convert("L"))
    a = np.asarray(image)
    if a.ndim == 3:
        a = np.asarray(Image.fromarray(a[..., :3].astype(np.uint8), "RGB").convert("L"))
    return a


def _tiles(h: int, w: int, t: int):
    """Top-left corners of up to 3 x 3 tiles spread over the central 80 % of the image."""
    def starts(n):
        if n * 0.8 > t:
            return np.linspace(0.1 * n, 0.9 * n - t, 3).astype(int)
        return [max(0, (n - t) // 2)]
    return [(y, x) for y in starts(h) for x in starts(w)]


def power_spectrum(grey: np.ndarray, tile: int = TILE, spots=None) -> tuple[np.ndarray, int]:
    """Mean Hann-windowed power spectrum (rfft2 layout, tile x tile//2+1) of tiles of ``grey`` (at
    ``spots``, top-left corners; default :func:`_tiles`)."""
    h, w = grey.shape
    t = min(tile, h, w)
    spots = _tiles(h, w, t) if spots is None else spots
    tiles = np.stack([grey[y:y + t, x:x + t] for y, x in spots]).astype(np.float32)
    tiles -= tiles.mean(axis=(1, 2), keepdims=True)
    spectra = np.fft.rfft2(tiles * _window(t))                   # all tiles in one call
    return (spectra.real ** 2 + spectra.imag ** 2).mean(0), t


@functools.lru_cache(maxsize=4)
def _window(t: int) -> np.ndarray:
    return np.outer(np.hanning(t), np.hanning(t)).astype(np.float32)


#: A first look at four of the nine tiles: without a peak this much above its neighbours there, the
#: other five are not read (nearly every photo that is not of a screen stops here, at ~half the cost).
SCREEN_RATIO = 5.0


def detect_moire(image, *, ratio: float = PEAK_RATIO, tile: int = TILE) -> MoireDetection:
    """Find a screen's pixel grid or moiré in ``image`` (a film from a photo, any mode, or an array).

    Returns ``found=False`` for images under 64 px or without isolated peaks.
    """
    grey = _grey(image)
    h, w = grey.shape
    if min(h, w) < 64:
        return MoireDetection(False, size=(w, h))
    t = min(tile, h, w)
    spots = _tiles(h, w, t)
    first = spots[::2] if len(spots) == 9 else spots                # the corners and the centre of 3 x 3
    power, t = power_spectrum(grey, tile, first)
    prom, cand = _peaks(power, t, min(ratio, SCREEN_RATIO))
    if not cand.any():
        return MoireDetection(False, size=(w, h))
    if len(first) < len(spots):
        rest, _ = power_spectrum(grey, tile, spots[1::2])
        power = (power * len(first) + rest * (len(spots) - len(first))) / len(spots)
    prom, cand = _peaks(power, t, ratio)
    ys, xs = np.nonzero(cand)
    if not len(ys):
        return MoireDetection(False, size=(w, h))
    fy, fx = _frequencies(t)
    order = np.argsort(-prom[ys, xs])[:MAX_PEAKS]
    ys, xs = ys[order], xs[order]
    peaks = tuple((float(fx[0, x]), float(fy[y, 0])) for y, x in zip(ys, xs))
    px, py = peaks[0]
    return MoireDetection(True, period_px=float(1 / math.hypot(px, py)),
                          angle_deg=float(math.degrees(math.atan2(py, px))),
                          prominence=float(math.exp(prom[ys[0], xs[0]])), peaks=peaks, size=(w, h))


def _peaks(power: np.ndarray, t: int, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(prominence in log power, candidate mask) of a tile spectrum; rows of both are fy from -1/2 up."""
    L = np.fft.fftshift(np.log(power + 1e-6), axes=0)
    H, W = L.shape
    d = PEAK_DISTANCE
    pad = np.pad(L, d, mode="edge")
    prom = np.full(L.shape, np.inf)
    for dy in (-d, 0, d):
        for dx in (-d, 0, d):
            if dy or dx:
                prom = np.minimum(prom, L - pad[d + dy:d + dy + H, d + dx:d + dx + W])
    pad1 = np.pad(L, 1, mode="edge")
    local_max = np.ones(L.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                local_max &= L >= pad1[1 + dy:1 + dy + H, 1 + dx:1 + dx + W]
    return prom, _searched(t) & local_max & (prom > math.log(ratio))


@functools.lru_cache(maxsize=4)
def _frequencies(t: int) -> tuple[np.ndarray, np.ndarray]:
    """fy (column vector, -1/2 up) and fx (row vector, 0 up) in cycles per pixel of a t-px tile's spectrum."""
    return ((np.arange(t) - t // 2) / t)[:, None], (np.arange(t // 2 + 1) / t)[None, :]


@functools.lru_cache(maxsize=4)
def _searched(t: int) -> np.ndarray:
    """Where peaks are looked for: periods MIN_PERIOD..MAX_PERIOD, off JPEG's 8 x 8 block frequencies."""
    fy, fx = _frequencies(t)
    f = np.hypot(fx, fy)
    band = (f >= 1 / MAX_PERIOD) & (f <= 1 / MIN_PERIOD)
    # JPEG's 8 x 8 blocks: peaks at k/8 cycles per pixel on the axes (within a bin)
    k8 = lambda v: np.abs(v * 8 - np.round(v * 8)) * t / 8 <= 1.0   # noqa: E731
    jpeg = ((np.abs(fy) * t <= 1) & k8(fx)) | ((fx * t <= 1) & k8(np.abs(fy)))
    return band & ~jpeg


# --------------------------------------------------------------------------- reduction

REDUCTION_METHODS = ("none", "notch", "gaussian", "median", "downscale")


def reduce_moire(image, detection: MoireDetection, method: str = "gaussian") -> Image.Image:
    """``image`` ('L') with the detected grid / moiré taken out by ``method``; the input itself when nothing
    was found or ``method`` is 'none'.

    'gaussian' (the one :func:`cxr_edge.runtime.photo.film.finish_film` uses): a Gaussian low-pass with sigma 0.45 x the
    finest period found. 'notch': Gaussian notches at every peak of the spectrum. 'median': a 3 x 3 (5 x 5
    from a 4-px period) median. 'downscale': box-downscaled until the finest period is 2 px, then back up.
    """
    if method not in REDUCTION_METHODS:
        raise ValueError(f"unknown moiré reduction {method!r}; valid: {', '.join(REDUCTION_METHODS)}")
    img = image if image.mode == "L" else image.convert("L")
    if not detection.found or method == "none":
        return img
    period = min(1 / math.hypot(*p) for p in detection.peaks)       # the finest pattern found
    if method == "gaussian":
        return img.filter(ImageFilter.GaussianBlur(0.45 * period))
    if method == "median":
        return img.filter(ImageFilter.MedianFilter(3 if period < 4 else 5))
    if method == "downscale":
        w, h = img.size
        k = period / 2.0                                               # the pattern at the sampling limit
        small = img.resize((max(1, round(w / k)), max(1, round(h / k))), Image.BOX)
        return small.resize((w, h), Image.BILINEAR)
    return _notch(img, detection.peaks)


def _notch(img: Image.Image, peaks, width: float = 1.5 / 256) -> Image.Image:
    """Gaussian notches (``width`` cycles/px) at every peak and its mirror, in the image's spectrum
    (each notch written only within four widths of its peak: the rest of the mask is 1)."""
    a = np.asarray(img, np.float32)
    h, w = a.shape
    mean = float(a.mean())
    spec = np.fft.rfft2(a - mean)
    keep = np.ones(spec.shape, np.float32)
    ry, rx = int(math.ceil(4 * width * h)), int(math.ceil(4 * width * w))
    for px, py in peaks:
        for sx, sy in ((px, py), (-px, -py)):          # the conjugate twin (seen where fx ~ 0)
            if sx < -rx / w:
                continue                                # outside the half plane rfft2 keeps
            cy, cx = int(round(sy * h)), int(round(sx * w))
            ys = np.arange(cy - ry, cy + ry + 1)
            xs = np.arange(max(0, cx - rx), min(w // 2, cx + rx) + 1)
            d2 = ((xs[None, :] / w - sx) ** 2 + (ys[:, None] / h - sy) ** 2) / (2 * width * width)
            keep[np.ix_(ys % h, xs)] *= (1 - np.exp(-d2)).astype(np.float32)
    out = np.fft.irfft2(spec * keep, s=(h, w)) + mean
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "L")
