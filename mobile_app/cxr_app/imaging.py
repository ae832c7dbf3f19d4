"""PIL images to Kivy textures, and heatmaps laid over a film, for display only."""

from __future__ import annotations

import numpy as np
from kivy.graphics.texture import Texture
from PIL import Image


def to_texture(image: Image.Image) -> Texture:
    """An RGBA texture of ``image`` (4-byte rows avoid GL row-alignment problems)."""
    rgba = image.convert("RGBA")
    tex = Texture.create(size=rgba.size, colorfmt="rgba")
    tex.blit_buffer(rgba.tobytes(), colorfmt="rgba", bufferfmt="ubyte")
    tex.flip_vertical()  # PIL's first row is the top; GL's is the bottom
    return tex


def _colormap(v: np.ndarray) -> np.ndarray:
    """A blue→cyan→yellow→red ramp for values in 0..1 ('jet', but ending in bright red, without matplotlib)."""
    r = np.clip(4 * v - 1.5, 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.stack([r, g, b], -1)


def overlay(film: Image.Image, heatmap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """``heatmap`` (uint8 HxW, 255 = strongest) stretched over ``film`` and blended where it is strong."""
    heat = Image.fromarray(np.asarray(heatmap, dtype=np.uint8)).resize(film.size, Image.BILINEAR)
    v = np.asarray(heat, np.float32)[..., None] / 255.0
    base = np.asarray(film.convert("RGB"), np.float32) / 255.0
    mixed = base * (1 - alpha * v) + _colormap(v[..., 0]) * (alpha * v)
    return Image.fromarray(np.round(mixed * 255).astype(np.uint8), "RGB")
