"""Readers for the data layouts users actually have, all producing one list of :class:`Record`.

* **Tables** (``.csv`` or ``.csv.gz``): the manifests in ``../shared/data``
  (``file`` + a ``label`` column, one-hot label columns, or ``is_cxr`` for the
  gate) and NIH's ``Data_Entry_2017*.csv`` (``Image Index`` + ``Finding
  Labels``; images found by name under ``--images`` folders: the 12
  ``images_0NN`` folders or one flat folder). An ``official_split`` column or
  NIH's ``test_list.txt`` gives the official test set.
* **Folder-per-class trees** (``root/COVID19/*.png``, optionally under
  ``train/``/``val``/``test/``), class names mapped through aliases.
* **Gate sides**: a folder or table whose every image is a positive
  (chest X-ray) or a negative.

Nothing is dropped silently: unknown labels, missing files, duplicate rows
and rows without a usable label are counted in :class:`Issues` (with
examples) and listed row by row in ``excluded.csv``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..runtime.images import IMAGE_SUFFIXES
from ..tasks import TaskSpec
from .labels import NO_FINDING, LabelMapper, Mapped, norm_key, split_names
from .licenses import is_permissive

__all__ = ["Issues", "load_sources", "Loaded", "mapped_name", "NIH_DATASET", "NIH_LICENSE", "read_csv_rows",
           "read_duplicate_groups", "Record", "ROLES", "sha256_file", "SourceOptions", "SourceSpec", "SPLIT_FOLDERS"]

log = logging.getLogger(__name__)

NIH_DATASET = "NIH ChestX-ray14"
NIH_LICENSE = "NIH ChestX-ray14 (unrestricted use, citation requested)"
SPLIT_FOLDERS = {"train": "train_val", "training": "train_val", "val": "train_val", "valid": "train_val",
                 "validation": "train_val", "dev": "train_val", "test": "test", "testing": "test"}
ROLES = ("auto", "positive", "negative")

# Patient ids hidden in well-known file names (used when a source has no patient column).
_PATIENT_PATTERNS = (
    (re.compile(r"^(\d{8})_\d{3}\.\w+$"), lambda m: f"nih:{int(m.group(1))}"),          # NIH 00000061_012.png
    (re.compile(r"^(person\d+)_(?:bacteria|virus)"), lambda m: f"kermany:{m.group(1)}"),  # Kermany pneumonia
    (re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+"), lambda m: f"kermany:{m.group(1)}"),     # Kermany normal
)

_MAX_EXAMPLES = 10


@dataclass(slots=True)
class Record:
    """One image with its labels (0/1 in task order) and the metadata its source has."""

    path: str
    patient_id: str
    labels: tuple[int, ...]
    no_finding: int = 0
    sex: str = ""
    age: int | None = None
    view: str = ""
    dataset: str = ""
    license: str = ""
    permissive: bool = False
    official_split: str = ""  # "test", "train_val" or "" (the source has no official split)
    source: int = 0


@dataclass(frozen=True)
class SourceSpec:
    """One ``--source`` (role auto), ``--positives`` or ``--negatives`` path."""

    path: str
    role: str = "auto"

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")


@dataclass(frozen=True)
class SourceOptions:
    """Options that apply to every source."""

    images: tuple[str, ...] = ()        # folders to find images named only by file name (NIH Data_Entry)
    root: str | None = None             # base folder for relative paths in manifests (default: detected)
    test_list: str | None = None        # NIH test_list.txt(.gz); found next to a Data_Entry table otherwise
    metadata: tuple[str, ...] = ()      # manifests to take patient ids/sex/age/view/licence from, by file
    patient_pattern: str | None = None  # regex with one group: the patient id in a file name
    license: str | None = None          # licence for sources that record none
    aliases: tuple[tuple[str, str], ...] = ()


class Issues:
    """What went wrong while reading, with counts and examples; plus every excluded row."""

    def __init__(self):
        self._kinds: dict[str, dict] = {}
        self.excluded: list[tuple[str, str, str, str]] = []  # (source, item, reason, detail)

    def add(self, kind: str, *, by: str | None = None, example: str | None = None, n: int = 1):
        entry = self._kinds.setdefault(kind, {"count": 0, "by": Counter(), "examples": []})
        entry["count"] += n
        if by is not None:
            entry["by"][by] += n
        if example is not None and len(entry["examples"]) < _MAX_EXAMPLES:
            entry["examples"].append(example)

    def exclude(self, source: str, item: str, reason: str, detail: str = "", *, by: str | None = None):
        """Count a row that will not be used and remember it for ``excluded.csv``."""
        self.add(reason, by=by, example=item)
        self.excluded.append((source, item, reason, detail))

    def count(self, kind: str) -> int:
        return self._kinds.get(kind, {}).get("count", 0)

    def to_dict(self) -> dict:
        out = {}
        for kind in sorted(self._kinds):
            e = self._kinds[kind]
            d = {"count": e["count"]}
            if e["by"]:
                d["by"] = dict(sorted(e["by"].items(), key=lambda kv: (-kv[1], kv[0])))
            if e["examples"]:
                d["examples"] = list(e["examples"])
            out[kind] = d
        return out

    def summary_lines(self) -> list[str]:
        lines = []
        for kind, d in self.to_dict().items():
            by = d.get("by")
            extra = f" ({', '.join(f'{k}: {v}' for k, v in list(by.items())[:8])})" if by else ""
            lines.append(f"{kind.replace('_', ' ')}: {d['count']}{extra}")
        return lines


@dataclass
class Loaded:
    """All sources read: usable records (first occurrence of each file) and what each source was."""

    records: list[Record]
    sources: list[dict]
    issues: Issues
    official_available: bool = False
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- entry point


def load_sources(task: TaskSpec, specs, options: SourceOptions = SourceOptions(), issues: Issues | None = None) -> Loaded:
    """Read every source into records for ``task``; duplicate rows (same file twice) keep the first."""
    if not specs:
        raise DataError("no data source given. Pass --source (a manifest CSV, a Data_Entry CSV or a "
                        "folder-per-class tree), or --positives/--negatives for the gate.")
    issues = issues or Issues()
    mapper = LabelMapper(task, dict(options.aliases))
    ctx = _Context(task, mapper, options, issues, _read_metadata(options.metadata, options.root))
    records: list[Record] = []
    descriptions = []
    for i, spec in enumerate(specs):
        if spec.role != "auto" and task.name != "gate":
            raise DataError(f"--positives/--negatives are for the gate task, not {task.name}; use --source.")
        recs, desc = _read_source(spec, i, ctx)
        records.extend(recs)
        descriptions.append(desc)
    records = _dedupe(records, descriptions, issues)
    official = any(d.get("official_split") for d in descriptions)
    return Loaded(records, descriptions, issues, official)


@dataclass
class _Context:
    task: TaskSpec
    mapper: LabelMapper
    options: SourceOptions
    issues: Issues
    metadata: dict[str, dict]


def _read_source(spec: SourceSpec, index: int, ctx: _Context):
    path = Path(spec.path).expanduser()
    if not path.exists():
        raise DataError(f"source {spec.path}: no such file or folder. Give a manifest CSV, a Data_Entry CSV "
                        "or a folder of class subfolders.")
    if path.is_dir():
        return _read_tree(path.resolve(), spec.role, index, ctx)
    if path.name.lower().endswith((".csv", ".csv.gz", ".tsv")):
        return _read_table(path.resolve(), spec.role, index, ctx)
    raise DataError(f"source {spec.path}: not a folder or a .csv/.csv.gz table. Give a manifest CSV, a "
                    "Data_Entry CSV or a folder of class subfolders.")


def _dedupe(records: list[Record], descriptions: list[dict], issues: Issues) -> list[Record]:
    seen: dict[str, Record] = {}
    for rec in records:
        first = seen.get(rec.path)
        if first is None:
            seen[rec.path] = rec
            continue
        detail = "" if first.labels == rec.labels else f"labels differ: kept {first.labels}, dropped {rec.labels}"
        issues.exclude(descriptions[rec.source]["path"], rec.path, "duplicate_rows", detail)
        if detail:
            issues.add("conflicting_duplicate_rows", example=rec.path)
    return list(seen.values())


# --------------------------------------------------------------------------- tables


def read_csv_rows(path: Path) -> tuple[list[str], list[dict]]:
    """A CSV (or .csv.gz / .tsv) as (field names, rows); a DataError when it cannot be read."""
    try:
        raw = path.read_bytes()
        if path.name.lower().endswith(".gz"):
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot be read as a UTF-8 CSV ({exc}). Check the file.") from exc
    delimiter = "\t" if path.name.lower().endswith(".tsv") else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    fields = [f.strip() for f in (reader.fieldnames or [])]
    if not fields:
        raise DataError(f"{path}: the table is empty (no header row).")
    rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in r.items()}
            for r in reader]
    return fields, rows


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _col(fields, *candidates) -> str | None:
    """The first field whose normalized name matches a candidate."""
    keys = {norm_key(f): f for f in fields}
    for c in candidates:
        if norm_key(c) in keys:
            return keys[norm_key(c)]
    return None


class _Columns:
    """Which CSV column holds what, for one table."""

    def __init__(self, fields, task: TaskSpec):
        c = lambda *names: _col(fields, *names)  # noqa: E731
        self.file = c("file", "path", "filepath", "file_path", "image_path")
        self.name = None if self.file else c("Image Index", "image", "filename", "image_id")
        self.patient = c("patient_id", "Patient ID", "patient")
        self.sex = c("sex", "Patient Gender", "gender")
        self.age = c("age", "Patient Age")
        self.view = c("view", "View Position", "viewposition")
        self.dataset = c("dataset", "group", "source_dataset")
        self.license = c("license", "licence")
        self.permissive = c("permissive")
        self.official = c("official_split")
        self.finding_labels = c("Finding Labels")
        self.label = c("label", "labels", "class", "category") if not self.finding_labels else None
        self.is_cxr = c("is_cxr", "chest_xray") if task.name == "gate" else None
        self.no_finding = c(NO_FINDING)
        # one-hot columns: every task label must be present (nih13 may read nih14 tables)
        hot = {lbl: c(lbl) for lbl in task.labels}
        self.label_columns = hot if all(hot.values()) else None
        if self.label_columns and task.family == "nih14":
            pt = c("Pleural_Thickening")
            if pt and "Pleural_Thickening" not in hot:
                self.label_columns = {**hot, "Pleural_Thickening": pt}


def _read_table(path: Path, role: str, index: int, ctx: _Context):
    fields, rows = read_csv_rows(path)
    cols = _Columns(fields, ctx.task)
    desc = {"type": "table", "path": str(path), "role": role, "sha256": sha256_file(path), "rows": len(rows)}
    if role == "auto" and not (cols.label_columns or cols.finding_labels or cols.label or cols.is_cxr):
        raise DataError(
            f"{path}: no label column for task {ctx.task.name}. Found columns: {', '.join(fields)}. Expected "
            f"one of: 'label', 'Finding Labels', one 0/1 column per label ({', '.join(ctx.task.labels)})"
            + (", or 'is_cxr'" if ctx.task.name == "gate" else "")
            + (". For the gate, pass a table with every image positive or negative as --positives/--negatives."
               if ctx.task.name == "gate" else "."))
    if cols.file:
        base = _detect_root(path, [r[cols.file] for r in rows], ctx.options.root)
        desc["root"] = str(base)
        resolve = lambda r: _join(base, r[cols.file])  # noqa: E731
    elif cols.name:
        desc["type"] = "nih_data_entry" if cols.finding_labels else "table"
        by_name, dirs = _index_images(ctx.options.images or (str(path.parent),), ctx.issues)
        desc.update(image_dirs=dirs, images_indexed=len(by_name))
        if not by_name:
            raise DataError(f"{path} names its images by file name ({cols.name}), but no images were found under "
                            f"{', '.join(dirs)}. Pass the image folder(s) with --images DIR.")
        resolve = lambda r: by_name.get(r[cols.name], os.path.join(dirs[0], r[cols.name]))  # noqa: E731
    else:
        raise DataError(f"{path}: no column naming the image file. Found: {', '.join(fields)}. Expected 'file' "
                        "(a path relative to the manifest) or 'Image Index' (a file name, with --images DIR).")
    official = _official_lookup(path, cols, desc, ctx)
    nih_style = bool(cols.finding_labels and cols.patient and norm_key(cols.patient) == "patientid")
    default_license = NIH_LICENSE if nih_style else (ctx.options.license or "")
    default_dataset = NIH_DATASET if nih_style else path.parent.name
    records = []
    for n, row in enumerate(rows):
        item = row.get(cols.file or cols.name, "") or f"row {n + 2}"
        mapped = _table_labels(row, cols, role, ctx)
        p = resolve(row) if (cols.file and row.get(cols.file)) or (cols.name and row.get(cols.name)) else ""
        rec = _make_record(p, item, mapped, str(path), index, ctx)
        if rec is None:
            continue
        meta = {
            "patient_id": _patient_value(row, cols),
            "sex": row.get(cols.sex, "") if cols.sex else "",
            "age": row.get(cols.age, "") if cols.age else "",
            "view": row.get(cols.view, "") if cols.view else "",
            "dataset": (row.get(cols.dataset, "") if cols.dataset else "") or default_dataset,
            "license": (row.get(cols.license, "") if cols.license else "") or default_license,
            "permissive": row.get(cols.permissive, "") if cols.permissive else "",
            "official_split": official(row, p),
        }
        _fill(rec, meta, ctx)
        records.append(rec)
    desc["records"] = len(records)
    return records, desc


def _table_labels(row: dict, cols: _Columns, role: str, ctx: _Context) -> Mapped:
    m = ctx.mapper
    if role != "auto":
        return m.map_names(["chest_xray" if role == "positive" else "negative"])
    if cols.label_columns:
        mapped = m.from_columns(row, cols.label_columns)
        if cols.no_finding and row.get(cols.no_finding, "").strip() in ("1", "1.0", "True", "true"):
            mapped = Mapped(mapped.labels, True, mapped.unknown, mapped.dropped, mapped.negative)
        return mapped
    if cols.finding_labels:
        return m.map_names(split_names(row.get(cols.finding_labels, "")))
    if cols.label:
        return m.map_names(split_names(row.get(cols.label, "")))
    value = row.get(cols.is_cxr, "")
    return m.map_names([value] if value else [])


def _patient_value(row: dict, cols: _Columns) -> str:
    if not cols.patient:
        return ""
    value = row.get(cols.patient, "").strip()
    if value and norm_key(cols.patient) == "patientid" and cols.patient != "patient_id" and value.isdigit():
        return f"nih:{int(value)}"  # NIH's 'Patient ID' column: same namespace as the shared manifests
    return value


def _official_lookup(path: Path, cols: _Columns, desc: dict, ctx: _Context):
    """A function (row, resolved path) -> 'test' / 'train_val' / '' from the table or NIH's lists."""
    if cols.official:
        desc["official_split"] = {"column": cols.official}
        return lambda row, p: {"test": "test", "train_val": "train_val", "trainval": "train_val",
                               "train": "train_val", "val": "train_val"}.get(row.get(cols.official, "").lower(), "")
    test_file = ctx.options.test_list or _find_list(path.parent, "test_list")
    if not test_file or not (cols.name or cols.finding_labels or ctx.options.test_list):
        return lambda row, p: ""
    names = _read_name_list(Path(test_file))
    desc["official_split"] = {"test_list": str(Path(test_file).resolve()), "sha256": sha256_file(test_file),
                              "test_names": len(names)}
    return lambda row, p: "test" if os.path.basename(p) in names else ("train_val" if p else "")


