"""Image loading that never crashes on user input and never trusts it.

Everything that reads an image file goes through :func:`load_image`: the CLI,
the pipeline, data preparation and the app. It accepts JPEG, PNG, BMP, TIFF,
WebP and GIF (first frame) through Pillow, and DICOM through pydicom when that
is installed. Every failure is an :class:`~cxr_edge.errors.ImageError` whose
``kind`` names the problem and whose message says what to do.

Conversions follow the shared data set's own recipe, so user images look like
the training images: EXIF orientation applied; transparency composited onto
black; palette/CMYK/YCbCr converted; 16-bit and float images min-max scaled to
0..255; colour turned to grey with ITU-R 601-2 luma.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError

__all__ = ["IMAGE_SUFFIXES", "ImageSource", "iter_image_files", "load_image", "MAX_PIXELS", "MIN_SIDE"]

log = logging.getLogger(__name__)

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image, np.ndarray]

#: Refuse images larger than this many pixels (a 100-MP phone photo is fine; a decompression bomb is not).
MAX_PIXELS = 120_000_000
#: Refuse images smaller than this on either side: nothing useful survives.
MIN_SIDE = 16
#: File suffixes treated as images when a directory is expanded.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".dcm", ".dicom")

_FORMATS_HELP = "JPEG, PNG, BMP, TIFF, WebP, GIF or DICOM (.dcm, needs pydicom)"


def load_image(
    source: ImageSource,
    *,
    mode: str = "L",
    min_size: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Read an image and return it upright in ``mode`` ('L' grey or 'RGB').

    ``min_size`` lets large JPEGs decode at a reduced scale (Pillow's ``draft``)
    as long as both sides stay at least ``min_size`` pixels: a 12-MP photo that
    feeds a 224-px model decodes at 1/8 size, several times faster.

    Raises :class:`ImageError` with ``kind`` one of: ``not_found``,
    ``is_directory``, ``empty``, ``not_an_image``, ``truncated``, ``corrupt``,
    ``too_large``, ``too_small``, ``dicom_unavailable``, ``unsupported``.
    """
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    if isinstance(source, Image.Image):
        return _to_mode(source, mode, _name(source))
    if isinstance(source, np.ndarray):
        return _to_mode(_array_to_image(source), mode, "<array>")

    name = _name(source)
    data = _read_bytes(source, name)
    try:
        with warnings.catch_warnings():
            # Pillow warns (UserWarning, with its own file paths) about odd TIFF/PNG chunks; the image is
            # judged by whether it decodes, and what it warned about goes to the log, not to the user.
            warnings.simplefilter("ignore")
            if _looks_like_dicom(data, name):
                return _to_mode(_load_dicom(data, name), mode, name)
            return _to_mode(_open_pillow(data, name, mode, min_size, max_pixels), mode, name)
    except ImageError:
        raise
    except MemoryError as exc:
        raise _too_large(name, None, max_pixels) from exc
    except Exception as exc:  # a fuzzed file makes decoders raise anything (TypeError, struct.error, ...)
        log.debug("%s: decoder raised %r", name, exc, exc_info=True)
        raise ImageError(f"{name}: the image data is damaged or in a form that cannot be decoded "
                         f"({type(exc).__name__}: {exc}). Re-export or copy the file again.",
                         kind="corrupt", path=name) from exc


def iter_image_files(paths, *, recursive: bool = True):
    """Expand files and directories into image files, in a stable (sorted) order.

    Explicit file arguments are always yielded (a bad one will get its own
    error later); inside directories only known image suffixes are taken.
    """
    for p in paths:
        p = Path(p)
        if p.is_dir():
            walker = p.rglob("*") if recursive else p.glob("*")
            for f in sorted(walker):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                    yield f
        else:
            yield p


# --------------------------------------------------------------------------- reading


def _name(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or getattr(source, "filename", None) or f"<{type(source).__name__}>"


def _read_bytes(source, name: str) -> bytes:
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"{name}: no such file. Check the path.", kind="not_found", path=name)
        if path.is_dir():
            raise ImageError(
                f"{name} is a directory, not an image. Pass the image files inside it "
                "(the predict command expands directories for you).",
                kind="is_directory", path=name,
            )
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{name}: cannot be read ({exc.strerror or exc}).", kind="unreadable", path=name) from exc
    else:
        data = source.read()
    if not data:
        raise ImageError(
            f"{name} is empty (0 bytes): the copy or download probably failed. Copy the file again.",
            kind="empty", path=name,
        )
    return data


