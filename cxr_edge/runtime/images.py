"""Image loading that never crashes on user input and never trusts it.

Everything that reads an image file goes through :func:`load_image`: the CLI,
the pipeline, data preparation and the app. It accepts JPEG (also as ``.jfif``,
``.jpe`` or with no suffix: the content decides, never the name), PNG, BMP,
TIFF, WebP and GIF (first frame) through Pillow, HEIC/HEIF (an iPhone's default)
through pillow-heif when that is installed (the ``[heic]`` extra), and DICOM
through pydicom when that is installed. Every failure is an
:class:`~cxr_edge.errors.ImageError` whose ``kind`` names the problem and whose
message says what to do. :func:`scan_image_files` expands folders by content and
says why it skipped every file it did not take.

Conversions follow the shared data set's own recipe, so user images look like
the training images: EXIF orientation applied; transparency composited onto
black; palette/CMYK/YCbCr converted; 16-bit and float images min-max scaled to
0..255; colour turned to grey with ITU-R 601-2 luma.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import threading
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError, file_kind

__all__ = ["IMAGE_SUFFIXES", "ImageSource", "iter_image_files", "load_image", "MAX_PIXELS", "MIN_SIDE",
           "MAX_DECODED_BYTES", "MAX_FILE_BYTES", "check_budget", "check_regular", "decode_budget", "describe_content", "HEIC_EXTRA",
           "ImageScan", "read_regular", "scan_image_files", "Skipped", "sniff_format"]

log = logging.getLogger(__name__)

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image, np.ndarray]

#: Refuse images larger than this many pixels (a 100-MP phone photo is fine; a decompression bomb is not).
MAX_PIXELS = 120_000_000
#: Refuse images smaller than this on either side: nothing useful survives.
MIN_SIDE = 16
#: Refuse an image whose decoded pixels (width x height x frames decoded x bytes per pixel as held in memory)
#: exceed this, before decoding it: a 240 KB 16-bit PNG can hold 110 MP (2.7 GB once converted). The budget
#: is shared by the threads of a process, so a batch decodes at most this much at once. 128 MiB holds a
#: 33-MP colour image, a 67-MP 16-bit or a 120-MP 8-bit grey one; a 4300 x 4300 16-bit detector image
#: needs 35 MiB, and a JPEG photo is decoded at reduced scale (draft), a 12-MP one in 3 MiB.
MAX_DECODED_BYTES = 128 * 2**20
#: Refuse files larger than this before reading them (the file's bytes are held while it decodes).
MAX_FILE_BYTES = 128 * 2**20
#: File suffixes of images (a file picker's filter; a folder is expanded by content, these only decide
#: whether a file that is not an image is an error or merely skipped).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jfif", ".jpe", ".jfi", ".bmp", ".tif", ".tiff", ".webp", ".gif",
                  ".heic", ".heif", ".hif", ".avif", ".dcm", ".dicom")

_FORMATS_HELP = "JPEG, PNG, BMP, TIFF, WebP, GIF, HEIC (needs pillow-heif) or DICOM (.dcm, needs pydicom)"
#: ISO-BMFF brands of HEIF images (HEIC, HEIF, AVIF): bytes 8-12 of the file, or a compatible brand.
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")
HEIC_EXTRA = "pip install 'cxr-edge[heic]' (or: pip install pillow-heif)"


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
    ``too_large``, ``too_small``, ``dicom_unavailable``, ``heic_unavailable``, ``unsupported``.
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
        with warnings.catch_warnings(), _BUDGET.session():
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

    Explicit file arguments are always yielded (a bad one will get its own error later); inside
    directories, files are taken by content (:func:`scan_image_files`; the skipped ones are dropped here).
    """
    yield from scan_image_files(paths, recursive=recursive).files


@dataclass(frozen=True)
class Skipped:
    """A file in a folder that was not taken as an image, and why (``kind``: hidden, not_an_image,
    empty, unreadable)."""

    path: Path
    kind: str
    reason: str


