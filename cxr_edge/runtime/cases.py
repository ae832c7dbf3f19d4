"""The case store: every analysed film a field worker keeps, on the device, offline.

One SQLite database (``cases.sqlite`` in the app's user data directory) in WAL
mode with ``synchronous=FULL``. A case is saved in ONE transaction (the case
row with its results and thumbnail, and the film in its own table), so killing
the app mid-save leaves either the whole case or none of it, and never touches
earlier cases. The schema carries a version (``PRAGMA user_version``); opening
an older database migrates it in a transaction, and a database written by a
newer cxr-edge is refused rather than damaged.

Schema history:

* v1: ``cases`` (results as JSON, quality verdicts, source name) and
  ``films`` (the analysed film as PNG, with its sha256).
* v2: thumbnails and provenance (model pack name, threshold profile) on each
  case, and an index on the creation time; v1 databases get their thumbnails
  made from their films during the migration.

Nothing here opens a network connection; exports go to a folder on the device.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import sqlite3
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import DataError, OutputError
from .atomic import write_atomic
from .images import load_image
from ..tasks import CLASSIFIER_SLOTS, get_slot, get_task, task_names

__all__ = ["Case", "CaseStore", "CaseStoreError", "csv_columns", "DB_NAME", "ExportResult", "jsonable",
           "make_thumbnail", "MIGRATIONS", "SCHEMA_VERSION", "summarize", "THUMBNAIL_SIZE"]

log = logging.getLogger(__name__)

DB_NAME = "cases.sqlite"
SCHEMA_VERSION = 2
THUMBNAIL_SIZE = 160


class CaseStoreError(DataError):
    """A case database that cannot be opened, read or written."""


def _write_error(path: Path, what: str, exc: sqlite3.Error) -> CaseStoreError:
    text = str(exc).lower()
    if "full" in text or getattr(exc, "sqlite_errorcode", None) == 13:   # SQLITE_FULL
        advice = ("the device's storage is full. Free some space (old exports, photos, or delete cases you have "
                  "exported) and try again")
    elif "readonly" in text or "read-only" in text:
        advice = "the case database is read-only; check the app's storage permission"
    elif "locked" in text or "busy" in text:
        advice = "another program is using the case database; close it and try again"
    else:
        advice = "check free space and try again; if it keeps failing, export the cases and report it"
    return CaseStoreError(f"could not {what}: nothing was changed in {path} ({exc}); {advice}.")


# --------------------------------------------------------------------------- schema and migrations


def _v1(conn: sqlite3.Connection) -> None:
    conn.execute("""CREATE TABLE cases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        uid TEXT NOT NULL UNIQUE,
        created TEXT NOT NULL,
        status TEXT NOT NULL,
        summary TEXT NOT NULL DEFAULT '',
        result_json TEXT NOT NULL,
        quality_json TEXT NOT NULL DEFAULT '[]',
        source TEXT NOT NULL DEFAULT '',
        note TEXT NOT NULL DEFAULT '')""")
    conn.execute("""CREATE TABLE films (
        case_id INTEGER PRIMARY KEY REFERENCES cases(id) ON DELETE CASCADE,
        png BLOB NOT NULL,
        sha256 TEXT NOT NULL)""")


def _v2(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE cases ADD COLUMN pack_name TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE cases ADD COLUMN profile TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE cases ADD COLUMN thumbnail BLOB")
    conn.execute("CREATE INDEX cases_created ON cases(created)")
    rows = conn.execute("SELECT case_id, png FROM films").fetchall()
    for case_id, png in rows:
        try:
            thumb = make_thumbnail(load_image(bytes(png), mode="L"))
        except Exception as exc:  # one unreadable film must not block the upgrade of all the others
            log.warning("case %s: no thumbnail made during migration (%s)", case_id, exc)
            continue
        conn.execute("UPDATE cases SET thumbnail = ? WHERE id = ?", (thumb, case_id))


#: MIGRATIONS[i] takes a database from version i to version i + 1.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2]
assert len(MIGRATIONS) == SCHEMA_VERSION


# --------------------------------------------------------------------------- records


@dataclass
class Case:
    """One saved case. ``result`` is the prediction as saved (``Prediction.to_dict()`` made JSON-safe)."""

    id: int
    uid: str
    created: str
    status: str
    summary: str
    result: dict
    quality: list[dict] = field(default_factory=list)
    source: str = ""
    note: str = ""
    pack_name: str = ""
    profile: str = ""
    thumbnail: bytes | None = None
    damaged: str = ""     # why the stored record could not be read whole ("" when it could)

    @property
    def created_local(self) -> str:
        """The creation time in the device's time zone, to the minute, for lists."""
        try:
            return datetime.fromisoformat(self.created).astimezone().strftime("%Y-%m-%d %H:%M")
        except ValueError:
            return self.created


