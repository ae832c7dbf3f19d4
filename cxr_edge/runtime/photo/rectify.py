"""Find the X-ray film in a phone photo and warp it upright; pass digital images through.

How the film is found (numpy + Pillow only):

1. A grey copy is made at two sizes: at most 1024 px (refinement) and 320 px
   (search), with Pillow's box ``reduce`` first, so a 12-MP photo is shrunk
   in a few milliseconds.
2. At 320 px: smoothed Sobel gradients, thinned to edge pixels, vote in a
   Hough accumulator (each pixel only near its own gradient angle). Up to 15
   near-horizontal and 15 near-vertical straight lines are kept, so a
   textured background cannot crowd out the film's sides of one orientation.
3. Every pair of near-horizontal and pair of near-vertical lines forms a
   candidate quadrilateral. Each side is scored by its *edge support*: the
   fraction of its length where the image has an edge parallel to it
   (cumulative sums along each line make this O(1) per side). Quads that are
   too small, not convex, too skewed or far outside the frame are dropped.
4. The best-supported quad is taken; if it holds another well-supported
   quad and the band between them is plain (a lightbox panel's or a monitor
   screen's margin around the film, perhaps running out of the frame on some
   sides), the inner one is taken instead. If it sits inside a larger one
   with dark plain bands on two opposite sides between them, those are the
   film's own letterbox bars and the larger one is the film.
5. Each side is refined at 1024 px: on profiles across the side, the edge of
   the side's own polarity nearest the coarse line is located to sub-pixel
   precision (so a lightbox edge or a letterbox bar next to the film's edge
   is not taken for it), a robust line is fitted, and the corners are the
   lines' intersections, mapped to full resolution.

Without a quad whose every side is supported, no film *edges* were found; it
never guesses corners. Each result says which of three paths it took
(``RectifyResult.path``):

* ``quadrilateral``: the film's four edges were found; the film is warped upright.
* ``cropped``: a colour photo with no four-sided film in view, or a grey image
  showing a screen's pixel grid / moiré (:mod:`cxr_edge.runtime.photo.moire`). Real field
  photos are mostly like this: cropped tightly to the film or the screen by the
  person who took them. The photo is taken as the film, with uniform borders
  trimmed off (:func:`trim_borders`: a monitor's bezel, a lightbox margin, a
  journal page's white or letterbox bars), and the caller warns that no edges
  were seen.
* ``digital``: a grey image with no film clearly inside it and no screen
  pattern: a digital CXR, a scan, a DICOM export. It passes through untouched
  (``passthrough=True``): the models trained on exactly such images.

What the models see of a film from either photo path is :func:`cxr_edge.runtime.photo.film.finish_film`
of ``RectifyResult.image`` (``RectifyResult.film``).

Measured on simulated phone photos of the project's real CXRs
(``benchmarks/photo_rectify_accuracy.py``): when the film is found its
corners are typically within a fraction of a pixel; the failures are choices
of the wrong quad (mostly monitors whose dark viewer background meets the
image's black borders), reported per background and severity there.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image, ImageFilter

from .film import LEVELS_MIN_RANGE, LEVELS_PERCENTILES, finish_film, level_film  # noqa: F401 (re-exported)
from .moire import MoireDetection, detect_moire

__all__ = ["apply_homography", "FilmDetection", "find_film", "homography", "is_grayscale", "level_film",
           "LEVELS_MIN_RANGE", "LEVELS_PERCENTILES", "PATHS", "perspective_coeffs", "rectify", "RectifyResult",
           "REFINE_SIZE", "trim_borders", "TRIM_ANALYSIS", "TRIM_MAX_SIDE", "TRIM_UNIFORM_SHARE", "warp_film",
           "WORK_SIZE"]

log = logging.getLogger(__name__)

PATHS = ("quadrilateral", "cropped", "digital", "none")

WORK_SIZE = 320        # long side of the search image
REFINE_SIZE = 1024     # long side of the refinement image
MAX_LINES = 30         # Hough lines kept, half near-horizontal, half near-vertical


# --------------------------------------------------------------------------- geometry

def homography(src, dst) -> np.ndarray:
    """The 3x3 matrix mapping four ``src`` points (x, y) onto four ``dst`` points."""
    src = np.asarray(src, float)
    dst = np.asarray(dst, float)
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(src, dst)):
        a[2 * i] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        a[2 * i + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
        b[2 * i], b[2 * i + 1] = u, v
    h = np.linalg.solve(a, b)
    return np.append(h, 1.0).reshape(3, 3)


def apply_homography(h: np.ndarray, pts) -> np.ndarray:
    """Map (N, 2) points through a 3x3 homography."""
    pts = np.asarray(pts, float)
    p = pts @ h[:, :2].T + h[:, 2]
    return p[:, :2] / p[:, 2:3]


def perspective_coeffs(out_quad, in_quad) -> tuple:
    """Pillow ``Image.PERSPECTIVE`` coefficients taking ``out_quad`` (output image) to ``in_quad`` (input)."""
    h = homography(out_quad, in_quad)
    return tuple(float(x) for x in (h / h[2, 2]).reshape(-1)[:8])


def _intersect(n1, r1, n2, r2):
    """Intersection of lines n1.p = r1 and n2.p = r2 (broadcasting); nan when parallel."""
    det = n1[..., 0] * n2[..., 1] - n1[..., 1] * n2[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = (r1 * n2[..., 1] - r2 * n1[..., 1]) / det
        y = (n1[..., 0] * r2 - n2[..., 0] * r1) / det
    return np.stack([x, y], -1)


# --------------------------------------------------------------------------- results

@dataclass(frozen=True)
class FilmDetection:
    """Where the film is. ``corners`` (4, 2) float (x, y) TL, TR, BR, BL in the input's pixel
    coordinates, or None when ``found`` is False; ``reason`` says why not."""

    found: bool
    corners: np.ndarray | None
    confidence: float
    method: str
    reason: str = ""

    def to_dict(self) -> dict:
        return {"found": self.found, "confidence": round(float(self.confidence), 4),
                "method": self.method, "reason": self.reason,
                "corners": None if self.corners is None else np.round(self.corners, 2).tolist()}


@dataclass(frozen=True)
class RectifyResult:
    """The film (``image``; None when nothing usable was found) and how it was obtained.

    ``path`` is one of :data:`PATHS` (module docstring): 'quadrilateral' (edges found, ``found`` True,
    ``corners`` the film's), 'cropped' (the photo taken as the film; ``box`` the part kept after trimming
    its borders, in the input's pixels, and ``corners`` that box's four corners), 'digital'
    (``passthrough`` True: ``image`` is the input itself, pixels untouched) or 'none' (no film and
    cropping was not allowed: ``image`` None).
    """

    image: Image.Image | None
    found: bool
    passthrough: bool
    corners: np.ndarray | None
    detection: FilmDetection
    path: str = "quadrilateral"
    box: tuple[int, int, int, int] | None = None
    screen: MoireDetection | None = None    # the screen pattern that sent a grey image down the cropped path

    @property
    def ok(self) -> bool:
        """True when ``image`` is usable (a rectified or cropped film, or a passed-through digital image)."""
        return self.image is not None

    @cached_property
    def moire(self) -> MoireDetection | None:
        """A screen's pixel grid / moiré in the film from a photo (None for a digital image or no film)."""
        if self.image is None or self.passthrough:
            return None
        if self.screen is not None and self.screen.size == self.image.size:
            return self.screen
        return detect_moire(self.image)

    @cached_property
    def film(self) -> Image.Image | None:
        """What the models see: :func:`cxr_edge.runtime.photo.film.finish_film` of a film from a photo (grey, moiré taken
        out, levels stretched); a passed-through digital image as it is. ``image`` keeps the photo's own
        levels, which the quality checks judge (exposure, glare)."""
        if self.image is None or self.passthrough:
            return self.image
        return finish_film(self.image, moire=self.moire)

    def to_dict(self) -> dict:
        d = {"path": self.path, "found": self.found, "passthrough": self.passthrough,
             "size": None if self.image is None else list(self.image.size)}
        d.update({k: v for k, v in self.detection.to_dict().items() if k != "found"})
        if self.box is not None:
            d["box"] = list(self.box)
        if self.path in ("quadrilateral", "cropped") and self.image is not None:
            d["moire"] = self.moire.to_dict()
        return d


