"""The case store and the app on a hostile device (causes 12, 13, 14 of issue 16): CSV injection through a bare
carriage return, a full disk, damaged rows and films, non-UTF-8 names, a fresh home folder."""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import subprocess
import sys

import pytest
from conftest import REPO, cli_env
from PIL import Image

from cxr_edge.runtime.cases import CaseStore, CaseStoreError, csv_columns


def _result(top="Normal", warnings=()):
    return {"file": "x.png", "status": "ok", "gate": {"score": 0.9, "threshold": 0.5, "accepted": True},
            "cxr4": {"task": "cxr4", "top": top, "positive": [top], "probabilities": {top: 0.9}},
            "nih14": {"task": "nih14", "positive": [], "probabilities": {"Mass": 0.1}}, "warnings": list(warnings)}


@pytest.fixture
def store(tmp_path):
    with CaseStore(tmp_path / "db") as s:
        yield s


@pytest.fixture
def film():
    return Image.new("L", (64, 64), 128)


def _read_back(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- cause 12


NASTY = ["=HYPERLINK(\"http://x\")", "a\r=1+1", "a\r\n@SUM(A1)", "line\nbreak", "\r-2+3", "tab\t+x", "\r\r\r",
         "a,b\"c\r", "+cmd|' /C calc'!A0", "ok"]


def test_cause12_a_bare_carriage_return_cannot_start_a_row(store, film, tmp_path):
    """16 cases with \\r in notes, sources and warnings read back as 16 rows (21 before), every formula guarded."""
    for i in range(16):
        nasty = NASTY[i % len(NASTY)]
        store.save(_result(warnings=[nasty]), film, source=f"IMG_{i}{nasty}.jpg", note=nasty)
    out = tmp_path / "export"
    out.mkdir()
    res = store.export_csv(out)
    rows = _read_back(res.csv_path)
    assert len(rows) == 16 == res.count and list(rows[0]) == csv_columns()
    for row in rows:
        for key in ("note", "source", "warnings"):
            value = row[key]
            assert "\r" not in value
            assert value[:1] not in ("=", "+", "-", "@"), (key, value)
    raw = res.csv_path.read_bytes()
    assert b"\r" not in raw
    assert sum(1 for _ in csv.reader(io.StringIO(raw.decode()))) == 17


# --------------------------------------------------------------------------- cause 13


def test_cause13_a_full_disk_is_a_clear_error_and_loses_nothing(store, film):
    for i in range(3):
        store.save(_result(), film, note=f"kept {i}")
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")      # the disk is now full (SQLITE_FULL)
    big = Image.frombytes("L", (600, 600), os.urandom(360000))   # a film that does not fit
    with pytest.raises(CaseStoreError) as err:
        store.save(_result(), big, note="too big")
    assert "storage is full" in str(err.value) and "nothing was changed" in str(err.value)
    assert [c.note for c in store.list()] == ["kept 2", "kept 1", "kept 0"] and store.check() == []


@pytest.mark.parametrize("damage", ["not-json", "json-list", "json-number", "null-bytes", "wrong-types",
                                    "quality-not-json", "thumbnail-text"])
def test_cause13_one_damaged_row_does_not_break_list_or_export(store, film, tmp_path, damage):
    good = store.save(_result(), film, note="good")
    bad = store.save(_result(), film, note="bad")
    sql = {"not-json": ("result_json", "{not json"), "json-list": ("result_json", "[1, 2]"),
           "json-number": ("result_json", "5"), "null-bytes": ("result_json", "\x00\x01"),
           "wrong-types": ("result_json", '{"status": "ok", "cxr4": {"top": 5, "probabilities": [1]}, "warnings": 7,'
                                          ' "gate": "x"}'),
           "quality-not-json": ("quality_json", "}"), "thumbnail-text": ("thumbnail", "text")}[damage]
    store._conn.execute(f"UPDATE cases SET {sql[0]} = ? WHERE id = ?", (sql[1], bad.id))
    cases = store.list()
    assert [c.note for c in cases] == ["bad", "good"]
    assert store.get(good.id).damaged == ""
    if damage not in ("wrong-types", "thumbnail-text"):
        assert cases[0].damaged and cases[0].summary.startswith("Damaged record")
    out = tmp_path / "export"
    out.mkdir()
    res = store.export_csv(out)
    rows = _read_back(res.csv_path)
    assert len(rows) == 2 and rows[1]["note"] == "good"


@pytest.mark.parametrize("damage", ["checksum", "missing-film", "png-garbage"])
def test_cause13_a_damaged_film_does_not_abort_the_export_with_images(store, film, tmp_path, damage):
    keep = store.save(_result(), film, note="keep")
    bad = store.save(_result(), film, note="bad")
    if damage == "checksum":
        store._conn.execute("UPDATE films SET png = ? WHERE case_id = ?", (b"\x89PNG garbage", bad.id))
    elif damage == "missing-film":
        store._conn.execute("DELETE FROM films WHERE case_id = ?", (bad.id,))
    else:   # garbage with a matching checksum: exported as stored (the export copies bytes, it does not decode)
        import hashlib

        junk = b"not a png"
        store._conn.execute("UPDATE films SET png = ?, sha256 = ? WHERE case_id = ?",
                            (junk, hashlib.sha256(junk).hexdigest(), bad.id))
    out = tmp_path / "export"
    out.mkdir()
    res = store.export_csv(out, images=True)
    rows = {r["note"]: r for r in _read_back(res.csv_path)}
    assert set(rows) == {"keep", "bad"} and rows["keep"]["image_file"]
    assert (out / rows["keep"]["image_file"]).read_bytes()[:4] == b"\x89PNG"
    if damage != "png-garbage":
        assert rows["bad"]["image_file"] == "" and len(res.problems) == 1 and f"case {bad.id}" in res.problems[0]
    assert keep.id in {int(r["case_id"]) for r in rows.values()}


def test_cause13_non_utf8_names_are_saved_and_exported(store, film, tmp_path):
    name = os.fsdecode(b"/sdcard/DCIM/IMG_\xff\xfe\xe9t\xe9.jpg")      # a Latin-1 file name on a UTF-8 system
    result = _result()
    result["file"] = name
    case = store.save(result, film, source=name, note=os.fsdecode(b"caf\xe9"))
    assert "\ufffd" in case.source and "IMG_" in case.source and case.result["file"] == case.source
    out = tmp_path / "export"
    out.mkdir()
    rows = _read_back(store.export_csv(out).csv_path)
    assert rows[0]["source"] == case.source


def test_cause13_two_exports_in_the_same_second_do_not_collide(store, film, tmp_path):
    store.save(_result(), film)
    out = tmp_path / "export"
    out.mkdir()
    a, b = store.export_csv(out), store.export_csv(out, images=True)
    assert a.csv_path != b.csv_path and a.csv_path.exists() and b.csv_path.exists()


def test_cause13_a_read_only_database_is_a_clear_error(tmp_path, film):
    with CaseStore(tmp_path / "db") as s:
        s.save(_result(), film)
    conn = sqlite3.connect(f"file:{tmp_path / 'db' / 'cases.sqlite'}?mode=ro", uri=True)
    store = CaseStore.__new__(CaseStore)
    store.path, store._conn = tmp_path / "db" / "cases.sqlite", conn
    import threading

    store._lock = threading.RLock()
    with pytest.raises(CaseStoreError, match="read-only|could not save"):
        store.save(_result(), film)
    conn.close()


# --------------------------------------------------------------------------- cause 14


def test_cause14_the_app_starts_on_a_fresh_device(tmp_path):
    """HOME=/tmp/h cxr-edge app died with FileNotFoundError (~/.kivy, then ~/.config/cxredge): the parents are
    now made. Checked without opening a window: the CLI's start-up steps and the app's data folder."""
    pytest.importorskip("kivy", reason="the app needs Kivy (pip install -e '.[app]')")
    home = tmp_path / "h"                      # does not exist yet
    code = ("from cxr_edge.cli.app import _make_kivy_home\n_make_kivy_home()\n"
            "from cxr_edge.app.app import CxrEdgeApp\nprint(CxrEdgeApp().user_data_dir)\n")
    env = cli_env(HOME=home, SDL_VIDEODRIVER="offscreen", KIVY_NO_ARGS="1", KIVY_LOG_MODE="PYTHON")
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("KIVY_HOME", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    data_dir = res.stdout.strip().splitlines()[-1]
    assert data_dir == str(home / ".config" / "cxredge") and os.path.isdir(data_dir)


def test_cause14_an_unwritable_home_is_a_clear_error(tmp_path):
    pytest.importorskip("kivy", reason="the app needs Kivy (pip install -e '.[app]')")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    env = cli_env(HOME=blocker / "h", SDL_VIDEODRIVER="offscreen")
    env.pop("KIVY_HOME", None)
    res = subprocess.run([sys.executable, "-m", "cxr_edge", "app"], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=120)
    assert res.returncode == 2 and "Error:" in res.stderr and "HOME" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "Internal error" not in res.stderr
