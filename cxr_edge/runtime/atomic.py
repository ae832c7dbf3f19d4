"""Writing a file atomically: readers see the old file or the new one, never half of one.

Every artifact cxr-edge writes (packs, reports, manifests, prepared data, cases exports, heatmap PNGs,
the app's settings, training state) goes through :func:`write_atomic`, or through
:func:`atomic_path` for a library that insists on writing to a file name itself (Keras, numpy,
matplotlib). Both work the same way:

1. a temporary file with a random name is created in the target's own folder (the rename below is
   atomic only within one file system), opened with ``O_CREAT | O_EXCL | O_NOFOLLOW``: it cannot
   already exist, and a symlink planted under its name is refused rather than followed;
2. the data is written and ``fsync``-ed, so a crash right after the rename cannot leave an empty or
   truncated file under the final name;
3. ``os.replace`` puts it in place in one step;
4. on any error (including KeyboardInterrupt) the temporary file is removed and the old file, if
   there was one, is left as it was.

Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "write_atomic"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_MODE = 0o666   # before the umask, like open(path, "w"): usually -rw-r--r--
_TRIES = 100


def _create_temp(path: Path, suffix: str = "") -> tuple[int, Path]:
    """A new, empty temporary file beside ``path``: (open descriptor, its path)."""
    for _ in range(_TRIES):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{suffix}")
        try:
            return os.open(tmp, _FLAGS, _MODE), tmp
        except FileExistsError:   # another writer drew the same name: draw again
            continue
    raise FileExistsError(f"no free temporary name beside {path} after {_TRIES} tries")


def write_atomic(path, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically (see the module docstring)."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_path(path, suffix: str = "") -> Iterator[Path]:
    """A temporary path for a writer that takes a file name; ``path`` is replaced when the block ends.

    The temporary file is created (empty, exclusively) before the block, the writer overwrites it
    by name, and it is then ``fsync``-ed and renamed over ``path``. ``suffix`` is added to the
    temporary name for libraries that pick the format by extension (``".h5"``, ``".npy"``).
    """
    path = Path(path)
    fd, tmp = _create_temp(path, suffix)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
