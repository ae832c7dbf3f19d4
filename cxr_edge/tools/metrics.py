"""Evaluation metrics for the device side: ROC/PR, F1, calibration error, bootstrap CIs.

Pure numpy (no scikit-learn or scipy at run time, so a Pi can evaluate a pack).
The curve and score functions follow scikit-learn's definitions exactly, ties
included; the tests check them against scikit-learn on tied and int8-quantized
scores.

Conventions used throughout:

* ``y_true`` for a binary metric is an array of 0/1 (or bool); ``score`` is any
  finite real array of the same length, higher meaning "more positive".
* A decision is positive when ``score >= threshold``.
* A ratio whose denominator is zero (precision with no predicted positives,
  F1 of a class that is neither present nor predicted) is 0, as with
  scikit-learn's ``zero_division=0``.
* AUROC and average precision are undefined when ``y_true`` holds only one
  class; they return ``nan`` then, and every mean over labels skips ``nan``.
* :func:`task_metrics` and :func:`agreement` return plain JSON types: numpy
  scalars become Python numbers and ``nan`` becomes ``None``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np

from ..errors import DataError

__all__ = ["accuracy", "agreement", "as_task_arrays", "decisions", "auroc", "average_precision", "binary_labels", "binary_stats",
           "bootstrap_ci", "class_indices", "confusion_matrix", "expected_calibration_error", "f1_from_confusion",
           "jsonable", "macro_f1",
           "pr_curve", "reliability_curve", "resolve_thresholds", "roc_curve", "summary_fn", "task_ece",
           "task_metrics", "threshold_counts"]

logger = logging.getLogger(__name__)

# Bootstrap weights are built in chunks of at most this many (resample x sample) cells,
# so memory stays ~100 MB even for the 25,000-image NIH test split.
_CHUNK_CELLS = 2_000_000


# --------------------------------------------------------------------------- input checks

def binary_labels(y_true, name: str = "y_true") -> np.ndarray:
    """``y_true`` as a 0/1 int array; anything else is a DataError naming ``name``."""
    y = np.asarray(y_true)
    if y.dtype == bool:
        return y.astype(np.int64)
    if y.size and not np.isin(y, (0, 1)).all():
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5]
        raise DataError(f"{name} must hold only 0/1 labels; found {bad.tolist()}. "
                        "Pass binary ground truth (1 = finding present).")
    return y.astype(np.int64)


def _scores(score, name: str = "score") -> np.ndarray:
    s = np.asarray(score, dtype=np.float64)
    if not np.isfinite(s).all():
        raise DataError(f"{name} holds {int((~np.isfinite(s)).sum())} non-finite value(s); "
                        "scores must be finite (check the model output or the file they came from).")
    return s


def _binary_pair(y_true, score) -> tuple[np.ndarray, np.ndarray]:
    y = binary_labels(y_true).ravel()
    s = _scores(score).ravel()
    if y.shape != s.shape:
        raise DataError(f"y_true has {y.size} values but score has {s.size}; they must pair one to one.")
    if y.size == 0:
        raise DataError("no samples: y_true and score are empty.")
    return y, s


def _index_labels(y_idx, n_classes: int, name: str) -> np.ndarray:
    y = np.asarray(y_idx)
    whole = y.size == 0 or np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))
    if y.ndim != 1 or not whole:
        raise DataError(f"{name} must be a 1-D array of integer class indices, got shape {y.shape} "
                        f"dtype {y.dtype}.")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        bad = int(y.min() if y.min() < 0 else y.max())
        raise DataError(f"{name} holds class index {bad}; valid indices are 0..{n_classes - 1}.")
    return y


def _safe_div(num, den):
    """num / den, with 0 where den == 0 (zero-division -> 0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


# --------------------------------------------------------------------------- ROC / PR

def _binary_clf_curve(y: np.ndarray, s: np.ndarray):
    """Counts at each distinct score, descending: (fps, tps, thresholds) as in scikit-learn."""
    order = np.argsort(s, kind="stable")[::-1]
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last_of_tie].astype(np.float64)
    fps = 1.0 + last_of_tie - tps
    return fps, tps, s[last_of_tie]


