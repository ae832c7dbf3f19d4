"""The prepared cache: ``fit_to_square`` outputs in ``.npy`` shards, written resumably, read memory-mapped.

Format: ``cache/shard_NNNNN.npy`` holds uint8 ``(n, S, S)`` (or ``(n, S, S, 3)``)
exactly as :func:`cxr_edge.runtime.preprocess.fit_to_square` returns them, in record
order; ``cache/shard_NNNNN.json`` beside it says which records it holds (a
hash of their paths, sizes and mtimes and the input spec), each image's file
sha256, pixel sha256 and decode error, and the shard's own sha256.

Why ``.npy`` shards and not TFRecords: numpy reads them without TensorFlow
(device-side evaluation uses the same cache), ``np.load(mmap_mode='r')``
gives random access to any image without reading the rest (tf.data shuffles
indices, not a buffer of decoded images), and a shard is one atomic file, so
an interrupted prepare keeps every finished shard. A corrupt image keeps its
slot (zeros) so indices stay stable; its error is recorded and it is left
out of the splits.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, ImageError
from ..runtime.atomic import write_atomic
from ..runtime.preprocess import fit_to_square
from ..tasks import InputSpec

__all__ = ["build_cache", "CACHE_FORMAT", "CacheResult", "DEFAULT_SHARD_SIZE", "pixel_shape", "shard_name",
           "ShardedImages"]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
DEFAULT_SHARD_SIZE = 1024


def shard_name(i: int) -> str:
    return f"shard_{i:05d}"


def pixel_shape(spec: InputSpec) -> tuple[int, ...]:
    return (spec.size, spec.size) if spec.channels == 1 else (spec.size, spec.size, 3)


@dataclass
class CacheResult:
    """Per-image outcome of a cache build (lists in record order) and the shard table."""

    errors: list = field(default_factory=list)        # None or [kind, message]
    file_sha256: list = field(default_factory=list)
    pixel_sha256: list = field(default_factory=list)
    shards: list = field(default_factory=list)        # {"file", "n", "sha256"}
    resumed: int = 0
    built: int = 0


def build_cache(paths: list[str], spec: InputSpec, cache_dir: Path, *, shard_size: int = DEFAULT_SHARD_SIZE,
                workers: int | None = None, progress=None) -> CacheResult:
    """Decode every image once into shards under ``cache_dir``, reusing shards a previous run finished.

    ``progress(n_done)`` is called as images complete (resumed shards count
    at once). Decoding runs in a thread pool of ``workers`` threads (default:
    the CPU count): Pillow releases the GIL while it decodes and resizes.
    """
    if shard_size < 1:
        raise DataError(f"shard size must be at least 1, got {shard_size}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    result = CacheResult()
    spec_json = json.dumps(spec.to_dict(), sort_keys=True)
    starts = range(0, len(paths), shard_size)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cxr-decode") as pool:
        for i, start in enumerate(starts):
            chunk = paths[start:start + shard_size]
            key = _records_key(chunk, spec_json)
            side = _load_sidecar(cache_dir, i, key, len(chunk), spec)
            if side is None:
                side = _build_shard(pool, chunk, spec, cache_dir, i, key)
                result.built += 1
            else:
                result.resumed += 1
            result.errors += side["errors"]
            result.file_sha256 += side["file_sha256"]
            result.pixel_sha256 += side["pixel_sha256"]
            result.shards.append({"file": f"{shard_name(i)}.npy", "n": len(chunk), "sha256": side["npy_sha256"]})
            if progress:
                progress(len(chunk))
    for stale in sorted(cache_dir.glob("shard_*")):  # shards of an earlier, longer record list
        if int(stale.stem.split("_")[1]) >= len(starts):
            stale.unlink()
    return result


def _records_key(chunk: list[str], spec_json: str) -> str:
    h = hashlib.sha256(spec_json.encode())
    for p in chunk:
        try:
            st = os.stat(p)
            h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\tmissing\n".encode())
    return h.hexdigest()


def _load_sidecar(cache_dir: Path, i: int, key: str, n: int, spec: InputSpec) -> dict | None:
    """The finished shard's sidecar when it holds exactly these records, else None (rebuild)."""
    side_path = cache_dir / f"{shard_name(i)}.json"
    npy_path = cache_dir / f"{shard_name(i)}.npy"
    try:
        side = json.loads(side_path.read_text())
    except (OSError, ValueError):
        return None
    ok = (side.get("format") == CACHE_FORMAT and side.get("records_key") == key and side.get("n") == n
          and side.get("input") == spec.to_dict()
          and npy_path.is_file() and npy_path.stat().st_size == side.get("npy_bytes"))
    if ok:
        log.debug("shard %d: kept from an earlier run", i)
    return side if ok else None


