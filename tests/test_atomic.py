"""The one atomic-write helper: a new file or the old one, never half of one, and no temp files left."""

import os
import stat

import pytest

from cxr_edge.runtime import atomic
from cxr_edge.runtime.atomic import atomic_path, write_atomic


def test_writes_bytes_and_text_with_ordinary_permissions(tmp_path):
    write_atomic(tmp_path / "a.bin", b"\x00\x01")
    write_atomic(tmp_path / "b.txt", "été")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01" and (tmp_path / "b.txt").read_text("utf-8") == "été"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o666 & ~umask   # like open(path, "w")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("old")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_temp_names_are_random_and_never_follow_a_planted_link(tmp_path, monkeypatch):
    """A link planted under the next temp name is refused (O_EXCL | O_NOFOLLOW), not written through."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    names = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(names))
    os.symlink(victim, tmp_path / ".out.txt.aaaaaaaaaaaa.tmp")
    write_atomic(tmp_path / "out.txt", "data")   # the taken name is skipped, the next one is used
    assert victim.read_text() == "keep" and (tmp_path / "out.txt").read_text() == "data"


def test_atomic_path_for_writers_that_take_a_file_name(tmp_path):
    target = tmp_path / "weights.npz"
    with atomic_path(target, suffix=".npz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".npz") and tmp.name.startswith(".weights.npz.")
        tmp.write_bytes(b"new weights")
    assert target.read_bytes() == b"new weights"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"new weights" and [p.name for p in tmp_path.iterdir()] == ["weights.npz"]
