"""Post-hoc calibration applied on the device: a model's probabilities through the pack's temperature
and per-label logit offsets.

``p' = activation(logit(p) / T)`` (:func:`apply_temperature`), and for sigmoid heads
``p' = sigmoid(logit(p) / T + b_label)`` (:func:`apply_calibration`). Both work from probabilities,
because that is what an int8 pack emits. Fitting T and the offsets and choosing thresholds is offline
work (:mod:`cxr_edge.tools.posthoc_fit`; ``cxr-edge calibrate`` is :mod:`cxr_edge.tools.posthoc_pack`),
recorded in ``ModelMetadata.extras[POSTHOC_KEY]``. The *PTQ calibration set*, the images int8
conversion measures ranges on, is another thing: :mod:`cxr_edge.tools.ptq_set`.

numpy only.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import DataError

__all__ = ["EPS", "POSTHOC_KEY", "activate", "apply_calibration", "apply_temperature", "check_activation",
           "probs_to_logits"]

#: where a pack records its post-hoc calibration (ModelMetadata.extras), written by cxr-edge calibrate
POSTHOC_KEY = "posthoc_calibration"

# Outputs are clipped to [EPS, 1 - EPS] before the inverse activation. Why clip: float32
# sigmoids saturate to exactly 0 or 1, and a uint8 output (step 1/256) is 0 for anything
# below ~0.002, where logit/log are infinite and one saturated mistake would make the NLL
# infinite. Why 1e-4 (|logit| <= 9.2): a quantized 0 only says "below ~0.002"; clipping at
# 1e-6 (|logit| 13.8) overstates how wrong a saturated mistake is and, on synthetic
# over-confident models (true T = 3) with uint8 outputs, pushed the fitted T to ~4 and left
# 2-3x the ECE of 1e-4, the best of 1e-6..1e-3 there. Values above 1e-4 are untouched, and
# fit and apply share the clip, so T is optimal for the mapping that is actually applied.
EPS = 1e-4
_ACTIVATIONS = ("sigmoid", "softmax")


def check_activation(activation: str) -> None:
    """Raise ValueError unless ``activation`` is 'sigmoid' or 'softmax'."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")


def probs_to_logits(probs, activation: str, eps: float = EPS) -> np.ndarray:
    """Logits that reproduce ``probs``: ``logit(p)`` for sigmoid, ``log(p)`` for softmax
    (a softmax is unchanged by a per-row constant), after clipping to [eps, 1 - eps]."""
    check_activation(activation)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p) if activation == "sigmoid" else np.log(p)


def activate(z: np.ndarray, activation: str) -> np.ndarray:
    """The head's activation on logits ``z``: an overflow-free logistic, or a row-wise softmax."""
    if activation == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def apply_temperature(probs, temperature: float, activation: str, eps: float = EPS) -> np.ndarray:
    """``activation(logits(probs) / T)`` as float64; T = 1 returns the input values unchanged."""
    check_activation(activation)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise DataError(f"temperature must be a finite number > 0, got {temperature!r}.")
    if temperature == 1.0:
        return np.array(probs, dtype=np.float64, copy=True)
    return activate(probs_to_logits(probs, activation, eps) / temperature, activation)


def apply_calibration(probs, temperature: float, activation: str, bias=None, eps: float = EPS) -> np.ndarray:
    """:func:`apply_temperature`, then (sigmoid only) the per-label logit offsets ``bias`` (length L)."""
    if bias is None or not np.any(np.asarray(bias, dtype=np.float64)):
        return apply_temperature(probs, temperature, activation, eps)
    if activation != "sigmoid":
        raise DataError("per-label offsets apply to sigmoid outputs only")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise DataError(f"temperature must be a finite number > 0, got {temperature!r}.")
    return activate(probs_to_logits(probs, "sigmoid", eps) / temperature + np.asarray(bias, np.float64), "sigmoid")