def _find_list(folder: Path, stem: str) -> str | None:
    for name in (f"{stem}.txt", f"{stem}.txt.gz"):
        if (folder / name).is_file():
            return str(folder / name)
    return None


def _read_name_list(path: Path) -> set[str]:
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if path.name.endswith(".gz") else raw).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
        raise DataError(f"official list {path} cannot be read ({exc}).") from exc
    return {line.strip() for line in text.splitlines() if line.strip()}


def _detect_root(table: Path, files: list[str], explicit: str | None) -> Path:
    """The folder relative paths in a manifest start from: explicit, else the table's folder or a parent.

    The shared manifests name files relative to ``shared/data`` while living in
    ``shared/data/<subset>/``; the first candidate under which most of a sample
    of rows exists wins (the choice is recorded in prepared.json).
    """
    if explicit:
        return Path(explicit).expanduser().resolve()
    sample = [f for f in files if f and not os.path.isabs(f)][:50]
    candidates = [table.parent, table.parent.parent, table.parent.parent.parent]
    if not sample:
        return table.parent
    best, best_hits = table.parent, -1
    for cand in candidates:
        hits = sum(os.path.exists(os.path.join(cand, f)) for f in sample)
        if hits > best_hits:
            best, best_hits = cand, hits
        if hits == len(sample):
            break
    return best


