"""``prepare``: sources → (sampled) records → cache → patient-level splits → split tables + prepared.json.

Re-running on an existing output is safe:

* same parameters, finished → nothing to do (the prepared set is returned);
* same parameters, interrupted → resumes: finished cache shards are kept;
* different parameters → refused, unless ``force``: then the new set is
  built in a sibling folder and swapped in only when complete, so the old
  one is never half-overwritten.

``prepared.json`` is written last, with ``"complete": true``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import DataError
from ..tasks import TaskSpec, get_task
from ..runtime.atomic import write_atomic
from .cache import DEFAULT_SHARD_SIZE, build_cache
from .labels import NO_FINDING
from .licenses import is_redistributable, summarize_licenses
from .prepared import INFO_FILE, PARAMS_FILE, PREPARED_FORMAT, Prepared, compute_data_sha256, open_prepared
from .sources import Issues, Record, SourceOptions, SourceSpec, load_sources, read_duplicate_groups, sha256_file
from .splits import SPLITS, SplitConfig, assign_splits, connected_groups, sample_groups

__all__ = ["describe", "META_COLUMNS", "prepare", "PrepareConfig", "STANDARD_WARNINGS"]

log = logging.getLogger(__name__)

#: Warning kinds prepared.json always lists (count 0 when none occurred).
STANDARD_WARNINGS = ("unknown_labels", "missing_files", "duplicate_rows", "corrupt_images")
META_COLUMNS = ("sex", "age", "view", "dataset", "license", "permissive", "sha256", "cache_index")


@dataclass(frozen=True)
class PrepareConfig:
    """Everything that decides what a prepared folder contains (compared on re-runs)."""

    task: str
    sources: tuple[SourceSpec, ...]
    source_options: SourceOptions = field(default_factory=SourceOptions)
    split: SplitConfig = field(default_factory=SplitConfig)
    size: int | None = None              # input size (default: the task's)
    clahe: bool = False                  # CLAHE the cached inputs: the model (and its pack) then expects it
    clahe_clip: float = 0.01
    clahe_tiles: int = 8
    no_finding: bool = False             # keep NIH 'No Finding' as an extra reported column ("15 labels")
    duplicates: tuple[str, ...] = ()     # duplicates.csv files: groups kept in one split
    permissive_only: bool = False        # leave out images whose licence is not permissive
    redistributable_only: bool = False   # leave out research-only / custom-terms / unknown licences
    shard_size: int = DEFAULT_SHARD_SIZE

    def task_spec(self) -> TaskSpec:
        task = get_task(self.task)
        if self.no_finding and task.family != "nih14":
            raise DataError(f"--no-finding keeps NIH's 'No Finding' column; task {task.name} has none. "
                            "Use it with nih14 or nih13.")
        if self.no_finding and NO_FINDING in task.labels:
            raise DataError(f"task {task.name} has 'No Finding' as a label already; drop --no-finding.")
        changes = {"size": self.size} if self.size else {}
        if self.clahe:
            changes.update(clahe=True, clahe_clip=self.clahe_clip, clahe_tiles=self.clahe_tiles)
        return task.with_input(**changes) if changes else task


def prepare(config: PrepareConfig, out, *, force: bool = False, workers: int | None = None,
            progress=None) -> Prepared:
    """Prepare ``config`` into folder ``out`` and return it opened (see the module docstring for re-runs).

    ``progress(n_done, n_total)`` is called as images are decoded.
    """
    started = time.time()
    task = config.task_spec()
    loaded = load_sources(task, config.sources, config.source_options)
    known_dups = [g for p in config.duplicates for g in read_duplicate_groups(p)]
    params = _params(config, task, loaded.sources)
    out = Path(out).expanduser().resolve()
    work, mode = _plan_output(out, params, force)
    if mode == "up_to_date":
        log.info("%s is already prepared with these parameters; nothing to do", out)
        return open_prepared(out)
    log.info("%s %s", {"fresh": "preparing", "resume": "resuming", "rebuild": "rebuilding"}[mode], work)
    work.mkdir(parents=True, exist_ok=True)
    write_atomic(work / PARAMS_FILE, _dumps(params))

    issues = loaded.issues
    records, sampled_out = _select(loaded.records, config, known_dups, issues, loaded.sources)
    total = len(records)
    done = [0]

    def step(n):
        done[0] += n
        if progress:
            progress(done[0], total)

    cache = build_cache([r.path for r in records], task.input, work / "cache", shard_size=config.shard_size,
                        workers=workers, progress=step)
    ok = _drop_corrupt(records, cache.errors, issues, loaded.sources)
    exact = _exact_duplicate_links(ok, cache)
    known = _index_links(records, known_dups, ok)
    links = known + exact
    kept = [records[i] for i in ok]
    groups = connected_groups([r.patient_id for r in kept], _reindex(links, ok))
    labels = np.array([r.labels for r in kept], dtype=np.int64).reshape(len(kept), task.num_labels)
    split, split_info = assign_splits(groups, labels, config.split, np.array([r.official_split for r in kept]))
    split_info.update(known_duplicate_groups_present=len(known), exact_duplicate_groups_found=len(exact),
                      sampled_out_images=sampled_out)

    columns = _columns(task, config)
    (work / "splits").mkdir(exist_ok=True)
    for k, name in enumerate(SPLITS):
        rows = [(records[i], cache.file_sha256[i], i) for i, s in zip(ok, split) if s == k]
        write_atomic(work / "splits" / f"{name}.csv", _table_bytes(columns, task, rows))
    write_atomic(work / "excluded.csv", _excluded_bytes(issues))
    info = _info(config, task, loaded, issues, kept, labels, split, split_info, cache, params)
    info["build"] = {"mode": mode, "resumed_shards": cache.resumed, "built_shards": cache.built,
                     "workers": workers or os.cpu_count(), "seconds": round(time.time() - started, 1)}
    info["data_sha256"] = compute_data_sha256(work, info["cache"]["shards"])
    info["complete"] = True
    write_atomic(work / INFO_FILE, _dumps(info))  # last: marks the folder complete
    if mode == "rebuild":
        _swap(work, out)
    for line in issues.summary_lines():
        log.warning("%s", line)
    return open_prepared(out)


# --------------------------------------------------------------------------- output folder


def _params(config: PrepareConfig, task: TaskSpec, sources: list[dict]) -> dict:
    opts = asdict(config.source_options)
    return {
        "format": PREPARED_FORMAT,
        "task": task.name,
        "input": task.input.to_dict(),
        "sources": [{k: s.get(k) for k in ("path", "role", "sha256", "listing_sha256", "official_split",
                                           "image_dirs", "images_indexed", "root")} for s in sources],
        "source_options": {k: (list(map(list, v)) if k == "aliases" else list(v) if isinstance(v, tuple) else v)
                           for k, v in opts.items()},
        "metadata_sha256": [sha256_file(p) for p in config.source_options.metadata],
        "duplicates": [{"path": str(Path(p).resolve()), "sha256": sha256_file(p)} for p in config.duplicates],
        "split": config.split.to_dict(),
        "no_finding": config.no_finding,
        "permissive_only": config.permissive_only,
        "redistributable_only": config.redistributable_only,
        "shard_size": config.shard_size,
    }


def _plan_output(out: Path, params: dict, force: bool) -> tuple[Path, str]:
    """Where to build and how: 'fresh', 'resume', 'up_to_date' or 'rebuild' (temp folder, then swap)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is a file. Give a folder path.")
    if not out.exists() or not any(out.iterdir()):
        return out, "fresh"
    old = _read_json(out / PARAMS_FILE)
    if old == params and not force:
        return out, "up_to_date" if (out / INFO_FILE).is_file() else "resume"
    if not force:
        if old is None:
            raise DataError(f"--out {out} is not empty and is not a prepared folder. Choose another folder, or "
                            "pass --force to replace it.")
        changed = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
        raise DataError(f"--out {out} was prepared with different parameters (changed: {', '.join(changed)}). "
                        "Use another --out, or pass --force to rebuild it (the old data stays until the new "
                        "set is complete).")
    tmp = out.with_name(f".{out.name}.rebuild")
    if tmp.exists() and _read_json(tmp / PARAMS_FILE) != params:
        shutil.rmtree(tmp)
    return tmp, "rebuild"