# --------------------------------------------------------------------------- image preparation

def _to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    arr = np.asarray(image)
    if arr.ndim == 2 and arr.dtype == np.uint8:
        return Image.fromarray(arr, "L")
    if arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.dtype == np.uint8:
        return Image.fromarray(arr, "RGB" if arr.shape[2] == 3 else "RGBA")
    if arr.ndim == 2:
        return Image.fromarray(arr.astype(np.float32), "F")
    raise ValueError(f"expected a PIL image or a (H, W) / (H, W, 3) uint8 array, got {arr.shape} {arr.dtype}")


def _grey_u8(img: Image.Image) -> Image.Image:
    """An 8-bit grey version of any Pillow mode (16-bit/float are min-max scaled)."""
    if img.mode == "L":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img.convert("F") if img.mode != "F" else img, np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("L")


def _shrink(img: Image.Image, long_side: int) -> Image.Image:
    """Downscale so the longer side is at most ``long_side``: one fast box ``reduce`` when the
    image is at least twice that size (a 12-MP photo costs a few ms), else an antialiased resize."""
    w, h = img.size
    if max(w, h) <= long_side:
        return img
    k = -(-max(w, h) // long_side)
    if k >= 2 and img.mode in ("L", "RGB", "RGBA", "I", "F"):
        return img.reduce(k)
    s = long_side / max(w, h)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)


def _fit_within(img: Image.Image, long_side: int) -> Image.Image:
    """Downscale so the longer side is ``long_side`` at most, antialiased properly (a triangle filter as
    wide as the scale, not a box): a screen's fine pixel grid must not alias into new moiré."""
    w, h = img.size
    if max(w, h) <= long_side:
        return img
    s = long_side / max(w, h)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)


def is_grayscale(image, tolerance: int = 3) -> bool:
    """True when the image carries no colour: a grey mode, or RGB whose channels agree within
    ``tolerance`` levels (JPEG chroma) on 99.9 % of pixels. Phone photos never do."""
    img = _to_pil(image)
    if img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
        return True
    if img.mode == "P":
        img = img.convert("RGB")
    rgb = img.convert("RGB") if img.mode != "RGB" else img
    w, h = rgb.size
    # A coarse 64-px sample settles a colour photo at once (most of its pixels differ per channel);
    # only near-grey images pay for the 512-px check below.
    coarse = np.asarray(rgb.resize((max(1, min(w, 64)), max(1, min(h, 64))), Image.NEAREST), np.int16)
    if np.mean(np.max(coarse, axis=2) - np.min(coarse, axis=2) > tolerance) > 0.01:
        return False
    s = min(1.0, 512 / max(w, h))    # nearest-neighbour sampling: cheap, and keeps colour noise visible
    small = np.asarray(rgb.resize((max(1, round(w * s)), max(1, round(h * s))), Image.NEAREST), np.int16)
    spread = np.max(small, axis=2) - np.min(small, axis=2)
    return float(np.percentile(spread, 99.9)) <= tolerance


# --------------------------------------------------------------------------- search (work size)

def _gradients(g: np.ndarray):
    """Sobel gradients (per pixel, grey levels) of a float image, edges replicated."""
    p = np.pad(g, 1, mode="edge")
    gx = ((p[:-2, 2:] - p[:-2, :-2]) + 2 * (p[1:-1, 2:] - p[1:-1, :-2]) + (p[2:, 2:] - p[2:, :-2])) / 8
    gy = ((p[2:, :-2] - p[:-2, :-2]) + 2 * (p[2:, 1:-1] - p[:-2, 1:-1]) + (p[2:, 2:] - p[:-2, 2:])) / 8
    return gx, gy


_TAN_22_5 = math.tan(math.radians(22.5))


def _thin(mag, gx, gy) -> np.ndarray:
    """Non-maximum suppression across the edge (Canny's thinning), 4 directions. The direction is the
    gradient's octant, from comparisons of |gx| and |gy| (no arctan over the whole image)."""
    ax, ay = np.abs(gx), np.abs(gy)
    horizontal = ay < _TAN_22_5 * ax              # gradient along x: compare left / right
    vertical = ax < _TAN_22_5 * ay                # along y: above / below
    diag = ~(horizontal | vertical)
    down_right = diag & ((gx > 0) == (gy > 0))   # "\" ... gradient towards +x+y: up-left / down-right
    p = np.pad(mag, 1)
    c = p[1:-1, 1:-1]
    keep = horizontal & (c >= p[1:-1, :-2]) & (c >= p[1:-1, 2:])
    keep |= vertical & (c >= p[:-2, 1:-1]) & (c >= p[2:, 1:-1])
    keep |= down_right & (c >= p[:-2, :-2]) & (c >= p[2:, 2:])
    keep |= (diag & ~down_right) & (c >= p[:-2, 2:]) & (c >= p[2:, :-2])
    return keep


@dataclass
class _Lines:
    normal: np.ndarray     # (L, 2) unit normals
    rho: np.ndarray        # (L,)   n . p = rho
    votes: np.ndarray