def _join(base: Path, file: str) -> str:
    return os.path.normpath(os.path.join(base, file)) if file else ""


def _index_images(dirs, issues: Issues) -> tuple[dict[str, str], list[str]]:
    """Map file name -> path for every image under ``dirs`` (e.g. the 12 images_0NN folders)."""
    by_name: dict[str, str] = {}
    resolved = []
    for d in dirs:
        root = Path(d).expanduser().resolve()
        if not root.is_dir():
            raise DataError(f"--images {d}: not a folder. Give the folder holding the images (or images_0NN folders).")
        resolved.append(str(root))
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                    if name in by_name:
                        issues.add("same_file_name_in_image_folders", example=os.path.join(dirpath, name))
                        continue
                    by_name[name] = os.path.join(dirpath, name)
    return by_name, resolved


# --------------------------------------------------------------------------- folder trees


def _read_tree(root: Path, role: str, index: int, ctx: _Context):
    desc = {"type": "class_folders" if role == "auto" else "image_folder", "path": str(root), "role": role}
    listing = []
    records = []
    if role != "auto":
        mapped = ctx.mapper.map_names(["chest_xray" if role == "positive" else "negative"])
        for f in _images_under(root):
            listing.append(f)
            rec = _make_record(str(f), str(f), mapped, str(root), index, ctx)
            dataset = f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else root.name
            _fill(rec, {"dataset": dataset, "license": ctx.options.license or ""}, ctx)
            records.append(rec)
    else:
        classes = _class_folders(root)
        desc["classes"] = {}
        for split_name, class_dir in classes:
            files = list(_images_under(class_dir))
            listing.extend(files)
            mapped = ctx.mapper.map_names([class_dir.name])
            desc["classes"][class_dir.name] = mapped_name(mapped, ctx.mapper)
            for f in files:
                rec = _make_record(str(f), str(f), mapped, str(root), index, ctx)
                if rec is not None:
                    _fill(rec, {"dataset": root.name, "license": ctx.options.license or "",
                                "official_split": split_name}, ctx)
                    records.append(rec)
        if any(s for s, _ in classes):
            desc["official_split"] = {"folders": sorted({s for s, _ in classes if s})}
    if not listing:
        raise DataError(f"{root}: no images found ({', '.join(IMAGE_SUFFIXES)}).")
    h = hashlib.sha256()
    for f in listing:
        h.update(f"{f.relative_to(root)}\t{f.stat().st_size}\n".encode())
    desc.update(listing_sha256=h.hexdigest(), files=len(listing), records=len(records))
    return [r for r in records if r is not None], desc