def _swap(tmp: Path, out: Path):
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _dumps(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode()


# --------------------------------------------------------------------------- records


def _select(records: list[Record], config: PrepareConfig, known_dups, issues: Issues,
            sources) -> tuple[list[Record], int]:
    """Sort by path, apply the licence filters and the patient sampling fraction (returns the number left out)."""
    records = sorted(records, key=lambda r: r.path)
    if config.redistributable_only:
        # A model trained on research-only, custom-terms or unlicensed images may not be handed on.
        for r in records:
            if not is_redistributable(r.license):
                issues.exclude(sources[r.source]["path"], r.path, "not_redistributable", r.license,
                               by=r.license or "unknown")
        records = [r for r in records if is_redistributable(r.license)]
    if config.permissive_only:
        for r in records:
            if not r.permissive:
                issues.exclude(sources[r.source]["path"], r.path, "not_permissive", r.license, by=r.license or "unknown")
        records = [r for r in records if r.permissive]
    if not records:
        raise DataError("no usable images in the sources (see the warnings above: missing files, unknown labels"
                        + (", non-permissive licences" if config.permissive_only else "")
                        + (", licences that forbid redistribution" if config.redistributable_only else "") + ").")
    frac = config.split.sample_fraction
    if frac < 1:
        every = list(range(len(records)))
        groups = connected_groups([r.patient_id for r in records], _index_links(records, known_dups, every))
        labels = np.array([r.labels for r in records])
        official_test = np.array([[r.official_split == "test"] for r in records], dtype=float)
        keep = sample_groups(groups, labels, frac, config.split.seed, extra=official_test)
        return [r for r, k in zip(records, keep) if k], int((~keep).sum())
    return records, 0


def _drop_corrupt(records, errors, issues: Issues, sources) -> list[int]:
    ok = []
    for i, (rec, err) in enumerate(zip(records, errors)):
        if err is None:
            ok.append(i)
        else:
            issues.exclude(sources[rec.source]["path"], rec.path, "corrupt_images", err[1], by=err[0])
    if not ok:
        raise DataError("none of the images could be decoded (see corrupt_images in the warnings).")
    return ok


def _index_links(records, groups_of_paths, usable) -> list[list[int]]:
    """Known duplicate groups as lists of record indices (only records in ``usable``)."""
    pos = {records[i].path: i for i in usable}
    links = [[pos[p] for p in g if p in pos] for g in groups_of_paths]
    return [link for link in links if len(link) > 1]


def _exact_duplicate_links(ok: list[int], cache) -> list[list[int]]:
    """Images with identical file bytes or identical cached pixels: linked so they share a split."""
    links: dict[frozenset, list[int]] = {}
    for key in (cache.file_sha256, cache.pixel_sha256):
        by: dict[str, list[int]] = {}
        for i in ok:
            by.setdefault(key[i], []).append(i)
        for g in by.values():
            if len(g) > 1:
                links.setdefault(frozenset(g), g)  # identical files are also identical pixels: count once
    return list(links.values())


def _reindex(links: list[list[int]], ok: list[int]) -> list[list[int]]:
    where = {i: j for j, i in enumerate(ok)}
    return [[where[i] for i in link] for link in links]


# --------------------------------------------------------------------------- tables


def _columns(task: TaskSpec, config: PrepareConfig) -> list[str]:
    return ["path", "patient_id", *task.labels, *([NO_FINDING] if config.no_finding else []), *META_COLUMNS]


def _table_bytes(columns, task: TaskSpec, rows) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    n_labels = task.num_labels
    extra = columns[2 + n_labels] == NO_FINDING
    for rec, sha, index in rows:
        w.writerow([rec.path, rec.patient_id, *rec.labels, *([rec.no_finding] if extra else []),
                    rec.sex, "" if rec.age is None else rec.age, rec.view, rec.dataset, rec.license,
                    int(rec.permissive), sha, index])
    return buf.getvalue().encode()


def _excluded_bytes(issues: Issues) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["source", "item", "reason", "detail"])
    w.writerows(issues.excluded)
    return buf.getvalue().encode()