@dataclass
class ImageScan:
    """What :func:`scan_image_files` found: ``files`` to predict (sorted per argument) and ``skipped``."""

    files: list = field(default_factory=list)
    skipped: list = field(default_factory=list)


def scan_image_files(paths, *, recursive: bool = True) -> ImageScan:
    """Expand files and directories into the files to read as images, and the files skipped with why.

    Explicit file arguments are always taken. Inside a directory a file is taken when its content is an
    image (:func:`sniff_format`: JPEG whatever its suffix -- ``.jfif``, ``.jpe``, none --, PNG, GIF, BMP,
    TIFF, WebP, HEIC/HEIF/AVIF, DICOM) or when its suffix says it is one (then a damaged or empty file
    gets its own error instead of vanishing); every other file is skipped with the reason: hidden (a name
    starting with '.'), not an image (what it looks like instead), empty, unreadable.
    """
    scan = ImageScan()
    for p in paths:
        p = Path(p)
        if not _is_dir(p):
            scan.files.append(p)
            continue
        walker = p.rglob("*") if recursive else p.glob("*")
        for f in sorted(walker):
            if f.is_dir() or any(part.startswith(".") for part in f.relative_to(p).parts[:-1]):
                continue
            if not f.is_file():
                scan.skipped.append(Skipped(f, "not_a_file", "not a regular file (a link to nowhere, a device...)"))
                continue
            verdict = _judge_file(f)
            if verdict is None:
                scan.files.append(f)
            else:
                scan.skipped.append(Skipped(f, *verdict))
    return scan


