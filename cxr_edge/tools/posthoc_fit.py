"""Fitting post-hoc calibration: temperature scaling, per-label offsets and decision thresholds.

Pure numpy. Both work from *probabilities*, because that is what an int8
model pack emits; nothing here needs the float model or its logits. Applying
the fitted values is the device's part: :mod:`cxr_edge.runtime.posthoc`.

* :func:`fit_temperature` (applied by ``apply_temperature``): one temperature T per
  model, ``p' = activation(logit(p) / T)``; T > 1 softens over-confident outputs.
* :func:`fit_temperature_and_bias` (applied by ``apply_calibration``): for sigmoid
  heads, the shared T plus one logit offset per label,
  ``p' = sigmoid(logit(p) / T + b_label)``. A model trained with per-label
  positive weights (nih14: n_neg / n_pos, up to 30) over-states every label's
  probability by about log(weight); one temperature cannot move probabilities
  towards a label's base rate, the offset can (measured on the bundled nih14:
  test ECE 0.29 raw, 0.29 after T alone, 0.04 after T + offsets).
* :func:`choose_threshold` / :func:`choose_thresholds`: per-label decision
  thresholds from a rule string (``max-f1``, ``youden``, ``sensitivity:0.90``,
  ``specificity:0.80``). Thresholds drive sigmoid heads only; softmax tasks
  predict the argmax, and their per-class one-vs-rest thresholds are reported
  for screening use but not used by predict.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..errors import CxrEdgeError, DataError
from ..runtime.posthoc import EPS, activate, check_activation, probs_to_logits
from .metrics import binary_labels, as_task_arrays, binary_stats, class_indices, threshold_counts

__all__ = ["B_MAX", "BIAS_RIDGE", "choose_threshold", "choose_thresholds", "fit_calibration", "fit_temperature",
           "fit_temperature_and_bias", "parse_rule", "remap_threshold", "RULES_HELP", "T_MAX", "T_MIN",
           "ThresholdRule"]

logger = logging.getLogger(__name__)

T_MIN, T_MAX = 0.05, 20.0


def _nll(z: np.ndarray, y: np.ndarray, activation: str, temperature: float) -> float:
    """Mean negative log-likelihood of 0/1 targets ``y`` (one-hot for softmax) at logits z / T."""
    s = z / temperature
    if activation == "sigmoid":
        return float(np.mean(np.logaddexp(0.0, s) - y * s))
    m = s.max(axis=1, keepdims=True)
    log_norm = m[:, 0] + np.log(np.exp(s - m).sum(axis=1))
    return float(np.mean(log_norm - (s * y).sum(axis=1)))


def _golden_section(f, lo: float, hi: float, tol: float) -> float:
    """Minimizer of a unimodal f on [lo, hi] to within tol."""
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = f(d)
    return (a + b) / 2.0


def fit_temperature(probs, y_true, activation: str, eps: float = EPS, tol: float = 1e-5,
                    warn_at_bound: bool = True) -> float:
    """The temperature T in [0.05, 20] minimizing the NLL of ``activation(logits / T)``.

    ``probs``: (N, L) sigmoid outputs with (N, L) 0/1 ``y_true`` (one T shared by
    all labels), or (N, K) softmax outputs with class indices (N,) or one-hot
    (N, K). Logits are recovered with :func:`probs_to_logits`. The NLL is convex
    in 1/T, hence unimodal in log T, so a golden-section search on log T finds
    the optimum (to ``tol`` in log T). A result at a bound is logged as a warning.
    """
    check_activation(activation)
    p = np.asarray(probs, dtype=np.float64)
    if activation == "sigmoid":
        y = binary_labels(y_true)
        if y.shape != p.shape:
            raise DataError(f"sigmoid y_true must match probs' shape {p.shape}, got {y.shape}.")
    else:
        if p.ndim != 2:
            raise DataError(f"softmax probs must be (N, K), got shape {p.shape}.")
        y = np.eye(p.shape[1])[class_indices(y_true, p.shape[1])]
        if y.shape != p.shape:
            raise DataError(f"y_true has {y.shape[0]} rows but probs has {p.shape[0]}.")
    if p.size == 0:
        raise DataError("fit_temperature needs at least one prediction.")
    z = probs_to_logits(p, activation, eps)
    log_t = _golden_section(lambda u: _nll(z, y, activation, math.exp(u)),
                            math.log(T_MIN), math.log(T_MAX), tol)
    temperature = math.exp(log_t)
    if warn_at_bound and (temperature < T_MIN * 1.01 or temperature > T_MAX / 1.01):
        logger.warning("fitted temperature %.4g is at the search bound [%g, %g]: the fit data may hold "
                       "one class only or the model may be degenerate", temperature, T_MIN, T_MAX)
    return temperature


#: Ridge on the per-label offsets (a Gaussian prior around 0): it keeps the offset of a label that the fit
#: data show with one class only finite. At 1e-3 the bundled nih14's val NLL moves by under 0.1 %.
BIAS_RIDGE = 1e-3
B_MAX = 12.0


def _fit_bias(z: np.ndarray, y: np.ndarray, ridge: float, iters: int = 50) -> np.ndarray:
    """Per-column b minimizing ``mean(softplus(z + b) - y (z + b)) + ridge * b^2`` (Newton, vectorized)."""
    b = np.zeros(z.shape[1])
    for _ in range(iters):
        p = activate(z + b, "sigmoid")
        grad = (p - y).mean(axis=0) + 2 * ridge * b
        hess = (p * (1 - p)).mean(axis=0) + 2 * ridge
        step = grad / hess
        b = np.clip(b - step, -B_MAX, B_MAX)
        if np.max(np.abs(step)) < 1e-10:
            break
    return b


def fit_temperature_and_bias(probs, y_true, eps: float = EPS, ridge: float = BIAS_RIDGE,
                             tol: float = 1e-5, warn_at_bound: bool = True) -> tuple[float, np.ndarray]:
    """``(T, b)`` minimizing the NLL of ``sigmoid(logit(p) / T + b)`` over (N, L) sigmoid outputs.

    One temperature shared by all labels (the model's confidence) and one offset per label (its base
    rate). For each T the offsets have a closed convex problem each (Newton); T is found by a
    golden-section search on log T over the profile NLL, like :func:`fit_temperature`.
    """
    p = np.asarray(probs, dtype=np.float64)
    p = p.reshape(-1, 1) if p.ndim == 1 else p
    if np.size(y_true) != p.size:
        raise DataError(f"y_true must match probs' shape {p.shape}, got {np.shape(y_true)}.")
    y = binary_labels(y_true).reshape(p.shape).astype(np.float64)
    if p.size == 0:
        raise DataError("fit_temperature_and_bias needs at least one prediction.")
    z = probs_to_logits(p, "sigmoid", eps)

    def profile_nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        b = _fit_bias(s, y, ridge)
        return float(np.mean(np.logaddexp(0.0, s + b) - y * (s + b)) + ridge * np.mean(b ** 2))

    temperature = math.exp(_golden_section(profile_nll, math.log(T_MIN), math.log(T_MAX), tol))
    if warn_at_bound and (temperature < T_MIN * 1.01 or temperature > T_MAX / 1.01):
        logger.warning("fitted temperature %.4g is at the search bound [%g, %g]: the fit data may hold "
                       "one class only or the model may be degenerate", temperature, T_MIN, T_MAX)
    return temperature, _fit_bias(z / temperature, y, ridge)


def fit_calibration(probs, y_true, activation: str, *, bias: bool,
                    keep: tuple[float, np.ndarray]) -> tuple[float, np.ndarray, str | None]:
    """``(T, b, warning)``: the fitted temperature (and per-label offsets when ``bias``), or ``keep`` -- the
    calibration the model has -- with a warning when the split cannot set one.

    A split on which every image lies on the right side of the model's decision (a gate on a clean val set)
    is separable: the NLL falls without end as T shrinks, so the fit runs into its lower bound and would make
    every probability 0 or 1. That says nothing about how confident the model should be on harder images,
    so the calibration is kept as it was, not sharpened.
    """
    if bias:
        t, b = fit_temperature_and_bias(probs, y_true, warn_at_bound=False)
    else:
        t = fit_temperature(probs, y_true, activation, warn_at_bound=False)
        b = np.zeros(np.shape(probs)[-1] if np.ndim(probs) > 1 else 1)
    if t < T_MIN * 1.01:
        return keep[0], np.asarray(keep[1], dtype=np.float64), (
            f"the temperature was not fitted (kept {keep[0]:.3g}): the model separates this split perfectly, so "
            f"the fit ran to its bound T = {T_MIN:g}, which would make every probability 0 or 1. Calibrate on a "
            "split with images the model finds hard (more data, or photographed films), or keep it as it is")
    return t, b, None


def remap_threshold(t: float, old: tuple[float, float], new: tuple[float, float]) -> float:
    """The threshold under calibration ``new`` = (T, b) that makes the same decisions as ``t`` under ``old``.

    ``sigmoid(z / T1 + b1) >= t``  <=>  ``z >= T1 (logit(t) - b1)``
    <=>  ``sigmoid(z / T2 + b2) >= sigmoid(T1 (logit(t) - b1) / T2 + b2)``.
    """
    (t1, b1), (t2, b2) = old, new
    t = min(max(float(t), 1e-15), 1 - 1e-15)
    z = t1 * (math.log(t) - math.log1p(-t) - b1)
    return float(0.5 * (1.0 + math.tanh(0.5 * (z / t2 + b2))))


# --------------------------------------------------------------------------- thresholds

RULES_HELP = ("max-f1, youden, sensitivity:X, specificity:X (X a fraction in (0, 1], "
              "e.g. sensitivity:0.90)")


@dataclass(frozen=True)
class ThresholdRule:
    """A parsed threshold rule; ``str(rule)`` is its canonical text (for pack metadata)."""

    kind: str                    # "max-f1", "youden", "sensitivity" or "specificity"
    target: float | None = None  # the required rate for sensitivity/specificity

    def __str__(self) -> str:
        return self.kind if self.target is None else f"{self.kind}:{self.target:g}"


def parse_rule(text) -> ThresholdRule:
    """Parse ``max-f1``, ``youden``, ``sensitivity:X`` or ``specificity:X`` (0 < X <= 1).

    A :class:`ThresholdRule` is returned as is; anything else raises
    :class:`~cxr_edge.errors.CxrEdgeError` listing the valid rules.
    """
    if isinstance(text, ThresholdRule):
        return text
    raw = str(text).strip().lower()
    if raw in ("max-f1", "youden"):
        return ThresholdRule(raw)
    kind, sep, value = raw.partition(":")
    if sep and kind in ("sensitivity", "specificity"):
        try:
            target = float(value)
        except ValueError:
            target = math.nan
        if 0.0 < target <= 1.0:
            return ThresholdRule(kind, target)
    raise CxrEdgeError(f"unknown threshold rule {text!r}; valid rules: {RULES_HELP}.")


def _pick_index(rule: ThresholdRule, tps: np.ndarray, fps: np.ndarray) -> int:
    """Index into the candidate thresholds (descending) that the rule selects."""
    n_pos, n_neg = tps[-1], fps[-1]
    tpr, fpr = tps / n_pos, fps / n_neg
    slack = 1e-12  # so that e.g. 9/10 counts as reaching 0.9
    if rule.kind == "max-f1":
        return int(np.argmax(2 * tps / (n_pos + tps + fps)))   # first = highest threshold among ties
    if rule.kind == "youden":
        return int(np.argmax(tpr - fpr))
    if rule.kind == "sensitivity":
        return int(np.flatnonzero(tpr >= rule.target - slack)[0])  # highest threshold reaching it
    return int(np.flatnonzero(1.0 - fpr >= rule.target - slack)[-1])  # lowest threshold keeping it


def choose_threshold(y_true, score, rule) -> tuple[float, dict]:
    """``(threshold, binary_stats at it)`` selected by ``rule`` on this data.

    Candidates are the distinct scores (``score >= t`` is positive) plus one just
    above the maximum (nothing positive). ``max-f1`` and ``youden`` maximize F1
    and sensitivity + specificity - 1 (ties: the highest threshold);
    ``sensitivity:X`` is the highest threshold with sensitivity >= X;
    ``specificity:X`` the lowest with specificity >= X. Needs both classes
    (raises :class:`~cxr_edge.errors.DataError` otherwise).

    The threshold returned lies halfway (in logit space for probabilities) between the selected
    score and the next lower one: the same decisions on this data, but with a margin on both sides.
    A threshold at the selected score itself leaves none: with well-separated validation scores
    (a gate at AUROC 1.0) max-F1 would put it at the lowest positive score, 0.99, and reject most
    phone photos of films, whose scores run lower.
    """
    rule = parse_rule(rule)
    fps, tps, thresholds = threshold_counts(y_true, score)
    if tps[-1] == 0 or fps[-1] == 0:
        raise DataError(f"choosing a threshold needs both classes; got {int(tps[-1])} positive(s) "
                        f"and {int(fps[-1])} negative(s).")
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    thresholds = np.r_[np.nextafter(thresholds[0], np.inf), thresholds]
    i = _pick_index(rule, tps, fps)
    threshold = float(thresholds[i]) if i in (0, len(thresholds) - 1) else _midpoint(thresholds[i], thresholds[i + 1])
    return threshold, binary_stats(y_true, score, threshold)


def _midpoint(upper: float, lower: float) -> float:
    """A value strictly between two scores: the logit midpoint for probabilities, else the plain one."""
    upper, lower = float(upper), float(lower)
    if 0.0 < lower < upper < 1.0:
        z = 0.5 * (math.log(upper / (1 - upper)) + math.log(lower / (1 - lower)))
        mid = 1.0 / (1.0 + math.exp(-z))
    else:
        mid = 0.5 * (upper + lower)
    return mid if lower < mid <= upper else upper  # float rounding on nearly equal scores: keep the score


def choose_thresholds(spec, y_true, probs, rule) -> dict[str, float]:
    """``{label: threshold}`` for every label of ``spec`` by ``rule`` (see :func:`choose_threshold`).

    Softmax tasks get per-class one-vs-rest thresholds too, though predict uses
    the argmax for them and thresholds only for sigmoid heads. A label with
    only one class in the data gets ``spec.default_threshold`` and a logged warning.
    """
    rule = parse_rule(rule)
    y, p = as_task_arrays(spec, y_true, probs)
    out = {}
    for j, label in enumerate(spec.labels):
        n_pos = int(y[:, j].sum())
        if n_pos in (0, y.shape[0]):
            logger.warning("task %s, label %s: the data hold only %s, so rule %s cannot be applied; "
                           "using the default threshold %g", spec.name, label,
                           "positives" if n_pos else "negatives", rule, spec.default_threshold)
            out[label] = float(spec.default_threshold)
        else:
            out[label] = choose_threshold(y[:, j], p[:, j], rule)[0]
    return out
