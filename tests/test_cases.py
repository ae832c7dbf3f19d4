"""The case store: atomic saves that survive a killed writer, schema migration, export, no network."""

import csv
import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_edge.runtime import cases as cases_mod
from cxr_edge.runtime.cases import SCHEMA_VERSION, CaseStore, CaseStoreError, csv_columns, jsonable, summarize

REPO = Path(__file__).resolve().parents[1]


def film(seed: int = 0, size=(96, 120)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8), "L")


def result(status="ok", top="Normal", findings=("Effusion",)) -> dict:
    if status == "rejected":
        return {"file": "x.png", "status": "rejected", "gate": {"score": 0.1, "threshold": 0.5, "accepted": False},
                "cxr4": None, "nih14": None, "error": None, "message": "rejected: not a chest X-ray",
                "warnings": [], "timings_ms": {}}
    probs = {"COVID-19": 0.1, "Normal": 0.6, "Pneumonia": 0.2, "Tuberculosis": 0.1}
    return {"file": "x.png", "status": "ok", "gate": {"score": np.float32(0.97), "threshold": 0.5, "accepted": True},
            "cxr4": {"task": "cxr4", "top": top, "positive": [top], "probabilities": probs, "profile": "default"},
            "nih14": {"task": "nih14", "top": findings[0] if findings else "Mass", "positive": list(findings),
                      "probabilities": {"Effusion": 0.8, "Mass": 0.1}, "profile": "default"},
            "error": None, "message": "ok", "warnings": ["unusual image for this model"], "timings_ms": {"total": 5.0},
            "heatmaps": {"Effusion": np.zeros((7, 7, 3), np.uint8)}}


@pytest.fixture
def store(tmp_path):
    with CaseStore(tmp_path / "data") as s:
        yield s


def test_save_list_get_film_delete(store):
    a = store.save(result(), film(1), source="a.png", pack_name="tiny", quality=[
        {"name": "blur", "score": 0.9, "verdict": "pass", "message": "sharp"}])
    b = store.save(result("rejected"), film(2), source="b.png")
    assert store.schema_version == SCHEMA_VERSION
    assert [c.id for c in store.list()] == [b.id, a.id]  # newest first
    got = store.get(a.id)
    assert got.summary == "Normal 0.60; findings: Effusion" and got.profile == "default"
    assert got.result["gate"]["score"] == pytest.approx(0.97)  # numpy scalar stored as a number
    assert "heatmaps" not in got.result and "omitted" not in got.result
    assert got.quality[0]["verdict"] == "pass" and got.source == "a.png" and got.pack_name == "tiny"
    assert Image.open(io.BytesIO(got.thumbnail)).size == (96, 120)  # never enlarged
    assert np.array_equal(np.asarray(store.film(a.id)), np.asarray(film(1)))  # lossless
    assert store.get(b.id).summary == "Not a chest X-ray"
    assert store.delete(a.id) and not store.delete(a.id)
    assert store.count() == 1 and store.check() == []
    with pytest.raises(CaseStoreError, match="not in"):
        store.get(a.id)


def test_failed_save_leaves_nothing_behind(store, monkeypatch):
    store.save(result(), film(1))

    def broken(conn, case_id, png):
        raise OSError("disk full (simulated after the case row was written)")

    monkeypatch.setattr(store, "_insert_film", broken)
    with pytest.raises(OSError, match="disk full"):
        store.save(result(), film(2))
    assert store.count() == 1 and store.check() == []


def test_store_is_shared_safely_between_threads(store):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda i: store.save(result(), film(i)).id, range(12)))
    assert len(set(ids)) == 12 and store.count() == 12 and store.check() == []


# A writer that saves cases in a loop and says which ones are committed; the test kills it mid-loop.
WRITER = r"""
import hashlib, sys, time
import numpy as np
from PIL import Image
from cxr_edge.runtime.cases import CaseStore
store = CaseStore(sys.argv[1])
seed = int(sys.argv[2])
rng = np.random.default_rng(seed)
i = 0
if sys.argv[3] == "stop-inside":  # the 4th save stops inside its transaction (rows written, not committed)
    insert_film = store._insert_film

    def stop_inside(conn, case_id, png):
        insert_film(conn, case_id, png)
        if i == 3:
            print("inside", flush=True)
            time.sleep(60)

    store._insert_film = stop_inside
while True:
    # big noisy films make each transaction long, so the kill often lands inside one
    arr = rng.integers(0, 256, (700, 600), dtype=np.uint8)
    case = store.save({"status": "ok", "cxr4": None, "nih14": None, "gate": None, "writer": seed, "i": i},
                      Image.fromarray(arr, "L"), source=f"w{seed}-{i}")
    print(case.id, hashlib.sha256(arr.tobytes()).hexdigest(), flush=True)
    i += 1
"""


