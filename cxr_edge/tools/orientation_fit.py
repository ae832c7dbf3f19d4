"""Fitting the orientation check (:mod:`cxr_edge.runtime.orientation`) into a pack: ``cxr-edge orientation fit``.

Every film of a prepared split is shown to the pack's gate model (int8, the device path) as it is and
turned by 90, 180 and 270 degrees; a 4-way softmax regression on the standardised pooled features learns
the turn (:func:`fit`). The threshold is then set on a held-out split (val): the lowest probability at
which at most ``max_turned_upright`` of its upright films would be turned by mistake (:func:`choose_threshold`).
The head goes into the gate model as the member ``orientation.npz`` with a summary, including the held-out
rates, in ``extras['orientation']`` (:func:`fit_pack`). Any prepared set of chest X-rays serves (for a gate
set, only its chest X-rays are used); the test split is never used. numpy only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.prepared import open_prepared
from ..errors import DataError, PackError
from ..runtime.metadata import utc_now
from ..runtime.orientation import EXTRAS_KEY, MEMBER, SLOT, TURNS, OrientationHead
from ..runtime.pack import load_pack
from .pack_writer import checked_size, copy_pack, rewrite_model
from .split_runner import cache_usable, inputs_at

__all__ = ["choose_threshold", "fit", "fit_pack", "rates", "turned_features"]


def turned_features(model, x: np.ndarray, stage: str, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features (4N, F) of every model input of ``x`` (N, S, S, C) as it is and turned by each of
    :data:`TURNS`, with the turn index (4N,) of each row; ``model`` is a LoadedModel (one image a run)."""
    from ..runtime.features import pooled

    feats, turns, done = [], [], 0
    for start in range(0, len(x), 32):
        batch = x[start:start + 32]
        for k in range(len(TURNS)):
            xs = np.ascontiguousarray(np.rot90(batch, k, axes=(1, 2)))     # counter-clockwise, as TURNS counts
            for sample in xs:
                feats.append(pooled(model.infer(sample)["features"]))
            turns.append(np.full(len(batch), k))
        done += len(batch)
        if progress:
            progress(stage, done, len(x))
    if not feats:
        raise DataError("the split holds no images")
    return np.stack(feats).astype(np.float32), np.concatenate(turns)


def fit(features: np.ndarray, turns: np.ndarray, *, l2: float = 1e-2, steps: int = 500,
        lr: float = 0.5) -> OrientationHead:
    """Softmax regression (full-batch gradient descent, L2) of ``turns`` on standardised ``features``;
    the threshold is left at 0.5 (set it with :func:`choose_threshold`)."""
    x = np.asarray(features, np.float64)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    y = np.eye(len(TURNS))[np.asarray(turns)]
    w, b = np.zeros((x.shape[1], len(TURNS))), np.zeros(len(TURNS))
    for _ in range(steps):
        logits = z @ w + b
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        g = (p - y) / len(z)
        w -= lr * (z.T @ g + l2 * w)
        b -= lr * g.sum(0)
    return OrientationHead(mean.astype(np.float32), scale.astype(np.float32), w.astype(np.float32),
                           b.astype(np.float32), 0.5)


def rates(head: OrientationHead, features: np.ndarray, turns: np.ndarray, threshold: float | None = None) -> dict:
    """What the check does at ``threshold`` (the head's when None) to films of known turn: upright films
    turned by mistake, turned films turned back right, turned the wrong way, or left as they are."""
    t = head.threshold if threshold is None else threshold
    p = head.probabilities(features)
    k, top = p.argmax(1), p.max(1)
    act = (k != 0) & (top >= t)
    up, turned = turns == 0, turns != 0
    share = (lambda mask, of: float(mask[of].mean()) if of.any() else None)
    return {"threshold": round(float(t), 4), "upright": int(up.sum()), "turned": int(turned.sum()),
            "upright_turned_by_mistake": share(act, up), "turned_corrected": share(act & (k == turns), turned),
            "turned_wrong_way": share(act & (k != turns), turned), "turned_left_as_is": share(~act, turned)}


