"""Fitting the OOD guard (:mod:`cxr_edge.runtime.ood`) into a pack: ``cxr-edge ood fit``.

Fitting runs the pack's int8 model through the device path on a prepared split
(:mod:`cxr_edge.tools.split_runner`), fits the class means and the PPCA within-class covariance of
its pooled features (:func:`fit`), sets the threshold at a quantile of held-out scores
(:func:`with_threshold`) and writes the statistics into the model as the member ``ood.npz``, with a
summary in the metadata ``extras['ood']`` (:func:`fit_pack`). numpy only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.prepared import open_prepared
from ..errors import DataError, PackError
from ..runtime.metadata import utc_now
from ..runtime.ood import EXTRAS_KEY, OOD_MEMBER, OODStats
from ..runtime.pack import load_pack
from .pack_writer import PACK_BUDGET_BYTES, checked_size, copy_pack, rewrite_model
from .split_runner import model_outputs, open_pack_model

__all__ = ["PACK_BUDGET_BYTES", "fit", "fit_pack", "task_classes", "with_threshold"]



def fit(features: np.ndarray, classes: np.ndarray | None = None, *, components: int = 32,
        shrinkage: float = 0.1) -> OODStats:
    """Fit class means and the PPCA within-class covariance on (N, F) features; ``classes`` (N,) ints or None."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 3:
        raise DataError(f"OOD fitting needs at least 3 feature vectors, got shape {x.shape}")
    if not 0 <= shrinkage < 1:
        raise ValueError(f"shrinkage must be in [0, 1), got {shrinkage}")
    c = np.zeros(len(x), int) if classes is None else np.asarray(classes, int)
    ids = np.unique(c)
    means = np.stack([x[c == i].mean(0) for i in ids])
    resid = x - means[np.searchsorted(ids, c)]
    n, f = x.shape
    dof = max(n - len(ids), 1)
    _, s, vt = np.linalg.svd(resid, full_matrices=False)
    eig = s ** 2 / dof
    total = float(np.sum(eig))
    if total <= 0:
        raise DataError("the features do not vary: the OOD statistics cannot be fitted")
    k = int(max(1, min(components, len(eig) - 1, f - 1)))
    lam = eig[:k]
    sigma2 = max((total - float(lam.sum())) / (f - k), 1e-6 * total / f)
    avg = total / f
    lam = (1 - shrinkage) * lam + shrinkage * avg
    sigma2 = (1 - shrinkage) * sigma2 + shrinkage * avg
    return OODStats(means.astype(np.float32), vt[:k].T.astype(np.float32), lam.astype(np.float32), float(sigma2))


def with_threshold(stats: OODStats, scores: np.ndarray, quantile: float = 0.99) -> OODStats:
    """The same statistics with the threshold at ``quantile`` of ``scores`` (held-out in-distribution images)."""
    thr = float(np.quantile(np.asarray(scores, np.float64), quantile))
    return OODStats(stats.class_means, stats.components, stats.variances, stats.residual_var, thr)


def task_classes(spec, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row mask, class ids) of a prepared split for fitting: softmax -> its classes; single-label
    sigmoid -> the positives only (one class); multi-label -> all rows, one class."""
    y = np.asarray(labels)
    if spec.activation == "softmax":
        return np.ones(len(y), bool), np.argmax(y, 1)
    if spec.num_labels == 1:
        keep = y[:, 0] > 0.5
        return keep, np.zeros(int(keep.sum()), int)
    return np.ones(len(y), bool), np.zeros(len(y), int)


def fit_pack(pack, data, *, split: str = "train", threshold_split: str | None = "val", components: int = 32,
             shrinkage: float = 0.1, quantile: float = 0.99, out=None, threads: int = 1,
             progress=None) -> dict:
    """Fit OOD statistics for the pack model of ``data``'s task and write them into the pack, atomically.

    ``out``: write a copy of the pack there (it must not exist) and leave
    ``pack`` untouched. Returns the record stored in ``extras['ood']``
    (plus the pack path and size).
    """
    prepared = open_prepared(data)
    target = copy_pack(pack, out) if out is not None else Path(pack)
    model = open_pack_model(target, prepared, threads=threads)
    if split not in prepared.splits:
        raise DataError(f"{prepared.path} has no images in split {split!r}; it has {', '.join(prepared.splits)}")
    _, feats, how = model_outputs(model, prepared, split, progress)
    if feats is None:
        raise PackError(f"the pack's {model.slot} model has no 'features' output, so its features cannot be "
                        "scored; re-export it with cxr-edge export (which adds the output)")
    keep, classes = task_classes(model.spec, prepared.labels(split))
    stats = fit(feats[keep], classes, components=components, shrinkage=shrinkage)
    train_scores = stats.score(feats[keep])
    held = threshold_split if threshold_split in prepared.splits and threshold_split != split else None
    if held:
        _, hfeats, _ = model_outputs(model, prepared, held, progress)
        hkeep, _ = task_classes(model.spec, prepared.labels(held))
        ref = stats.score(hfeats[hkeep])
    else:
        ref = train_scores
    stats = with_threshold(stats, ref, quantile)
    record = {"file": OOD_MEMBER, "slot": model.slot, "features": "pooled 'features' output (int8 device path)",
              "score": "min over class means of the PPCA Mahalanobis distance squared, divided by the width",
              "width": stats.dim, "components": int(stats.components.shape[1]), "classes": len(stats.class_means),
              "shrinkage": shrinkage, "threshold": round(stats.threshold, 4), "quantile": quantile,
              "fit_split": split, "n_fit": int(keep.sum()), "threshold_split": held or split, "n_threshold": len(ref),
              "train_score_median": round(float(np.median(train_scores)), 4),
              "data_sha256": prepared.data_sha256, "pixels": how.get("pixels"), "fitted": utc_now()}
    pm = load_pack(target)[model.slot]
    meta = pm.metadata
    meta.extras = dict(meta.extras, **{EXTRAS_KEY: record})
    path = rewrite_model(target, model.slot, meta, dict(pm.files, **{OOD_MEMBER: stats.to_npz()}))
    size = checked_size(path)
    return dict(record, pack=str(path), pack_bytes=size, member_bytes=len(stats.to_npz()))
