"""Contrast enhancement for grey films: CLAHE in numpy, vectorised.

:func:`clahe` follows ``skimage.exposure.equalize_adapthist`` (scikit-image
0.26, itself after Zuiderveld, Graphics Gems IV) step by step, so a pack
trained with scikit-image's CLAHE sees the same pixels on a phone that has
only numpy:

1. The image is stretched to its own min..max on 14 bits (0..16383) and
   binned: ``bin = value // (1 + 16384 // nbins)``.
2. It is reflect-padded so that contextual regions (tiles) of
   ``kernel = max(side // tiles, 1)`` pixels start at the image's top-left
   corner and cover it, with half a tile of padding before.
3. Each tile's histogram is clipped at ``max(1, int(clip_limit * kernel_h *
   kernel_w))`` and the excess redistributed exactly as scikit-image does it
   (an even share first, then one pixel at a time in strides), run in lock
   step over all tiles at once.
4. Each clipped histogram becomes a mapping (cumulative sum scaled to 14 bits,
   truncated), and every pixel is the bilinear blend of the mappings of the
   four tiles around it (float32 accumulation in scikit-image's order).
5. The result is stretched to its min..max and returned as uint8.

Tile loops are over the clipping steps only; nothing loops over pixels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["clahe", "NR_OF_GREY"]

NR_OF_GREY = 2 ** 14      # grey levels CLAHE works in, as in scikit-image


def clahe(gray: np.ndarray, clip_limit: float = 0.01, tiles: int = 8, nbins: int = 256) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a grey uint8 image; returns uint8.

    ``clip_limit``: 0..1, the share of a tile's pixels one histogram bin may hold
    (higher = more contrast; 0 or >= 1 = plain adaptive equalisation).
    ``tiles``: tiles per side (scikit-image's default ``kernel_size`` is 1/8 of
    each side). A constant image is returned unchanged.
    """
    img = np.asarray(gray)
    if img.ndim != 2:
        raise ValueError(f"clahe expects a 2-D grey image, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"clahe expects uint8 pixels, got {img.dtype}")
    if tiles < 1 or nbins < 2:
        raise ValueError(f"tiles must be >= 1 and nbins >= 2, got tiles={tiles}, nbins={nbins}")
    lo, hi = int(img.min()), int(img.max())
    if lo == hi:
        return img.copy()
    out = _clahe_14bit(_to_bins(img, lo, hi, nbins), clip_limit, tiles, nbins)
    # final min..max stretch to [0, 1] (float64, like scikit-image), then to 8 bits
    o_lo, o_hi = float(out.min()), float(out.max())
    scaled = (out.astype(np.float64) - o_lo) / (o_hi - o_lo) if o_hi > o_lo else np.zeros(out.shape)
    return np.rint(scaled * 255.0).astype(np.uint8)


def _to_bins(img: np.ndarray, lo: int, hi: int, nbins: int) -> np.ndarray:
    """uint8 -> scikit-image's 14-bit stretch -> histogram bin, through a 256-entry table."""
    v16 = np.arange(256, dtype=np.float64) * 257.0           # img_as_uint
    imin, imax = lo * 257.0, hi * 257.0
    stretched = np.round(((np.clip(v16, imin, imax) - imin) / (imax - imin)) * (NR_OF_GREY - 1) + 0.0)
    bin_size = 1 + NR_OF_GREY // nbins
    table = (stretched.astype(np.int64) // bin_size).astype(np.intp)
    return table[img]


def _clahe_14bit(bins: np.ndarray, clip_limit: float, tiles: int, nbins: int) -> np.ndarray:
    """The CLAHE core on binned pixels; returns scikit-image's uint16 intermediate result."""
    h, w = bins.shape
    kh, kw = max(h // tiles, 1), max(w // tiles, 1)
    pad_top, pad_left = kh // 2, kw // 2
    pad_bottom = (kh - h % kh) % kh + -(-kh // 2)
    pad_right = (kw - w % kw) % kw + -(-kw // 2)
    padded = np.pad(bins, ((pad_top, pad_bottom), (pad_left, pad_right)), mode="reflect")
    ph, pw = padded.shape

    # tile histograms: tiles start at the image's own top-left corner
    nh, nw = ph // kh - 1, pw // kw - 1
    region = padded[pad_top:pad_top + nh * kh, pad_left:pad_left + nw * kw]
    tile_id = (np.arange(nh)[:, None, None, None] * nw + np.arange(nw)[None, None, :, None])
    tile_of_pixel = np.broadcast_to(tile_id, (nh, kh, nw, kw)).reshape(-1)
    hist = np.bincount(tile_of_pixel * nbins + region.reshape(nh, kh, nw, kw).reshape(-1),
                       minlength=nh * nw * nbins).reshape(nh * nw, nbins).astype(np.int64)

    n_pixels = kh * kw
    clim = int(np.clip(clip_limit * n_pixels, 1, None)) if clip_limit > 0 else n_pixels
    hist = _clip_histograms(hist, clim)
    maps = np.cumsum(hist, axis=-1).astype(np.float64) * ((NR_OF_GREY - 1) / n_pixels)
    # integer-valued mappings (truncated like scikit-image's astype(int)), kept as float64 for the blend
    maps = np.floor(np.minimum(maps, NR_OF_GREY - 1)).reshape(nh, nw, nbins)
    maps = np.pad(maps, ((1, 1), (1, 1), (0, 0)), mode="edge")        # duplicate the outer mappings

    # bilinear blend of the four surrounding mappings, per pixel of the unpadded image
    yp = np.arange(h) + pad_top
    xp = np.arange(w) + pad_left
    by, fy = yp // kh, (yp % kh) / kh
    bx, fx = xp // kw, (xp % kw) / kw
    flat = maps.reshape(-1)
    stride_y, stride_x = (nw + 2) * nbins, nbins
    base = ((by * stride_y)[:, None] + (bx * stride_x)[None, :]).astype(np.int32) + bins.astype(np.int32)
    result = np.zeros((h, w), np.float32)
    for ey in (0, 1):
        wy = fy if ey else 1 - fy
        for ex in (0, 1):
            wx = fx if ex else 1 - fx
            mapped = np.take(flat, base + np.int32(ey * stride_y + ex * stride_x))
            # float64 product of the two weights and the mapping, then float32, as scikit-image does
            mapped *= wx[None, :] * wy[:, None]
            result += mapped.astype(np.float32)
    return result.astype(np.uint16)


def _clip_histograms(hist: np.ndarray, clim: int) -> np.ndarray:
    """scikit-image's ``clip_histogram`` applied to every row of ``hist`` in lock step."""
    hist = hist.copy()
    nbins = hist.shape[1]
    over = hist > clim
    n_excess = np.where(over, hist - clim, 0).sum(1)
    hist[over] = clim

    bin_incr = n_excess // nbins                      # an even share for every bin ...
    upper = clim - bin_incr                           # ... that has room for it
    low = hist < upper[:, None]
    n_excess -= low.sum(1) * bin_incr
    hist += np.where(low, bin_incr[:, None], 0)
    mid = (hist >= upper[:, None]) & (hist < clim)
    n_excess += np.where(mid, hist - clim, 0).sum(1)
    hist[mid] = clim

    # the rest one pixel at a time, every step-th bin from `index`, as scikit-image loops it
    j = np.arange(nbins)
    active = n_excess > 0
    while active.any():
        prev = n_excess.copy()
        for index in range(nbins):
            under = hist < clim
            n_under = under.sum(1)
            step = np.maximum(1, n_under // np.maximum(n_excess, 1))
            take = (under & active[:, None] & (j >= index)
                    & ((j - index) % step[:, None] == 0))
            hist += take
            n_excess -= take.sum(1)
            active &= n_excess > 0
            if not active.any() or not (active & (n_under > 0)).any():
                break
        active &= prev != n_excess                    # no progress: stop, as scikit-image does
    return hist
