"""Bounded reads from zip archives that came from someone else (pack .zips, a model's embedded metadata, .npz).

A zip states each member's size in its directory, but a reader that trusts
it can be made to inflate gigabytes from a few megabytes (a 10 MB pack .zip
held a 3 GiB member). Here every member is checked before it is inflated:
its stated size against a per-member limit, its stated compression ratio,
and the archive's total against a limit; then it is inflated in bounded
steps, so a member that inflates past its stated size is stopped, not
trusted. Violations raise ``error`` (default :class:`ValueError`) with a
message that names the member.
"""

from __future__ import annotations

import io
import zipfile

__all__ = ["check_archive", "MAX_MEMBER_BYTES", "MAX_RATIO", "MAX_TOTAL_BYTES", "open_npz", "read_member",
           "ZipLimitError"]

#: The largest member read from an untrusted archive (a MobileNetV2 int8 model is ~3.5 MB, float ~14 MB).
MAX_MEMBER_BYTES = 256 * 2**20
#: The most all members of one archive may inflate to together.
MAX_TOTAL_BYTES = 512 * 2**20
#: The largest compression ratio believed (a .tflite deflates ~1.2x, JSON ~10x; zeros ~1000x).
MAX_RATIO = 200
#: Members this small may have any ratio (a JSON file of spaces, say).
_SMALL = 1 << 20


class ZipLimitError(ValueError):
    """An archive member over a size or ratio limit, or larger than its directory says."""


def check_archive(zf: zipfile.ZipFile, *, source: str, max_member: int | None = None,
                  max_total: int | None = None) -> None:
    """Refuse an archive whose directory states members or a total over the limits, or a bomb's ratio."""
    max_member = MAX_MEMBER_BYTES if max_member is None else max_member
    max_total = MAX_TOTAL_BYTES if max_total is None else max_total
    total = 0
    for info in zf.infolist():
        _check_member(info, source=source, max_member=max_member)
        total += info.file_size
        if total > max_total:
            raise ZipLimitError(f"{source}: its members inflate to more than {max_total / 2**20:.0f} MiB together; "
                                "it is not a pack this toolkit wrote (a zip bomb?)")


def _check_member(info: zipfile.ZipInfo, *, source: str, max_member: int) -> None:
    if info.file_size > max_member:
        raise ZipLimitError(f"{source}: member {info.filename!r} inflates to {info.file_size / 2**20:.0f} MiB; the "
                            f"limit is {max_member / 2**20:.0f} MiB (a zip bomb?)")
    if info.file_size > _SMALL and info.file_size > MAX_RATIO * max(1, info.compress_size):
        raise ZipLimitError(f"{source}: member {info.filename!r} claims {info.file_size} bytes from "
                            f"{info.compress_size} compressed (ratio over {MAX_RATIO}); refused as a zip bomb")


def read_member(zf: zipfile.ZipFile, name: str, *, source: str, max_member: int | None = None) -> bytes:
    """One member's bytes, checked first and inflated in bounded steps (never past its stated size)."""
    max_member = MAX_MEMBER_BYTES if max_member is None else max_member
    info = zf.getinfo(name)
    _check_member(info, source=source, max_member=max_member)
    out = io.BytesIO()
    with zf.open(info) as fh:
        while True:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
            if out.tell() > info.file_size:
                raise ZipLimitError(f"{source}: member {name!r} inflates past its stated size of {info.file_size} "
                                    "bytes; the archive is damaged or forged")
    return out.getvalue()


def open_npz(data: bytes, *, source: str, max_member: int = 64 * 2**20):
    """``numpy.load`` of .npz bytes (no pickles) after checking the archive's members against the limits."""
    import numpy as np

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        check_archive(zf, source=source, max_member=max_member, max_total=max_member)
    return np.load(io.BytesIO(data), allow_pickle=False)