def mapped_name(mapped: Mapped, mapper: LabelMapper) -> str:
    hits = [lbl for lbl, v in zip(mapper.labels, mapped.labels) if v]
    if hits:
        return "|".join(hits)
    if mapped.negative:
        return "negative"
    return "unknown"


def _class_folders(root: Path) -> list[tuple[str, Path]]:
    """(official split or '', class folder) pairs: root/CLASS or root/{train,val,test}/CLASS."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise DataError(f"{root}: a folder source needs one subfolder per class (e.g. {root}/Normal/…); "
                        "found none. For a flat folder of one class use a manifest CSV.")
    if all(p.name.lower() in SPLIT_FOLDERS for p in subdirs):
        pairs = []
        for split_dir in subdirs:
            for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                pairs.append((SPLIT_FOLDERS[split_dir.name.lower()], class_dir))
        return pairs
    return [("", p) for p in subdirs]


def _images_under(folder: Path):
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                yield Path(dirpath) / name


# --------------------------------------------------------------------------- records


def _make_record(path: str, item: str, mapped: Mapped, source: str, index: int, ctx: _Context) -> Record | None:
    """A record with labels checked, or None (counted) when the row cannot be used."""
    issues, task = ctx.issues, ctx.task
    if not path:
        issues.exclude(source, item, "rows_without_file")
        return None
    if not os.path.isfile(path):
        issues.exclude(source, path, "missing_files")
        return None
    for name in mapped.unknown:
        issues.add("unknown_labels", by=name, example=item)
    for name in mapped.dropped:
        issues.add("labels_not_in_task", by=name)
    labels = mapped.labels
    if task.name == "gate":
        if sum(labels) + mapped.negative != 1:
            issues.exclude(source, item, "unusable_labels", "neither or both of positive/negative",
                           by="|".join(mapped.unknown) or "no label")
            return None
    elif not task.multilabel and sum(labels) != 1:
        reason = "no_known_label" if sum(labels) == 0 else "multiple_labels"
        issues.exclude(source, item, "unusable_labels", reason, by="|".join(mapped.unknown) or reason)
        return None
    return Record(path=os.path.normpath(path), patient_id="", labels=labels,
                  no_finding=int(mapped.no_finding), source=index)


def _fill(rec: Record | None, meta: dict, ctx: _Context):
    """Set metadata: the row's own values, then --metadata manifests, then file-name patterns."""
    if rec is None:
        return
    joined = ctx.metadata.get(rec.path, {})
    get = lambda k: meta.get(k) or joined.get(k) or ""  # noqa: E731
    rec.patient_id = get("patient_id") or _patient_from_name(rec.path, ctx)
    rec.sex = _norm_sex(get("sex"))
    rec.age = _parse_age(get("age"))
    rec.view = get("view")
    rec.dataset = get("dataset")
    rec.license = get("license") or ctx.options.license or ""
    flag = str(get("permissive")).strip().lower()
    rec.permissive = flag in ("true", "1", "yes") if flag else is_permissive(rec.license)
    rec.official_split = meta.get("official_split", "")


