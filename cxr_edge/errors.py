"""The exception family. Every message names what was given, what is valid and the fix.

The CLI turns any :class:`CxrEdgeError` into one line on stderr and a non-zero
exit; anything else is a bug and is reported as such.
"""

__all__ = ["BackendError", "CxrEdgeError", "DataError", "DependencyError", "ExportCheckError", "ImageError",
           "PackError", "RecipeError", "require", "UnknownTaskError"]


class CxrEdgeError(Exception):
    """Base class for every error cxr-edge raises on purpose."""

    exit_code = 2


class UnknownTaskError(CxrEdgeError, KeyError):
    """A task name that is not in the registry."""

    def __str__(self):  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class ImageError(CxrEdgeError):
    """An input image that cannot be used. ``kind`` says why, for scripts and tests; ``detail`` is the
    finer reason where there is one (for ``no_film``: what the film finder saw)."""

    def __init__(self, message: str, *, kind: str, path=None, detail: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.path = path
        self.detail = detail


class PackError(CxrEdgeError):
    """A model pack that is missing, tampered, truncated or does not match this toolkit."""


class ConfigError(CxrEdgeError):
    """A configuration file or setting (``$CXR_EDGE_CONFIG``, ``$CXR_EDGE_PACK``) that cannot be used."""


class OutputError(CxrEdgeError, OSError):
    """An output file that cannot or may not be written (a special file, an existing file without --force,
    a full disk, a read-only folder). Also an ``OSError``, so callers that handle failed writes keep doing so."""

    def __init__(self, message: str, *, path=None):
        super().__init__(message)
        self.path = path


class BackendError(CxrEdgeError):
    """No usable TFLite interpreter, or a model the interpreter refuses."""


class DataError(CxrEdgeError):
    """A data source, manifest or prepared data set that cannot be used."""


class RecipeError(CxrEdgeError):
    """A training recipe with an unknown key, a missing file or an impossible value."""


class ExportCheckError(CxrEdgeError):
    """int8 conversion lost more accuracy than the export policy allows."""

    exit_code = 3


class DependencyError(CxrEdgeError):
    """An optional dependency (TensorFlow, pydicom, kivy, matplotlib) is not installed."""


def file_kind(mode: int) -> str:
    """'a FIFO (named pipe)', 'a folder', ... for a ``st_mode`` that is not a regular file (for messages)."""
    import stat

    for test, kind in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def require(module: str, extra: str, purpose: str):
    """Import an optional module or raise a DependencyError that says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyError(
            f"{purpose} needs the Python package '{module.split('.')[0]}', which is not "
            f"installed ({exc}). Install it with: pip install 'cxr-edge[{extra}]'"
        ) from exc
