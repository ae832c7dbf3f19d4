"""The camera behind a small facade: open, capture, close. Anything that goes wrong is CameraUnavailable,
and the Capture screen falls back to the file picker with the reason."""

from __future__ import annotations

import logging

from PIL import Image

__all__ = ["CameraFacade", "CameraUnavailable", "texture_to_image"]

log = logging.getLogger(__name__)


class CameraUnavailable(Exception):
    """No camera, a camera that fails to open or sends no picture, or no permission to use it."""


class CameraFacade:
    """Kivy's ``Camera`` widget. ``factory`` replaces it (tests, or another camera implementation)."""

    def __init__(self, *, index: int = 0, resolution=(1280, 960), factory=None, first_frame_timeout: float = 4.0):
        self.index = index
        self.resolution = resolution
        self.factory = factory
        self.first_frame_timeout = first_frame_timeout
        self.widget = None

    def open(self):
        """Start the camera and return its preview widget, or raise CameraUnavailable."""
        self.close()
        factory = self.factory
        if factory is None:
            from kivy.core.camera import Camera as provider
            from kivy.uix.camera import Camera as factory

            if provider is None:  # Kivy found no camera library (Android's, GStreamer, OpenCV, picamera...)
                raise CameraUnavailable("No camera was found on this device")
        try:
            widget = factory(index=self.index, resolution=self.resolution, play=True)
        except Exception as exc:  # no provider (TypeError on None), no device, driver errors...
            log.info("camera %s could not be opened: %s", self.index, exc)
            raise CameraUnavailable(f"No camera could be opened ({type(exc).__name__}: {exc})") from exc
        if getattr(widget, "_camera", True) is None:
            raise CameraUnavailable("No camera was found on this device")
        self.widget = widget
        return widget

    def has_frame(self) -> bool:
        return self.widget is not None and getattr(self.widget, "texture", None) is not None

    def capture(self) -> Image.Image:
        """The current frame as an RGB image (full camera resolution, upright as previewed)."""
        if not self.has_frame():
            raise CameraUnavailable("The camera sends no picture")
        return texture_to_image(self.widget.texture)

    def close(self) -> None:
        if self.widget is not None:
            try:
                self.widget.play = False
            except Exception as exc:  # a broken driver must not stop the app from moving on
                log.warning("camera did not stop cleanly: %s", exc)
            self.widget = None


def texture_to_image(texture) -> Image.Image:
    """A Kivy texture's pixels as a PIL RGB image, top row first.

    GL keeps the first uploaded row at the bottom; a texture shown flipped
    (negative v size, as camera providers upload top row first) is already top-first.
    """
    w, h = (int(v) for v in texture.size)
    img = Image.frombytes("RGBA", (w, h), bytes(texture.pixels)).convert("RGB")
    if texture.uvsize[1] > 0:
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return img
