"""Paths recorded in artifacts: relative to the working directory where they can be, so that a pack or a
report built in a checkout names ``prepared/cxr4``, not one machine's ``/home/someone/...``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["portable_path"]


def portable_path(path) -> str:
    """``path`` relative to the current directory when it lies inside it, else absolute."""
    p = Path(path).resolve()
    try:
        return p.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return os.fspath(p)
