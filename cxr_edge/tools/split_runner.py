"""Run a pack model over a prepared split, exactly as ``cxr-edge predict`` runs it.

:func:`open_pack_model` loads the pack model for the prepared data's task through the device path
(:class:`~cxr_edge.runtime.pipeline.LoadedModel`: the same interpreter wrapper, the pack's
temperature, the chosen threshold profile) behind the :class:`ModelUnderTest` interface;
:func:`model_outputs` feeds it the split in batches and returns its raw outputs and pooled features.
``cxr-edge evaluate``, ``calibrate``, ``ood fit`` and ``export`` all go through here.

When the model's input (size, channels, resize, CLAHE) equals the prepared cache's, the cached
:func:`~cxr_edge.runtime.preprocess.fit_to_square` pixels are used (they are what predict computes
from the original file; a few are re-checked against the originals); otherwise every original image
is read and preprocessed again.

A training run (``run.json`` + ``float.h5``) is the workstation side's to open
(:func:`cxr_edge.training.run_model.open_run_model`, TensorFlow): :func:`open_model` takes it as
``run_opener`` from its caller. numpy and Pillow only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.prepared import Prepared
from ..errors import CxrEdgeError, DataError, ImageError, PackError
from ..runtime.features import pooled
from ..runtime.images import load_image
from ..runtime.posthoc import POSTHOC_KEY
from ..runtime.preprocess import fit_to_square, normalize
from ..tasks import TaskSpec, get_task

__all__ = ["BATCH", "CACHE_CHECK_IMAGES", "ModelUnderTest", "Progress", "cache_usable", "check_task",
           "digital_batches", "model_outputs", "open_model", "open_pack_model", "run_split", "select_pack_model"]

log = logging.getLogger(__name__)

CACHE_CHECK_IMAGES = 3  # cached pixels re-checked against the original files

BATCH = 32

Progress = Callable[[str, int, int], None]   # (stage, done, total)


@dataclass
class ModelUnderTest:
    """A model to evaluate, behind one interface for packs and runs.

    ``infer(x)`` takes a float32 batch (B, S, S, C) of model inputs and returns
    the raw outputs (B, L) (before temperature) and the pooled feature vector
    (B, F) or None; ``probabilities(raw)`` applies the pack's temperature.
    """

    kind: str                      # "pack" or "run"
    path: Path
    spec: TaskSpec                 # with the input the model was exported/trained at
    slot: str
    temperature: float
    profile: str | None            # threshold profile used (None: the task's default thresholds)
    thresholds: dict[str, float]
    training: dict                 # provenance: data_sha256, prepared (path)
    posthoc: dict                  # extras[POSTHOC_KEY] of a pack
    describe: dict
    infer: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
    probabilities: Callable[[np.ndarray], np.ndarray]


def check_task(model_task: str, where: str, prepared: Prepared) -> None:
    data_task = prepared.task.name
    if model_task == data_task:
        return
    mine, theirs = get_task(model_task).labels, prepared.task.labels
    extra = [lbl for lbl in mine if lbl not in theirs]
    missing = [lbl for lbl in theirs if lbl not in mine]
    detail = "; ".join(s for s in (f"the model also predicts {', '.join(extra)}" if extra else "",
                                   f"the data also label {', '.join(missing)}" if missing else "") if s)
    raise DataError(
        f"{prepared.path} holds {data_task} data ({len(theirs)} labels) but {where} is a {model_task} model "
        f"({len(mine)} labels){': ' + detail if detail else ''}. Evaluate a {data_task} model on it, or prepare "
        f"the data for {model_task}: cxr-edge data prepare {model_task} ... --out DIR")


def select_pack_model(pack, prepared: Prepared):
    """The pack model for the prepared data's task (its slot), checked to be a model of that task."""
    slot = prepared.task.family
    pm = pack[slot]   # PackError naming the slots the pack has
    check_task(pm.metadata.task, f"the pack's {slot} model ({pack.path}/{pm.file})", prepared)
    return pm


def open_pack_model(path, prepared: Prepared, *, profile: str | None = None, threads: int = 1,
                    backend: str | None = None) -> ModelUnderTest:
    """The pack's model for ``prepared``'s task, run through the device path (LoadedModel)."""
    from ..runtime.pack import load_pack
    from ..runtime.pipeline import LoadedModel

    pack = load_pack(path)
    pm = select_pack_model(pack, prepared)
    meta = pm.metadata
    name = profile or meta.default_profile
    thresholds = dict(meta.threshold_profile(name))   # PackError listing the profiles when unknown
    lm = LoadedModel.from_pack(pm, threads=threads, backend=backend)

    def infer(x):
        outs = [lm.infer(sample) for sample in x]   # one image at a time, exactly as predict runs it
        raw = np.stack([o["probs"] for o in outs]).astype(np.float64)
        feats = np.stack([o["features"] for o in outs]) if "features" in outs[0] else None
        return raw, pooled(feats)

    def probabilities(raw):
        return np.stack([lm.probabilities(r) for r in raw]).astype(np.float64)

    describe = {"kind": "pack", "path": str(pack.path), "pack_name": pack.name, "slot": pm.slot, "file": pm.file,
                "sha256": pm.sha256, "task": meta.task, "input": meta.input.to_dict(), "backend": lm.model.backend,
                "backend_version": lm.model.backend_version, "threads": threads, "quantization": meta.quantization,
                "temperature": meta.temperature, "bias": dict(meta.bias), "profile": name, "default_profile": meta.default_profile,
                "profiles": sorted(meta.thresholds), "training": meta.training}
    return ModelUnderTest("pack", pack.path, pm.spec, pm.slot, float(meta.temperature), name, thresholds,
                          dict(meta.training), dict(meta.extras.get(POSTHOC_KEY) or {}), describe, infer,
                          probabilities)