@dataclass(frozen=True)
class ExportResult:
    csv_path: Path
    count: int
    images_dir: Path | None = None
    problems: tuple[str, ...] = ()    # cases exported without their film, and why


_CASE_COLUMNS = ("id", "uid", "created", "status", "summary", "result_json", "quality_json", "source", "note",
                 "pack_name", "profile", "thumbnail")


def _row_to_case(row) -> Case:
    """A stored row as a Case; a damaged field (not JSON, wrong type) gives a Case marked ``damaged``
    instead of an exception, so one bad row never hides the others from the list or the export."""
    d = dict(zip(_CASE_COLUMNS, row))
    problems = []
    result = _json_field(d["result_json"], dict, "result_json", problems)
    quality = [q for q in _json_field(d["quality_json"], list, "quality_json", problems) if isinstance(q, dict)]
    text = {k: _clean(d[k]) if isinstance(d[k], str) else ("" if d[k] is None else str(d[k]))
            for k in ("uid", "created", "status", "summary", "source", "note", "pack_name", "profile")}
    if problems:
        text["summary"] = f"Damaged record ({'; '.join(problems)})"
    thumb = d["thumbnail"]
    return Case(id=d["id"], result=result, quality=quality,
                thumbnail=bytes(thumb) if isinstance(thumb, (bytes, bytearray, memoryview)) else None,
                damaged="; ".join(problems), **text)


def _json_field(raw, kind: type, name: str, problems: list):
    try:
        value = json.loads(raw)
    except (TypeError, ValueError, RecursionError) as exc:
        problems.append(f"{name} is not readable JSON: {type(exc).__name__}")
        return kind()
    if not isinstance(value, kind):
        problems.append(f"{name} is a {type(value).__name__}, not a {kind.__name__}")
        return kind()
    return value


