"""Hostile output targets (causes 9, 10, 11 of issue 16): a failed side output never loses results, atomic writes
never follow a planted link, and special files or existing files are never replaced without --force."""

from __future__ import annotations

import os
import resource
import signal
import stat

import pytest
from conftest import assert_clean_failure, json_rows, run_cli, unprivileged_prefix
from hostile_corpus import make_fifo

from cxr_edge.runtime import atomic
from cxr_edge.runtime.atomic import write_atomic
from cxr_edge.errors import OutputError


@pytest.fixture
def cxrs(shared_data, tmp_path):
    """Two real chest X-rays (the gate accepts them, so they get heatmaps)."""
    src = sorted((shared_data / "nih_cxr14" / "images").glob("*.png"))[:2]
    out = []
    for i, p in enumerate(src):
        out.append(tmp_path / f"cxr{i}.png")
        out[-1].write_bytes(p.read_bytes())
    return out


def _left_behind(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- cause 9


def test_cause09_heatmaps_into_a_read_only_folder_keep_every_result(cxrs, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    maps.chmod(0o555)
    try:
        res, _ = run_cli("predict", *cxrs, "--heatmap", maps, "--json", "--workers", "2", prefix=unprivileged_prefix())
    finally:
        maps.chmod(0o755)
    rows = json_rows(res.stdout)
    assert res.returncode == 1 and len(rows) == 2, res.stderr[-2000:]          # before: exit 70 and 0 rows
    for row in rows:
        assert row["status"] == "ok" and row["cxr4"]["top"]
        assert any(w.startswith("heatmap not written") and "Permission denied" in w for w in row["warnings"])
    assert "could not be written" in res.stderr and "Internal error" not in res.stderr
    assert _left_behind(maps) == [] and list(maps.iterdir()) == []


def test_cause09_heatmaps_on_a_full_disk_keep_every_result(cxrs, tmp_path):
    """A file size limit makes every heatmap write fail as a full disk would (EFBIG instead of ENOSPC)."""
    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    maps = tmp_path / "maps"
    res, _ = run_cli("predict", *cxrs, "--heatmap", maps, "--workers", "0", preexec=small_files)
    assert res.returncode == 1, res.stderr[-2000:]
    assert res.stdout.count("heatmap not written") >= 2 and "Decision support only" in res.stderr
    assert _left_behind(maps) == []


def test_cause09_existing_heatmaps_need_force(cxrs, tmp_path):
    maps = tmp_path / "maps"
    first, _ = run_cli("predict", cxrs[0], "--heatmap", maps, "--json")
    assert first.returncode == 0 and json_rows(first.stdout)[0]["heatmaps"], first.stderr[-2000:]
    again, _ = run_cli("predict", cxrs[0], "--heatmap", maps, "--json")
    row = json_rows(again.stdout)[0]
    assert again.returncode == 1 and row["status"] == "ok" and any("--force" in w for w in row["warnings"])
    forced, _ = run_cli("predict", cxrs[0], "--heatmap", maps, "--json", "--force")
    assert forced.returncode == 0 and json_rows(forced.stdout)[0]["heatmaps"]


def test_cause09_heatmap_folder_that_is_a_file(cxrs, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res, _ = run_cli("predict", cxrs[0], "--heatmap", blocker / "maps", "--json")
    rows = json_rows(res.stdout)
    assert res.returncode == 1 and rows[0]["status"] == "ok" and "heatmap not written" in rows[0]["warnings"][-1]


# --------------------------------------------------------------------------- cause 10


def test_cause10_a_planted_link_at_the_temp_name_is_never_followed(tmp_path, monkeypatch):
    victim = tmp_path / "outside.txt"
    victim.write_text("keep me")
    folder = tmp_path / "out"
    folder.mkdir()
    names = iter(["aaaa"] * 3 + ["bbbb"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(names))
    os.symlink(victim, folder / ".x.png.aaaa.tmp")          # the attacker guessed the first name
    write_atomic(folder / "x.png", b"new")
    assert victim.read_text() == "keep me" and (folder / "x.png").read_bytes() == b"new"
    assert os.path.islink(folder / ".x.png.aaaa.tmp")       # untouched, not replaced
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: "aaaa")
    os.symlink(victim, folder / ".y.png.aaaa.tmp")
    with pytest.raises(OutputError, match="clashing"):
        write_atomic(folder / "y.png", b"new")
    assert victim.read_text() == "keep me"


def test_cause10_a_planted_link_at_the_target_is_refused(cxrs, tmp_path):
    victim = tmp_path / "outside.png"
    victim.write_bytes(b"keep me")
    maps = tmp_path / "maps"
    maps.mkdir()
    for label in ("Pneumonia", "COVID-19", "Normal", "Tuberculosis"):
        os.symlink(victim, maps / f"cxr0_{label}.png")
    res, _ = run_cli("predict", cxrs[0], "--heatmap", maps, "--json", "--force")
    rows = json_rows(res.stdout)
    assert victim.read_bytes() == b"keep me"
    assert res.returncode == 1 and rows[0]["status"] == "ok" and "symbolic link" in " ".join(rows[0]["warnings"])


def test_cause10_temp_files_are_random_exclusive_and_cleaned_up(tmp_path, monkeypatch):
    seen = []
    real_open = os.open

    def spy(path, flags, mode=0o777, **kw):
        seen.append((str(path), flags))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(atomic.os, "open", spy)
    write_atomic(tmp_path / "a.bin", b"1")
    write_atomic(tmp_path / "a.bin", b"2")
    (p1, f1), (p2, _) = seen
    assert p1 != p2 and os.path.dirname(p1) == str(tmp_path)
    assert f1 & os.O_EXCL and f1 & os.O_NOFOLLOW and f1 & os.O_CREAT
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OutputError, match="disk is full"):
        write_atomic(tmp_path / "b.bin", b"3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_cause10_every_writer_uses_the_one_helper():
    """No module of the package makes its own temp files for outputs: they all go through
    cxr_edge.runtime.atomic (the old '.{name}.tmp-{pid}' and mkstemp copies are gone)."""
    from pathlib import Path

    import cxr_edge

    root = Path(cxr_edge.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if any(s in p.read_text(encoding="utf-8") for s in ("mkstemp", ".tmp-", "NamedTemporaryFile"))]
    assert offenders == []


# --------------------------------------------------------------------------- cause 11


@pytest.fixture
def photo(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("L", (300, 300), 90).save(path)
    return path


@pytest.mark.parametrize("kind", ["fifo", "device", "symlink", "dangling-symlink", "socket-like-dir"])
def test_cause11_rectify_never_replaces_a_special_file(photo, tmp_path, kind):
    out = tmp_path / "out.png"
    if kind == "fifo":
        make_fifo(out)
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(out, stat.S_IFCHR | 0o666, os.makedev(1, 3))      # a private /dev/null
    elif kind == "symlink":
        (tmp_path / "victim.png").write_bytes(b"keep")
        os.symlink(tmp_path / "victim.png", out)
    elif kind == "dangling-symlink":
        os.symlink(tmp_path / "created-elsewhere.png", out)
    else:
        out.mkdir()
    before = os.lstat(out)
    for extra in ((), ("--force",)):
        res, _ = run_cli("rectify", photo, "--out", out, *extra, timeout=60)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    after = os.lstat(out)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and after.st_ino == before.st_ino
    assert not (tmp_path / "created-elsewhere.png").exists()
    if kind == "symlink":
        assert (tmp_path / "victim.png").read_bytes() == b"keep"


def test_cause11_rectify_needs_force_to_replace_a_file(photo, tmp_path):
    out = tmp_path / "film.png"
    out.write_bytes(b"old")
    res, _ = run_cli("rectify", photo, "--out", out)
    assert_clean_failure(res, text="--force")
    assert out.read_bytes() == b"old"
    res, _ = run_cli("rectify", photo, "--out", out, "--force")
    assert res.returncode == 0 and out.read_bytes()[:4] == b"\x89PNG", res.stderr[-2000:]
    assert _left_behind(tmp_path) == []


def test_cause11_write_atomic_refuses_every_special_target(tmp_path):
    make_fifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    os.symlink("/etc/hostname", tmp_path / "link")
    for name in ("fifo", "dir", "link"):
        with pytest.raises(OutputError, match="not a regular file"):
            write_atomic(tmp_path / name, b"x", overwrite=True)
    write_atomic(tmp_path / "f", b"1")
    with pytest.raises(OutputError, match="--force"):
        write_atomic(tmp_path / "f", b"2", overwrite=False)
    assert (tmp_path / "f").read_bytes() == b"1"
