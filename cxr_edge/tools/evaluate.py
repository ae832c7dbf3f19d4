"""Evaluate a model on a prepared split: metrics with patient-bootstrap CIs, subgroups, sources, photos.

Two kinds of model are evaluated:

* a **model pack** (directory or ``.zip``): the int8 model for the data's task
  runs through the device path, exactly as ``cxr-edge predict`` runs it — the
  same interpreter wrapper (:class:`~cxr_edge.pipeline.LoadedModel`), the
  same preprocessing (:func:`~cxr_edge.preprocess.fit_to_square` then
  :func:`~cxr_edge.preprocess.normalize`), the pack's temperature and the
  chosen threshold profile;
* a **training run** directory (``run.json`` + ``float.h5``): the float Keras
  model, imported lazily (the workstation side); no temperature, the task's
  default thresholds.

When the model's input (size, channels, resize, CLAHE) equals the prepared
cache's, the cached ``fit_to_square`` pixels are used (they are what predict
computes from the original file; a few are re-checked against the originals);
otherwise every original image is read and preprocessed again.

Besides the task metrics (:func:`cxr_edge.metrics.task_metrics`) the result
holds subgroup results (sex, PA/AP view, age band), per-source-dataset
results, a *source probe* (can a cross-validated logistic regression tell the
source dataset from the model's pooled features? — the shortcut check), and
with ``photos`` the same split as simulated phone photos of the films, raw and
rectified, beside the digital result.

Leakage: a split whose images the model trained on is refused, and so is the
split the pack's temperature/thresholds were calibrated on, unless explicitly
allowed; an allowed one is flagged at the top of the result and the report.

numpy and Pillow only at import time; TensorFlow only for runs, matplotlib
only for the report (:mod:`cxr_edge.evaluate_report`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..data.prepared import Prepared, open_prepared
from ..errors import CxrEdgeError, DataError, ImageError, PackError
from ..runtime.images import load_image
from ..runtime.metadata import utc_now
from .metrics import (_jsonable, _summary_fn, bootstrap_ci, expected_calibration_error, resolve_thresholds,
                      task_metrics)
from ..runtime.preprocess import fit_to_square, normalize
from ..tasks import TaskSpec, get_task

log = logging.getLogger(__name__)

RESULT_KIND = "cxr-edge-evaluation"
POSTHOC_KEY = "posthoc_calibration"   # ModelMetadata.extras key written by cxr-edge calibrate
AGE_BANDS = ((0, 18, "0-17"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 200, "80+"))
PROBE_FOLDS = 5
PROBE_L2 = 0.1          # ridge penalty on the mean cross-entropy, features standardized
PROBE_MIN_IMAGES = 5    # a source dataset needs this many images to be a probe class
CACHE_CHECK_IMAGES = 3  # cached pixels re-checked against the original files
BATCH = 32

Progress = Callable[[str, int, int], None]   # (stage, done, total)


# --------------------------------------------------------------------------- the model under test


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


def _check_task(model_task: str, where: str, prepared: Prepared) -> None:
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
    _check_task(pm.metadata.task, f"the pack's {slot} model ({pack.path}/{pm.file})", prepared)
    return pm


def _pooled(features) -> np.ndarray | None:
    if features is None:
        return None
    f = np.asarray(features, dtype=np.float32)
    return f.mean(axis=(1, 2)) if f.ndim == 4 else f.reshape(f.shape[0], -1)


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
        return raw, _pooled(feats)

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


def open_run_model(path, prepared: Prepared, *, profile: str | None = None) -> ModelUnderTest:
    """A training run's float Keras model (TensorFlow is imported here, not at module import)."""
    from ..training.runs import load_run

    run = load_run(path)
    spec = run.task
    _check_task(spec.name, f"run {run.path}", prepared)
    if profile:
        raise CxrEdgeError(f"--profile {profile}: threshold profiles live in model packs; run {run.path} has none "
                           "(it is evaluated at the task's default thresholds). Drop --profile, or evaluate "
                           "the exported pack.")
    model = run.float_model()
    try:
        from ..training.model import with_feature_output

        model = with_feature_output(model)
    except (CxrEdgeError, ValueError, KeyError) as exc:  # a model without the standard layer names
        log.warning("run %s: no feature map output (%s); the source probe is skipped", run.path, exc)
    two = len(model.outputs) == 2

    def infer(x):
        outs = model(np.asarray(x, np.float32), training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return np.asarray(outs[0], np.float64), _pooled(np.asarray(outs[1])) if two else None

    describe = {"kind": "run", "path": str(run.path), "slot": spec.family, "task": spec.name,
                "input": spec.input.to_dict(), "backend": "tf-keras (float)", "temperature": 1.0,
                "profile": None, "status": run.info.get("status"), "best": run.info.get("best")}
    training = {k: run.info.get(k) for k in ("data_sha256", "prepared")}
    return ModelUnderTest("run", run.path, spec, spec.family, 1.0, None,
                          {lbl: spec.default_threshold for lbl in spec.labels}, training, {}, describe, infer,
                          lambda raw: np.asarray(raw, np.float64))


def open_model(path, prepared: Prepared, *, profile=None, threads=1, backend=None) -> ModelUnderTest:
    """A pack (directory with manifest.json, or .zip) or a training run (directory with run.json)."""
    path = Path(path)
    if path.is_dir() and (path / "run.json").is_file():
        return open_run_model(path, prepared, profile=profile)
    if path.is_dir() and not (path / "manifest.json").is_file():
        raise PackError(f"{path} is neither a model pack (no manifest.json) nor a training run (no run.json). "
                        "Pass a pack made by cxr-edge export, or a run directory made by cxr-edge train.")
    return open_pack_model(path, prepared, profile=profile, threads=threads, backend=backend)


# --------------------------------------------------------------------------- inputs


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


def _cache_usable(prepared: Prepared, split: str, spec: TaskSpec, notes: list) -> tuple[bool, dict]:
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


def _digital_batches(prepared: Prepared, split: str, spec: TaskSpec, use_cache: bool):
    """Normalized model inputs of the split, in batches, in table order."""
    paths = prepared.table(split)["path"]
    images = prepared.images(split)
    for start in range(0, len(paths), BATCH):
        stop = min(start + BATCH, len(paths))
        if use_cache:
            pixels = images.take(np.arange(start, stop))
        else:
            pixels = np.stack([_original(p, spec) for p in paths[start:stop]])
        yield normalize(pixels, spec)


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
    use_cache, how = _cache_usable(prepared, split, model.spec, notes)
    raw, pooled = run_split(model, _digital_batches(prepared, split, model.spec, use_cache),
                            len(prepared.table(split)), "digital", progress)
    return raw, pooled, how


# --------------------------------------------------------------------------- leakage


def split_fingerprint(prepared: Prepared, split: str) -> str:
    """sha256 over the sorted file hashes of a split's images: the same images give the same value."""
    t = prepared.table(split)
    keys = sorted(t["sha256"] if "sha256" in t else t["path"])
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def _overlap(prepared: Prepared, split: str, record: dict, their_split: str) -> tuple[int | None, str]:
    """How many of ``split``'s images are in ``their_split`` of the data a record names, and how we know."""
    if record.get("data_sha256") and record["data_sha256"] == prepared.data_sha256:
        n = len(prepared.table(split)) if split == their_split else 0
        return n, "same prepared data (data_sha256)"
    if record.get("images_sha256") and their_split == record.get("split"):
        if record["images_sha256"] == split_fingerprint(prepared, split):
            return len(prepared.table(split)), "same images (split fingerprint)"
    other = record.get("prepared")
    if other and Path(other).is_dir():
        try:
            theirs = open_prepared(other).table(their_split)
        except (DataError, OSError):
            return None, f"recorded data {other} cannot be read"
        if "sha256" in theirs and "sha256" in prepared.table(split):
            mine = prepared.table(split)["sha256"]
            return int(np.isin(mine, theirs["sha256"]).sum()), f"image hashes compared with {other}"
    known = record.get("data_sha256") or record.get("prepared") or record.get("images_sha256")
    return None, "recorded data not available here" if known else "not recorded"


def check_leakage(model: ModelUnderTest, prepared: Prepared, split: str, *, allow_train_split: bool = False,
                  allow_calibration_split: bool = False, purpose: str = "evaluate") -> dict:
    """Refuse (or, when allowed, flag) a split the model trained on or was calibrated on.

    ``purpose`` ('evaluate' or 'calibrate') words the refusal.
    """
    n = len(prepared.table(split))
    out: dict = {"flags": [], "notes": []}
    train_n, how = _overlap(prepared, split, model.training, "train")
    out["training"] = {"overlap": train_n, "n": n, "how": how}
    if train_n is None:
        out["notes"].append(f"the model does not say which data it trained on ({how}; pack metadata "
                            "training.data_sha256 / training.prepared): it cannot be checked that these images "
                            "were not training images.")
    elif train_n:
        msg = (f"{train_n} of the {n} images of split {split!r} were in the model's training split ({how})")
        if not allow_train_split:
            raise DataError(f"refusing to {purpose} on training images: {msg}. The model's outputs on them are "
                            f"over-confident. Use --split val{' (or test)' if purpose == 'evaluate' else ''}; to "
                            f"{purpose} on training data anyway, pass --allow-train-split.")
        out["flags"].append(f"TRAINING DATA: {msg}; metrics are optimistic (--allow-train-split).")
    if model.training.get("data_sha256") == prepared.data_sha256 and split == "val":
        out["notes"].append("split 'val' of the training data chose the best epoch: slightly optimistic.")
    out["calibration"] = {}
    for what, record in _calibration_records(model):
        cal_n, how = _overlap(prepared, split, record.get("data", {}), record.get("data", {}).get("split", ""))
        out["calibration"][what] = {"overlap": cal_n, "n": n, "how": how, "split": record.get("data", {}).get("split")}
        if cal_n:
            msg = f"the pack's {what} was fitted on {cal_n} of these {n} images ({how})"
            if not allow_calibration_split:
                raise DataError(f"refusing to evaluate on calibration data: {msg}; its ECE and the metrics at its "
                                "thresholds would be optimistic. Calibrate on val and evaluate on test, or pass "
                                "--allow-calibration-split to evaluate anyway (the result is flagged).")
            out["flags"].append(f"CALIBRATION DATA: {msg}; ECE and thresholded metrics are optimistic "
                                "(--allow-calibration-split).")
    return out


def _calibration_records(model: ModelUnderTest):
    post = model.posthoc
    if post.get("temperature"):
        yield "temperature", post["temperature"]
    profile = (post.get("profiles") or {}).get(model.profile or "")
    if profile:
        yield f"threshold profile {model.profile!r}", profile


# --------------------------------------------------------------------------- summaries


def _summary(spec: TaskSpec, y, p, thresholds, groups, n_boot: int, seed: int) -> dict:
    """The headline numbers of task_metrics for one subset."""
    m = task_metrics(spec, y, p, thresholds, groups=groups, n_resamples=n_boot, seed=seed)
    out = {"n": m["n_samples"], "n_patients": int(len(np.unique(groups))), "primary": m["primary"],
           "mean_auroc": {k: m["mean_auroc"][k] for k in ("value", "ci")},
           "accuracy": {k: m["accuracy"][k] for k in ("value", "ci")}, "ece": m["ece"]["value"]}
    if "macro_f1" in m:
        out["macro_f1"] = {k: m["macro_f1"][k] for k in ("value", "ci")}
    if spec.multilabel:
        out["f1"] = {lbl: d["f1"] for lbl, d in m["per_label"].items()}
    return out


def _view_group(v: str) -> str | None:
    v = v.strip().upper()
    if v == "PA":
        return "PA"
    if v.startswith("AP") and not v.startswith("AP/PA"):
        return "AP"
    return None


def _age_group(v: str) -> str | None:
    try:
        age = float(v)
    except ValueError:
        return None
    return next((name for lo, hi, name in AGE_BANDS if lo <= age < hi), None)


SUBGROUPS = {"sex": lambda v: v if v in ("F", "M") else None, "view": _view_group, "age": _age_group}


def _grouped(spec, y, p, thr, patients, keys, n_boot, seed, min_group) -> dict:
    out = {}
    for key in sorted(set(k for k in keys if k is not None)):
        sel = np.asarray([k == key for k in keys])
        n = int(sel.sum())
        if n < min_group:
            out[key] = {"n": n, "too_few": True}
        else:
            out[key] = _summary(spec, y[sel], p[sel], thr, patients[sel], n_boot, seed)
    return out


def subgroup_results(spec, table, y, p, thr, patients, n_boot, seed, min_group) -> dict:
    """Results per sex, view (PA/AP) and age band, for the columns the data fill in."""
    out = {}
    for col, fn in SUBGROUPS.items():
        if col in table:
            keys = [fn(v) for v in table[col]]
            if any(k is not None for k in keys):
                out[col] = _grouped(spec, y, p, thr, patients, keys, n_boot, seed, min_group)
    return out


# --------------------------------------------------------------------------- source probe


def _fit_softmax(x: np.ndarray, y: np.ndarray, k: int, l2: float, iters: int = 300) -> np.ndarray:
    """Multinomial logistic regression (weights (F+1, K), last row the bias) by Nesterov gradient descent."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    onehot = np.eye(k)[y]
    v = np.random.default_rng(0).standard_normal(xb.shape[1])
    for _ in range(30):   # power iteration: the largest eigenvalue of X'X / n bounds the curvature
        v = xb.T @ (xb @ v) / len(xb)
        v /= np.linalg.norm(v)
    lip = 0.5 * float(v @ (xb.T @ (xb @ v))) / len(xb) + l2
    w = z = np.zeros((xb.shape[1], k))
    t = 1.0
    for _ in range(iters):
        s = xb @ z
        s -= s.max(axis=1, keepdims=True)
        prob = np.exp(s)
        prob /= prob.sum(axis=1, keepdims=True)
        grad = xb.T @ (prob - onehot) / len(xb) + l2 * z
        w_next = z - grad / lip
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = w_next + (t - 1) / t_next * (w_next - w)
        w, t = w_next, t_next
    return w


def _predict_softmax(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (np.hstack([x, np.ones((len(x), 1))]) @ w).argmax(axis=1)


def source_probe(features: np.ndarray, sources, patients, *, seed: int = 0, folds: int = PROBE_FOLDS,
                 l2: float = PROBE_L2, min_images: int = PROBE_MIN_IMAGES) -> dict:
    """How well a linear probe predicts the source dataset from pooled features (patient-grouped CV).

    Sources with fewer than ``min_images`` images are left out. Returns the
    cross-validated accuracy and balanced accuracy beside the majority-class
    baseline and chance, or ``{"skipped": reason}``.
    """
    sources = np.asarray(sources)
    names, counts = np.unique(sources, return_counts=True)
    kept = names[counts >= min_images]
    if len(kept) < 2:
        return {"skipped": f"{len(kept)} source dataset(s) with >= {min_images} images: nothing to tell apart"}
    sel = np.isin(sources, kept)
    x, groups = np.asarray(features, np.float64)[sel], np.asarray(patients)[sel]
    y = np.searchsorted(kept, sources[sel])
    uniq, patient_idx = np.unique(groups, return_inverse=True)
    fold = np.random.default_rng(seed).permutation(len(uniq))[patient_idx] % folds
    pred = np.empty(len(y), dtype=np.int64)
    for f in range(folds):
        train, test = fold != f, fold == f
        if not test.any():
            continue
        mu, sd = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
        w = _fit_softmax((x[train] - mu) / sd, y[train], len(kept), l2)
        pred[test] = _predict_softmax(w, (x[test] - mu) / sd)
    recall = [float(np.mean(pred[y == c] == c)) for c in range(len(kept))]
    share = np.bincount(y, minlength=len(kept)) / len(y)
    return {"n": int(len(y)), "datasets": {str(k): int(c) for k, c in zip(kept, np.bincount(y))},
            "left_out": {str(k): int(c) for k, c in zip(names, counts) if k not in kept},
            "accuracy": float(np.mean(pred == y)), "balanced_accuracy": float(np.mean(recall)),
            "majority_baseline": float(share.max()), "chance_balanced": 1.0 / len(kept),
            "folds": folds, "l2": l2, "features": int(x.shape[1]), "model": "multinomial logistic regression"}


_SUBSET = re.compile(r"\s*\((?:official\s+)?(?:train|training|test|testing|val|validation)(?:\s+(?:split|set))?\)\s*$",
                     re.IGNORECASE)


def source_names(datasets) -> np.ndarray:
    """Source dataset per image, with a collection's own train/test subsets merged ("Kermany pediatric CXR
    (train split)" and "(test split)" are one hospital's images: a probe must not be asked to tell them apart)."""
    return np.array([_SUBSET.sub("", str(d)) for d in datasets], dtype=object)


def shortcut_check(spec: TaskSpec, features, table, y, patients, seed: int) -> dict:
    """The source probe on all images and within each label (where one label spans several sources)."""
    if features is None:
        return {"skipped": "the model has no 'features' output to probe"}
    if "dataset" not in table:
        return {"skipped": "the data record no source dataset"}
    sources = source_names(table["dataset"])
    out = {"all": source_probe(features, sources, patients, seed=seed), "within_label": {}}
    for j, label in enumerate(spec.labels):
        sel = y[:, j] > 0
        if sel.sum() >= 2 * PROBE_MIN_IMAGES:
            r = source_probe(features[sel], sources[sel], patients[sel], seed=seed)
            if "skipped" not in r:
                out["within_label"][label] = r
    return out


# --------------------------------------------------------------------------- photos


def _photo_tools():
    try:
        from .photosim import resolve_severity, simulate_photo
    except ImportError as exc:
        raise CxrEdgeError(f"--photos needs the phone-photo simulator (cxr_edge.photosim), which is not "
                           f"available here ({exc}). Evaluate without --photos.") from exc
    try:
        from ..runtime.photo.rectify import rectify
    except ImportError:
        log.warning("cxr_edge.rectify is not available: photos are evaluated without rectification")
        rectify = None
    return resolve_severity, simulate_photo, rectify


def _photo_seed(seed: int, sha: str, index: int) -> np.random.Generator:
    key = int(sha[:15], 16) if sha else index
    return np.random.default_rng(np.random.SeedSequence([seed, key]))


def _photo_batches(prepared, split, spec, severity, seed, photo_size, simulate, rectify, status):
    """(raw-photo inputs, rectified-photo inputs or None) per batch; simulated from the ORIGINAL images."""
    t = prepared.table(split)
    shas = t["sha256"] if "sha256" in t else [""] * len(t)
    for start in range(0, len(t), BATCH):
        raw, rect = [], []
        for i in range(start, min(start + BATCH, len(t))):
            try:
                film = np.asarray(load_image(t["path"][i], mode="L"))   # full resolution, not the cache
            except ImageError as exc:
                raise DataError(f"--photos simulates from the original images; {t['path'][i]} cannot be read "
                                f"({exc}). Restore the files the data were prepared from.") from exc
            photo = simulate(film, severity, _photo_seed(seed, shas[i], i), long_side=photo_size).to_image()
            as_grey = load_image(photo, mode="L", min_size=spec.input.size)   # what predict does with the photo
            raw.append(fit_to_square(as_grey, spec))
            if rectify is not None:
                r = rectify(photo)
                status["found" if r.found else "passthrough" if r.passthrough else "not_found"] += 1
                # r.film: the film as predict hands it to the models (levels stretched)
                rect.append(fit_to_square(load_image(r.film, mode="L", min_size=spec.input.size), spec)
                            if r.ok else raw[-1])
        yield normalize(np.stack(raw), spec), normalize(np.stack(rect), spec) if rect else None


def photo_outputs(model, prepared, split, severity, seed, photo_size, progress=None):
    """Raw outputs on simulated photos: {'photo': (N, L), 'photo_rectified': (N, L)} and rectify counts."""
    resolve_severity, simulate, rectify = _photo_tools()
    try:
        sev = resolve_severity(severity)
    except ValueError as exc:
        raise CxrEdgeError(f"--photos {severity!r}: {exc}") from None
    status = {"found": 0, "passthrough": 0, "not_found": 0}
    n = len(prepared.table(split))
    raw, rect, done = [], [], 0
    for xr, xq in _photo_batches(prepared, split, model.spec, sev, seed, photo_size, simulate, rectify, status):
        raw.append(model.infer(xr)[0])
        if xq is not None:
            rect.append(model.infer(xq)[0])
        done += len(xr)
        if progress:
            progress("photos", done, n)
    outs = {"photo": np.concatenate(raw)}
    if rect:
        outs["photo_rectified"] = np.concatenate(rect)
    info = {"severity": severity, "severity_value": sev, "seed": seed, "photo_long_side": photo_size,
            "rectify": dict(status, available=rectify is not None,
                            note="a photo where no film was found is evaluated unrectified")}
    return outs, info


def _primary_gap(spec: TaskSpec, thr, y, p_digital, p_photo, patients, n_boot, seed) -> dict:
    """Photo minus digital primary metric, with a paired patient-bootstrap CI (same resamples for both)."""
    n_labels = spec.num_labels
    fn = _summary_fn(n_labels, spec.multilabel, thr)
    col = {"auroc": 0, "mean_auroc": n_labels, "accuracy": n_labels + 1, "macro_f1": n_labels + 2}[spec.primary_metric]

    def gap(yy, a, b):
        return fn(yy, b)[col] - fn(yy, a)[col]

    gap.weighted = lambda yy, a, b, w: fn.weighted(yy, b, w)[:, col] - fn.weighted(yy, a, w)[:, col]
    point, low, high = bootstrap_ci(gap, y, p_digital, p_photo, groups=patients, n_resamples=n_boot, seed=seed)
    return {"metric": spec.primary_metric, "value": point, "ci": [low, high] if n_boot > 0 else None}


# --------------------------------------------------------------------------- evaluate


@dataclass
class Evaluation:
    """The JSON-ready ``result`` and the arrays the report plots."""

    result: dict
    spec: TaskSpec
    y: np.ndarray                      # (N, L) 0/1 (one-hot for softmax)
    probs: np.ndarray                  # (N, L) after the pack's temperature
    raw: np.ndarray                    # (N, L) model outputs before temperature
    variants: dict[str, np.ndarray] = field(default_factory=dict)   # photo variants, after temperature
    report: Path | None = None


def task_ece(spec: TaskSpec, y, p) -> float:
    """ECE as task_metrics reports it: pooled label decisions (sigmoid) or top-label (softmax); ``y`` (N, L) 0/1."""
    return expected_calibration_error(y.argmax(axis=1) if not spec.multilabel else y, p,
                                      multiclass=not spec.multilabel)


def evaluate(model_path, data, *, split: str = "test", photos=None, profile: str | None = None,
             n_boot: int = 1000, seed: int = 0, report=None, photo_size: int = 1280, min_group: int = 10,
             allow_train_split: bool = False, allow_calibration_split: bool = False, threads: int = 1,
             backend: str | None = None, progress: Progress | None = None) -> Evaluation:
    """Evaluate a pack (device path) or a run (float Keras) on split ``split`` of prepared data ``data``.

    ``photos``: a severity ('mild', 'moderate', 'severe' or 0..1) to also
    evaluate simulated phone photos of the same images (raw and rectified).
    ``report``: a folder for the report (index.html, report.md, PNGs).
    Raises :class:`~cxr_edge.errors.CxrEdgeError` subclasses for anything the
    user can fix (wrong task, training split, unreadable files).
    """
    prepared = data if isinstance(data, Prepared) else open_prepared(data)
    prepared._check_split(split)
    table = prepared.table(split)
    if not len(table):
        raise DataError(f"split {split!r} of {prepared.path} holds no images; choose one of "
                        f"{', '.join(prepared.splits)}.")
    model = open_model(model_path, prepared, profile=profile, threads=threads, backend=backend)
    spec = model.spec
    leakage = check_leakage(model, prepared, split, allow_train_split=allow_train_split,
                            allow_calibration_split=allow_calibration_split)
    notes: list[str] = list(leakage["notes"])
    raw, pooled, how = model_outputs(model, prepared, split, progress, notes)
    y = prepared.labels(split).astype(np.int64)   # (N, L) 0/1; one-hot for softmax tasks
    patients = prepared.patients(split)
    probs = model.probabilities(raw)
    thr = resolve_thresholds(spec, model.thresholds)
    metrics = task_metrics(spec, y, probs, thr, groups=patients, n_resamples=n_boot, seed=seed)
    result = {
        "kind": RESULT_KIND, "toolkit_version": __version__, "created": utc_now(),
        "model": model.describe,
        "data": {"path": str(prepared.path), "task": prepared.task.name, "data_sha256": prepared.data_sha256,
                 "split": split, "n_images": len(table), "n_patients": int(len(np.unique(patients))),
                 "images_sha256": split_fingerprint(prepared, split), **how},
        "leakage": leakage,
        "metrics": metrics,
        "calibration": {"temperature": model.temperature, "bias": model.describe.get("bias") or {},
                        "ece_raw": task_ece(spec, y, raw),
                        "ece": metrics["ece"]["value"], "n_bins": metrics["ece"]["n_bins"]},
        "subgroups": subgroup_results(spec, table, y, probs, thr, patients, n_boot, seed, min_group),
        "datasets": (_grouped(spec, y, probs, thr, patients, list(source_names(table["dataset"])), n_boot, seed,
                              min_group)
                     if "dataset" in table else {}),
        "shortcut": shortcut_check(spec, pooled, table, y, patients, seed),
        "notes": notes,
    }
    ev = Evaluation(result, spec, y, probs, raw)
    if photos is not None:
        outs, info = photo_outputs(model, prepared, split, photos, seed, photo_size, progress)
        info["variants"] = {}
        for name, r in outs.items():
            p = model.probabilities(r)
            ev.variants[name] = p
            info["variants"][name] = {
                "metrics": task_metrics(spec, y, p, thr, groups=patients, n_resamples=n_boot, seed=seed),
                "gap_vs_digital": _primary_gap(spec, thr, y, probs, p, patients, n_boot, seed)}
        result["photos"] = info
    result = ev.result = _jsonable(result)
    if report is not None:
        from .evaluate_report import write_report

        ev.report = write_report(ev, report)
        result["report"] = {"path": str(ev.report), "files": sorted(p.name for p in ev.report.iterdir())}
    return ev