def _open_pillow(data: bytes, name: str, mode: str, min_size: int | None, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(
            f"{name} is not an image that can be read (first bytes {data[:8]!r}). "
            f"Use a {_FORMATS_HELP} file.",
            kind="not_an_image", path=name,
        ) from None
    except Image.DecompressionBombError as exc:
        raise _too_large(name, None, max_pixels) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: the image header is damaged ({exc}). Re-export or copy the file again.",
                         kind="corrupt", path=name) from exc

    w, h = img.size
    if w * h > max_pixels:
        raise _too_large(name, (w, h), max_pixels)
    if min(w, h) < MIN_SIDE:
        raise ImageError(
            f"{name} is only {w}x{h} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed. Use the original image, "
            "not a thumbnail.", kind="too_small", path=name,
        )
    if min_size and img.format == "JPEG":
        # draft() keeps both sides >= the requested size, so nothing the model needs is lost.
        img.draft("L" if mode == "L" and img.mode == "RGB" else None, (min_size, min_size))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except OSError as exc:
        text = str(exc)
        if "truncated" in text or "broken data stream" in text or "end of file" in text.lower():
            raise ImageError(
                f"{name} is truncated: the file ends before the image does ({text}). The copy or download was "
                "cut short; copy the file again.", kind="truncated", path=name,
            ) from exc
        raise ImageError(f"{name}: the image data is damaged ({text}). Re-export or copy the file again.",
                         kind="corrupt", path=name) from exc
    except (SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name}: the image data is damaged ({exc}). Re-export or copy the file again.",
                         kind="corrupt", path=name) from exc

    if getattr(img, "n_frames", 1) > 1:
        log.info("%s has %d frames; using the first", name, img.n_frames)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # a broken EXIF block must not lose an otherwise good image
        log.warning("%s: EXIF orientation unreadable (%s); using the image as stored", name, exc)
    return img


def _too_large(name: str, size, max_pixels: int) -> ImageError:
    dims = f"{size[0]}x{size[1]} = {size[0] * size[1] / 1e6:.0f} MP" if size else "more pixels than allowed"
    return ImageError(
        f"{name} is too large ({dims}; the limit is {max_pixels / 1e6:.0f} MP). It may be a decompression bomb; "
        "if it is a genuine image, downscale it first.", kind="too_large", path=name,
    )


# --------------------------------------------------------------------------- DICOM


def _looks_like_dicom(data: bytes, name: str) -> bool:
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def _load_dicom(data: bytes, name: str) -> Image.Image:
    try:
        import pydicom
    except ImportError:
        raise ImageError(
            f"{name} is a DICOM file, and reading DICOM needs pydicom, which is not installed. "
            "Install it with: pip install pydicom (or export the image as PNG).",
            kind="dicom_unavailable", path=name,
        ) from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad/unsupported files
        raise ImageError(
            f"{name}: the DICOM pixel data cannot be decoded ({exc}). Compressed transfer syntaxes may need "
            "pylibjpeg or GDCM; or export the image as PNG.", kind="corrupt", path=name,
        ) from exc
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        arr = arr[0]  # multi-frame: the first frame, like the data set did
    arr = arr.astype(np.float64)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        arr = arr.max() - arr  # MONOCHROME1 stores bright bone as low values
    return _array_to_image(arr)


# --------------------------------------------------------------------------- modes


def _array_to_image(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or arr.size == 0:
        raise ImageError(f"an array of shape {arr.shape} is not an image (expected HxW, HxWx3 or HxWx4)",
                         kind="unsupported")
    if arr.dtype != np.uint8:
        arr = _minmax_uint8(arr)
    return Image.fromarray(arr)


def _minmax_uint8(arr: np.ndarray) -> np.ndarray:
    arr = np.nan_to_num(arr.astype(np.float64))
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _to_mode(img: Image.Image, mode: str, name: str) -> Image.Image:
    """Convert any Pillow mode to 'L' or 'RGB' the way the training data was converted."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = Image.fromarray(_minmax_uint8(np.asarray(img)))
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        base = img.convert("RGBA")
        canvas = Image.new("RGBA", base.size, (0, 0, 0, 255))
        img = Image.alpha_composite(canvas, base).convert("RGB")
    if img.mode not in ("L", "RGB"):
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as exc:
            raise ImageError(f"{name}: pixel format {img.mode!r} is not supported ({exc}). "
                             "Save it as an 8-bit PNG.", kind="unsupported", path=name) from exc
    if img.mode != mode:
        img = img.convert(mode)
    return img