def _patient_from_name(path: str, ctx: _Context) -> str:
    name = os.path.basename(path)
    if ctx.options.patient_pattern:
        m = re.search(ctx.options.patient_pattern, name)
        if m:
            return m.group(1) if m.groups() else m.group(0)
    for pattern, make in _PATIENT_PATTERNS:
        m = pattern.match(name)
        if m:
            return make(m)
    ctx.issues.add("rows_without_patient_id", example=path)
    return f"image:{path}"  # its own patient: no other image can be linked to it


def _norm_sex(value: str) -> str:
    v = value.strip().upper()[:1]
    return v if v in ("M", "F") else ""


def _parse_age(value) -> int | None:
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([YMD]?)", str(value or ""), re.I)
    if not m:
        return None
    age = float(m.group(1))
    unit = m.group(2).upper()
    age = age / 12 if unit == "M" else age / 365 if unit == "D" else age
    return int(age) if 0 <= age < 130 else None


def _read_metadata(paths, root: str | None) -> dict[str, dict]:
    """file path -> metadata from ``--metadata`` manifests (first manifest wins)."""
    out: dict[str, dict] = {}
    for p in paths:
        path = Path(p).expanduser().resolve()
        if not path.is_file():
            raise DataError(f"--metadata {p}: no such file. Give a manifest CSV with a 'file' column.")
        fields, rows = read_csv_rows(path)
        file_col = _col(fields, "file", "path")
        if not file_col:
            raise DataError(f"--metadata {p}: no 'file' column (found {', '.join(fields)}).")
        cols = {k: _col(fields, *names) for k, names in {
            "patient_id": ("patient_id", "Patient ID"), "sex": ("sex", "Patient Gender"),
            "age": ("age", "Patient Age"), "view": ("view", "View Position"), "dataset": ("dataset",),
            "license": ("license", "licence"), "permissive": ("permissive",)}.items()}
        base = _detect_root(path, [r[file_col] for r in rows], root)
        for r in rows:
            key = _join(base, r[file_col])
            entry = {k: r.get(c, "") for k, c in cols.items() if c}
            if cols["patient_id"] and norm_key(cols["patient_id"]) == "patientid" and \
                    cols["patient_id"] != "patient_id" and entry["patient_id"].isdigit():
                entry["patient_id"] = f"nih:{int(entry['patient_id'])}"
            out.setdefault(key, entry)
    return out


def read_duplicate_groups(path) -> list[list[str]]:
    """Groups of files known to be the same image (``duplicates.csv``: a ``files`` column, ``;``-separated)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"--duplicates {path}: no such file.")
    fields, rows = read_csv_rows(path)
    files_col = _col(fields, "files")
    pair_cols = [f for f in fields if norm_key(f).startswith("file")] if not files_col else []
    if not files_col and len(pair_cols) < 2:
        raise DataError(f"--duplicates {path}: expected a 'files' column (paths separated by ';') or two "
                        f"file columns; found {', '.join(fields)}.")
    groups = [r[files_col].split(";") if files_col else [r[c] for c in pair_cols] for r in rows]
    base = _detect_root(path, [f for g in groups for f in g], None)
    return [[_join(base, f.strip()) for f in g if f.strip()] for g in groups]