def _clean(text: str) -> str:
    """Text that encodes as UTF-8: a file name read from a non-UTF-8 file system carries lone surrogates
    (os.fsdecode), which SQLite and a UTF-8 CSV refuse; they become U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape" if _only_escapes(text) else "replace").decode("utf-8", "replace")


def _only_escapes(text: str) -> bool:
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


# --------------------------------------------------------------------------- helpers


def make_thumbnail(image: Image.Image, size: int = THUMBNAIL_SIZE) -> bytes:
    """A small PNG of ``image`` (longest side ``size``) for case lists."""
    thumb = image.convert("L") if image.mode not in ("L", "RGB") else image.copy()
    thumb.thumbnail((size, size), Image.LANCZOS)
    return _png(thumb, optimize=True)


def _png(image: Image.Image, optimize: bool = False) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=optimize)
    return buf.getvalue()


def jsonable(obj, _path: str = ""):
    """A JSON-safe copy of a prediction dict: numpy scalars become numbers, small arrays lists.

    Large arrays (feature maps, say) are left out: they can be recomputed from
    the film and would make every case row heavy. Their keys are listed under
    ``"omitted"`` so a reader knows they existed.
    """
    omitted: list[str] = []

    def walk(value, path):
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                converted = walk(v, f"{path}.{k}" if path else str(k))
                if converted is not _DROP:
                    out[str(k)] = converted
            return _DROP if value and not out else out  # a table of omitted arrays goes entirely
        if isinstance(value, (list, tuple)):
            return [x for x in (walk(v, f"{path}[{i}]") for i, v in enumerate(value)) if x is not _DROP]
        if isinstance(value, np.ndarray):
            if value.size <= 64:
                return value.tolist()
            omitted.append(path)
            return _DROP
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, str):
            return _clean(value)
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        if isinstance(value, Path):
            return str(value)
        omitted.append(path)
        return _DROP

    out = walk(obj, _path)
    if omitted and isinstance(out, dict):
        out["omitted"] = sorted(set(out.get("omitted", [])) | set(omitted))
    return out


_DROP = object()


def summarize(result: dict) -> str:
    """A one-line summary of a saved result for lists and CSV files."""
    status = result.get("status")
    if status == "rejected":
        return "Not a chest X-ray"
    if status == "error":
        return "Could not be analysed"
    parts = []
    for slot in CLASSIFIER_SLOTS:
        r = result.get(slot)
        if r is None:
            continue
        if get_slot(slot).answer == "class" and r.get("top"):
            parts.append(f"{r['top']} {r['probabilities'][r['top']]:.2f}")
        elif get_slot(slot).answer == "findings":
            parts.append("findings: " + (", ".join(r.get("positive") or []) or "none above threshold"))
    return "; ".join(parts) or "analysed"


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _quality_dicts(quality) -> list[dict]:
    out = []
    for q in quality or ():
        if isinstance(q, dict):
            out.append(jsonable(q))
        else:  # a QualityCheck-like object: name, score, verdict, message
            out.append(jsonable({k: getattr(q, k, None) for k in ("name", "score", "verdict", "message")}))
    return out


# --------------------------------------------------------------------------- the store


class CaseStore:
    """The cases saved on this device. Safe to share between the UI thread and a worker thread.

    ``CaseStore(folder)`` opens (or creates) ``folder/cases.sqlite``; a path
    ending in ``.sqlite``/``.db`` names the database file itself.
    """

    def __init__(self, location):
        location = Path(location)
        self.path = location if location.suffix in (".sqlite", ".db") else location / DB_NAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CaseStoreError(f"cannot create the case folder {self.path.parent} ({exc}); "
                                 "check the app's storage permission and free space") from exc
        self._lock = threading.RLock()
        self._conn = self._connect()
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    # ----------------------------------------------------------------- opening

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            conn.execute("PRAGMA busy_timeout = 10000")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = FULL")  # a phone can lose power: a saved case must stay saved
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            raise CaseStoreError(
                f"{self.path} is not a readable case database ({exc}). Move the file aside (do not delete it: "
                "it may hold cases) and restart; a new, empty case store will be created."
            ) from exc
        if mode.lower() != "wal":
            log.warning("%s: WAL journal not available (got %s); saves are still atomic", self.path, mode)
        return conn

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self, target: int = SCHEMA_VERSION) -> None:
        with self._lock:
            current = self.schema_version
            if current > SCHEMA_VERSION:
                raise CaseStoreError(
                    f"{self.path} was written by a newer cxr-edge (case schema {current}; this version knows up to "
                    f"{SCHEMA_VERSION}). Update the app; the cases are left untouched."
                )
            for version in range(current, target):
                with self._transaction() as conn:
                    if int(conn.execute("PRAGMA user_version").fetchone()[0]) != version:
                        continue  # another process migrated it meanwhile
                    log.info("%s: migrating the case schema from v%d to v%d", self.path, version, version + 1)
                    MIGRATIONS[version](conn)
                    conn.execute(f"PRAGMA user_version = {version + 1}")

    @contextlib.contextmanager
    def _transaction(self, what: str = "write"):
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error: a write happens whole or not at all.
        SQLite's errors (a full disk, a read-only file) become a CaseStoreError that says what to do."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _write_error(self.path, what, exc) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:   # SQLite may have rolled back by itself (a full disk does)
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        log.warning("%s: rollback failed after %s", self.path, exc)
                if isinstance(exc, sqlite3.Error):
                    raise _write_error(self.path, what, exc) from exc
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----------------------------------------------------------------- writing

    def save(self, result, film: Image.Image, *, quality=(), source: str = "", pack_name: str = "",
             profile: str = "", note: str = "") -> Case:
        """Save one analysed film atomically and return the stored case.

        ``result`` is a :class:`~cxr_edge.runtime.prediction.Prediction` or its ``to_dict()``;
        ``film`` the image the models saw; ``quality`` the quality checks shown
        to the user (``QualityCheck`` objects or dicts).
        """
        d = result.to_dict() if hasattr(result, "to_dict") else dict(result)
        d.pop("heatmaps", None)  # display-only maps: recomputable from the film, and heavy at film size
        d = jsonable(d)
        film_png = _png(film if film.mode in ("L", "RGB") else film.convert("L"))
        thumb = make_thumbnail(film)
        profile = profile or (d.get("nih14") or d.get("cxr4") or {}).get("profile", "")
        row = {"uid": uuid.uuid4().hex, "created": _utc_now(), "status": _clean(str(d.get("status", "ok"))),
               "summary": _clean(summarize(d)), "result_json": json.dumps(d, sort_keys=True),
               "quality_json": json.dumps(_quality_dicts(quality)), "source": _clean(str(source)),
               "note": _clean(str(note)), "pack_name": _clean(str(pack_name)), "profile": _clean(str(profile)),
               "thumbnail": thumb}
        with self._transaction("save the case") as conn:
            cur = conn.execute(f"INSERT INTO cases ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                               tuple(row.values()))
            case_id = cur.lastrowid
            self._insert_film(conn, case_id, film_png)
        log.info("saved case %d (%s)", case_id, row["summary"])
        return self.get(case_id)

    def _insert_film(self, conn, case_id: int, png: bytes) -> None:
        conn.execute("INSERT INTO films (case_id, png, sha256) VALUES (?, ?, ?)",
                     (case_id, png, hashlib.sha256(png).hexdigest()))

    def delete(self, case_id: int) -> bool:
        """Delete a case and its film; True when it existed."""
        with self._transaction("delete the case") as conn:
            conn.execute("DELETE FROM films WHERE case_id = ?", (case_id,))
            return conn.execute("DELETE FROM cases WHERE id = ?", (case_id,)).rowcount > 0

    # ----------------------------------------------------------------- reading

    def list(self, limit: int | None = None, offset: int = 0) -> list[Case]:
        """Saved cases, newest first."""
        sql = f"SELECT {', '.join(_CASE_COLUMNS)} FROM cases ORDER BY created DESC, id DESC"
        args: tuple = ()
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args = (int(limit), int(offset))
        with self._lock:
            return [_row_to_case(r) for r in self._conn.execute(sql, args).fetchall()]

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM cases").fetchone()[0])

    def get(self, case_id: int) -> Case:
        with self._lock:
            row = self._conn.execute(f"SELECT {', '.join(_CASE_COLUMNS)} FROM cases WHERE id = ?",
                                     (case_id,)).fetchone()
        if row is None:
            raise CaseStoreError(f"case {case_id} is not in {self.path} (it may have been deleted)")
        return _row_to_case(row)

    def film_png(self, case_id: int) -> bytes:
        """The film's PNG bytes, verified against the sha256 saved with it."""
        with self._lock:
            row = self._conn.execute("SELECT png, sha256 FROM films WHERE case_id = ?", (case_id,)).fetchone()
        if row is None:
            raise CaseStoreError(f"case {case_id} has no film in {self.path}")
        png = bytes(row[0])
        if hashlib.sha256(png).hexdigest() != row[1]:
            raise CaseStoreError(f"the film of case {case_id} is damaged (checksum mismatch); export what is left "
                                 "and report it")
        return png

    def film(self, case_id: int) -> Image.Image:
        return load_image(self.film_png(case_id), mode="L")

    def check(self) -> list[str]:
        """SQLite's integrity check plus case/film pairing; an empty list means healthy."""
        with self._lock:
            problems = [r[0] for r in self._conn.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
            problems += [f"case {r[0]} has no film" for r in self._conn.execute(
                "SELECT id FROM cases WHERE id NOT IN (SELECT case_id FROM films)")]
            problems += [f"film of missing case {r[0]}" for r in self._conn.execute(
                "SELECT case_id FROM films WHERE case_id NOT IN (SELECT id FROM cases)")]
        return problems

    # ----------------------------------------------------------------- export

    def export_csv(self, folder, *, images: bool = False, case_ids=None) -> ExportResult:
        """Write the cases (all, or ``case_ids``) as a CSV file in ``folder``; with ``images``, their films as PNG.

        Files are written atomically; the CSV is named ``cxr-cases-<UTC time>.csv``
        and the images go into a folder of the same name.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise CaseStoreError(f"export folder {folder} does not exist; pick an existing folder")
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        stem, n = f"cxr-cases-{stamp}", 1
        while (folder / f"{stem}.csv").exists() or (folder / f"{stem}-images").exists():   # two in one second
            n += 1
            stem = f"cxr-cases-{stamp}-{n}"
        cases = self.list()
        if case_ids is not None:
            wanted = set(case_ids)
            cases = [c for c in cases if c.id in wanted]
        images_dir = folder / f"{stem}-images" if images else None
        rows, problems = [], []
        path = folder / f"{stem}.csv"
        try:
            if images_dir is not None:
                images_dir.mkdir(exist_ok=True)
            for case in cases:
                image_file = ""
                if images_dir is not None:
                    image_file = self._export_film(folder, images_dir, case, problems)
                rows.append(_csv_row(case, image_file))
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=csv_columns(), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            write_atomic(path, buf.getvalue().encode("utf-8"), overwrite=False)
        except (OSError, OutputError) as exc:
            raise CaseStoreError(f"cannot write the export to {folder} ({exc}); pick a folder this app may write "
                                 "to and check free space") from exc
        log.info("exported %d case(s) to %s", len(rows), path)
        return ExportResult(path, len(rows), images_dir, tuple(problems))

    def _export_film(self, folder: Path, images_dir: Path, case: Case, problems: list) -> str:
        """One case's film into the export folder; a missing or damaged film is noted, never the end of the export."""
        image_file = f"{images_dir.name}/case-{case.id}-{case.uid[:8]}.png"
        try:
            write_atomic(folder / image_file, self.film_png(case.id), overwrite=False)
        except CaseStoreError as exc:
            problems.append(f"case {case.id}: film not exported ({exc})")
            log.warning("case %s: film not exported (%s)", case.id, exc)
            return ""
        return image_file


# --------------------------------------------------------------------------- CSV


def _family_labels(family: str) -> list[str]:
    """Every label any task of a pack slot can report (cxr4 covers cxr3; nih14 and nih15 cover nih13)."""
    out: dict[str, None] = {}
    for name in sorted(task_names(), key=lambda n: (n != family, n)):   # the slot's own task sets the order
        spec = get_task(name)
        if spec.family == family:
            out.update(dict.fromkeys(spec.labels))
    return list(out)


def csv_columns() -> list[str]:
    cxr4 = [f"cxr4:{lbl}" for lbl in _family_labels("cxr4")]
    nih = [f"nih:{lbl}" for lbl in _family_labels("nih14")]
    return (["case_id", "uid", "created", "status", "summary", "source", "pack", "profile", "gate_score",
             "gate_threshold", "cxr4_top", "cxr4_flagged"] + cxr4 + ["nih_task", "nih_findings"] + nih
            + ["warnings", "quality", "image_file", "note"])


def _text(value: str) -> str:
    """Free text for a spreadsheet cell: a leading = + - @ would run as a formula in Excel/LibreOffice."""
    value = _cell(str(value or ""))
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r", "\n") else value


def _cell(value):
    """Any text cell: every line break becomes a plain newline, which the writer quotes (it leaves a bare
    carriage return unquoted on Python 3.10-3.12, so a note with one started a new row whose first cell
    escaped the formula guard), and lone surrogates become U+FFFD."""
    if not isinstance(value, str):
        return value
    return _clean(value.replace("\r\n", "\n").replace("\r", "\n"))


def _csv_row(case: Case, image_file: str) -> dict:
    """One CSV row; a result whose fields have unexpected types still gives a row (marked damaged)."""
    try:
        row = _result_row(case, image_file)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        log.warning("case %s: result unreadable for the export (%s)", case.id, exc)
        row = {"case_id": case.id, "uid": case.uid, "created": case.created, "status": "damaged",
               "summary": _text(f"Damaged record ({type(exc).__name__})"), "source": _text(case.source),
               "image_file": image_file, "note": _text(case.note)}
    return {k: _cell(v) for k, v in row.items()}


def _result_row(case: Case, image_file: str) -> dict:
    r = case.result
    gate = r.get("gate") or {}
    cxr4 = r.get("cxr4") or {}
    nih = r.get("nih14") or {}
    row = {"case_id": case.id, "uid": case.uid, "created": case.created, "status": case.status,
           "summary": _text(case.summary), "source": _text(case.source), "pack": _text(case.pack_name),
           "profile": _text(case.profile), "gate_score": gate.get("score", ""),
           "gate_threshold": gate.get("threshold", ""), "cxr4_top": cxr4.get("top", ""),
           "cxr4_flagged": ";".join(cxr4.get("positive") or []),
           "nih_task": nih.get("task", ""), "nih_findings": ";".join(nih.get("positive") or []),
           "warnings": _text(" | ".join(r.get("warnings") or [])),
           "quality": ";".join(f"{q.get('name')}:{q.get('verdict')}" for q in case.quality),
           "image_file": image_file, "note": _text(case.note)}
    for lbl, p in (cxr4.get("probabilities") or {}).items():
        row[f"cxr4:{lbl}"] = p
    for lbl, p in (nih.get("probabilities") or {}).items():
        row[f"nih:{lbl}"] = p
    return row
