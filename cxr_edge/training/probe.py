"""The linear probe: L2-regularised logistic regression on frozen pooled backbone features.

Two users, one implementation (so the benchmark and the recipe cannot drift):

* ``benchmarks/linear_probe.py`` fits it on the frozen ImageNet MobileNetV2's pooled features of a
  recipe's train split and scores it beside a trained model on val and test: the bar a fine-tuned
  model has to clear (issue 15: a staged fine-tune that loses to it is not earning its cost);
* a ``trainable = "head"`` stage with ``fit = "probe"`` (train/README.md) sets the model's head to the
  probe fitted on the stage's cached features instead of running epochs of Adam, so the later stages
  start from the best linear head there is instead of an under-trained one.

The regularisation strength is chosen by patient-grouped cross-validation on the training features
alone (the val split stays untouched for checkpoint selection). Classes (softmax) or each label's
positives and negatives (sigmoid) are balanced, as the recipes' ``class_weights = "auto"`` do. The
features are standardised for the fit and the standardisation is folded back into the weights, so
the result is a plain ``Dense`` head over the raw pooled features: ``kernel (F, L)``, ``bias (L,)``.

Needs scikit-learn (the ``train`` extra).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..errors import require

__all__ = ["C_GRID", "fit_probe", "Probe"]

log = logging.getLogger(__name__)

#: Inverse regularisation strengths tried by cross-validation (sklearn's ``C``, on standardised features).
C_GRID = (0.001, 0.003, 0.01, 0.03)
FOLDS = 4
MAX_ITER = 3000


@dataclass
class Probe:
    """A fitted linear head: probabilities = activation(features @ kernel + bias)."""

    kernel: np.ndarray            # (F, L) float32, over the raw (not standardised) features
    bias: np.ndarray              # (L,) float32
    activation: str               # "softmax" or "sigmoid"
    c: float | list               # the chosen C (sigmoid: one per label)
    cv_scores: dict = field(default_factory=dict)   # C -> cross-validated score (mean over labels for sigmoid)

    def logits(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, np.float64) @ self.kernel.astype(np.float64) + self.bias.astype(np.float64)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Probabilities (N, L)."""
        z = self.logits(features)
        if self.activation == "softmax":
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=1, keepdims=True)
        return 1.0 / (1.0 + np.exp(-z))

    def describe(self) -> dict:
        return {"model": "L2 logistic regression on standardised pooled features (scikit-learn, lbfgs)",
                "activation": self.activation, "C": self.c, "cv_folds": FOLDS, "C_grid": list(C_GRID),
                "cv_scores": self.cv_scores, "class_balance": "balanced"}


def _folds(groups, n: int, seed: int) -> np.ndarray:
    """Fold index per sample: whole patients per fold (a patient's views never straddle train and test)."""
    if groups is None:
        groups = np.arange(n)
    uniq, idx = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return np.random.default_rng(seed).permutation(len(uniq))[idx] % FOLDS


def _fit_one(x, y, c, sample_weight=None):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=MAX_ITER, class_weight=None if sample_weight is not None else "balanced")
    clf.fit(x, y, sample_weight=sample_weight)
    return clf


def _balanced_weights(y: np.ndarray) -> np.ndarray:
    classes, counts = np.unique(y, return_counts=True)
    w = {c: len(y) / (len(classes) * n) for c, n in zip(classes, counts)}
    return np.array([w[v] for v in y], np.float64)


def _score_softmax(y, proba) -> float:
    """Macro-F1 of the argmax: the cxr4 primary metric."""
    pred = proba.argmax(axis=1)
    f1 = []
    for k in range(proba.shape[1]):
        tp = np.sum((pred == k) & (y == k))
        fp = np.sum((pred == k) & (y != k))
        fn = np.sum((pred != k) & (y == k))
        f1.append(2 * tp / max(1, 2 * tp + fp + fn))
    return float(np.mean(f1))


def _auroc(y, s) -> float:
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def fit_probe(features, y, activation: str, *, groups=None, seed: int = 0, c_grid=C_GRID) -> Probe:
    """See :func:`_fit_probe`; BLAS runs on one thread meanwhile: its worker threads spinning against TensorFlow's
    and other processes' on a busy 2-core machine made one cxr4 fit take 480 s instead of 15 s."""
    require("sklearn", "train", "the linear probe")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_probe(features, y, activation, groups=groups, seed=seed, c_grid=c_grid)


