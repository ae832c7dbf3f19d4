"""Evaluate a model on a prepared split: metrics with patient-bootstrap CIs, subgroups, sources, photos.

Two kinds of model are evaluated, both through :mod:`cxr_edge.tools.split_runner`:

* a **model pack** (directory or ``.zip``): the int8 model for the data's task
  runs through the device path, exactly as ``cxr-edge predict`` runs it — the
  same interpreter wrapper (:class:`~cxr_edge.runtime.pipeline.LoadedModel`), the
  same preprocessing (:func:`~cxr_edge.runtime.preprocess.fit_to_square` then
  :func:`~cxr_edge.runtime.preprocess.normalize`), the pack's temperature and the
  chosen threshold profile;
* a **training run** directory (``run.json`` + ``float.h5``): the float Keras
  model, opened by the workstation side (``run_opener``,
  :func:`cxr_edge.training.run_model.open_run_model`); no temperature, the task's
  default thresholds.

Besides the task metrics (:func:`cxr_edge.tools.metrics.task_metrics`) the result
holds subgroup results (sex, PA/AP view, age band), per-source-dataset
results, a *source probe* (can a cross-validated logistic regression tell the
source dataset from the model's pooled features? — the shortcut check), and
with ``photos`` the same split as simulated phone photos of the films, raw and
rectified, beside the digital result.

Leakage (:mod:`cxr_edge.tools.leakage`): a split whose images the model trained on
is refused, and so is the split the pack's temperature/thresholds were calibrated
on, unless explicitly allowed; an allowed one is flagged at the top of the result
and the report.

numpy and Pillow only at import time; matplotlib only for the report
(:mod:`cxr_edge.tools.evaluate_report`).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..data.prepared import Prepared, open_prepared
from ..errors import CxrEdgeError, DataError, ImageError
from ..runtime.images import load_image
from ..runtime.metadata import utc_now
from ..runtime.preprocess import fit_to_square, normalize
from ..tasks import TaskSpec
from .leakage import check_leakage, split_fingerprint
from .metrics import jsonable, summary_fn, bootstrap_ci, resolve_thresholds, task_ece, task_metrics
from .split_runner import BATCH, Progress, model_outputs, open_model

__all__ = ["AGE_BANDS", "evaluate", "Evaluation", "fit_softmax", "photo_outputs", "photo_seed", "predict_softmax", "PROBE_FOLDS",
           "PROBE_L2", "PROBE_MIN_IMAGES", "RESULT_KIND", "shortcut_check", "source_names", "source_probe",
           "subgroup_results", "SUBGROUPS"]

log = logging.getLogger(__name__)

RESULT_KIND = "cxr-edge-evaluation"
AGE_BANDS = ((0, 18, "0-17"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 200, "80+"))
PROBE_FOLDS = 5
PROBE_L2 = 0.1          # ridge penalty on the mean cross-entropy, features standardized
PROBE_MIN_IMAGES = 5    # a source dataset needs this many images to be a probe class


# --------------------------------------------------------------------------- the model under test


# --------------------------------------------------------------------------- inputs


# --------------------------------------------------------------------------- leakage


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


def fit_softmax(x: np.ndarray, y: np.ndarray, k: int, l2: float, iters: int = 300) -> np.ndarray:
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


def predict_softmax(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The class :func:`fit_softmax`'s weights ``w`` predict for each row of ``x``."""
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
        w = fit_softmax((x[train] - mu) / sd, y[train], len(kept), l2)
        pred[test] = predict_softmax(w, (x[test] - mu) / sd)
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
        raise CxrEdgeError(f"--photos needs the phone-photo simulator (cxr_edge.tools.photosim), which is not "
                           f"available here ({exc}). Evaluate without --photos.") from exc
    try:
        from ..runtime.photo.rectify import rectify
    except ImportError:
        log.warning("cxr_edge.runtime.photo.rectify is not available: photos are evaluated without rectification")
        rectify = None
    return resolve_severity, simulate_photo, rectify


def photo_seed(seed: int, sha: str, index: int) -> np.random.Generator:
    """The random stream of one image's simulated photo under ``--photos`` (from the image's sha256, else its
    index): the same photo in every run and every tool that wants to rebuild it."""
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
            photo = simulate(film, severity, photo_seed(seed, shas[i], i), long_side=photo_size).to_image()
            as_grey = load_image(photo, mode="L", min_size=spec.input.size)   # what predict does with the photo
            raw.append(fit_to_square(as_grey, spec))
            if rectify is not None:
                r = rectify(photo)
                status[{"quadrilateral": "found", "digital": "passthrough"}.get(r.path, r.path)
                       if r.path != "none" else "not_found"] += 1
                # r.film: the film as predict hands it to the models (finish_film: moiré out, levels stretched)
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
    status = {"found": 0, "cropped": 0, "passthrough": 0, "not_found": 0}
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
                            note="found: the film's edges were found and it was straightened; cropped: no edges "
                                 "in view, the photo was taken as cropped to the film (borders trimmed)")}
    return outs, info


def _primary_gap(spec: TaskSpec, thr, y, p_digital, p_photo, patients, n_boot, seed) -> dict:
    """Photo minus digital primary metric, with a paired patient-bootstrap CI (same resamples for both)."""
    n_labels = spec.num_labels
    fn = summary_fn(n_labels, spec.multilabel, thr)
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


def evaluate(model_path, data, *, split: str = "test", photos=None, profile: str | None = None,
             n_boot: int = 1000, seed: int = 0, report=None, photo_size: int = 1280, min_group: int = 10,
             allow_train_split: bool = False, allow_calibration_split: bool = False, threads: int = 1,
             backend: str | None = None, progress: Progress | None = None,
             run_opener=None) -> Evaluation:
    """Evaluate a pack (device path) or a run (float Keras) on split ``split`` of prepared data ``data``.

    ``photos``: a severity ('mild', 'moderate', 'severe' or 0..1) to also
    evaluate simulated phone photos of the same images (raw and rectified).
    ``report``: a folder for the report (index.html, report.md, PNGs).
    ``run_opener``: how to open a training run (:func:`cxr_edge.training.run_model.open_run_model`;
    ``cxr-edge evaluate`` passes it), see :func:`~cxr_edge.tools.split_runner.open_model`.
    Raises :class:`~cxr_edge.errors.CxrEdgeError` subclasses for anything the
    user can fix (wrong task, training split, unreadable files).
    """
    prepared = data if isinstance(data, Prepared) else open_prepared(data)
    prepared.check_split(split)
    table = prepared.table(split)
    if not len(table):
        raise DataError(f"split {split!r} of {prepared.path} holds no images; choose one of "
                        f"{', '.join(prepared.splits)}.")
    model = open_model(model_path, prepared, profile=profile, threads=threads, backend=backend,
                       run_opener=run_opener)
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
    result = ev.result = jsonable(result)
    if report is not None:
        from .evaluate_report import write_report

        ev.report = write_report(ev, report)
        result["report"] = {"path": str(ev.report), "files": sorted(p.name for p in ev.report.iterdir())}
    return ev