def _judge_file(f: Path) -> tuple[str, str] | None:
    """None when ``f`` is to be read as an image; else (kind, reason) of why it is skipped."""
    if f.name.startswith("."):
        return "hidden", "a hidden file (its name starts with '.')"
    named_image = f.suffix.lower() in IMAGE_SUFFIXES
    try:
        with open(f, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        return None if named_image else ("unreadable", f"cannot be read ({exc.strerror or exc})")
    if sniff_format(head, f.name) is not None or named_image:
        return None
    if not head:
        return "empty", "an empty file (0 bytes)"
    return "not_an_image", f"not an image ({describe_content(head)})"


def sniff_format(head: bytes, name: str = "") -> str | None:
    """The image format the first bytes of a file show ('jpeg', 'png', 'gif', 'bmp', 'tiff', 'webp',
    'heif', 'dicom'), or None. 132 bytes are enough; ``name`` only lets a '.dcm' file without the DICM
    preamble count as DICOM."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM" and len(head) >= 26:
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if _is_heif(head):
        return "heif"
    if head[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom")):
        return "dicom"
    return None


def _is_heif(head: bytes) -> bool:
    if head[4:8] != b"ftyp":
        return False
    size = int.from_bytes(head[:4], "big")
    brands = [head[8:12]] + [head[i:i + 4] for i in range(16, min(size, len(head)) - 3, 4)]
    return any(b in _HEIF_BRANDS for b in brands)


def describe_content(head: bytes) -> str:
    """A few words on what non-image bytes look like (for the reason a file was skipped)."""
    known = [(b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive (or a .docx / .xlsx / .apk)"),
             (b"\x1f\x8b", "a gzip archive"), (b"{\\rtf", "an RTF document"), (b"\xd0\xcf\x11\xe0", "an Office document"),
             (b"<?xml", "an XML file"), (b"<svg", "an SVG drawing (not a photo; export it as PNG)"),
             (b"\x00\x00\x00\x18ftypmp4", "an MP4 video"), (b"ID3", "an MP3 file")]
    for magic, what in known:
        if head.startswith(magic):
            return what
    if head[4:8] == b"ftyp":
        return f"an ISO media file of type {head[8:12].decode('ascii', 'replace')!r} (a video?)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"unknown content, first bytes {head[:8]!r}"
    return "text" if all(c.isprintable() or c in "\r\n\t" for c in text) else f"unknown content, first bytes {head[:8]!r}"


def _is_dir(path: Path) -> bool:
    """``is_dir`` that says False for a path it may not look at (inside an unreadable folder): that path is
    then yielded as a file and gets its own 'unreadable' result instead of ending the whole batch."""
    try:
        return path.is_dir()
    except OSError:
        return False


# --------------------------------------------------------------------------- reading


def _name(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or getattr(source, "filename", None) or f"<{type(source).__name__}>"


def _read_bytes(source, name: str) -> bytes:
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, (str, os.PathLike)):
        data = read_regular(source, name)
    else:
        data = source.read()
    if not data:
        raise ImageError(
            f"{name} is empty (0 bytes): the copy or download probably failed. Copy the file again.",
            kind="empty", path=name,
        )
    return data


def check_regular(path, name: str | None = None) -> os.stat_result:
    """Refuse (ImageError) a path that is missing, a folder or a special file, without opening it.

    A FIFO would block a reader forever and ``/dev/zero`` never ends, so
    anything that opens an input path first asks here (``stat`` never blocks).
    """
    name = name or os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file. Check the path.", kind="not_found", path=name) from None
    except OSError as exc:
        raise ImageError(f"{name}: cannot be read ({exc.strerror or exc}). Check the path and its permissions.",
                         kind="unreadable", path=name) from exc
    _require_regular(st, name)
    return st


def _require_regular(st: os.stat_result, name: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(
            f"{name} is a directory, not an image. Pass the image files inside it "
            "(the predict command expands directories for you).",
            kind="is_directory", path=name,
        )
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{name} is {file_kind(st.st_mode)}, not an image file; it was not read. Pass the image "
                         "file itself.", kind="not_a_file", path=name)
    if st.st_size > MAX_FILE_BYTES:
        raise ImageError(f"{name} is a {st.st_size / 2**20:.0f} MiB file; the limit is "
                         f"{MAX_FILE_BYTES / 2**20:.0f} MiB. If it is a genuine image, downscale or compress it "
                         "first.", kind="too_large", path=name)


def read_regular(path, name: str | None = None) -> bytes:
    """The bytes of a regular file, read without ever blocking (ImageError otherwise).

    The file is opened non-blocking and checked with ``fstat`` on the open
    descriptor (a FIFO, device, socket or folder is refused, even one swapped
    in after a ``stat``), and at most :data:`MAX_FILE_BYTES` are read.
    """
    name = name or os.fspath(path)
    check_regular(path, name)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        kind = "not_found" if isinstance(exc, FileNotFoundError) else "unreadable"
        raise ImageError(f"{name}: cannot be read ({exc.strerror or exc}). Check the path and its permissions.",
                         kind=kind, path=name) from exc
    try:
        _require_regular(os.fstat(fd), name)
        chunks, total = [], 0
        while total <= MAX_FILE_BYTES:
            chunk = os.read(fd, min(1 << 22, MAX_FILE_BYTES + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise ImageError(f"{name}: cannot be read ({exc.strerror or exc}). Copy the file again.",
                         kind="unreadable", path=name) from exc
    finally:
        os.close(fd)
    if total > MAX_FILE_BYTES:   # it grew while being read
        raise ImageError(f"{name} is larger than {MAX_FILE_BYTES / 2**20:.0f} MiB; downscale or compress it first.",
                         kind="too_large", path=name)
    return b"".join(chunks)


# --------------------------------------------------------------------------- the decode budget


class _DecodeBudget:
    """Decoded bytes in flight in this process, bounded by :data:`MAX_DECODED_BYTES`.

    A decode that alone exceeds the budget is refused before it starts; one
    that fits waits until other threads' decodes have finished. What a decode
    reserved is released when its :func:`load_image` returns.
    """

    def __init__(self):
        self.used = 0
        self._cond = threading.Condition()
        self._local = threading.local()

    @contextmanager
    def session(self):
        if hasattr(self._local, "held"):   # nested (a pipeline's prediction around its decode): the outer one releases
            yield
            return
        self._local.held = 0
        try:
            yield
        finally:
            held = self._local.held
            del self._local.held
            if held >= _TRIM_AT:
                _return_freed_memory()
            if held:
                with self._cond:
                    self.used -= held
                    self._cond.notify_all()

    def reserve(self, nbytes: int, limit: int) -> None:
        held = getattr(self._local, "held", 0)
        if held + nbytes > limit:
            raise OverflowError
        with self._cond:
            while self.used - held + nbytes > limit and self.used > held:
                self._cond.wait()
            self.used += nbytes
        self._local.held = held + nbytes


_BUDGET = _DecodeBudget()
#: After an image this large, hand freed memory back to the system (below).
_TRIM_AT = 32 * 2**20


def _return_freed_memory() -> None:
    """glibc keeps what a thread freed in that thread's own arena: two workers that took turns at four
    33-MP images peaked at 605 MB, against 340 MB on one thread. ``malloc_trim`` returns it (a few ms; only
    after large images). Elsewhere than glibc it is not there and nothing happens."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def decode_budget():
    """A context in which what :func:`load_image` reserves of the process-wide decode budget stays reserved
    until the context ends: the pipeline holds it over a whole prediction, so the photo stage's copies of
    a large image are bounded too (two workers do not each hold one)."""
    return _BUDGET.session()


def check_budget(name: str, size, bytes_per_pixel: int, frames: int = 1, *,
                 limit: int | None = None) -> None:
    """Refuse (ImageError 'too_large') a decode of ``size`` (w, h) x ``frames`` x ``bytes_per_pixel`` over the
    budget, before it starts; inside :func:`load_image`, also reserve it in the process-wide budget."""
    limit = MAX_DECODED_BYTES if limit is None else limit
    w, h = int(size[0]), int(size[1])
    need = w * h * max(1, int(frames)) * int(bytes_per_pixel)
    try:
        if need > limit:
            raise OverflowError
        if hasattr(_BUDGET._local, "held"):
            _BUDGET.reserve(need, limit)
    except OverflowError:
        frames_text = f" x {frames} frames" if frames > 1 else ""
        raise ImageError(
            f"{name} is too large to decode: {w}x{h}{frames_text} at {bytes_per_pixel} byte(s) per pixel would take "
            f"{need / 2**20:.0f} MiB of memory; the limit is {limit / 2**20:.0f} MiB. It may be a decompression "
            "bomb; if it is a genuine image, downscale it first.", kind="too_large", path=name) from None


#: Bytes per pixel as Pillow holds each mode in memory (3-band images are stored as 4 bytes).
_PILLOW_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


def _pillow_pixel_bytes(mode: str) -> int:
    return _PILLOW_PIXEL_BYTES.get(mode, 4)


def _open_pillow(data: bytes, name: str, mode: str, min_size: int | None, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if _is_heif(data[:64]):
                _register_heif(name)
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
    check_budget(name, img.size, _pillow_pixel_bytes(img.mode))
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
        ImageOps.exif_transpose(img, in_place=True)   # not a copy of every photo without an orientation tag
    except Exception as exc:  # a broken EXIF block must not lose an otherwise good image
        log.warning("%s: EXIF orientation unreadable (%s); using the image as stored", name, exc)
    return img


def _register_heif(name: str) -> None:
    """Teach Pillow HEIC/HEIF through pillow-heif, once, on the first HEIF file (not at import: most
    installs never see one)."""
    global _HEIF_READY
    if _HEIF_READY:
        return
    try:
        import pillow_heif
    except ImportError:
        raise ImageError(
            f"{name} is a HEIC/HEIF image (an iPhone's default photo format), and reading it needs pillow-heif, "
            f"which is not installed. Install it with: {HEIC_EXTRA}; or set the phone's camera to 'Most "
            "Compatible' (JPEG), or export the photo as JPEG.", kind="heic_unavailable", path=name) from None
    with _HEIF_LOCK:
        if not _HEIF_READY:
            pillow_heif.register_heif_opener()
            _HEIF_READY = True


_HEIF_READY = False
_HEIF_LOCK = threading.Lock()


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
    _check_deflated_dicom(data, name)
    try:
        head = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for bad files
        raise ImageError(f"{name}: the DICOM header cannot be read ({exc}). Export the image as PNG.",
                         kind="corrupt", path=name) from exc
    frames, one_frame = _check_dicom_size(head, name)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        del data
        if one_frame:
            ds.pixel_array_options(index=0)   # decode the first frame only, like the data set did
        arr = ds.pixel_array
    except ImageError:
        raise
    except Exception as exc:  # pydicom raises many types for bad/unsupported files
        raise ImageError(
            f"{name}: the DICOM pixel data cannot be decoded ({exc}). Compressed transfer syntaxes may need "
            "pylibjpeg or GDCM; or export the image as PNG.", kind="corrupt", path=name,
        ) from exc
    if arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        arr = arr[0]  # multi-frame: the first frame, like the data set did
    invert = getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1"  # bright bone stored as low values
    return _array_to_image(arr, invert=invert, stretch=True)   # DICOM: always its own min..max


def _check_dicom_size(head, name: str) -> tuple[int, bool]:
    """(frames, whether only the first frame will be decoded); refuses a missing, tiny or over-budget image."""
    try:
        rows, cols = int(head.Rows), int(head.Columns)
        frames = int(getattr(head, "NumberOfFrames", 1) or 1)
        samples = int(getattr(head, "SamplesPerPixel", 1) or 1)
        bits = int(getattr(head, "BitsAllocated", 16) or 16)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageError(f"{name}: the DICOM file has no usable image size ({exc}); it may hold no image. "
                         "Export the image as PNG.", kind="corrupt", path=name) from exc
    if min(rows, cols) < MIN_SIDE:
        raise ImageError(
            f"{name} is only {cols}x{rows} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed. Use the original image, "
            "not a thumbnail.", kind="too_small", path=name,
        )
    one_frame = frames > 1 and _decodes_one_frame()
    # decoded as 1, 2, 4 or 8 bytes per sample (bit-packed 1-bit data is unpacked to one byte)
    per_sample = 1 if bits <= 8 else 2 if bits <= 16 else 4 if bits <= 32 else 8
    check_budget(name, (cols, rows), per_sample * max(1, samples), 1 if one_frame else max(1, frames))
    return frames, one_frame


def _decodes_one_frame() -> bool:
    """pydicom 3 decodes one frame on request; pydicom 2 decodes them all."""
    import pydicom

    return hasattr(pydicom.Dataset, "pixel_array_options")


_DEFLATED = b"1.2.840.10008.1.2.1.99"


def _check_deflated_dicom(data: bytes, name: str) -> None:
    """A deflate-compressed DICOM is inflated whole by pydicom: count what it inflates to first (in
    bounded steps, keeping nothing) and refuse it over the budget, so 438 KB cannot become 7.8 GB."""
    if _DEFLATED not in data[:4096]:
        return
    start = _dicom_meta_end(data)
    if start is None:
        raise ImageError(f"{name}: a deflate-compressed DICOM file without a readable file meta header; export "
                         "the image as PNG.", kind="corrupt", path=name)
    limit = MAX_DECODED_BYTES + (16 << 20)   # the pixels plus room for the other elements
    inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    pending = data[start:]
    try:
        while pending and total <= limit:
            total += len(inflater.decompress(pending, 1 << 22))
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise ImageError(f"{name}: the deflate-compressed DICOM data is damaged ({exc}); copy the file again.",
                         kind="corrupt", path=name) from exc
    if total > limit:
        raise ImageError(f"{name}: its deflate-compressed data inflates to more than {limit / 2**20:.0f} MiB "
                         f"(from {len(data) / 1024:.0f} KB). It may be a decompression bomb; if it is a genuine "
                         "image, export it uncompressed or as PNG.", kind="too_large", path=name)


def _dicom_meta_end(data: bytes) -> int | None:
    """Where the file meta group ends: after the preamble, 'DICM' and the group whose length (0002,0000) gives."""
    if data[128:132] != b"DICM" or data[132:138] != b"\x02\x00\x00\x00UL":
        return None
    return 132 + 12 + int.from_bytes(data[140:144], "little")


# --------------------------------------------------------------------------- modes


def _array_to_image(arr: np.ndarray, *, invert: bool = False, stretch: bool = False) -> Image.Image:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or arr.size == 0:
        raise ImageError(f"an array of shape {arr.shape} is not an image (expected HxW, HxWx3 or HxWx4)",
                         kind="unsupported")
    if arr.dtype != np.uint8 or invert or stretch:
        arr = _minmax_uint8(arr, invert=invert)
    return Image.fromarray(arr)


def _minmax_uint8(arr: np.ndarray, *, invert: bool = False) -> np.ndarray:
    """Scale to 0..255 by the image's own min and max (``invert``: max - value first, for MONOCHROME1).

    The result is what ``round((x - lo) * 255 / (hi - lo))`` in float64 gives, computed without a float64
    copy of the image: integer images of up to 16 bits go through a lookup table (1 byte per pixel
    more than the input), others row block by row block.
    """
    arr = np.asarray(arr)
    if arr.dtype.kind in "biu" and arr.dtype.itemsize <= 2:
        return _minmax_lut(arr, invert)
    flat = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(1, -1)
    step = max(1, (1 << 20) // max(1, flat.shape[1]))
    starts = range(0, flat.shape[0], step)
    top = np.max([flat[i:i + step].astype(np.float64).max() for i in starts]) if invert else 0.0

    def block(i):   # the values as the float64 recipe sees them
        x = flat[i:i + step].astype(np.float64)
        return np.nan_to_num(top - x if invert else x)

    lo = min(float(block(i).min()) for i in starts)
    hi = max(float(block(i).max()) for i in starts)
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    out = np.empty(flat.shape, np.uint8)
    k = 255.0 / (hi - lo)
    for i in starts:
        out[i:i + step] = np.round((block(i) - lo) * k)
    return out.reshape(arr.shape)


def _minmax_lut(arr: np.ndarray, invert: bool) -> np.ndarray:
    """:func:`_minmax_uint8` for integers of at most 16 bits: one table entry per possible value."""
    lo, hi = int(arr.min()), int(arr.max())
    if invert:   # of (max - x): 0 at the maximum, max - min at the minimum
        values_lo, values_hi = 0.0, float(hi - lo)
    else:
        values_lo, values_hi = float(lo), float(hi)
    if values_hi <= values_lo:
        return np.zeros(arr.shape, np.uint8)
    bits = 8 * arr.dtype.itemsize
    unsigned = np.dtype(f"uint{bits}")
    codes = np.arange(2 ** bits, dtype=np.int64)      # every bit pattern, as the value it stands for
    values = codes.astype(unsigned).view(arr.dtype).astype(np.float64) if arr.dtype.kind == "i" else \
        codes.astype(np.float64)
    if invert:
        values = float(hi) - values
    lut = np.round(np.clip((values - values_lo) * (255.0 / (values_hi - values_lo)), 0, 255)).astype(np.uint8)
    index = arr.view(unsigned) if arr.dtype.kind == "i" else arr.astype(unsigned, copy=False)
    return lut[index]


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