def choose_threshold(head: OrientationHead, features: np.ndarray, turns: np.ndarray, *,
                     max_turned_upright: float = 0.005) -> float:
    """The lowest threshold in 0.50, 0.51 ... 0.99 at which at most ``max_turned_upright`` of the upright
    films would be turned by mistake (0.99 when none is that low)."""
    for t in np.round(np.arange(0.50, 0.995, 0.01), 2):
        if (rates(head, features, turns, float(t))["upright_turned_by_mistake"] or 0.0) <= max_turned_upright:
            return float(t)
    return 0.99


def _films(prepared, split: str, spec, limit: int | None, seed: int) -> tuple[np.ndarray, dict]:
    """Model inputs of the split's chest X-rays (a gate set: its positives), at most ``limit`` of them
    (a seeded draw), decoded only for the films drawn."""
    use_cache, how = cache_usable(prepared, split, spec, [])
    labels = np.asarray(prepared.labels(split))
    keep = np.ones(len(labels), bool)
    if prepared.task.family == SLOT:
        keep = labels.reshape(len(labels), -1)[:, 0] > 0.5
    rows = np.flatnonzero(keep)
    if limit is not None and len(rows) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    if not len(rows):
        raise DataError(f"{prepared.path}: split {split!r} holds no chest X-rays to learn the orientation from")
    return inputs_at(prepared, split, spec, use_cache, rows), how


def fit_pack(pack, data, *, split: str = "train", threshold_split: str = "val", n_fit: int | None = 800,
             max_turned_upright: float = 0.005, seed: int = 0, out=None, threads: int = 1, progress=None) -> dict:
    """Fit the orientation head on ``data``'s films through the pack's gate model and write it into the pack,
    atomically (``out``: into a copy there, which must not exist). Returns the stored record plus the pack
    path and size."""
    from ..runtime.pipeline import LoadedModel

    prepared = open_prepared(data)
    for s in (split, threshold_split):
        if s == "test":
            raise DataError("the orientation check is never fitted or thresholded on the test split; use train "
                            "and val")
        if s not in prepared.splits:
            raise DataError(f"{prepared.path} has no images in split {s!r}; it has {', '.join(prepared.splits)}")
    if split == threshold_split:
        raise DataError(f"--split and --threshold-split are both {split!r}: the threshold needs films the head "
                        "was not fitted on")
    target = copy_pack(pack, out) if out is not None else Path(pack)
    loaded = load_pack(target)
    if SLOT not in loaded:
        raise PackError(f"{target} has no {SLOT} model, whose features the orientation check reads")
    model = LoadedModel.from_pack(loaded[SLOT], threads=threads, backend=None)
    if "features" not in model.metadata.outputs:
        raise PackError(f"the pack's {SLOT} model has no 'features' output; re-export it with cxr-edge export")
    spec = model.spec
    x, how = _films(prepared, split, spec, n_fit, seed)
    feats, turns = turned_features(model, x, f"{split} films x 4 turns", progress)
    head = fit(feats, turns)
    hx, _ = _films(prepared, threshold_split, spec, None, seed)
    hfeats, hturns = turned_features(model, hx, f"{threshold_split} films x 4 turns", progress)
    threshold = choose_threshold(head, hfeats, hturns, max_turned_upright=max_turned_upright)
    head = OrientationHead(head.mean, head.scale, head.weights, head.bias, threshold)
    head.check(MEMBER)
    record = {"file": MEMBER, "slot": SLOT, "turns": list(TURNS),
              "features": f"pooled 'features' output of the {SLOT} model (int8 device path)",
              "rule": "turn the film back when the most likely turn is not 0 and its probability >= threshold",
              "threshold": round(threshold, 4), "max_turned_upright": max_turned_upright,
              "fit_split": split, "n_fit": int(len(x)), "threshold_split": threshold_split,
              "held_out": rates(head, hfeats, hturns), "fit_accuracy": round(float(
                  (head.probabilities(feats).argmax(1) == turns).mean()), 4),
              "data": str(prepared.path), "data_sha256": prepared.data_sha256, "pixels": how.get("pixels"),
              "fitted": utc_now()}
    pm = load_pack(target)[SLOT]
    meta = pm.metadata
    meta.extras = dict(meta.extras, **{EXTRAS_KEY: record})
    path = rewrite_model(target, SLOT, meta, dict(pm.files, **{MEMBER: head.to_npz()}))
    size = checked_size(path)
    return dict(record, pack=str(path), pack_bytes=size, member_bytes=len(head.to_npz()))