def open_model(path, prepared: Prepared, *, profile=None, threads=1, backend=None,
               run_opener: Callable | None = None) -> ModelUnderTest:
    """A pack (directory with manifest.json, or .zip) or a training run (directory with run.json).

    A run is opened by ``run_opener(path, prepared, profile=...)``, the workstation side's
    :func:`cxr_edge.training.run_model.open_run_model` (``cxr-edge evaluate`` passes it).
    """
    path = Path(path)
    if path.is_dir() and (path / "run.json").is_file():
        if run_opener is None:
            raise CxrEdgeError(f"{path} is a training run: its float Keras model needs the workstation side "
                               "(TensorFlow). Use cxr-edge evaluate, or pass "
                               "run_opener=cxr_edge.training.run_model.open_run_model.")
        return run_opener(path, prepared, profile=profile)
    if path.is_dir() and not (path / "manifest.json").is_file():
        raise PackError(f"{path} is neither a model pack (no manifest.json) nor a training run (no run.json). "
                        "Pass a pack made by cxr-edge export, or a run directory made by cxr-edge train.")
    return open_pack_model(path, prepared, profile=profile, threads=threads, backend=backend)


def _same_pixels(a, b) -> bool:
    """Whether two input specs give the same fit_to_square pixels (scale/offset are applied later)."""
    return (a.size, a.channels, a.resize, a.clahe) == (b.size, b.channels, b.resize, b.clahe)


def _original(path: str, spec: TaskSpec):
    try:
        return fit_to_square(load_image(path, mode="L", min_size=spec.input.size), spec)
    except ImageError as exc:
        raise DataError(f"cannot read original image {path} ({exc}). Evaluating at {spec.input.size} px needs "
                        "the original files the data were prepared from; restore them, or prepare the data at "
                        "the model's input size so the cache is used.") from exc


def cache_usable(prepared: Prepared, split: str, spec: TaskSpec, notes: list) -> tuple[bool, dict]:
    """Use cached pixels when their spec matches; spot-check them against predict's preprocessing."""
    if not _same_pixels(prepared.task.input, spec.input):
        return False, {"pixels": "original images", "reason":
                       f"the model takes {spec.input.size} px ({spec.input.resize}, clahe={spec.input.clahe}); the "
                       f"cache holds {prepared.task.input.size} px ({prepared.task.input.resize}, "
                       f"clahe={prepared.task.input.clahe})"}
    paths = prepared.table(split)["path"]
    images = prepared.images(split)
    n = min(CACHE_CHECK_IMAGES, len(paths))
    checked = 0
    for i in range(n):
        try:
            fresh = fit_to_square(load_image(paths[i], mode="L", min_size=spec.input.size), spec)
        except ImageError:
            continue   # originals gone: the cache is all there is
        checked += 1
        if not np.array_equal(fresh, images[i]):
            notes.append(f"the cached pixels of {paths[i]} differ from what predict computes from the file "
                         "today (stale cache or changed preprocessing): the original images were used instead.")
            return False, {"pixels": "original images", "reason": "cache check failed", "cache_checked": checked}
    return True, {"pixels": "prepared cache", "cache_checked": checked}


def digital_batches(prepared: Prepared, split: str, spec: TaskSpec, use_cache: bool):
    """Normalized model inputs of the split, in batches, in table order."""
    n = len(prepared.table(split))
    for start in range(0, n, BATCH):
        yield inputs_at(prepared, split, spec, use_cache, np.arange(start, min(start + BATCH, n)))


def inputs_at(prepared: Prepared, split: str, spec: TaskSpec, use_cache: bool, rows) -> np.ndarray:
    """Normalized model inputs of the split's ``rows`` (table indices), decoded only for those rows."""
    rows = np.asarray(rows, dtype=np.int64)
    if use_cache:
        pixels = prepared.images(split).take(rows)
    else:
        paths = prepared.table(split)["path"]
        pixels = np.stack([_original(paths[i], spec) for i in rows])
    return normalize(pixels, spec)


def run_split(model: ModelUnderTest, batches, n: int, stage: str, progress: Progress | None = None):
    """(raw (N, L), pooled features (N, F) or None) of the model over input batches."""
    raw, feats, done = [], [], 0
    for x in batches:
        r, f = model.infer(x)
        raw.append(r)
        feats.append(f)
        done += len(x)
        if progress:
            progress(stage, done, n)
    if not raw:
        raise DataError("the split holds no images")
    pooled = None if any(f is None for f in feats) else np.concatenate(feats)
    return np.concatenate(raw), pooled


def model_outputs(model: ModelUnderTest, prepared: Prepared, split: str, progress: Progress | None = None,
                  notes: list | None = None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Raw outputs and pooled features of the model on a prepared split, plus how the pixels were obtained."""
    notes = notes if notes is not None else []
    use_cache, how = cache_usable(prepared, split, model.spec, notes)
    raw, pooled = run_split(model, digital_batches(prepared, split, model.spec, use_cache),
                            len(prepared.table(split)), "digital", progress)
    return raw, pooled, how