def threshold_counts(y_true, score):
    """``(fps, tps, thresholds)``: false/true positive counts at each distinct score, descending.

    ``tps[i]`` and ``fps[i]`` count ``score >= thresholds[i]``; the last entry
    holds the totals of positives and negatives.
    """
    return _binary_clf_curve(*_binary_pair(y_true, score))


def roc_curve(y_true, score, drop_intermediate: bool = True):
    """ROC curve ``(fpr, tpr, thresholds)``, defined as scikit-learn's ``roc_curve``.

    Tied scores form one point. The curve starts at (0, 0) with threshold ``inf``;
    ``drop_intermediate`` removes collinear points as scikit-learn does by default.
    With only one class present the undefined rate (fpr or tpr) is all ``nan``.
    """
    y, s = _binary_pair(y_true, score)
    fps, tps, thresholds = _binary_clf_curve(y, s)
    if drop_intermediate and fps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    thresholds = np.r_[np.inf, thresholds]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thresholds


def pr_curve(y_true, score):
    """Precision-recall curve ``(precision, recall, thresholds)`` as scikit-learn's.

    Recall decreases along the arrays, which end with precision 1 and recall 0.
    With no positives recall is 1 everywhere (scikit-learn's convention).
    """
    y, s = _binary_pair(y_true, score)
    fps, tps, thresholds = _binary_clf_curve(y, s)
    precision = _safe_div(tps, tps + fps)
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def average_precision(y_true, score) -> float:
    """Average precision: the step-wise sum ``sum_n (R_n - R_{n-1}) P_n`` (scikit-learn's definition).

    ``nan`` when ``y_true`` has no positives.
    """
    y, s = _binary_pair(y_true, score)
    if not y.any():
        return math.nan
    precision, recall, _ = pr_curve(y, s)
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def _rank_groups(y: np.ndarray, s: np.ndarray):
    """Sort order, start index of each tie group and labels in sorted order (ascending scores)."""
    order = np.argsort(s, kind="stable")
    ss = s[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    return order, starts, y[order].astype(np.float64)


def _auroc_weighted(y_true, score, weights) -> np.ndarray:
    """AUROC for many resamples at once: ``weights`` is (B, N) counts, the result (B,).

    Mann-Whitney with tied scores counted one half: per tie group g (ascending),
    ``AUC = sum_g P_g (N_below_g + N_g / 2) / (P N)`` where P_g, N_g are the
    weighted positives/negatives in the group. Integer weights make this the
    AUROC of the resample they count, exactly.
    """
    y, s = _binary_pair(y_true, score)
    order, starts, ys = _rank_groups(y, s)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))[:, order]
    pos = w * ys
    neg = w - pos
    pos_g = np.add.reduceat(pos, starts, axis=1)
    neg_g = np.add.reduceat(neg, starts, axis=1)
    below = np.cumsum(neg_g, axis=1) - neg_g
    num = np.sum(pos_g * (below + 0.5 * neg_g), axis=1)
    den = pos_g.sum(axis=1) * neg_g.sum(axis=1)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def auroc(y_true, score) -> float:
    """Area under the ROC curve, ties handled exactly (Mann-Whitney U with mid-ranks).

    Equal to scikit-learn's ``roc_auc_score``. Returns ``nan`` when ``y_true``
    holds only one class (callers skip such labels in means).
    """
    y, _ = _binary_pair(y_true, score)
    return float(_auroc_weighted(y, score, np.ones((1, y.size)))[0])


auroc.weighted = _auroc_weighted


# --------------------------------------------------------------------------- decisions

