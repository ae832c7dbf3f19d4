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

The target itself must be a regular file or not exist: a symlink, FIFO, device node or folder in its
place is refused (:class:`~cxr_edge.errors.OutputError`), so a mistyped ``--out /dev/sda`` or a
planted link cannot send the bytes anywhere but a new file; an existing file is replaced only with
``overwrite=True`` (the CLI's ``--force``). A failed write (a full disk, a read-only folder) is an
``OutputError`` too, which is also an ``OSError``, with a message that says what to do.

Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import Iterator

from ..errors import OutputError, file_kind

__all__ = ["atomic_path", "check_target", "write_atomic"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_MODE = 0o666   # before the umask, like open(path, "w"): usually -rw-r--r--
_TRIES = 100


def _create_temp(path: Path, suffix: str = "", mode: int = _MODE) -> tuple[int, Path]:
    """A new, empty temporary file beside ``path``: (open descriptor, its path)."""
    for _ in range(_TRIES):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{suffix}")
        try:
            return os.open(tmp, _FLAGS, mode), tmp
        except FileExistsError:   # another writer drew the same name, or someone planted it: draw again
            continue
        except OSError as exc:
            raise _failed(path, exc) from exc
    raise OutputError(f"cannot create a temporary file beside {path}: {_TRIES} random names were taken (clashing "
                      "names planted in the folder?). Choose another folder.", path=path)


def check_target(path, *, overwrite: bool = True) -> Path:
    """Refuse a target that is not a regular file, or an existing one without ``overwrite``."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise _failed(path, exc) from exc
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{path} is {file_kind(st.st_mode)}, not a regular file; cxr-edge never writes over "
                          "one. Choose another output name.", path=path)
    if not overwrite:
        raise OutputError(f"{path} already exists; pass --force to replace it, or choose another name.", path=path)
    return path


def write_atomic(path, data: bytes | str, *, overwrite: bool = True, mode: int | None = None) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically (see the module docstring).

    ``overwrite=False`` refuses an existing file; ``mode`` sets the file's permissions exactly (a private
    key's 0o600) instead of the umask's."""
    path = check_target(path, overwrite=overwrite)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = _create_temp(path, mode=_MODE if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        check_target(path, overwrite=overwrite)   # a link planted meanwhile is refused, not replaced
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise _failed(path, exc) from exc
        raise
    return path


def _failed(path: Path, exc: OSError) -> OutputError:
    hint = {errno.ENOSPC: "the disk is full: free some space",
            errno.EDQUOT: "the disk quota is used up: free some space",
            errno.EFBIG: "the file is larger than this system allows",
            errno.EROFS: "the file system is read-only: choose another folder",
            errno.EACCES: "permission denied: choose a folder you may write to",
            errno.EPERM: "permission denied: choose a folder you may write to",
            errno.ENOENT: "the folder does not exist: create it first",
            errno.ENOTDIR: "a part of the path is not a folder"}.get(exc.errno, "check the folder and the disk")
    out = OutputError(f"cannot write {path} ({exc.strerror or exc}): {hint}.", path=path)
    out.errno = exc.errno   # (not strerror: OSError would then print "[Errno N] ..." instead of the message)
    return out


@contextlib.contextmanager
def atomic_path(path, suffix: str = "") -> Iterator[Path]:
    """A temporary path for a writer that takes a file name; ``path`` is replaced when the block ends.

    The temporary file is created (empty, exclusively) before the block, the writer overwrites it
    by name, and it is then ``fsync``-ed and renamed over ``path``. ``suffix`` is added to the
    temporary name for libraries that pick the format by extension (``".h5"``, ``".npy"``).
    """
    path = check_target(path)
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