def _hough(edges_y, edges_x, theta_px, shape, max_lines=30, min_votes=10) -> _Lines:
    """Lines through edge pixels; each pixel votes for angles within 3 degrees of its own."""
    h, w = shape
    diag = int(math.ceil(math.hypot(h, w)))
    nt = 180
    thetas = np.deg2rad(np.arange(nt))
    cos_t, sin_t = np.cos(thetas), np.sin(thetas)
    base = np.round(np.degrees(theta_px)).astype(int)
    xs, ys = edges_x + 0.5, edges_y + 0.5
    t = (base[None, :] + np.arange(-3, 4)[:, None]) % nt                # (7 angles, pixels)
    rho = np.floor(xs * cos_t[t] + ys * sin_t[t] + 0.5).astype(int) + diag
    # one bincount of all the votes; counts fit int32 exactly (and compare faster than float64)
    acc = np.bincount((t * (2 * diag + 1) + rho).ravel(), minlength=nt * (2 * diag + 1)).astype(np.int32)
    acc = acc.reshape(nt, 2 * diag + 1)
    # votes within +-1 px of a line: an edge that thinning left on two pixel rows splits its
    # votes between neighbouring rho bins
    r = acc.shape[1]
    p = np.pad(acc, ((0, 0), (1, 1)), mode="wrap")
    acc = p[:, :r] + p[:, 1:r + 1] + p[:, 2:]
    # local maxima (5 x 5 neighbourhood, separable max filter with wrap-around), strongest first
    n = acc.shape[0]
    p = np.pad(acc, ((2, 2), (0, 0)), mode="wrap")
    mx = np.maximum(np.maximum(np.maximum(p[:n], p[1:n + 1]), np.maximum(p[2:n + 2], p[3:n + 3])), p[4:])
    p = np.pad(mx, ((0, 0), (2, 2)), mode="wrap")
    mx = np.maximum(np.maximum(np.maximum(p[:, :r], p[:, 1:r + 1]), np.maximum(p[:, 2:r + 2], p[:, 3:r + 3])),
                    p[:, 4:])
    peaks = np.flatnonzero((acc == mx) & (acc >= min_votes))
    peaks = peaks[np.argsort(-acc.ravel()[peaks], kind="stable")][:20 * max_lines]
    # half the lines near-horizontal, half near-vertical: a textured background (wood grain)
    # must not crowd out the film's sides of the other orientation
    t_all, r_all = np.divmod(peaks, 2 * diag + 1)
    n_all = np.stack([cos_t[t_all], sin_t[t_all]], -1)
    horizontal = np.abs(n_all[:, 1]) >= math.cos(math.radians(45))
    same = _DuplicatePeaks(n_all, r_all - diag, w, h)
    chosen = []
    quota = {True: max_lines // 2, False: max_lines - max_lines // 2}
    for i in range(len(peaks)):
        hz = bool(horizontal[i])
        if quota[hz] == 0 or same(i, chosen):
            continue
        quota[hz] -= 1
        chosen.append(i)
        if not any(quota.values()):
            break
    chosen = np.array(chosen, int)
    normals, rhos = n_all[chosen].reshape(-1, 2), (r_all[chosen] - diag).astype(float)
    votes = acc.ravel()[peaks[chosen]]
    return _Lines(normals, rhos, votes)


class _DuplicatePeaks:
    """Whether a Hough peak is a duplicate of an earlier, already kept one: its line stays within ``tol``
    px of the kept line across the image. The test of every peak against every earlier one is computed
    in blocks of rows as the scan reaches them (the scan usually stops after a few dozen peaks); one
    numpy call per peak and kept line cost ~2 ms a photo."""

    BLOCK = 64

    def __init__(self, normals: np.ndarray, rhos: np.ndarray, w: int, h: int, tol: float = 2.0):
        self.n, self.r, self.tol = normals, rhos.astype(float), tol
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
        # the part of each line inside the image: the image corners projected onto it give its two ends
        d = np.stack([-normals[:, 1], normals[:, 0]], -1)
        ts = corners @ d.T                                                    # (4, peaks)
        self.ends = self.r[:, None, None] * normals[:, None] + np.stack([ts.min(0), ts.max(0)], 1)[..., None] * d[:, None]
        self.table = np.zeros((0, 0), bool)

    def _extend(self, upto: int) -> None:
        a, b = len(self.table), min(len(self.r), max(upto, len(self.table) + self.BLOCK))
        n1, ends = self.n[a:b], self.ends[a:b]                  # the new rows: candidate lines
        n2, r2 = self.n[:b], self.r[:b]                          # every line up to them
        dots = n1 @ n2.T                                         # (new, b)
        close = np.abs(dots) >= math.cos(math.radians(6))
        sign = np.where(dots < 0, -1.0, 1.0)
        proj = np.einsum("iek,jk->iej", ends, n2)                # (new, 2 ends, b)
        dist = np.abs(proj * sign[:, None] - (r2 * sign)[:, None])
        rows = close & np.all(dist <= self.tol, axis=1)
        table = np.zeros((b, b), bool)
        table[:a, :a] = self.table
        table[a:b] = rows
        self.table = table

    def __call__(self, i: int, kept: list) -> bool:
        if not kept:
            return False
        if i >= len(self.table):
            self._extend(i + 1)
        return bool(self.table[i, kept].any())


def _line_support(lines: _Lines, gx, gy, t_edge):
    """Per line: sample positions along it and the cumulative count of supported samples.

    Only the stretch of each line that crosses the image (plus 2 px) is sampled: about half the
    positions of the full +-diagonal range, which are all outside and unsupported anyway."""
    h, w = gx.shape
    diag = int(math.ceil(math.hypot(h, w)))
    ts = np.arange(-diag, diag + 1, dtype=float)
    nl = len(lines.rho)
    n = lines.normal[:, None, :]
    d = np.stack([-lines.normal[:, 1], lines.normal[:, 0]], -1)[:, None, :]
    p0 = lines.rho[:, None, None] * n
    centre = p0 + ts[None, :, None] * d - 0.5
    inside = ((centre[..., 0] >= -2.5) & (centre[..., 0] < w + 1.5)
              & (centre[..., 1] >= -2.5) & (centre[..., 1] < h + 1.5))
    any_inside = inside.any(1)
    first = np.where(any_inside, inside.argmax(1), 0)
    span = np.where(any_inside, ts.size - inside[:, ::-1].argmax(1) - first, 0)
    width = max(1, int(span.max(initial=0)))     # no lines at all: an empty table
    cols = np.minimum(first[:, None] + np.arange(width)[None, :], ts.size - 1)   # (lines, width) into ts
    used = np.arange(width)[None, :] < span[:, None]
    tw = ts[cols][..., None]
    # the line and its two neighbours 1 px either side, as (3, lines, width); read through flat indices
    offs = np.array([-1.0, 0.0, 1.0])[:, None, None, None]
    p = (p0 + tw * d)[None] + offs * n[None] - 0.5
    xi = np.round(p[..., 0]).astype(int)
    yi = np.round(p[..., 1]).astype(int)
    ok = used & (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    flat = np.clip(yi, 0, h - 1) * w + np.clip(xi, 0, w - 1)
    gxs, gys = gx.ravel()[flat], gy.ravel()[flat]
    along = np.abs(gxs * n[..., 0] + gys * n[..., 1])
    # an edge parallel to the line (gradient within ~30 degrees of its normal)
    on_w = (ok & (along >= t_edge) & (along >= 0.86 * np.hypot(gxs, gys))).any(0)
    on = np.zeros((nl, ts.size), bool)
    on[np.repeat(np.arange(nl), width)[used.ravel()], cols[used]] = on_w[used]
    cum = np.concatenate([np.zeros((on.shape[0], 1)), np.cumsum(on, axis=1)], axis=1)
    return ts, cum


def _segment_support(cum, ts0, i, ta, tb):
    """Fraction of supported samples on line ``i`` between parameters ta and tb (arrays)."""
    lo = np.clip(np.round(np.minimum(ta, tb) - ts0).astype(int), 0, cum.shape[1] - 1)
    hi = np.clip(np.round(np.maximum(ta, tb) - ts0).astype(int), 0, cum.shape[1] - 1)
    n = np.maximum(hi - lo, 1)
    return (cum[i, hi] - cum[i, lo]) / n


@dataclass
class _Quads:
    corners: np.ndarray    # (Q, 4, 2)
    support: np.ndarray    # (Q, 4) top, right, bottom, left
    score: np.ndarray
    area: np.ndarray
    lines: np.ndarray      # (Q, 4) line indices top, right, bottom, left


def _quads(lines: _Lines, ts, cum, shape, min_area_frac) -> _Quads:
    h, w = shape
    nrm = lines.normal
    horiz = np.abs(nrm[:, 1]) >= math.cos(math.radians(45))
    hi_, vi_ = np.flatnonzero(horiz), np.flatnonzero(~horiz)
    empty = _Quads(np.zeros((0, 4, 2)), np.zeros((0, 4)), np.zeros(0), np.zeros(0), np.zeros((0, 4), int))
    if len(hi_) < 2 or len(vi_) < 2:
        return empty
    # positions: y of each horizontal line at the centre column, x of each vertical at the centre row
    cx, cy = w / 2, h / 2
    ypos = (lines.rho[hi_] - nrm[hi_, 0] * cx) / nrm[hi_, 1]
    xpos = (lines.rho[vi_] - nrm[vi_, 1] * cy) / nrm[vi_, 0]
    a, b = np.triu_indices(len(hi_), 1)
    top = np.where(ypos[a] < ypos[b], hi_[a], hi_[b])
    bot = np.where(ypos[a] < ypos[b], hi_[b], hi_[a])
    c, d = np.triu_indices(len(vi_), 1)
    left = np.where(xpos[c] < xpos[d], vi_[c], vi_[d])
    right = np.where(xpos[c] < xpos[d], vi_[d], vi_[c])
    T, L = np.meshgrid(np.arange(top.size), np.arange(left.size), indexing="ij")
    t_, b_, l_, r_ = top[T.ravel()], bot[T.ravel()], left[L.ravel()], right[L.ravel()]

    # every line with every line, once (30 x 30), then each quad's corners are looked up in that table
    # (computing them per quad repeated each intersection ~50 times)
    table = _intersect(nrm[:, None], lines.rho[:, None], nrm[None, :], lines.rho[None, :])

    tx, ty = np.ascontiguousarray(table[..., 0]), np.ascontiguousarray(table[..., 1])
    pairs = [(t_, l_), (t_, r_), (b_, r_), (b_, l_)]                # TL TR BR BL
    xs, ys = [tx[i, j] for i, j in pairs], [ty[i, j] for i, j in pairs]
    # first the cheap test that most quads fail, on flat contiguous rows: every corner within the frame
    # (a margin of 3 %); NaN (parallel lines) and inf fail every comparison, so they drop out here too
    margin = 0.03 * max(h, w)
    ok = np.ones(len(t_), bool)
    for x, y in zip(xs, ys):
        ok &= (x > -margin) & (x < w + margin) & (y > -margin) & (y < h + margin)
    keep = np.flatnonzero(ok)
    # corners as (4 corners, x/y, quads): every test below is then elementwise over long rows (numpy's
    # reductions over a trailing axis of 4 cost more than all the arithmetic)
    c = np.stack([np.stack([x[keep], y[keep]]) for x, y in zip(xs, ys)])
    idx = np.stack([t_[keep], r_[keep], b_[keep], l_[keep]], 1)
    # the other tests are applied in turn, each on the survivors of the ones before: the same quads, in
    # the same order, as testing all at once
    nxt = np.roll(c, -1, axis=0)
    area = 0.5 * (c[:, 0] * nxt[:, 1] - c[:, 1] * nxt[:, 0]).sum(0)      # shoelace
    ok = area >= min_area_frac * h * w
    c, nxt, area, idx = c[:, :, ok], nxt[:, :, ok], area[ok], idx[ok]
    e = nxt - c                                          # edges TL->TR, TR->BR, BR->BL, BL->TL
    lens = np.hypot(e[:, 0], e[:, 1])                    # (4, quads)
    ok = (lens >= 0.2 * min(h, w)).all(0)
    prev = np.roll(e, 1, axis=0)
    cross = prev[:, 0] * e[:, 1] - prev[:, 1] * e[:, 0]  # > 0: a convex turn, clockwise in y-down
    cosang = -(e[:, 0] * prev[:, 0] + e[:, 1] * prev[:, 1]) / (lens * np.roll(lens, 1, axis=0) + 1e-9)
    ok &= (cross > 0).all(0) & (np.abs(cosang) <= math.cos(math.radians(55))).all(0)
    ratio1 = np.minimum(lens[0], lens[2]) / np.maximum(lens[0], lens[2])
    ratio2 = np.minimum(lens[1], lens[3]) / np.maximum(lens[1], lens[3])
    ok &= (ratio1 >= 0.6) & (ratio2 >= 0.6)
    aspect = (lens[0] + lens[2]) / (lens[1] + lens[3])
    ok &= (aspect >= 0.4) & (aspect <= 2.5)
    q = c[:, :, ok].transpose(2, 0, 1)                   # (quads, 4, 2)
    area = area[ok]
    idx = idx[ok]
    if not len(q):
        return empty
    # support per side: parameter along the line of each end corner = d . p
    ts0 = ts[0]
    sup = np.zeros((len(q), 4))
    ends = [(0, 1), (1, 2), (2, 3), (3, 0)]
    for s, (i0, i1) in enumerate(ends):
        li = idx[:, s]
        dvec = np.stack([-nrm[li, 1], nrm[li, 0]], -1)
        ta = np.sum(dvec * q[:, i0], -1)
        tb = np.sum(dvec * q[:, i1], -1)
        sup[:, s] = _segment_support(cum, ts0, li, ta, tb)
    score = 0.5 * sup.min(1) + 0.5 * sup.mean(1)
    return _Quads(q, sup, score, area, idx)


def _side_gaps(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """How far each side (top, right, bottom, left) of the ``inner`` quad(s) (..., 4, 2) lies inside
    the same side of ``outer`` (4, 2), or of each of a batch of ``outer`` quads (K, 4, 2) paired with
    ``inner`` (K, 4, 2); negative where it pokes out. Returns (..., 4)."""
    e = np.roll(outer, -1, axis=-2) - outer
    nrm = np.stack([e[..., 1], -e[..., 0]], -1) / (np.linalg.norm(e, axis=-1, keepdims=True) + 1e-12)
    # signed distance (outward positive) of each inner corner c from each outer side s
    d = np.einsum("...ck,...sk->...sc", inner, nrm) - np.sum(nrm * outer, -1)[..., None]
    ends = np.stack([d[..., s, [s, (s + 1) % 4]] for s in range(4)], -2)   # the side's own corners
    return -ends.max(-1)


def _contains(outer: np.ndarray, inner: np.ndarray, tol: float) -> np.ndarray:
    """Whether each inner quad's corners all lie inside ``outer`` (or within ``tol`` px outside)."""
    e = np.roll(outer, -1, axis=0) - outer
    nrm = np.stack([e[:, 1], -e[:, 0]], -1) / (np.linalg.norm(e, axis=1, keepdims=True) + 1e-12)
    d = np.einsum("...ck,sk->...sc", inner, nrm) - np.sum(nrm * outer, -1)[:, None]
    return np.all(d <= tol, axis=(-1, -2))


_BAND_T = np.linspace(0.04, 0.96, 24)
_CORE_U = np.linspace(0.04, 0.96, 16)
_BAND_ROWS = 6


def _band_stats(outer, inner, smooth: np.ndarray, gaps: np.ndarray):
    """Brightness quantiles of the bands between nested quads and of the inner quads' insides, for K
    pairs at once (``outer``, ``inner`` (K, 4, 2), ``gaps`` (K, 4) from :func:`_side_gaps`).

    Sampled rather than rasterised: per side with a gap of at least 2 px, points
    across the band (kept 1.5 px from both of its borders where it is wide
    enough) at 24 places along it, one row per 2 px of width (up to 6), so
    wider bands weigh more; and a 16 x 16 grid over the inner quad. All the
    points of all the pairs are read in one go: judging the candidates one by one
    cost ~0.3 ms each in numpy call overhead (about 13 per photo). Returns
    (K, 3) band quartiles 25/50/75 and (K, 4) inside quantiles 2/25/75/90; a pair
    without any band side gets NaN rows.
    """
    k = len(outer)
    t = _BAND_T[None, None, :, None]                                    # (pairs, sides, along, xy)
    o0, o1 = outer, np.roll(outer, -1, axis=1)
    i0, i1 = inner, np.roll(inner, -1, axis=1)
    po = o0[:, :, None] + t * (o1 - o0)[:, :, None]                    # (K, 4, 24, 2)
    pi = i0[:, :, None] + t * (i1 - i0)[:, :, None]
    width = np.maximum(np.hypot(*np.moveaxis(po - pi, -1, 0)), 1e-6)   # (K, 4, 24)
    lo = np.minimum(1.5 / width, 0.5)
    rows = np.clip(np.round(gaps / 2), 1, _BAND_ROWS).astype(int)       # (K, 4)
    r = np.arange(_BAND_ROWS)
    frac = lo[..., None] + (1 - 2 * lo)[..., None] * ((r + 0.5) / rows[..., None, None])  # (K, 4, 24, rows)
    used = (gaps >= 2.0)[:, :, None, None] & (r < rows[..., None, None])
    used = np.broadcast_to(used, frac.shape)
    ring = pi[:, :, :, None] + frac[..., None] * (po - pi)[:, :, :, None]   # (K, 4, 24, rows, 2)
    uu, vv = (m[..., None] for m in np.meshgrid(_CORE_U, _CORE_U))
    tl, tr, br, bl = (inner[:, c, None, None] for c in range(4))
    grid = ((1 - vv) * ((1 - uu) * tl + uu * tr) + vv * ((1 - uu) * bl + uu * br)).reshape(k, -1, 2)
    nr = ring[..., 0].size
    pts = np.concatenate([ring.reshape(-1, 2), grid.reshape(-1, 2)])
    values = _bilinear(smooth, pts[:, 0], pts[:, 1])
    band = np.where(used, values[:nr].reshape(used.shape), np.nan).reshape(k, -1)
    return (_quantiles(band, (25, 50, 75), used.reshape(k, -1).sum(1)),
            _quantiles(values[nr:].reshape(k, -1), (2, 25, 75, 90)))


def _quantiles(v: np.ndarray, qs, counts=None) -> np.ndarray:
    """``np.percentile(row, qs)`` (linear interpolation) of each row of ``v`` (R, N), without its overhead;
    ``counts``: how many leading values of each sorted row count (NaNs sort last), default all. (R, len(qs))."""
    v = np.sort(v, axis=1)
    n = np.full(len(v), v.shape[1]) if counts is None else np.asarray(counts)
    idx = np.asarray(qs, float)[None, :] / 100 * (np.maximum(n, 1) - 1)[:, None]
    lo = np.floor(idx).astype(int)
    hi = np.minimum(lo + 1, np.maximum(n, 1)[:, None] - 1)
    a, b = np.take_along_axis(v, lo, 1), np.take_along_axis(v, hi, 1)
    return a + (idx - lo) * (b - a)


def _band_kinds(outer, inner, smooth, max_ratio: float = 0.5) -> list[str]:
    """What the band between each ``outer`` and its nested ``inner`` quad is (``outer``, ``inner``
    (K, 4, 2); one of them may be a single (4, 2) quad, shared by all K).

    'frame': a lightbox panel's or a screen's plain margin, so ``inner`` is the
    film. 'bars': the film's own dark letterbox bars, two of about the same
    width on opposite sides, so ``outer`` is the film. '' otherwise.

    A plain band has an interquartile range of smoothed brightness at most
    ``max_ratio`` of the inner quad's (quantiles ignore the blurred edge pixels
    at its borders and fine noise/moiré). A frame around three or four sides
    may have any brightness; on one or two sides only (the panel runs out of the
    frame elsewhere) it must be plainer still (half that ratio: not a strip of
    the film itself) and brighter than the film's blacks. ``smooth()`` is called
    only when some band is worth sampling.
    """
    outer, inner = np.broadcast_arrays(np.asarray(outer, float), np.asarray(inner, float))
    outer, inner = outer.reshape(-1, 4, 2), inner.reshape(-1, 4, 2)
    k = len(outer)
    kinds = [""] * k
    gaps = _side_gaps(outer, inner)
    judged = np.flatnonzero((gaps.min(1) >= -4.0) & (gaps.max(1) >= 2.0))
    if not len(judged):
        return kinds
    bands, cores = _band_stats(outer[judged], inner[judged], smooth(), gaps[judged])
    for j, (r25, r50, r75), (c02, c25, c75, c90) in zip(judged, bands, cores):
        g = gaps[j]
        sides = g >= 2.0
        spread = (r75 - r25) / max(c75 - c25, 4.0)
        if spread > max_ratio:
            continue
        dark = r50 <= c02 + 0.08 * (c90 - c02)
        if sides.sum() >= 3 or (not dark and spread <= max_ratio / 2):
            kinds[j] = "frame"
            continue
        # letterbox bars: two opposite bands of about the same width, nothing on the other sides
        for a, b in ((0, 2), (1, 3)):
            if dark and sides[a] and sides[b] and sides.sum() == 2:
                if min(g[a], g[b]) >= 0.4 * max(g[a], g[b]):
                    kinds[j] = "bars"
    return kinds


def _select(quads: _Quads, smooth, min_score) -> int | None:
    """Index of the film among the supported quads (see the module docstring, step 4). ``smooth()``
    gives the blurred search image the bands between nested quads are judged on (made only if asked)."""
    good = np.flatnonzero((quads.score >= min_score) & (quads.support.min(1) >= 0.5 * min_score))
    if not len(good):
        return None
    # near-identical quads (from near-duplicate lines) need judging once: keep the best of each
    good = good[np.argsort(-quads.score[good], kind="stable")][:400]
    keys = np.round(quads.corners[good].reshape(len(good), -1) / 4.0).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    good = good[np.sort(first)]
    top = quads.score[good].max()
    best = good[quads.score[good] >= top - 0.01]
    chosen = int(best[np.argmax(quads.area[best])])
    for _ in range(4):                      # panel -> film, screen -> image
        outer = quads.corners[chosen]
        cand = good[(quads.area[good] < 0.97 * quads.area[chosen])
                    & _contains(outer, quads.corners[good], 4.0)]
        gaps = _side_gaps(outer, quads.corners[cand])
        nested = cand[(gaps.min(1) >= -4.0) & (gaps.max(1) >= 2.0)]
        if not len(nested):
            break
        # the next level in: the best supported nested quad behind a plain frame
        nested = sorted(nested, key=lambda i: (-round(float(quads.score[i]), 2), -quads.area[i]))
        nested = nested[:16]
        kinds = _band_kinds(outer, quads.corners[nested], smooth)
        inner = nested[kinds.index("frame")] if "frame" in kinds else None
        if inner is None:
            break
        chosen = int(inner)
    for _ in range(2):                      # letterboxed content -> the whole film
        inner = quads.corners[chosen]
        around = [int(i) for i in good if quads.area[i] > 1.03 * quads.area[chosen]
                  and _contains(quads.corners[i], inner, 4.0)]
        around.sort(key=lambda i: quads.area[i])
        around = around[:12]
        kinds = _band_kinds(quads.corners[around], inner, smooth) if around else []
        outer = around[kinds.index("bars")] if "bars" in kinds else None
        if outer is None:
            break
        chosen = int(outer)
    return chosen


# --------------------------------------------------------------------------- refinement

def _bilinear(a: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h, w = a.shape
    x = np.clip(x - 0.5, 0, w - 1.001)
    y = np.clip(y - 0.5, 0, h - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    return (a[y0, x0] * (1 - fx) * (1 - fy) + a[y0, x0 + 1] * fx * (1 - fy)
            + a[y0 + 1, x0] * (1 - fx) * fy + a[y0 + 1, x0 + 1] * fx * fy)


def _fit_lines(pts: np.ndarray, valid: np.ndarray):
    """Total-least-squares lines through the ``valid`` (S, M) points of ``pts`` (S, M, 2), one per side,
    each with two rounds of outlier rejection: [(unit normal, rho)] * S, or None when a side keeps fewer
    than 6 points. All the sides at once (fitting them one by one was mostly numpy call overhead)."""
    keep = valid.copy()
    x, y = pts[..., 0], pts[..., 1]
    nx = ny = rho = None
    for _ in range(3):
        count = keep.sum(1)
        if (count < 6).any():
            return None
        cx = np.where(keep, x, 0.0).sum(1) / count
        cy = np.where(keep, y, 0.0).sum(1) / count
        dx, dy = np.where(keep, x - cx[:, None], 0.0), np.where(keep, y - cy[:, None], 0.0)
        # the direction of least spread (across the line), from the 2 x 2 scatter in closed form
        theta = 0.5 * np.arctan2(2 * (dx * dy).sum(1), (dx * dx).sum(1) - (dy * dy).sum(1))   # along the line
        nx, ny = -np.sin(theta), np.cos(theta)
        rho = nx * cx + ny * cy
        res = np.abs(x * nx[:, None] + y * ny[:, None] - rho[:, None])
        # the median of the kept residuals: not-kept ones sort last as inf
        srt = np.sort(np.where(keep, res, np.inf), axis=1)
        mid = np.take_along_axis(srt, np.stack([(count - 1) // 2, count // 2], 1), 1)
        mad = 0.5 * (mid[:, 0] + mid[:, 1]) * 1.4826
        keep = valid & (res <= np.maximum(1.0, 3.0 * mad)[:, None])
    return [(np.array([nx[s], ny[s]]), float(rho[s])) for s in range(len(nx))]


#: A Gaussian (sigma 1 px) sampled at whole pixels along a side and at half pixels across it: the
#: profiles are smoothed as if the image had been blurred by it, but only where they are read.
_ALONG = np.exp(-0.5 * np.arange(-2, 3) ** 2)
_ALONG = _ALONG / _ALONG.sum()
_ACROSS = np.exp(-0.5 * (np.arange(-4, 5) * 0.5) ** 2)
_ACROSS = _ACROSS / _ACROSS.sum()


def _smooth_profiles(g: np.ndarray, base: np.ndarray, nrm: np.ndarray, offs: np.ndarray,
                     along: bool = True) -> np.ndarray:
    """Brightness profiles across the sides (``base`` (sides, points, 2) along each side, ``nrm`` (sides, 2)
    their normals; result (sides, points, offsets)) read from the unblurred image ``g``, smoothed by a
    1-px Gaussian along and across the side. Blurring the whole 1024-px image for the same result cost
    more than the rest of the refinement together. ``along=False``: across only (the coarse pass, which
    only has to come within a pixel)."""
    d = np.stack([-nrm[:, 1], nrm[:, 0]], -1)
    taps, weights = (np.arange(-2, 3, dtype=float), _ALONG) if along else (np.zeros(1), np.ones(1))
    t = taps[:, None, None, None]                                        # (taps, sides, points, offsets)
    x = (base[None, :, :, None, 0] + t * d[None, :, None, None, 0]
         + offs[None, None, None, :] * nrm[None, :, None, None, 0])
    y = (base[None, :, :, None, 1] + t * d[None, :, None, None, 1]
         + offs[None, None, None, :] * nrm[None, :, None, None, 1])
    prof = np.tensordot(weights, _bilinear(g, x, y), axes=1)
    r = len(_ACROSS) // 2
    padded = np.pad(prof, ((0, 0), (0, 0), (r, r)), mode="edge")
    return sum(w * padded[..., i:i + prof.shape[-1]] for i, w in enumerate(_ACROSS))


def _refine(quad: np.ndarray, g: np.ndarray, radius: float, t_edge: float, *, coarse: bool = False) -> np.ndarray:
    """Sub-pixel corners: per side, the edge of the side's polarity nearest the coarse line, found
    on profiles across the side (:func:`_smooth_profiles` of the unblurred image ``g``), then a robust
    line fit and the lines' intersections. ``coarse``: a first pass over a wide band, a third of the
    profiles and no smoothing along the side (the fine pass that follows gives the precision). The four
    sides are read in one batch (shorter ones padded with rows marked invalid)."""
    centre = quad.mean(0)
    a, e = quad, np.roll(quad, -1, axis=0) - quad
    length = np.hypot(e[:, 0], e[:, 1])
    nrm = np.stack([e[:, 1], -e[:, 0]], -1) / length[:, None]
    nrm *= np.where(np.sum(nrm * (a - centre), 1) < 0, -1.0, 1.0)[:, None]   # outward
    ms = [max(12, min(32 if coarse else 96, int(ln / (18 if coarse else 6)))) for ln in length]
    M = max(ms)
    rows = np.zeros((4, M), bool)
    f = np.zeros((4, M))
    for s, m in enumerate(ms):
        rows[s, :m] = True
        f[s, :m] = np.linspace(0.06, 0.94, m)
    base = a[:, None] + f[..., None] * e[:, None]                        # (sides, points, 2)
    step = 0.5
    offs = np.arange(-radius, radius + step, step)
    deriv = np.gradient(_smooth_profiles(g, base, nrm, offs, along=not coarse), step, axis=2)
    # polarity: which way the brightness steps where the coarse line crosses (a lightbox edge
    # or a letterbox bar next to the film's edge steps the other way or lies further off)
    near = np.abs(offs) <= 2.0
    pol = np.sign(np.sum(deriv[:, :, near] * rows[..., None], axis=(1, 2)))
    dd = deriv * np.where(pol != 0, pol, 1.0)[:, None, None]
    # per profile: the local maximum nearest the coarse line among the strong ones
    inner = np.zeros_like(dd, bool)
    inner[..., 1:-1] = (dd[..., 1:-1] >= dd[..., :-2]) & (dd[..., 1:-1] >= dd[..., 2:])
    strong = inner & (dd >= np.maximum(t_edge, 0.4 * dd.max(axis=2, keepdims=True)))
    k = np.argmin(np.where(strong, np.abs(offs), np.inf), axis=2)
    valid = rows & strong.any(axis=2) & (k > 0) & (k < len(offs) - 1)
    kk = np.clip(k, 1, len(offs) - 2)
    y0, y1, y2 = (np.take_along_axis(dd, (kk + j)[..., None], 2)[..., 0] for j in (-1, 0, 1))
    denom = y0 - 2 * y1 + y2
    sub = np.where(np.abs(denom) > 1e-9, 0.5 * (y0 - y2) / np.where(denom == 0, 1, denom), 0.0)
    pos = offs[kk] + np.clip(sub, -0.5, 0.5) * step
    pts = base + pos[..., None] * nrm[:, None]
    new_lines = _fit_lines(pts, valid)
    if new_lines is None:
        return quad
    out = np.zeros((4, 2))
    for c in range(4):      # corner c joins side c-1 and side c
        (n1, r1), (n2, r2) = new_lines[(c - 1) % 4], new_lines[c]
        p = _intersect(n1, r1, n2, r2)
        if not np.all(np.isfinite(p)) or np.hypot(*(p - quad[c])) > 3 * radius:
            return quad
        out[c] = p
    return out


# --------------------------------------------------------------------------- public API

def find_film(image, *, min_area: float = 0.06, min_score: float = 0.75) -> FilmDetection:
    """Locate the film in a photo: 4 corners (TL, TR, BR, BL, full-resolution pixel coordinates),
    a confidence in [0, 1] and the method, or ``found=False`` with a reason.

    ``image``: a PIL image or an (H, W[, 3]) uint8 array of any size. ``min_area``:
    the smallest film, as a fraction of the photo. ``min_score``: the edge
    support a quad needs (0..1) to count as found.
    """
    img = _to_pil(image)
    W, H = img.size
    if min(W, H) < 32:
        return FilmDetection(False, None, 0.0, "hough-quad", "image too small to search")
    med = _grey_u8(_shrink(img, REFINE_SIZE) if img.mode in ("L", "RGB", "RGBA") else
                   _shrink(_grey_u8(img), REFINE_SIZE))
    # reducing_gap: a box reduce by the whole factor first (a 1000-px decode: by 3), then a small bilinear
    # resize; a plain antialiased resize of the 1000-px image cost several times more
    work = (med.resize(_fit_size(med.size, WORK_SIZE), Image.BILINEAR, reducing_gap=1.5)
            if max(med.size) > WORK_SIZE else med)
    g = np.asarray(work.filter(ImageFilter.GaussianBlur(1.5)), np.float32)
    gx, gy = _gradients(g)
    mag = np.hypot(gx, gy)
    t_edge = max(1.5, 1.5 * float(np.median(mag[::2, ::2])))    # a quarter of the pixels: the same median
    edges = _thin(mag, gx, gy) & (mag >= t_edge)
    ey, ex = np.nonzero(edges)
    h, w = g.shape
    if len(ey) < 20:
        return FilmDetection(False, None, 0.0, "hough-quad", "no edges: the image is flat")
    theta = np.arctan2(gy[ey, ex], gx[ey, ex]) % math.pi
    lines = _hough(ey, ex, theta, (h, w), max_lines=MAX_LINES, min_votes=max(10, 0.1 * min(h, w)))
    ts, cum = _line_support(lines, gx, gy, t_edge)
    quads = _quads(lines, ts, cum, (h, w), min_area)
    if not len(quads.score):
        return FilmDetection(False, None, 0.0, "hough-quad", "no four straight edges forming a film")
    chosen = _select(quads, functools.cache(lambda: np.asarray(work.filter(ImageFilter.GaussianBlur(2.0)),
                                                              np.float32)), min_score)
    if chosen is None:
        best = float(quads.score.max())
        return FilmDetection(False, None, best, "hough-quad",
                             f"no quadrilateral with all four edges visible (best edge support {best:.2f})")
    quad = quads.corners[chosen]
    log.debug("find_film: %d edge pixels, %d lines, %d quads; chosen score %.3f",
              len(ey), len(lines.rho), len(quads.score), quads.score[chosen])
    # refine at the medium size, then map to full resolution
    gm = np.asarray(med)
    sx, sy = med.size[0] / w, med.size[1] / h
    q = quad * [sx, sy]
    q = _refine(q, gm, radius=3.0 * max(sx, sy) + 3.0, t_edge=t_edge, coarse=True)
    q = _refine(q, gm, radius=3.0, t_edge=t_edge)
    full = q * [W / med.size[0], H / med.size[1]]
    return FilmDetection(True, full, float(quads.score[chosen]), "hough-quad")


def _fit_size(size, long_side):
    w, h = size
    s = long_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def _inset(corners: np.ndarray, size) -> float:
    """How far inside the frame the quad's nearest corner lies, as a fraction of the longer side."""
    W, H = size
    c = np.asarray(corners)
    return float(min(c[:, 0].min(), W - c[:, 0].max(), c[:, 1].min(), H - c[:, 1].max()) / max(W, H))


def rectify(image, *, max_side: int = 1024, mode: str = "L", detection: FilmDetection | None = None,
            allow_passthrough: bool = True, allow_crop: bool = True, grey_inset: float = 0.025,
            grey_confidence: float = 0.85) -> RectifyResult:
    """Find the film and warp it upright, take a photo without film edges as cropped to the film, or
    pass a digital image through untouched (``path``: see the module docstring).

    * A film found in a photo (path 'quadrilateral'): ``image`` is the film warped to a rectangle whose
      sides match the film's measured sides (longer side at most ``max_side``), in Pillow ``mode``
      ('L' or 'RGB').
    * A grey image (a digital CXR, a scan, a DICOM export) with no film clearly inside it and no screen
      pattern (path 'digital'): ``passthrough=True`` and ``image`` is the input itself, pixels
      untouched. "Clearly" = found with confidence >= ``grey_confidence`` and every corner at least
      ``grey_inset`` of the longer side inside the frame; a digital image's own borders and letterbox
      bars never qualify. ``allow_passthrough=False`` treats every image as a photo.
    * No film edges in a colour photo, or a grey one showing a screen's pixel grid (path 'cropped'):
      the photo, at most ``max_side`` px, with its uniform borders trimmed (:func:`trim_borders`).
      With ``allow_crop=False`` the path is 'none' and ``image`` None instead.

    ``detection`` reuses an earlier :func:`find_film` result.
    """
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    img = _to_pil(image)
    grey = img if img.mode == "L" else None
    if grey is None and mode == "L" and img.mode == "RGB":
        grey = img.convert("L")        # once, for the search and the warp alike
    det = detection if detection is not None else find_film(grey if grey is not None else img)
    screen = None
    if allow_passthrough and is_grayscale(img):
        photo_of_film = (det.found and det.confidence >= grey_confidence
                         and _inset(det.corners, img.size) >= grey_inset)
        if not photo_of_film:
            small = _fit_within(_grey_u8(img), max_side)
            screen = detect_moire(small)
            if not (screen.found and allow_crop):
                return RectifyResult(img, False, True, None, det, path="digital")
            return _cropped(img, det, max_side, mode, screen, small)
    source = grey if grey is not None and mode == "L" else img
    if det.found:
        return RectifyResult(warp_film(source, det.corners, max_side=max_side, mode=mode), True, False,
                             det.corners, det, path="quadrilateral")
    if not allow_crop:
        return RectifyResult(None, False, False, None, det, path="none")
    return _cropped(source, det, max_side, mode, screen)


def _cropped(img: Image.Image, det: FilmDetection, max_side: int, mode: str,
             screen: MoireDetection | None, small: Image.Image | None = None) -> RectifyResult:
    """The 'cropped' path: the photo at most ``max_side`` px, its uniform borders trimmed."""
    if small is None or mode != "L":
        small = _fit_within(img if img.mode in ("L", "RGB") else _grey_u8(img), max_side)
        small = small if small.mode == mode else small.convert(mode)
    box_small = trim_borders(small)
    film = small.crop(box_small) if box_small != (0, 0, *small.size) else small
    sx, sy = img.size[0] / small.size[0], img.size[1] / small.size[1]
    x0, y0, x1, y1 = box_small
    box = (round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy))
    corners = np.array([[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]], float)
    # the screen pattern was measured on the untrimmed image at the film's scale: its peaks still hold
    keep = screen if screen is not None and screen.size == small.size else None
    if keep is not None:
        keep = MoireDetection(keep.found, keep.period_px, keep.angle_deg, keep.prominence, keep.peaks, film.size)
    return RectifyResult(film, False, False, corners, det, path="cropped", box=box, screen=keep)


#: A border line is uniform when this share of its pixels lie within the tolerance of its median.
TRIM_UNIFORM_SHARE = 0.95
TRIM_MAX_SIDE = 0.35          # never trim more than this share of the width / height from one side
TRIM_ANALYSIS = 256           # px: the long side of the copy the borders are measured on


def trim_borders(image, *, analysis: int = TRIM_ANALYSIS) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) of ``image`` left after trimming uniform borders.

    From each side inwards, rows (columns) are trimmed while nearly all their pixels share one grey
    level (:data:`TRIM_UNIFORM_SHARE` within a tolerance of 6 % of the image's range): a monitor's bezel,
    a viewer's background, a lightbox margin, a page's white margin, letterbox bars, of any brightness,
    one band after another. A bright band is trimmed only where it ends in a clear step to the film (the
    next rows differ from it by more than four tolerances), so a film's own burnt-out region that fades
    into it is kept; a dark one always (black is what the models see around a film anyway). At most
    :data:`TRIM_MAX_SIDE` of the image goes from any one side. Measured on a copy ``analysis`` px long.
    """
    img = _to_pil(image)
    W, H = img.size
    grey = _grey_u8(img)
    small = grey.reduce(max(1, max(W, H) // analysis)) if max(W, H) >= 2 * analysis else grey
    a = np.asarray(small, np.float32)
    h, w = a.shape
    if min(h, w) < 8:
        return (0, 0, W, H)
    lo, hi = np.percentile(a, [1, 99])
    tol = max(6.0, 0.06 * float(hi - lo))
    dark = lo + 0.15 * float(hi - lo)
    left, top, right, bottom = 0, 0, w, h
    for _ in range(4):          # nested bands (a page margin around a bezel): each pass peels one off
        inner = a[top:bottom, left:right]
        cut = [_trim_side(inner.T, tol, w, dark), _trim_side(inner, tol, h, dark),      # left (columns), top
               _trim_side(inner[:, ::-1].T, tol, w, dark), _trim_side(inner[::-1], tol, h, dark)]  # right, bottom
        if not any(cut):
            break
        left, top, right, bottom = left + cut[0], top + cut[1], right - cut[2], bottom - cut[3]
    box = (int(math.floor(left / w * W)), int(math.floor(top / h * H)),
           int(math.ceil(right / w * W)), int(math.ceil(bottom / h * H)))
    return box if box[2] - box[0] >= 16 and box[3] - box[1] >= 16 else (0, 0, W, H)


def _trim_side(a: np.ndarray, tol: float, full: int, dark: float) -> int:
    """How many leading rows of ``a`` (rows = lines parallel to the side) are a uniform border; ``full``:
    the image's extent across the side (the cap is a share of it); ``dark``: bands at most this bright
    are trimmed without a step to the film."""
    med = np.median(a, axis=1)
    uniform = np.mean(np.abs(a - med[:, None]) <= tol, axis=1) >= TRIM_UNIFORM_SHARE
    limit = min(int(TRIM_MAX_SIDE * full), a.shape[0] - 8)
    k = 0
    while k < limit and uniform[k]:
        k += 1
    if k == 0 or k >= limit:
        return 0
    band = float(np.median(med[:k]))
    if band <= dark:
        return k         # a dark band: a bezel, a viewer's background, letterbox bars; black is what the
                         # models see around a film anyway (fit_to_square pads with black)
    # the step: the band's last rows against the film's first ones (past the edge's own blurred row); a
    # burnt-out region fading into the film changes little there, a margin's edge a lot
    edge = float(np.median(med[max(0, k - 3):k]))
    inner = float(np.median(a[k + 1:k + 4]))
    return k if abs(inner - edge) > 4 * tol else 0


def warp_film(image, corners, *, max_side: int = 1024, mode: str = "L",
              size: tuple[int, int] | None = None) -> Image.Image:
    """Warp the quad ``corners`` (TL, TR, BR, BL) of ``image`` to an upright rectangle.

    The rectangle's sides are the quad's mean opposite side lengths (so the
    film keeps its aspect ratio), scaled down to ``max_side``; ``size`` forces
    (width, height). Large sources are box-reduced first so the warp does not
    alias.
    """
    img = _to_pil(image)
    q = np.asarray(corners, float)
    e = np.roll(q, -1, axis=0) - q
    lens = np.linalg.norm(e, axis=1)
    fw, fh = (lens[0] + lens[2]) / 2, (lens[1] + lens[3]) / 2
    if size is None:
        s = min(1.0, max_side / max(fw, fh))
        size = (max(1, round(fw * s)), max(1, round(fh * s)))
    ow, oh = size
    k = int(min(fw / ow, fh / oh))
    src = img if img.mode in ("L", "RGB") else (_grey_u8(img) if mode == "L" else img.convert("RGB"))
    if k >= 2:
        # box-reduce only the film's bounding box, before any mode conversion: on a 12-MP
        # photo every full-size pass costs more than the warp itself
        x0, y0 = np.floor(np.maximum(q.min(0) - 2, 0)).astype(int)
        x1, y1 = np.ceil(np.minimum(q.max(0) + 2, src.size)).astype(int)
        x1, y1 = x0 + max(k, (x1 - x0) // k * k), y0 + max(k, (y1 - y0) // k * k)
        src = src.reduce(k, box=(int(x0), int(y0), int(min(x1, src.size[0])), int(min(y1, src.size[1]))))
        q = (q - [x0, y0]) / k
    if src.mode != mode:
        src = src.convert(mode)
    out_quad = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], float)
    # bicubic only where the warp magnifies (it costs 3x bilinear, ~6 ms of a 12-MP photo's budget); at the
    # film's own scale or below bilinear loses nothing the 256-px quality checks or the 224-px models see, and
    # the reduce above already antialiased larger steps
    magnifying = max(ow, oh) > 1.05 * max(fw, fh)
    resample = Image.BICUBIC if magnifying else Image.BILINEAR
    return src.transform((ow, oh), Image.PERSPECTIVE, perspective_coeffs(out_quad, q), resample)
