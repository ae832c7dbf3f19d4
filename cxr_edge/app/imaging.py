"""PIL images to Kivy textures for display; heatmap overlays come from :func:`cxr_edge.runtime.cam.overlay`."""

from __future__ import annotations

from kivy.graphics.texture import Texture
from PIL import Image

__all__ = ["to_texture"]


def to_texture(image: Image.Image) -> Texture:
    """An RGBA texture of ``image`` (4-byte rows avoid GL row-alignment problems)."""
    rgba = image.convert("RGBA")
    tex = Texture.create(size=rgba.size, colorfmt="rgba")
    tex.blit_buffer(rgba.tobytes(), colorfmt="rgba", bufferfmt="ubyte")
    tex.flip_vertical()  # PIL's first row is the top; GL's is the bottom
    return tex