def _fit_probe(features, y, activation: str, *, groups=None, seed: int = 0, c_grid=C_GRID) -> Probe:
    """Fit the probe on ``features`` (N, F) with labels ``y`` (N, L) one-hot/0-1 (or (N,) class indices).

    ``groups``: patient ids, so cross-validation never puts one patient's images (or augmented views
    of one image) on both sides. ``activation``: the task's head ("softmax": one multinomial model,
    C by cross-validated macro-F1; "sigmoid": one binary model per label, C by cross-validated AUROC).
    A ``c_grid`` of one value is used as it is, without cross-validation.
    """
    x = np.asarray(features, np.float64)
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    xs = (x - mu) / sd
    y = np.asarray(y)
    fold = _folds(groups, len(x), seed)
    if activation == "softmax":
        yi = y.argmax(axis=1) if y.ndim == 2 else y.astype(int)
        k = y.shape[1] if y.ndim == 2 else int(yi.max()) + 1
        scores = {}
        for c in c_grid if len(c_grid) > 1 else ():
            proba = np.zeros((len(x), k))
            for f in range(FOLDS):
                tr, te = fold != f, fold == f
                clf = _fit_one(xs[tr], yi[tr], c, _balanced_weights(yi[tr]))
                proba[np.ix_(te, clf.classes_)] = clf.predict_proba(xs[te])
            scores[c] = _score_softmax(yi, proba)
        best = max(c_grid, key=lambda c: (scores.get(c, 0.0), -c))
        clf = _fit_one(xs, yi, best, _balanced_weights(yi))
        w = np.zeros((x.shape[1], k))
        b = np.full(k, -30.0)                  # a class absent from train is never predicted
        w[:, clf.classes_] = clf.coef_.T
        b[clf.classes_] = clf.intercept_
        log.info("probe: C=%g (cv macro-F1 %s)", best, {c: round(s, 4) for c, s in scores.items()})
        return _unstandardise(w, b, mu, sd, activation, best, {str(c): s for c, s in scores.items()})
    y2 = y if y.ndim == 2 else y[:, None]
    w, b, chosen, table = np.zeros((x.shape[1], y2.shape[1])), np.zeros(y2.shape[1]), [], {}
    for j in range(y2.shape[1]):
        yj = (y2[:, j] > 0.5).astype(int)
        if yj.min() == yj.max():                # one class only: a constant head
            b[j] = 30.0 if yj[0] else -30.0
            chosen.append(None)
            continue
        scores = {}
        for c in c_grid if len(c_grid) > 1 else ():
            s = np.zeros(len(x))
            for f in range(FOLDS):
                tr, te = fold != f, fold == f
                if yj[tr].min() == yj[tr].max():
                    s[te] = yj[tr].mean()
                    continue
                s[te] = _fit_one(xs[tr], yj[tr], c, _balanced_weights(yj[tr])).decision_function(xs[te])
            scores[c] = _auroc(yj, s)
        best = max(c_grid, key=lambda c: (np.nan_to_num(scores.get(c, 0.0)), -c))
        clf = _fit_one(xs, yj, best, _balanced_weights(yj))
        w[:, j], b[j] = clf.coef_[0], clf.intercept_[0]
        chosen.append(best)
        for c, s in scores.items():
            table.setdefault(str(c), []).append(s)
    cv = {c: float(np.nanmean(v)) for c, v in table.items()}
    log.info("probe: C per label %s (cv mean AUROC %s)", chosen, {c: round(s, 4) for c, s in cv.items()})
    return _unstandardise(w, b, mu, sd, activation, chosen, cv)


def _unstandardise(w, b, mu, sd, activation, c, scores) -> Probe:
    """Fold the standardisation into the weights: (x - mu)/sd @ w + b == x @ (w/sd) + (b - mu/sd @ w)."""
    kernel = w / sd[:, None]
    bias = b - (mu / sd) @ w
    return Probe(kernel.astype(np.float32), bias.astype(np.float32), activation, c, scores)
