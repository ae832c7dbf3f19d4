"""Blur kernels in float32 numpy: a box blur with a fractional radius and a fast Gaussian.

The photo quality checks (:mod:`cxr_edge.runtime.photo.quality`) measure sharpness and glare with
them on the device; the phone-photo simulator (:mod:`cxr_edge.tools.photosim`) blurs with the same
kernels, so a simulated defocus and its measurement agree. numpy and Pillow only.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

__all__ = ["box_blur", "gaussian_blur"]


def box_blur(a: np.ndarray, radius: float, axis: int) -> np.ndarray:
    """Mean over a window of 2*radius+1 pixels along ``axis`` (edges replicated), float32.

    A fractional radius blends the two nearest integer windows, so blur strength
    varies smoothly with the radius.
    """
    r = int(math.floor(radius))
    frac = float(radius) - r
    if r <= 0 and frac <= 0:
        return a
    x = np.swapaxes(a, 0, axis)
    pad = [(r + 2, r + 1)] + [(0, 0)] * (x.ndim - 1)
    c = np.cumsum(np.pad(x, pad, mode="edge"), axis=0, dtype=np.float32)
    n = x.shape[0]
    out = (c[2 * r + 2:2 * r + 2 + n] - c[1:1 + n]) * np.float32(1.0 / (2 * r + 1))
    if frac > 0:
        wider = (c[2 * r + 3:2 * r + 3 + n] - c[0:n]) * np.float32(1.0 / (2 * r + 3))
        out = out * np.float32(1 - frac) + wider * np.float32(frac)
    return np.swapaxes(out, 0, axis)


def _gauss_small(a: np.ndarray, sigma: float) -> np.ndarray:
    """Exact separable Gaussian for small sigmas (a few shifted adds per axis)."""
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    out = a
    for axis in (0, 1):
        x = np.swapaxes(out, 0, axis)
        p = np.pad(x, [(r, r)] + [(0, 0)] * (x.ndim - 1), mode="edge")
        n = x.shape[0]
        acc = p[0:n] * k[0]
        for i in range(1, 2 * r + 1):
            acc = acc + p[i:i + n] * k[i]
        out = np.swapaxes(acc, 0, axis)
    return out


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a 2-D or (H, W, C) float image.

    Small sigmas use the exact kernel; larger ones three box blurs per axis,
    at a reduced size when sigma is large, which keeps a 1-megapixel blur to a
    few tens of milliseconds.
    """
    x = a.astype(np.float32, copy=False)
    if sigma <= 0.3:
        return x
    if sigma < 1.5:
        return _gauss_small(x, sigma)
    h, w = a.shape[:2]
    k = int(sigma // 2) if sigma >= 4 and a.ndim == 2 else 1
    if k > 1:
        x = np.asarray(Image.fromarray(x, "F").resize((max(1, w // k), max(1, h // k)), Image.BILINEAR))
    s = sigma / k
    # three boxes of radius r have variance ((2r+1)^2 - 1) / 4 = sigma^2
    r = (math.sqrt(4 * s * s + 1) - 1) / 2
    for axis in (0, 1):
        for _ in range(3):
            x = box_blur(x, r, axis)
    if k > 1:
        x = np.asarray(Image.fromarray(np.ascontiguousarray(x), "F").resize((w, h), Image.BILINEAR))
    return x
