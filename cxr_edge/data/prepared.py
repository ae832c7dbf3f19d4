"""Reading a prepared data set (numpy only, so device-side evaluation can use it without TensorFlow).

A prepared folder ``DIR`` holds::

    prepared.json            what it is (task, input spec, sources, split parameters, counts, weights,
                             licences, warnings, data_sha256); written last, with "complete": true
    params.json              the parameters it was built with (a rerun compares against these)
    splits/{train,val,test}.csv   one row per image: path, patient_id, one 0/1 column per label, metadata,
                             sha256 (of the original file) and cache_index (its row in the cache)
    cache/shard_NNNNN.npy    uint8 fit_to_square outputs, memory-mapped on read
    excluded.csv             every source row that was left out, and why

>>> p = open_prepared("prepared/nih14")
>>> x = p.images("test")[:8]      # uint8 (8, S, S), read from the memory-mapped shards
>>> y = p.labels("test")          # float32 (N, L) in p.task.labels order
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..tasks import InputSpec, TaskSpec, get_task
from .cache import ShardedImages, pixel_shape
from .splits import SPLITS

__all__ = ["compute_data_sha256", "INFO_FILE", "open_prepared", "PARAMS_FILE", "Prepared", "PREPARED_FORMAT", "Table"]

PREPARED_FORMAT = 1
INFO_FILE = "prepared.json"
PARAMS_FILE = "params.json"


class Table:
    """A split table as columns of strings (no pandas): ``t["patient_id"]``, ``len(t)``, ``t.rows()``."""

    def __init__(self, columns: dict[str, list[str]]):
        self._cols = {k: np.asarray(v, dtype=str) for k, v in columns.items()}
        self.column_names = list(columns)
        self._n = len(next(iter(columns.values()))) if columns else 0

    def __len__(self) -> int:
        return self._n

    def __contains__(self, name) -> bool:
        return name in self._cols

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._cols[name]
        except KeyError:
            raise KeyError(f"no column {name!r}; columns: {', '.join(self.column_names)}") from None

    def rows(self) -> list[dict]:
        """The table as a list of dicts (strings)."""
        return [dict(zip(self.column_names, vals)) for vals in zip(*(self._cols[c] for c in self.column_names))]

    def __iter__(self):
        return iter(self.rows())

    @classmethod
    def read(cls, path: Path) -> "Table":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            values = list(reader)
        return cls({h: [r[i] for r in values] for i, h in enumerate(header)})


class Prepared:
    """A prepared data set: split tables, labels and the memory-mapped cache."""

    def __init__(self, path: Path, info: dict):
        self.path = path
        self.info = info
        base = get_task(info["task"])
        self.task: TaskSpec = replace(base, input=InputSpec.from_dict(info["input"]))
        self._tables: dict[str, Table] = {}

    def __repr__(self):
        counts = ", ".join(f"{s} {self.info['counts'][s]['images']}" for s in SPLITS)
        return f"Prepared({str(self.path)!r}, task={self.task.name}, size={self.task.input.size}, {counts})"

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits that hold at least one image, in train/val/test order."""
        return tuple(s for s in SPLITS if self.info["counts"][s]["images"] > 0)

    def check_split(self, split: str):
        """Raise DataError unless ``split`` is one of train, val and test."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")

    def table(self, split: str) -> Table:
        """The split's table (one row per image)."""
        self.check_split(split)
        if split not in self._tables:
            self._tables[split] = Table.read(self.path / "splits" / f"{split}.csv")
        return self._tables[split]

    def labels(self, split: str) -> np.ndarray:
        """float32 (N, L): the 0/1 labels in ``task.labels`` order."""
        t = self.table(split)
        if not len(t):
            return np.zeros((0, self.task.num_labels), np.float32)
        return np.stack([t[lbl].astype(np.float32) for lbl in self.task.labels], axis=1)

    def patients(self, split: str) -> np.ndarray:
        """The patient id of every image in the split (for patient-level bootstrap groups)."""
        return self.table(split)["patient_id"]

    def cache_index(self, split: str) -> np.ndarray:
        return self.table(split)["cache_index"].astype(np.int64)

    @cached_property
    def cache(self) -> ShardedImages:
        """Every cached image (including left-out corrupt slots), in cache order."""
        c = self.info["cache"]
        return ShardedImages([self.path / "cache" / s["file"] for s in c["shards"]], [s["n"] for s in c["shards"]],
                             pixel_shape(self.task.input))

    def images(self, split: str) -> ShardedImages:
        """uint8 (N, S, S) array-like of the split's ``fit_to_square`` pixels, memory-mapped."""
        return self.cache.subset(self.cache_index(split))

    def _per_label(self, key: str) -> np.ndarray:
        d = self.info[key]
        return np.array([d[lbl] for lbl in self.task.labels], dtype=np.float32)

    @property
    def class_weights(self) -> np.ndarray:
        """float32 (L,): softmax tasks N/(K·n_k); sigmoid tasks the balanced positive weight N/(2·n_pos)."""
        return self._per_label("class_weights")

    @property
    def pos_weights(self) -> np.ndarray:
        """float32 (L,): n_neg/n_pos per label from the train split (weighted BCE ``pos_weight``)."""
        return self._per_label("pos_weights")

    @property
    def data_sha256(self) -> str:
        """Hash over the split tables and the cache shards: what training records as its data version."""
        return self.info["data_sha256"]

    def verify(self) -> None:
        """Recompute the split-table and shard hashes; DataError when anything changed since prepare."""
        if compute_data_sha256(self.path, self.info["cache"]["shards"], rehash_shards=True) != self.data_sha256:
            raise DataError(f"{self.path}: the split tables or cache shards changed since prepare "
                            "(data_sha256 mismatch). Re-run prepare with --force.")


def compute_data_sha256(path: Path, shards: list[dict], *, rehash_shards: bool = False) -> str:
    """sha256 over each split table's sha256 and each shard's sha256 (recomputed when asked)."""
    h = hashlib.sha256(b"cxr-edge prepared data v1\n")
    for split in SPLITS:
        digest = hashlib.sha256((path / "splits" / f"{split}.csv").read_bytes()).hexdigest()
        h.update(f"{split}.csv {digest}\n".encode())
    for s in shards:
        digest = s["sha256"]
        if rehash_shards:
            digest = hashlib.sha256((path / "cache" / s["file"]).read_bytes()).hexdigest()
        h.update(f"{s['file']} {digest}\n".encode())
    return h.hexdigest()


def open_prepared(path) -> Prepared:
    """Open a folder written by ``cxr-edge data prepare``; DataError if missing or unfinished."""
    path = Path(path).expanduser()
    info_path = path / INFO_FILE
    if not info_path.is_file():
        if (path / PARAMS_FILE).is_file():
            raise DataError(f"{path}: preparation did not finish (no {INFO_FILE}). Run the same "
                            "`cxr-edge data prepare` command again: it resumes where it stopped.")
        raise DataError(f"{path} is not a prepared data folder (no {INFO_FILE}). Create one with "
                        "`cxr-edge data prepare TASK --source ... --out DIR`.")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{info_path} cannot be read ({exc}). Re-run prepare with --force.") from exc
    if not info.get("complete"):
        raise DataError(f"{path}: {INFO_FILE} is not marked complete. Re-run prepare.")
    if info.get("format") != PREPARED_FORMAT:
        raise DataError(f"{path}: prepared format {info.get('format')} is not {PREPARED_FORMAT}, which this "
                        "cxr-edge reads. Re-run prepare with --force.")
    return Prepared(path.resolve(), info)