def _decode(path: str, spec: InputSpec):
    """(pixels or None, file sha256, pixel sha256, error) for one image; never raises for a bad file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, "", "", ["unreadable", f"{path}: {exc.strerror or exc}"]
    file_sha = hashlib.sha256(data).hexdigest()
    stream = io.BytesIO(data)
    stream.name = path  # so ImageError messages name the file
    try:
        pixels = fit_to_square(stream, spec)
    except ImageError as exc:
        return None, file_sha, "", [exc.kind, str(exc)]
    except Exception as exc:  # one odd file must not stop a 112k-image run; it is counted and listed
        log.warning("%s: unexpected decode failure %s: %s", path, type(exc).__name__, exc)
        return None, file_sha, "", ["error", f"{path}: {type(exc).__name__}: {exc}"]
    return pixels, file_sha, hashlib.sha256(pixels.tobytes()).hexdigest(), None


def _build_shard(pool, chunk: list[str], spec: InputSpec, cache_dir: Path, i: int, key: str) -> dict:
    arr = np.zeros((len(chunk),) + pixel_shape(spec), dtype=np.uint8)
    side = {"format": CACHE_FORMAT, "records_key": key, "n": len(chunk), "input": spec.to_dict(),
            "errors": [], "file_sha256": [], "pixel_sha256": []}
    for j, (pixels, file_sha, pixel_sha, error) in enumerate(pool.map(lambda p: _decode(p, spec), chunk)):
        if pixels is not None:
            arr[j] = pixels
        side["errors"].append(error)
        side["file_sha256"].append(file_sha)
        side["pixel_sha256"].append(pixel_sha)
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    side["npy_sha256"] = hashlib.sha256(data).hexdigest()
    side["npy_bytes"] = len(data)
    write_atomic(cache_dir / f"{shard_name(i)}.npy", data)
    write_atomic(cache_dir / f"{shard_name(i)}.json", json.dumps(side).encode())  # last: marks the shard done
    return side


# --------------------------------------------------------------------------- reading


class ShardedImages:
    """A read-only (N, S, S) uint8 array-like over memory-mapped shards (optionally a subset of rows).

    Indexing with an int gives one image; with a slice, a list or an integer
    array it gathers those rows (sorted per shard for locality) into a new
    array. Nothing is read until indexed.
    """

    def __init__(self, files: list[Path], sizes: list[int], pixel_shape_: tuple[int, ...], rows=None):
        self._files = [Path(f) for f in files]
        self._sizes = np.asarray(sizes, dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(self._sizes)])
        self._maps: dict[int, np.ndarray] = {}
        self._rows = np.arange(self._starts[-1]) if rows is None else np.asarray(rows, dtype=np.int64)
        self.shape = (len(self._rows),) + tuple(pixel_shape_)
        self.dtype = np.dtype(np.uint8)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _shard(self, s: int) -> np.ndarray:
        m = self._maps.get(s)
        if m is None:
            m = np.load(self._files[s], mmap_mode="r", allow_pickle=False)
            self._maps[s] = m
        return m

    def subset(self, rows) -> "ShardedImages":
        """A view over some rows of this one (no data is read)."""
        return ShardedImages(self._files, self._sizes, self.shape[1:], self._rows[np.asarray(rows, dtype=np.int64)])

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            g = int(self._rows[key])
            s = int(np.searchsorted(self._starts, g, side="right") - 1)
            return np.array(self._shard(s)[g - self._starts[s]])
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        return self.take(np.asarray(key))

    def take(self, indices) -> np.ndarray:
        """Rows ``indices`` (into this view) as one new uint8 array."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(idx),) + self.shape[1:], dtype=np.uint8)
        if not len(idx):
            return out
        g = self._rows[idx]
        shard = np.searchsorted(self._starts, g, side="right") - 1
        order = np.lexsort((g, shard))
        for s in np.unique(shard):
            sel = order[shard[order] == s]
            out[sel] = self._shard(int(s))[g[sel] - self._starts[s]]
        return out

    def __array__(self, dtype=None, copy=None):
        arr = self.take(np.arange(len(self)))
        return arr if dtype is None else arr.astype(dtype)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]
