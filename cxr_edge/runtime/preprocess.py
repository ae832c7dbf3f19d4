"""The one preprocessing path from an image to a model input.

Training (the prepared cache), calibration, evaluation, ``predict`` and the
app all call these functions, so what a model sees cannot drift between them:

1. :func:`fit_to_square` – grey (or RGB) pixels letterboxed onto a black
   ``size x size`` canvas, optional CLAHE; uint8. The prepared training cache
   stores exactly this.
2. :func:`normalize` – ``pixels * scale + offset`` as float32 with a channel
   axis: the model input.

:func:`preprocess` does both.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .images import load_image
from ..tasks import InputSpec, TaskSpec

__all__ = ["fit_to_square", "input_spec_of", "normalize", "preprocess"]

_RESAMPLE = Image.Resampling.BILINEAR  # antialiased when shrinking; LANCZOS costs 2x for no gain at 224 px


def input_spec_of(spec: TaskSpec | InputSpec) -> InputSpec:
    return spec.input if isinstance(spec, TaskSpec) else spec


def fit_to_square(image, spec: TaskSpec | InputSpec) -> np.ndarray:
    """Resize an image to the spec's square canvas; returns uint8 (S, S) or (S, S, 3).

    ``letterbox`` keeps the aspect ratio and centres the image on black, as the
    shared data set was made; ``stretch`` fills the square.
    """
    ispec = input_spec_of(spec)
    img = load_image(image, mode="L" if ispec.channels == 1 else "RGB", min_size=ispec.size)
    size = ispec.size
    w, h = img.size
    if ispec.resize == "stretch" or w == h:
        out = img.resize((size, size), _RESAMPLE, reducing_gap=3.0) if (w, h) != (size, size) else img
    else:
        s = size / max(w, h)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        resized = img.resize((nw, nh), _RESAMPLE, reducing_gap=3.0)
        out = Image.new(img.mode, (size, size), 0)
        out.paste(resized, ((size - nw) // 2, (size - nh) // 2))
    pixels = np.asarray(out, dtype=np.uint8)
    if ispec.clahe:
        from .enhance import clahe  # only packs trained with CLAHE pay for it

        def eq(channel):
            return clahe(channel, clip_limit=ispec.clahe_clip, tiles=ispec.clahe_tiles)

        pixels = eq(pixels) if pixels.ndim == 2 else np.stack([eq(pixels[..., c]) for c in range(3)], -1)
    return pixels


def normalize(pixels: np.ndarray, spec: TaskSpec | InputSpec) -> np.ndarray:
    """uint8 pixels (…, S, S) or (…, S, S, C) to float32 model input (…, S, S, C)."""
    ispec = input_spec_of(spec)
    x = np.asarray(pixels, dtype=np.float32) * np.float32(ispec.scale) + np.float32(ispec.offset)
    if ispec.channels == 1 and (x.ndim == 2 or x.shape[-1] != 1):
        x = x[..., None]
    return x


def preprocess(image, spec: TaskSpec | InputSpec) -> np.ndarray:
    """An image (path, bytes, PIL image or array) to one float32 model input of shape (S, S, C)."""
    return normalize(fit_to_square(image, spec), spec)