def test_killing_the_writer_mid_save_never_loses_or_corrupts_earlier_cases(tmp_path):
    data = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    acknowledged: dict[int, str] = {}
    # Rounds 0 and 1 kill at an arbitrary moment; round 2 kills inside a transaction for certain.
    # Each round reopens a database whose last writer was killed.
    for round_, how in enumerate(["anywhere", "anywhere", "stop-inside"]):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(data), str(round_), how],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            while True:
                line = proc.stdout.readline()
                assert line, proc.stderr.read()
                if line.strip() == "inside":
                    break
                case_id, digest = line.split()
                acknowledged[int(case_id)] = digest
                if how == "anywhere" and len(acknowledged) >= 3 * (round_ + 1):
                    time.sleep(0.013 * (round_ + 1))  # land somewhere inside a later save
                    break
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            proc.stdout.close()
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
    with CaseStore(data) as store:
        assert store.check() == []
        saved = {c.id: c for c in store.list()}
        assert set(acknowledged) <= set(saved)  # every committed case survived
        for case_id, digest in acknowledged.items():
            assert hashlib.sha256(np.asarray(store.film(case_id)).tobytes()).hexdigest() == digest
        for case in saved.values():  # a case the kill interrupted is either whole or absent
            store.film_png(case.id)
        assert "w2-3" not in {c.source for c in saved.values()}  # the uncommitted one left no trace
        store.save(result(), film(9))  # and the store still takes new cases


def test_migrates_a_v1_database_and_keeps_its_cases(tmp_path):
    path = tmp_path / "old" / "cases.sqlite"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    cases_mod.MIGRATIONS[0](conn)  # the v1 layout exactly as v1 created it
    conn.execute("PRAGMA user_version = 1")
    png = cases_mod._png(film(3))
    conn.execute("INSERT INTO cases (uid, created, status, summary, result_json) VALUES "
                 "('u1', '2024-01-02T03:04:05+00:00', 'ok', 'Normal 0.60', ?)", (json.dumps(result()["cxr4"]),))
    conn.execute("INSERT INTO films (case_id, png, sha256) VALUES (1, ?, ?)", (png, hashlib.sha256(png).hexdigest()))
    conn.commit()
    conn.close()
    with CaseStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        old = store.get(1)
        assert old.summary == "Normal 0.60" and old.pack_name == "" and old.thumbnail  # thumbnail backfilled
        assert np.array_equal(np.asarray(store.film(1)), np.asarray(film(3)))
        new = store.save(result(), film(4), pack_name="p")
        assert [c.id for c in store.list()] == [new.id, 1]


def test_a_failing_migration_rolls_back_and_leaves_the_old_database(tmp_path, monkeypatch):
    path = tmp_path / "cases.sqlite"
    conn = sqlite3.connect(path)
    cases_mod.MIGRATIONS[0](conn)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    def broken_v2(c):
        cases_mod._v2(c)
        raise RuntimeError("power cut during the upgrade")

    monkeypatch.setattr(cases_mod, "MIGRATIONS", [cases_mod._v1, broken_v2])
    with pytest.raises(RuntimeError):
        CaseStore(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "thumbnail" not in [r[1] for r in conn.execute("PRAGMA table_info(cases)")]
    conn.close()
    monkeypatch.undo()
    with CaseStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION


def test_newer_schema_and_foreign_files_are_refused_with_advice(tmp_path):
    newer = tmp_path / "newer.sqlite"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(CaseStoreError, match="newer cxr-edge .*Update the app"):
        CaseStore(newer)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(CaseStoreError, match="not a readable case database.*Move the file aside"):
        CaseStore(junk)
    assert junk.read_bytes().startswith(b"this is not sqlite")  # never overwritten


def test_csv_export_with_images(store, tmp_path):
    a = store.save(result(), film(1), source="=HYPERLINK(evil)")
    store.save(result("rejected"), film(2))
    out = tmp_path / "export"
    out.mkdir()
    res = store.export_csv(out, images=True)
    assert res.count == 2 and res.csv_path.parent == out
    rows = list(csv.DictReader(res.csv_path.open()))
    assert list(rows[0]) == csv_columns()
    first = next(r for r in rows if r["case_id"] == str(a.id))
    assert first["cxr4:Normal"] == "0.6" and first["nih_findings"] == "Effusion"
    assert first["source"] == "'=HYPERLINK(evil)"  # no formula injection into spreadsheets
    assert first["warnings"] == "unusual image for this model"
    assert np.array_equal(np.asarray(Image.open(out / first["image_file"])), np.asarray(film(1)))
    assert not list(out.rglob(".*"))  # no temp files left behind
    with pytest.raises(CaseStoreError, match="does not exist"):
        store.export_csv(tmp_path / "nowhere")


def test_summaries_and_jsonable():
    assert summarize({"status": "error"}) == "Could not be analysed"
    assert summarize({"status": "ok", "cxr4": None, "nih14": {"positive": []}}) == "findings: none above threshold"
    d = jsonable({"a": np.arange(3), "b": np.ones((20, 20)), "c": [np.int64(2)], "p": Path("/x")})
    assert d == {"a": [0, 1, 2], "c": [2], "p": "/x", "omitted": ["b"]}
    json.dumps(d)


def test_the_case_store_imports_no_network_module():
    import ast

    tree = ast.parse(Path(cases_mod.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"socket", "urllib", "http", "requests", "ssl", "ftplib", "smtplib"}