# --------------------------------------------------------------------------- prepared.json


def _info(config, task, loaded, issues, kept, labels, split, split_info, cache, params) -> dict:
    counts = {}
    for k, name in enumerate(SPLITS):
        m = split == k
        recs = [r for r, s in zip(kept, m) if s]
        counts[name] = {
            "images": int(m.sum()),
            "patients": len({r.patient_id for r in recs}),
            "labels": {lbl: int(v) for lbl, v in zip(task.labels, labels[m].sum(0))},
            "no_label": int((labels[m].sum(1) == 0).sum()),
            **({NO_FINDING: sum(r.no_finding for r in recs)} if config.no_finding else {}),
        }
    lic = summarize_licenses([r.license for r in kept], [r.permissive for r in kept])
    seen: dict[str, set] = {}
    for r, k in zip(kept, split):
        seen.setdefault(r.patient_id, set()).add(int(k))
    split_info["patients_in_two_splits"] = sum(len(v) > 1 for v in seen.values())  # 0 by construction: checked
    info = {
        "format": PREPARED_FORMAT,
        "complete": False,
        "task": task.name,
        "input": task.input.to_dict(),
        "labels": list(task.labels),
        "extra_columns": [NO_FINDING] if config.no_finding else [],
        "activation": task.activation,
        "sources": loaded.sources,
        "duplicates_files": params["duplicates"],
        "metadata_files": params["source_options"]["metadata"],
        "split": {**config.split.to_dict(), **split_info},
        "counts": counts,
        "patients": {s: counts[s]["patients"] for s in SPLITS},
        **_weights(task, labels[split == 0]),
        "licenses": lic,
        "permissive_only": lic["permissive_only"],
        "permissive_filter": config.permissive_only,
        "redistributable_filter": config.redistributable_only,
        "warnings": {**{k: {"count": 0} for k in STANDARD_WARNINGS}, **issues.to_dict()},
        "cache": {"format": "npy-shards", "dir": "cache", "dtype": "uint8",
                  "shape": [len(cache.errors), *((task.input.size,) * 2), *(() if task.input.channels == 1 else (3,))],
                  "stores": "cxr_edge.preprocess.fit_to_square output", "shards": cache.shards},
        "params_sha256": _sha(_dumps(params)),
        "toolkit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return info


def _weights(task: TaskSpec, y: np.ndarray) -> dict:
    """Class weights and per-label positive weights from the train labels."""
    n = len(y)
    pos = y.sum(0).astype(np.float64)
    neg = n - pos
    safe = np.where(pos > 0, pos, np.nan)
    pos_w = np.where(pos > 0, neg / safe, 1.0)
    if task.multilabel:
        cls_w = np.where(pos > 0, n / (2 * safe), 1.0)
        method = ("sigmoid: class_weights = N/(2·n_pos) (balanced positive-class weight), neg_class_weights = "
                  "N/(2·n_neg); pos_weights = n_neg/n_pos (weighted BCE); from the train split")
    else:
        cls_w = np.where(pos > 0, n / (len(pos) * safe), 1.0)
        method = "softmax: class_weights = N/(K·n_k) (balanced); pos_weights = n_neg/n_pos; from the train split"
    missing = [lbl for lbl, p in zip(task.labels, pos) if p == 0]
    out = {
        "class_weights": {lbl: round(float(w), 6) for lbl, w in zip(task.labels, cls_w)},
        "pos_weights": {lbl: round(float(w), 6) for lbl, w in zip(task.labels, pos_w)},
        "weights_method": method,
    }
    if task.multilabel:
        out["neg_class_weights"] = {lbl: round(float(n / (2 * m)) if m else 1.0, 6) for lbl, m in zip(task.labels, neg)}
    if missing:
        out["weights_note"] = f"no train positives for {', '.join(missing)}: weight 1.0 used"
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def describe(prepared: Prepared) -> str:
    """A short text summary of a prepared set: split sizes, patients, label counts, warnings."""
    info = prepared.info
    labels = prepared.task.labels
    width = max(12, *(len(lbl) for lbl in labels))
    lines = [f"{prepared.path}  task {info['task']}  {info['input']['size']} px  data_sha256 {info['data_sha256'][:16]}…",
             f"{'':<{width}} " + " ".join(f"{s:>8}" for s in SPLITS)]
    c = info["counts"]
    lines.append(f"{'images':<{width}} " + " ".join(f"{c[s]['images']:>8}" for s in SPLITS))
    lines.append(f"{'patients':<{width}} " + " ".join(f"{c[s]['patients']:>8}" for s in SPLITS))
    for lbl in labels:
        lines.append(f"{lbl:<{width}} " + " ".join(f"{c[s]['labels'][lbl]:>8}" for s in SPLITS))
    lines.append(f"{'(no label)':<{width}} " + " ".join(f"{c[s]['no_label']:>8}" for s in SPLITS))
    lines.append(f"patients in two splits: {info['split']['patients_in_two_splits']}")
    for extra in info.get("extra_columns", []):
        lines.append(f"{extra + ' (extra)':<{width}} " + " ".join(f"{c[s][extra]:>8}" for s in SPLITS))
    lic = info["licenses"]
    lines.append(f"licences: {len(lic['counts'])}; most restrictive: {lic['most_restrictive']!r} "
                 f"({lic['most_restrictive_level']}); permissive only: {info['permissive_only']}")
    for kind, d in info["warnings"].items():
        if not d["count"]:
            continue
        by = d.get("by")
        lines.append(f"warning: {kind.replace('_', ' ')}: {d['count']}"
                     + (f" ({', '.join(f'{k}: {v}' for k, v in list(by.items())[:6])})" if by else ""))
    b = info.get("build", {})
    lines.append(f"cache: {info['cache']['shape'][0]} images in {len(info['cache']['shards'])} shard(s) "
                 f"({b.get('built_shards', 0)} built, {b.get('resumed_shards', 0)} kept) in {b.get('seconds', '?')} s")
    return "\n".join(lines)
