"""Calibration sets: the representative images int8 post-training quantization measures ranges on.

A calibration set is a *manifest*, not images: a CSV with one row per image ::

    file,<one 0/1 column per label>,sha256
    nih_cxr14/images/00000061_012.png,0,1,0,...,9f2c...

``file`` is relative to a named root, the shared data folder (``root: "shared-data"``), so the
manifest means the same thing on every machine. A JSON sidecar with the same stem
(``calibration_data/cxr4.csv`` + ``calibration_data/cxr4.json``) records how the set was drawn
(task, source split, seed, strata) and the set's hash.

* :func:`build_calibration_set` draws ``n`` images (300 by default) from one split of a prepared
  data set (train or val, never test), stratified by label: each stratum (a class; for multi-label
  tasks the rarest positive label of the image, or ``(none)``) gets its proportional share, at
  least one image, chosen with a seeded generator, so the same data and seed give the same set.
* :func:`load_calibration_set` reads a manifest and checks it against its sidecar; at export
  time :meth:`CalibrationSet.inputs` finds every file under the data root, refuses a missing file
  or one whose sha256 differs from the manifest, and preprocesses it with the device-side
  :func:`cxr_edge.runtime.preprocess.preprocess` at the model's own input spec.

The set's hash (:attr:`CalibrationSet.sha256`) is the sha256 of its sorted file hashes: it names
the image content, independent of paths, row order and machine, and is recorded in every model
quantized with the set (``ModelMetadata.calibration``).

numpy only: no TensorFlow.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import DataError, ImageError
from ..runtime.preprocess import preprocess
from ..tasks import TaskSpec, get_task

__all__ = ["ALLOWED_SPLITS", "build_calibration_set", "CalibrationSet", "DEFAULT_N", "load_calibration_set",
           "NONE_STRATUM", "resolve_data_root", "ROOT_ENV", "ROOT_NAME", "SET_FORMAT", "SET_FORMAT_VERSION",
           "set_sha256", "sidecar_of", "write_calibration_set"]

log = logging.getLogger(__name__)

SET_FORMAT = "cxr-edge-calibration-set"
SET_FORMAT_VERSION = 1
DEFAULT_N = 300
ROOT_NAME = "shared-data"
ROOT_ENV = "CXR_EDGE_DATA_ROOT"
NONE_STRATUM = "(none)"
ALLOWED_SPLITS = ("train", "val")
_HASH_HEADER = b"cxr-edge calibration set v1\n"
_ROOT_HELP = (f"pass --data-root DIR (the shared data folder, e.g. ../shared/data) or set {ROOT_ENV}")


def set_sha256(file_hashes) -> str:
    """The hash of a set of images: sha256 over their sorted sha256s (order- and path-independent)."""
    h = hashlib.sha256(_HASH_HEADER)
    for digest in sorted(file_hashes):
        h.update(f"{digest}\n".encode())
    return h.hexdigest()


@dataclass
class CalibrationSet:
    """A calibration manifest: relative file paths, their labels and sha256s, and how it was drawn."""

    task: str
    files: list[str]
    labels: np.ndarray            # (N, L) int 0/1 in get_task(task).labels order
    file_sha256: list[str]
    info: dict = field(default_factory=dict)   # the sidecar: source split, seed, strata, ...
    path: Path | None = None

    @property
    def n(self) -> int:
        return len(self.files)

    @property
    def spec(self) -> TaskSpec:
        return get_task(self.task)

    @property
    def sha256(self) -> str:
        return set_sha256(self.file_sha256)

    def record(self) -> dict:
        """What a model quantized with this set records about it (``ModelMetadata.calibration``)."""
        source = self.info.get("source", {})
        return {"sha256": self.sha256, "n": self.n, "manifest": self.path.name if self.path else None,
                "task": self.task, "split": source.get("split"), "seed": self.info.get("seed"),
                "data_sha256": source.get("data_sha256"), "strata": self.info.get("strata", {})}

    def files_under(self, root) -> list[Path]:
        """The absolute path of every file under ``root`` (missing files are reported by :meth:`read`)."""
        root = Path(root)
        return [root / Path(*f.split("/")) for f in self.files]

    def read(self, root) -> list[bytes]:
        """Every file's bytes, checked against the manifest's sha256; one DataError lists all problems."""
        contents, missing, changed = [], [], []
        for rel, path, digest in zip(self.files, self.files_under(root), self.file_sha256):
            try:
                data = path.read_bytes()
            except OSError:
                missing.append(rel)
                continue
            if hashlib.sha256(data).hexdigest() != digest:
                changed.append(rel)
            contents.append(data)
        if missing or changed:
            parts = []
            if missing:
                parts.append(f"{len(missing)} file(s) missing (e.g. {', '.join(missing[:3])})")
            if changed:
                parts.append(f"{len(changed)} file(s) whose sha256 differs from the manifest "
                             f"(e.g. {', '.join(changed[:3])})")
            raise DataError(
                f"calibration set {self.path or self.task} does not match the data under {root}: "
                f"{'; '.join(parts)}. Point --data-root (or {ROOT_ENV}) at the shared data folder the set was "
                f"built from, or rebuild the set: cxr-edge calibration build PREPARED --out {self.path or 'FILE.csv'}")
        return contents

    def inputs(self, spec: TaskSpec, root) -> np.ndarray:
        """float32 (N, S, S, C) model inputs: every file verified, then preprocessed as predict does."""
        out = np.empty((self.n, spec.input.size, spec.input.size, spec.input.channels), np.float32)
        for i, (rel, data) in enumerate(zip(self.files, self.read(root))):
            try:
                out[i] = preprocess(data, spec)
            except ImageError as exc:
                raise DataError(f"calibration image {rel} cannot be read ({exc}); rebuild the set") from exc
        return out


# --------------------------------------------------------------------------- the data root


def resolve_data_root(explicit=None, manifest=None) -> Path:
    """The folder manifest paths are relative to.

    Order: ``explicit`` (``--data-root``), ``$CXR_EDGE_DATA_ROOT``, ``$CXR_EDGE_SHARED/data``, then for a
    manifest shipped in the package ``../shared/data`` beside the working directory (a checkout run from
    its root), for another one ``<repo>/../shared/data`` when it is kept in ``<repo>/calibration_data/``.
    """
    tried = []
    candidates = []
    if explicit:
        candidates.append(("--data-root", Path(explicit).expanduser()))
    if os.environ.get(ROOT_ENV):
        candidates.append((ROOT_ENV, Path(os.environ[ROOT_ENV]).expanduser()))
    if os.environ.get("CXR_EDGE_SHARED"):
        candidates.append(("CXR_EDGE_SHARED", Path(os.environ["CXR_EDGE_SHARED"]).expanduser() / "data"))
    if manifest is not None and _shipped(manifest):
        candidates.append(("beside the working directory", Path.cwd().parent / "shared" / "data"))
    elif manifest is not None:
        repo = Path(manifest).resolve().parent.parent
        candidates.append(("beside the repository", repo.parent / "shared" / "data"))
    for origin, path in candidates:
        if path.is_dir():
            return path.resolve()
        tried.append(f"{path} ({origin})")
        if origin in ("--data-root", ROOT_ENV):   # an explicit choice that is wrong is an error, not a fallback
            break
    raise DataError(f"cannot find the data root that calibration manifests are relative to (tried: "
                    f"{', '.join(tried) or 'nothing'}); {_ROOT_HELP}")


def _shipped(manifest) -> bool:
    """Whether ``manifest`` is one of the calibration manifests shipped in the package."""
    from ..config import package_data

    return Path(manifest).resolve().parent == package_data("resources", "calibration_data").resolve()


# --------------------------------------------------------------------------- building


def _strata(spec: TaskSpec, y: np.ndarray) -> np.ndarray:
    """One stratum name per image: its class (softmax) or its rarest positive label (sigmoid)."""
    if not spec.multilabel:
        return np.asarray(spec.labels)[y.argmax(axis=1)]
    counts = y.sum(axis=0)
    rarity = np.where(y > 0, counts[None, :], np.inf)
    rarest = rarity.argmin(axis=1)
    names = np.asarray(spec.labels, dtype=object)[rarest]
    names[~(y > 0).any(axis=1)] = NONE_STRATUM
    return names.astype(str)


def _allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Proportional shares of ``n``, at least one per stratum (when ``n`` allows), never above its size."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    keys = sorted(sizes)
    floor = 1 if n >= len(keys) else 0
    exact = {k: n * sizes[k] / total for k in keys}
    share = {k: max(floor, min(sizes[k], int(exact[k]))) for k in keys}
    while sum(share.values()) > n:   # the minimum of one overshot: take from the most over-served
        k = max((k for k in keys if share[k] > floor), key=lambda k: (share[k] - exact[k], k))
        share[k] -= 1
    while sum(share.values()) < n:   # hand out the remainder to the most under-served
        k = max((k for k in keys if share[k] < sizes[k]), key=lambda k: (exact[k] - share[k], k))
        share[k] += 1
    return share


def _relative(path: str, root: Path) -> str:
    p = Path(path)
    try:
        return p.resolve().relative_to(root).as_posix()
    except ValueError:
        raise DataError(f"image {path} is not under the data root {root}; manifests store paths relative to "
                        f"the shared data folder, so {_ROOT_HELP}") from None


def _build_root(prepared, explicit):
    if explicit or os.environ.get(ROOT_ENV) or os.environ.get("CXR_EDGE_SHARED"):
        return resolve_data_root(explicit)
    roots = {s.get("root") for s in prepared.info.get("sources", []) if s.get("root")}
    if len(roots) == 1 and Path(next(iter(roots))).is_dir():
        return Path(next(iter(roots))).resolve()
    raise DataError(f"{prepared.path}: cannot tell which shared data folder its images belong to "
                    f"(source roots: {sorted(roots) or 'none recorded'}); {_ROOT_HELP}")


def build_calibration_set(prepared, *, split: str = "train", n: int = DEFAULT_N, seed: int = 0,
                          data_root=None) -> CalibrationSet:
    """Draw a stratified, seeded calibration set of ``n`` images from one split of ``prepared``.

    ``prepared`` is a :class:`cxr_edge.data.prepared.Prepared` (or its folder). The test split is
    refused: calibration images must not be the images results are reported on.
    """
    from ..data.prepared import Prepared, open_prepared

    if not isinstance(prepared, Prepared):
        prepared = open_prepared(prepared)
    if split not in ALLOWED_SPLITS:
        raise DataError(f"calibration sets come from the train or val split, not {split!r}: the test split "
                        "is kept for reporting results. Use --split train (default) or --split val.")
    if n < 1:
        raise DataError(f"--n must be at least 1, got {n}")
    spec = prepared.task
    table = prepared.table(split)
    if not len(table):
        raise DataError(f"{prepared.path}: split {split!r} holds no images; use another split")
    if "sha256" not in table:
        raise DataError(f"{prepared.path}: split tables have no sha256 column; re-run cxr-edge data prepare")
    root = _build_root(prepared, data_root)
    y = prepared.labels(split).astype(np.int64)
    strata = _strata(spec, y)
    names, counts = np.unique(strata, return_counts=True)
    share = _allocate(dict(zip(names.tolist(), counts.tolist())), n)
    rng = np.random.default_rng(seed)
    chosen = []
    for name in sorted(share):
        members = np.flatnonzero(strata == name)
        chosen.extend(members[rng.permutation(members.size)[:share[name]]].tolist())
    if len(table) < n:
        log.warning("split %r holds only %d images; the calibration set takes all of them (asked for %d)",
                    split, len(table), n)
    files = [_relative(table["path"][i], root) for i in chosen]
    order = np.argsort(files, kind="stable")   # sorted rows: stable diffs when a set is rebuilt
    chosen = [chosen[i] for i in order]
    info = {"format": SET_FORMAT, "format_version": SET_FORMAT_VERSION, "task": spec.name,
            "labels": list(spec.labels), "root": ROOT_NAME, "seed": seed, "requested_n": n,
            "source": {"prepared": prepared.path.name, "data_sha256": prepared.data_sha256, "split": split,
                       "split_images": len(table)},
            "strata": {k: {"available": int(c), "chosen": int(share[k])} for k, c in zip(names.tolist(), counts)},
            "toolkit_version": __version__}   # no timestamp: the same data and seed rebuild byte-identical files
    cs = CalibrationSet(spec.name, [files[i] for i in order], y[chosen], [table["sha256"][i] for i in chosen], info)
    cs.info.update(n=cs.n, sha256=cs.sha256)
    return cs


# --------------------------------------------------------------------------- files


def sidecar_of(path) -> Path:
    return Path(path).with_suffix(".json")


def write_calibration_set(cs: CalibrationSet, out, *, overwrite: bool = False) -> Path:
    """Write the manifest CSV and its JSON sidecar (each atomically); returns the CSV path."""
    from ..runtime.atomic import write_atomic

    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise DataError(f"a calibration manifest is a .csv file (its sidecar gets .json); got {out}")
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    labels = list(cs.spec.labels)
    writer.writerow(["file", *labels, "sha256"])
    for f, row, digest in zip(cs.files, cs.labels, cs.file_sha256):
        writer.writerow([f, *(int(v) for v in row), digest])
    info = dict(cs.info, n=cs.n, sha256=cs.sha256)
    write_atomic(sidecar_of(out), json.dumps(info, indent=2, sort_keys=True) + "\n")
    write_atomic(out, buf.getvalue())
    cs.path = out
    return out


def load_calibration_set(path) -> CalibrationSet:
    """Read a manifest and its sidecar; refuses a manifest whose rows no longer match the sidecar's hash."""
    path = Path(path)
    side = sidecar_of(path)
    if not path.is_file():
        raise DataError(f"calibration manifest {path} does not exist. Build one with: "
                        f"cxr-edge calibration build PREPARED --out {path}")
    if not side.is_file():
        raise DataError(f"calibration manifest {path} has no sidecar {side.name} (task, split, seed, hash); "
                        "rebuild it with cxr-edge calibration build")
    try:
        info = json.loads(side.read_text())
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, ValueError) as exc:
        raise DataError(f"calibration manifest {path} cannot be read ({exc}); rebuild it") from exc
    if info.get("format") != SET_FORMAT or info.get("format_version", 0) > SET_FORMAT_VERSION:
        raise DataError(f"{side} is not a calibration set this cxr-edge reads (format {info.get('format')!r} "
                        f"v{info.get('format_version')}); rebuild it or upgrade cxr-edge")
    spec = get_task(info["task"])
    header = ["file", *spec.labels, "sha256"]
    if not rows or rows[0] != header:
        raise DataError(f"{path}: header {rows[0] if rows else []} is not {header}; rebuild the manifest")
    body = [r for r in rows[1:] if r]
    if not body:
        raise DataError(f"{path} lists no images; rebuild it")
    try:
        labels = np.array([[int(v) for v in r[1:-1]] for r in body], dtype=np.int64)
    except ValueError as exc:
        raise DataError(f"{path}: label columns must be 0/1 ({exc}); rebuild the manifest") from exc
    cs = CalibrationSet(spec.name, [r[0] for r in body], labels, [r[-1] for r in body], info, path)
    if info.get("sha256") != cs.sha256 or info.get("n") != cs.n:
        raise DataError(f"{path} was edited after it was built: its {cs.n} rows hash to {cs.sha256[:12]}…, the "
                        f"sidecar says {info.get('n')} rows, {str(info.get('sha256'))[:12]}…. Rebuild it with "
                        "cxr-edge calibration build (or restore it from version control).")
    return cs