def confusion_matrix(y_idx, pred_idx, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int counts; rows are the true class, columns the predicted one."""
    y = _index_labels(y_idx, n_classes, "y_idx")
    p = _index_labels(pred_idx, n_classes, "pred_idx")
    if y.shape != p.shape:
        raise DataError(f"y_idx has {y.size} values but pred_idx has {p.size}.")
    return np.bincount(y * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def accuracy(y_idx, pred_idx) -> float:
    """Fraction of predictions equal to the truth (class indices or 0/1 decisions)."""
    y, p = np.asarray(y_idx).ravel(), np.asarray(pred_idx).ravel()
    if y.shape != p.shape:
        raise DataError(f"y_idx has {y.size} values but pred_idx has {p.size}.")
    return float(np.mean(y == p)) if y.size else math.nan


def _accuracy_weighted(y_idx, pred_idx, weights) -> np.ndarray:
    correct = (np.asarray(y_idx).ravel() == np.asarray(pred_idx).ravel()).astype(np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    return _safe_div(w @ correct, w.sum(axis=1))


accuracy.weighted = _accuracy_weighted


def f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 from (..., K, K) confusion counts: 2TP / (2TP + FP + FN), 0 when undefined."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    return _safe_div(2 * tp, cm.sum(axis=-1) + cm.sum(axis=-2))


def macro_f1(y_idx, pred_idx, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over all ``n_classes`` classes.

    Same as scikit-learn's ``f1_score(..., labels=range(n_classes), average='macro',
    zero_division=0)``: a class that is neither present nor predicted scores 0.
    """
    return float(f1_from_confusion(confusion_matrix(y_idx, pred_idx, n_classes)).mean())


def _macro_f1_weighted(y_idx, pred_idx, n_classes: int, weights) -> np.ndarray:
    cell = _index_labels(y_idx, n_classes, "y_idx") * n_classes + _index_labels(pred_idx, n_classes, "pred_idx")
    onehot = np.zeros((cell.size, n_classes * n_classes))
    onehot[np.arange(cell.size), cell] = 1.0
    cms = (np.atleast_2d(weights) @ onehot).reshape(-1, n_classes, n_classes)
    return f1_from_confusion(cms).mean(axis=-1)


def binary_stats(y_true, score, threshold: float) -> dict:
    """Counts and rates at one threshold (``score >= threshold`` is positive).

    Returns tp, fp, tn, fn (ints) and sensitivity (recall), specificity,
    precision, f1, accuracy (floats; 0 where a denominator is 0).
    """
    y, s = _binary_pair(y_true, score)
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(y.size - tp - fp - fn)
    return {
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "sensitivity": float(_safe_div(tp, tp + fn)),
        "specificity": float(_safe_div(tn, tn + fp)),
        "precision": float(_safe_div(tp, tp + fp)),
        "f1": float(_safe_div(2 * tp, 2 * tp + fp + fn)),
        "accuracy": float(_safe_div(tp + tn, y.size)),
    }


# --------------------------------------------------------------------------- calibration error

def _confidence_and_outcome(y_true, prob, multiclass: bool):
    """What reliability bins compare: (confidence, observed 0/1) per prediction."""
    p = _scores(prob, "prob")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise DataError(f"prob must lie in [0, 1]; found values in [{p.min():g}, {p.max():g}]. "
                        "Pass probabilities, not logits.")
    if not multiclass:
        y, p = _binary_pair(y_true, p)
        return p, y.astype(np.float64)
    if p.ndim != 2:
        raise DataError(f"multiclass prob must be (N, K) class probabilities, got shape {p.shape}.")
    y = class_indices(y_true, p.shape[1])
    if y.size != p.shape[0]:
        raise DataError(f"y_true has {y.size} rows but prob has {p.shape[0]}.")
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def _bin_sums(conf: np.ndarray, outcome: np.ndarray, n_bins: int):
    """Per equal-width bin (lo, hi] (the first bin includes 0): counts, sum of confidence, sum of outcome."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    count = np.bincount(idx, minlength=n_bins)
    return edges, count, np.bincount(idx, conf, n_bins), np.bincount(idx, outcome, n_bins)


def expected_calibration_error(y_true, prob, n_bins: int = 15, multiclass: bool = False) -> float:
    """Expected calibration error: ``sum_b n_b / N * |mean confidence_b - observed_b|``.

    Binary (default): ``prob`` is P(positive) per label decision and observed is
    the fraction of positives; 2-D (N, L) sigmoid arrays pool all N*L
    decisions. ``multiclass=True``: top-label ECE for softmax, ``prob`` (N, K),
    ``y_true`` class indices (N,) or one-hot (N, K); confidence is the largest
    probability and observed is whether its class is right. Equal-width bins
    (lo, hi] on [0, 1].
    """
    conf, outcome = _confidence_and_outcome(y_true, prob, multiclass)
    if conf.size == 0:
        return math.nan
    _, _, sum_conf, sum_obs = _bin_sums(conf, outcome, n_bins)
    return float(np.abs(sum_conf - sum_obs).sum() / conf.size)


def reliability_curve(y_true, prob, n_bins: int = 15, multiclass: bool = False) -> dict:
    """Per-bin data for a reliability diagram (same binning as :func:`expected_calibration_error`).

    Returns numpy arrays: ``bin_edges`` (n_bins + 1), and per bin ``confidence``
    (mean predicted probability), ``frequency`` (fraction positive, or top-label
    accuracy when ``multiclass``) and ``count``; empty bins have ``nan`` means.
    """
    conf, outcome = _confidence_and_outcome(y_true, prob, multiclass)
    edges, count, sum_conf, sum_obs = _bin_sums(conf, outcome, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"bin_edges": edges, "confidence": sum_conf / count, "frequency": sum_obs / count,
                "count": count}


# --------------------------------------------------------------------------- bootstrap

def _resample_weights(n: int, groups, n_resamples: int, seed: int):
    """Yield (b, n) arrays: how often each sample appears in each of the next b resamples.

    With ``groups``, whole groups (patients) are drawn with replacement and each
    image inherits its patient's count (cluster bootstrap).
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        unit_of, n_units = None, n
    else:
        g = np.asarray(groups)
        if g.shape != (n,):
            raise DataError(f"groups must give one patient id per sample ({n}), got shape {g.shape}.")
        _, unit_of = np.unique(g, return_inverse=True)
        n_units = int(unit_of.max()) + 1 if n else 0
    chunk = max(1, _CHUNK_CELLS // max(n, 1))
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        draws = rng.integers(0, n_units, size=(b, n_units))
        flat = (np.arange(b)[:, None] * n_units + draws).ravel()
        counts = np.bincount(flat, minlength=b * n_units).reshape(b, n_units).astype(np.float64)
        yield counts if unit_of is None else counts[:, unit_of]
        done += b


def _bootstrap_samples(metric_fn, arrays, groups, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, k) metric values; uses ``metric_fn.weighted`` when present (all resamples at once)."""
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise DataError(f"bootstrap arrays must all have {n} rows; got {[len(a) for a in arrays]}.")
    weighted = getattr(metric_fn, "weighted", None)
    rows = []
    for w in _resample_weights(n, groups, n_resamples, seed):
        if weighted is not None:
            rows.append(np.asarray(weighted(*arrays, w), dtype=np.float64).reshape(w.shape[0], -1))
            continue
        for counts in w.astype(np.int64):
            idx = np.repeat(np.arange(n), counts)
            value = metric_fn(*(a[idx] for a in arrays))
            rows.append(np.asarray(value, dtype=np.float64).reshape(1, -1))
    return np.concatenate(rows, axis=0)


def _percentile_ci(samples: np.ndarray, alpha: float):
    """Column-wise percentile interval over the finite resamples (nan where none is finite).

    Returns (low, high, used): ``used`` counts the resamples each column kept.
    """
    used = np.isfinite(samples).sum(axis=0)
    low = np.full(samples.shape[1], np.nan)
    high = np.full(samples.shape[1], np.nan)
    for j, col in enumerate(samples.T):
        finite = col[np.isfinite(col)]
        if finite.size < col.size:
            logger.debug("bootstrap: dropped %d of %d resamples with an undefined metric",
                         col.size - finite.size, col.size)
        if finite.size:
            low[j], high[j] = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return low, high, used


def bootstrap_ci(metric_fn, *arrays, groups=None, n_resamples: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float, float]:
    """Percentile bootstrap: ``(point, low, high)`` for ``metric_fn(*arrays)``.

    Every array is indexed by the same resample of rows. With ``groups`` (one
    patient id per row) patients are resampled with replacement and all their
    images come along (cluster bootstrap), which is the honest interval when a
    patient contributes several images. Resamples whose metric is ``nan``
    (e.g. AUROC of a resample holding one class) are dropped before taking
    percentiles; if all are, low and high are ``nan``. The same ``seed`` gives
    the same resamples, hence the same interval.

    Speed: if ``metric_fn`` has an attribute ``weighted`` — a callable
    ``(*arrays, weights) -> (B,)`` with ``weights`` a (B, N) matrix of
    per-row counts — it evaluates whole chunks of resamples at once
    (:func:`auroc` and :func:`accuracy` have one). Otherwise ``metric_fn`` is
    called once per resample.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    arrays = tuple(np.asarray(a) for a in arrays)
    point = float(metric_fn(*arrays))
    if n_resamples <= 0:
        return point, math.nan, math.nan
    samples = _bootstrap_samples(metric_fn, arrays, groups, n_resamples, seed)
    if samples.shape[1] != 1:
        raise ValueError(f"metric_fn must return one number, got {samples.shape[1]}")
    low, high, _ = _percentile_ci(samples, alpha)
    if np.isnan(low[0]):
        logger.warning("bootstrap: the metric was undefined in every one of %d resamples", n_resamples)
    return point, float(low[0]), float(high[0])


# --------------------------------------------------------------------------- task level

def class_indices(y_true, n_classes: int) -> np.ndarray:
    """Class indices (N,) from indices (N,) or a one-hot (N, n_classes) array."""
    y = np.asarray(y_true)
    if y.ndim == 2:
        if y.shape[1] != n_classes or not np.isin(y, (0, 1)).all() or not (y.sum(axis=1) == 1).all():
            raise DataError(f"a 2-D y_true must be one-hot (N, {n_classes}) with exactly one 1 per row; "
                            f"got shape {y.shape}. Or pass class indices (N,).")
        return y.argmax(axis=1).astype(np.int64)
    return _index_labels(y, n_classes, "y_true")


def as_task_arrays(spec, y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    """Check ``y_true``/``probs`` against ``spec`` and return ``(Y, P)``, both (N, L).

    ``Y`` is 0/1 (one-hot for softmax tasks), ``P`` float64. A single-label
    task may pass (N,) arrays.
    """
    n_labels = spec.num_labels
    p = _scores(probs, "probs")
    if p.ndim == 1 and n_labels == 1:
        p = p[:, None]
    if p.ndim != 2 or p.shape[1] != n_labels:
        raise DataError(f"task {spec.name!r} has {n_labels} label(s) {list(spec.labels)}; probs must be "
                        f"(N, {n_labels}), got shape {p.shape}.")
    if spec.multilabel:
        y = binary_labels(y_true)
        if y.ndim == 1 and n_labels == 1:
            y = y[:, None]
        if y.shape != p.shape:
            raise DataError(f"task {spec.name!r}: y_true must be (N, {n_labels}) 0/1 like probs "
                            f"{p.shape}, got shape {y.shape}.")
        return y, p
    idx = class_indices(y_true, n_labels)
    if idx.size != p.shape[0]:
        raise DataError(f"task {spec.name!r}: y_true has {idx.size} rows but probs has {p.shape[0]}.")
    return np.eye(n_labels, dtype=np.int64)[idx], p


def resolve_thresholds(spec, thresholds=None) -> np.ndarray:
    """Per-label thresholds (L,) from None (``spec.default_threshold``), one number,
    a sequence in label order, or a ``{label: threshold}`` mapping covering every label."""
    n_labels = spec.num_labels
    if thresholds is None:
        return np.full(n_labels, float(spec.default_threshold))
    if isinstance(thresholds, Mapping):
        missing = [lbl for lbl in spec.labels if lbl not in thresholds]
        unknown = [k for k in thresholds if k not in spec.labels]
        if missing or unknown:
            raise DataError(f"thresholds for task {spec.name!r} must name exactly its labels "
                            f"{list(spec.labels)}; missing {missing}, unknown {unknown}.")
        values = np.array([float(thresholds[lbl]) for lbl in spec.labels])
    elif np.ndim(thresholds) == 0:
        values = np.full(n_labels, float(thresholds))
    else:
        values = np.asarray(thresholds, dtype=np.float64)
    if values.shape != (n_labels,) or not np.isfinite(values).all():
        raise DataError(f"task {spec.name!r} needs {n_labels} finite threshold(s), got {thresholds!r}.")
    return values


def jsonable(x):
    """Plain JSON types: numpy scalars/arrays to Python, nan/inf to None."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())  # a 0-d array becomes a scalar
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def _nan_mean_rows(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring nan (nan where a row is all nan), without warnings."""
    ok = np.isfinite(values)
    count = ok.sum(axis=-1)
    total = np.where(ok, values, 0.0).sum(axis=-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def summary_fn(n_labels: int, multilabel: bool, thresholds: np.ndarray):
    """A metric function over (Y, P) returning [per-label AUROC..., mean AUROC, accuracy, macro-F1].

    Accuracy is of all N * L thresholded label decisions (sigmoid) or of the
    argmax class (softmax); macro-F1 is nan for sigmoid tasks. It carries a
    ``weighted`` form so the bootstrap evaluates all resamples together.
    """
    def weighted(yy, pp, w):
        aucs = np.stack([_auroc_weighted(yy[:, j], pp[:, j], w) for j in range(n_labels)], axis=1)
        if multilabel:  # each image contributes L decisions, so each carries its weight L times
            acc = _accuracy_weighted(yy.ravel(), (pp >= thresholds).ravel(), np.repeat(w, n_labels, axis=1))
            f1 = np.full(w.shape[0], np.nan)
        else:
            truth, pred = yy.argmax(axis=1), pp.argmax(axis=1)
            acc = _accuracy_weighted(truth, pred, w)
            f1 = _macro_f1_weighted(truth, pred, n_labels, w)
        return np.column_stack([aucs, _nan_mean_rows(aucs), acc, f1])

    def fn(yy, pp):
        return weighted(yy, pp, np.ones((1, yy.shape[0])))[0]

    fn.weighted = weighted
    return fn


def _per_label(spec, y, p, thr, aucs, n_bins) -> dict:
    """{label: counts, AUROC (+CI), AP; sigmoid: threshold stats and ECE; softmax: P/R/F1 from argmax, and
    the one-vs-rest stats of flagging the class at its threshold (``at_threshold``)}."""
    out = {}
    if not spec.multilabel:
        cm = confusion_matrix(y.argmax(axis=1), p.argmax(axis=1), spec.num_labels)
        f1 = f1_from_confusion(cm)
    for j, label in enumerate(spec.labels):
        entry = {"n_positive": int(y[:, j].sum()), "n_negative": int(y.shape[0] - y[:, j].sum()),
                 "auroc": aucs[j]["value"], "auroc_ci": aucs[j]["ci"],
                 "auroc_ci_resamples": aucs[j]["ci_resamples"],
                 "ap": average_precision(y[:, j], p[:, j])}
        if spec.multilabel:
            entry["threshold"] = thr[j]
            entry.update(binary_stats(y[:, j], p[:, j], thr[j]))
            entry["ece"] = expected_calibration_error(y[:, j], p[:, j], n_bins)
        else:
            entry.update(support=int(cm[j].sum()), precision=_safe_div(cm[j, j], cm[:, j].sum()),
                         recall=_safe_div(cm[j, j], cm[j].sum()), f1=f1[j])
            # the class flagged one-vs-rest at its threshold (what a 'screening' profile does in predict)
            entry["threshold"] = thr[j]
            entry["at_threshold"] = binary_stats(y[:, j], p[:, j], thr[j])
        out[label] = entry
    return out


def task_metrics(spec, y_true, probs, thresholds=None, groups=None, n_resamples: int = 1000,
                 seed: int = 0, alpha: float = 0.05, n_bins: int = 15) -> dict:
    """Evaluate one task's predictions; returns a JSON-serializable dict.

    ``y_true`` is (N, L) 0/1 for sigmoid tasks, (N, L) one-hot or (N,) class
    indices for softmax tasks; ``probs`` is (N, L) (a single-label task may use
    (N,)). ``thresholds`` (see :func:`resolve_thresholds`) set the sigmoid
    decisions; softmax decisions are the argmax, and each class's threshold
    only sets its one-vs-rest flag (``per_label[...]["at_threshold"]``). ``groups``
    (patient ids) switches the bootstrap to resampling patients; all CIs come
    from the same resamples; resamples where a metric is undefined (a label
    drawn with one class) are dropped, and ``ci_resamples`` /
    ``auroc_ci_resamples`` say how many each interval kept (a rare label
    keeping few is a warning sign). ``n_resamples=0`` disables confidence
    intervals (``ci`` is then ``None``).

    Keys: ``task``, ``activation``, ``labels``, ``n_samples``, ``bootstrap``;
    ``per_label`` {label: n_positive, n_negative, auroc, auroc_ci, auroc_ci_resamples, ap; sigmoid:
    threshold, tp/fp/tn/fn, sensitivity, specificity, precision, f1, accuracy,
    ece; softmax: support, precision, recall, f1, threshold, at_threshold {tp/fp/tn/fn, sensitivity, ...}}; ``mean_auroc`` {value, ci,
    ci_resamples, n_labels} over labels with both classes; ``accuracy`` {value, ci, ci_resamples}
    (softmax: top-1; sigmoid: of all label decisions at the thresholds);
    single-label sigmoid also ``auroc`` {value, ci}; softmax also ``macro_f1``
    {value, ci} and ``confusion_matrix`` (rows true, columns predicted);
    ``ece`` {value, n_bins, kind} (pooled over label decisions for sigmoid,
    top-label for softmax) with ``reliability`` bins; and ``primary``
    {name, value, ci} for ``spec.primary_metric``. Undefined values are ``None``.
    """
    y, p = as_task_arrays(spec, y_true, probs)
    thr = resolve_thresholds(spec, thresholds)
    n, n_labels = p.shape
    fn = summary_fn(n_labels, spec.multilabel, thr)
    point = fn(y, p)
    with_ci = n_resamples > 0
    if with_ci:
        low, high, used = _percentile_ci(_bootstrap_samples(fn, (y, p), groups, n_resamples, seed), alpha)
    else:
        low = high = np.full(point.shape, np.nan)
        used = np.zeros(point.shape, dtype=np.int64)

    def entry(k):
        return {"value": point[k], "ci": [low[k], high[k]] if with_ci else None, "ci_resamples": used[k]}

    out = {
        "task": spec.name, "activation": spec.activation, "labels": list(spec.labels), "n_samples": n,
        "bootstrap": {"n_resamples": max(int(n_resamples), 0), "seed": seed, "alpha": alpha,
                      "unit": "patient" if groups is not None else "image"},
        "per_label": _per_label(spec, y, p, thr, [entry(j) for j in range(n_labels)], n_bins),
        "mean_auroc": dict(entry(n_labels), n_labels=int(np.isfinite(point[:n_labels]).sum())),
        "accuracy": entry(n_labels + 1),
    }
    if spec.multilabel and n_labels == 1:
        out["auroc"] = entry(0)
    if not spec.multilabel:
        out["macro_f1"] = entry(n_labels + 2)
        out["confusion_matrix"] = {"rows": "true", "columns": "predicted", "labels": list(spec.labels),
                                   "counts": confusion_matrix(y.argmax(axis=1), p.argmax(axis=1), n_labels)}
    multiclass = not spec.multilabel
    ece_args = (y.argmax(axis=1) if multiclass else y, p, n_bins, multiclass)
    out["ece"] = {"value": expected_calibration_error(*ece_args), "n_bins": n_bins,
                  "kind": "top-label" if multiclass else "pooled binary (all label decisions)"}
    out["reliability"] = reliability_curve(*ece_args)
    if spec.primary_metric not in out:
        raise DataError(f"task {spec.name!r} names primary metric {spec.primary_metric!r}, which "
                        "task_metrics does not compute; computed: mean_auroc, accuracy, auroc, macro_f1.")
    out["primary"] = {"name": spec.primary_metric, **{k: out[spec.primary_metric][k] for k in ("value", "ci")}}
    return jsonable(out)


def decisions(spec, probs, thresholds=None) -> np.ndarray:
    """(N, D) decisions as :func:`agreement` compares them: the argmax as (N, 1) (softmax), or every label's
    ``probs >= threshold`` as (N, L) (sigmoid; the default thresholds unless ``thresholds``)."""
    p = _scores(probs, "probs")
    p = p.reshape(len(p), -1)
    if spec.multilabel:
        return p >= resolve_thresholds(spec, thresholds)
    return p.argmax(axis=1)[:, None]


def agreement(spec, probs_a, probs_b, thresholds=None) -> dict:
    """How closely two models' outputs agree (export compares float with int8).

    Softmax: top-1 agreement (same argmax). Sigmoid: agreement of the
    thresholded decisions over all N * L label decisions (plus per label).
    Both: max and mean absolute probability difference. JSON-serializable.
    """
    a = _scores(probs_a, "probs_a")
    b = _scores(probs_b, "probs_b")
    if spec.num_labels == 1:
        a, b = a.reshape(-1, 1), b.reshape(-1, 1)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != spec.num_labels:
        raise DataError(f"task {spec.name!r}: both outputs must be (N, {spec.num_labels}); "
                        f"got {a.shape} and {b.shape}.")
    diff = np.abs(a - b)
    out = {"n_samples": a.shape[0], "max_abs_diff": diff.max(initial=0.0),
           "mean_abs_diff": diff.mean() if diff.size else math.nan}
    same = decisions(spec, a, thresholds) == decisions(spec, b, thresholds)
    if spec.multilabel:
        out.update(kind="decision", agreement=same.mean() if same.size else math.nan,
                   per_label=dict(zip(spec.labels, same.mean(axis=0))))
    else:
        out.update(kind="top1", agreement=same.mean() if a.size else math.nan)
    return jsonable(out)


def task_ece(spec, y, p) -> float:
    """ECE as task_metrics reports it: pooled label decisions (sigmoid) or top-label (softmax); ``y`` (N, L) 0/1."""
    return expected_calibration_error(y.argmax(axis=1) if not spec.multilabel else y, p,
                                      multiclass=not spec.multilabel)
