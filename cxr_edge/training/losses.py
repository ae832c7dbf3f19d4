"""Losses that match the task's head, with the class-imbalance weights from the prepared train split.

The model's head already applies the TaskSpec activation (sigmoid or softmax), so every loss
here takes *probabilities* (clipped away from 0 and 1, as Keras does with ``from_logits=False``):

* ``bce``   binary cross-entropy per label, for sigmoid heads (gate, nih14). Positives weigh
  ``w_pos`` and negatives ``w_neg`` per label: ``pos_weights`` gives ``w_pos = n_neg/n_pos,
  w_neg = 1`` (nih14: the rare findings count); ``class_weights`` gives the balanced pair
  ``w_pos = N/(2 n_pos), w_neg = N/(2 n_neg)`` (the gate's 8% negatives count as much as its
  positives).
* ``focal`` the same, times ``(1 - p_t)^gamma`` (Lin et al. 2017): easy examples count less.
* ``ce``    categorical cross-entropy for softmax heads (cxr4), with label smoothing and a
  per-sample weight ``sum_k y_k w_k`` from balanced ``class_weights`` N/(K n_k).

:func:`make_loss` checks the kind against ``spec.activation`` again (a recipe cannot pair a
softmax head with BCE) and returns a per-sample loss ``fn(y_true, y_pred) -> (B,)`` that Keras
averages (and scales correctly under tf.distribute).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import RecipeError
from .recipe import LOSS_KINDS, LossConfig
from .tf_env import load

__all__ = ["EPSILON", "loss_value", "LossWeights", "make_loss", "resolve_weights", "soften"]

log = logging.getLogger(__name__)

EPSILON = 1e-7


@dataclass(frozen=True)
class LossWeights:
    """The resolved per-label weights (what run.json records)."""

    kind: str
    w_pos: tuple[float, ...]
    w_neg: tuple[float, ...]
    label_smoothing: float
    focal_gamma: float
    temperature: float = 1.0      # distillation: the prediction is softened by T and the loss scaled by T^2

    def to_dict(self) -> dict:
        return {"kind": self.kind, "w_pos": list(self.w_pos), "w_neg": list(self.w_neg),
                "label_smoothing": self.label_smoothing, "focal_gamma": self.focal_gamma,
                "temperature": self.temperature}


def soften(tf, probs, activation: str, temperature: float):
    """Probabilities ``probs`` of a ``softmax``/``sigmoid`` head with their logits divided by ``temperature``.

    The heads output probabilities, so the logits are recovered from them: ``log p`` for softmax (up to a
    constant the softmax ignores), ``log p - log(1 - p)`` for sigmoid. At 1 the input comes back unchanged.
    """
    if temperature == 1.0:
        return probs
    p = tf.clip_by_value(tf.cast(probs, tf.float32), EPSILON, 1 - EPSILON)
    if activation == "softmax":
        return tf.nn.softmax(tf.math.log(p) / temperature, axis=-1)
    return tf.sigmoid((tf.math.log(p) - tf.math.log(1 - p)) / temperature)


def resolve_weights(spec, config: LossConfig, prepared) -> LossWeights:
    """Turn ``"auto"``/``"none"``/lists into per-label (w_pos, w_neg), capped at ``weight_cap`` when set."""
    if LOSS_KINDS[config.kind] != spec.activation:
        raise RecipeError(f"loss.kind {config.kind!r} needs a {LOSS_KINDS[config.kind]} head; task {spec.name} "
                          f"has a {spec.activation} head")
    n = spec.num_labels
    ones = np.ones(n, np.float64)
    w_pos, w_neg = ones.copy(), ones.copy()
    if config.class_weights == "auto":
        w_pos = prepared.class_weights.astype(np.float64)
        if spec.activation == "sigmoid":
            neg = prepared.info.get("neg_class_weights")
            if neg is None:
                raise RecipeError(f"{prepared.path} records no neg_class_weights; re-prepare it, or set "
                                  "loss.class_weights to a list or \"none\"")
            w_neg = np.array([neg[label] for label in spec.labels], np.float64)
    elif config.class_weights != "none":
        w_pos = np.asarray(config.class_weights, np.float64)
    if config.pos_weights == "auto":
        w_pos = prepared.pos_weights.astype(np.float64)
    elif config.pos_weights != "none":
        w_pos = np.asarray(config.pos_weights, np.float64)
    if config.weight_cap:
        w_pos, w_neg = np.minimum(w_pos, config.weight_cap), np.minimum(w_neg, config.weight_cap)
    if not (np.all(np.isfinite(w_pos)) and np.all(w_pos > 0) and np.all(np.isfinite(w_neg)) and np.all(w_neg > 0)):
        raise RecipeError(f"loss weights must be positive and finite (a label with no positives in the train split "
                          f"gives an infinite weight): w_pos {w_pos.round(3).tolist()}; set loss.weight_cap")
    return LossWeights(kind=config.kind, w_pos=tuple(float(v) for v in w_pos), w_neg=tuple(float(v) for v in w_neg),
                       label_smoothing=config.label_smoothing, focal_gamma=config.focal_gamma)


def make_loss(spec, weights: LossWeights):
    """A per-sample loss ``fn(y_true, y_pred) -> (B,)`` on probabilities (see the module docstring)."""
    tf, _ = load()
    w_pos = tf.constant(weights.w_pos, tf.float32)
    w_neg = tf.constant(weights.w_neg, tf.float32)
    smooth = float(weights.label_smoothing)
    gamma = float(weights.focal_gamma) if weights.kind == "focal" else 0.0
    n = spec.num_labels
    t = float(weights.temperature)
    scale = t * t      # Hinton et al. 2015: keeps the gradient's size as T changes

    def binary(y_true, y_pred):
        y = tf.cast(y_true, tf.float32)
        p = tf.clip_by_value(soften(tf, y_pred, "sigmoid", t), EPSILON, 1 - EPSILON)
        target = y * (1 - smooth) + 0.5 * smooth
        per = -(w_pos * target * tf.math.log(p) + w_neg * (1 - target) * tf.math.log(1 - p))
        if gamma:
            p_t = y * p + (1 - y) * (1 - p)
            per = per * tf.pow(1 - p_t, gamma)
        return tf.reduce_mean(per, axis=-1) * scale

    def categorical(y_true, y_pred):
        y = tf.cast(y_true, tf.float32)
        p = tf.clip_by_value(soften(tf, y_pred, "softmax", t), EPSILON, 1.0)
        target = y * (1 - smooth) + smooth / n
        sample_weight = tf.reduce_sum(y * w_pos, axis=-1)  # the true class's weight (mixup: the blend)
        return -tf.reduce_sum(target * tf.math.log(p), axis=-1) * sample_weight * scale

    fn = categorical if spec.activation == "softmax" else binary
    fn.__name__ = f"{weights.kind}_loss"
    return fn


def loss_value(loss_fn, y_true, probs) -> float:
    """Mean loss over a whole split (numpy in, float out): the validation loss."""
    tf, _ = load()
    return float(tf.reduce_mean(loss_fn(tf.constant(y_true, tf.float32), tf.constant(probs, tf.float32))))
