"""A second out-of-distribution guard: how far an image's pooled features lie from the training data.

The gate model answers "is this a frontal chest X-ray?" from what it was
shown. Some inputs it was never shown still pass it: lateral views, other
radiographs, CT scouts, children, odd crops, very poor photos. This guard
looks at the classifier's own pooled features (the global average of the
``features`` output the int8 model already computes) and asks how typical
they are of the images it was trained on.

The score is a Mahalanobis distance to the nearest class mean under a shared
within-class covariance, modelled as probabilistic PCA so that it is
well-conditioned and small to store:

* ``k`` principal directions of the within-class scatter keep their own
  variances ``λ_i`` (shrunk a little towards the mean variance);
* the other ``F - k`` directions share one variance ``σ²`` (their mean), so
  what the principal directions do not explain still counts.

::

    d = x - μ_c        z = Pᵀ d
    D²(x) = min_c [ Σ_i z_i² / λ_i + (‖d‖² - ‖z‖²) / σ² ]
    score = D² / F     (about 1 for a typical training image)

Classes are the task's classes for a softmax task, the positive class for a
single-label task (the gate: the CXRs it should accept), and one class for a
multi-label task. The threshold is a quantile (default 99 %) of the scores of
held-out images of the same data (the val split; train when there is none):
about 1 in 100 ordinary images is flagged, and images far outside are.

Fitting runs the pack's int8 model through the device path on a prepared
split (``cxr-edge ood fit``) and stores the statistics in the model as the
member ``ood.npz`` (float32 means, float16 directions: ~90 KB for F = 1280,
k = 32) with a summary in the metadata ``extras['ood']``. numpy only.
"""

from __future__ import annotations

import io
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, PackError

log = logging.getLogger(__name__)

OOD_MEMBER = "ood.npz"
EXTRAS_KEY = "ood"
PACK_BUDGET_BYTES = 9_000_000          # the whole int8 pack must stay at or below 9 MB
WARNING = ("Unusual image for this model ({slot} OOD score {score:.1f}, limit {threshold:.1f}): it does not look "
           "like the chest X-rays the model learned from (for example a lateral view, another body part, a child, "
           "an unusual crop or a poor photo). Treat the result with extra care.")


@dataclass(frozen=True)
class OODStats:
    """Fitted statistics (see the module docstring). Arrays are float32 at use."""

    class_means: np.ndarray      # (C, F)
    components: np.ndarray       # (F, k) orthonormal columns
    variances: np.ndarray        # (k,)
    residual_var: float          # σ²
    threshold: float = float("inf")

    @property
    def dim(self) -> int:
        return int(self.class_means.shape[1])

    def score(self, pooled: np.ndarray) -> np.ndarray:
        """Scores (N,) of pooled features (N, F) (or one score for (F,))."""
        x = np.asarray(pooled, np.float32)
        single = x.ndim == 1
        x = np.atleast_2d(x)
        if x.shape[1] != self.dim:
            raise ValueError(f"features of width {x.shape[1]} do not fit OOD statistics of width {self.dim}")
        mu = self.class_means.astype(np.float32)
        p = self.components.astype(np.float32)
        z = (x @ p)[:, None, :] - (mu @ p)[None]                                          # (N, C, k)
        d2 = (np.sum(x * x, 1)[:, None] - 2 * x @ mu.T + np.sum(mu * mu, 1)[None])        # ‖x - μ_c‖²
        zz = np.sum(z * z, -1)
        maha = np.sum(z * z / self.variances.astype(np.float32), -1) + np.maximum(d2 - zz, 0) / self.residual_var
        s = maha.min(1) / self.dim
        return s[0] if single else s

    def to_npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, class_means=self.class_means.astype(np.float32),
                            components=self.components.astype(np.float16),
                            variances=self.variances.astype(np.float32),
                            residual_var=np.float32(self.residual_var), threshold=np.float32(self.threshold))
        return buf.getvalue()

    @classmethod
    def from_npz(cls, data: bytes, *, source: str = OOD_MEMBER) -> "OODStats":
        try:
            with np.load(io.BytesIO(data)) as z:
                return cls(np.asarray(z["class_means"], np.float32), np.asarray(z["components"], np.float32),
                           np.asarray(z["variances"], np.float32), float(z["residual_var"]), float(z["threshold"]))
        except (KeyError, ValueError, OSError) as exc:
            raise PackError(f"{source}: the OOD statistics are unreadable ({exc}); fit them again with "
                            "cxr-edge ood fit") from exc


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


def stats_of(model) -> OODStats | None:
    """The OOD statistics a LoadedModel/PackModel carries, or None."""
    member = (model.metadata.extras.get(EXTRAS_KEY) or {}).get("file", OOD_MEMBER)
    if member not in model.files:
        return None
    return OODStats.from_npz(model.files[member], source=f"{model.metadata.task} model: {member}")


def pooled(features: np.ndarray) -> np.ndarray:
    """Global average of a (h, w, F) or (N, h, w, F) feature map."""
    f = np.asarray(features, np.float32)
    return f.mean(axis=(-3, -2)) if f.ndim >= 3 else f


# --------------------------------------------------------------------------- fitting a pack


def fit_pack(pack, data, *, split: str = "train", threshold_split: str | None = "val", components: int = 32,
             shrinkage: float = 0.1, quantile: float = 0.99, out=None, threads: int = 1,
             progress=None) -> dict:
    """Fit OOD statistics for the pack model of ``data``'s task and write them into the pack, atomically.

    ``out``: write a copy of the pack there (it must not exist) and leave
    ``pack`` untouched. Returns the record stored in ``extras['ood']``
    (plus the pack path and size).
    """
    from ..data.prepared import open_prepared
    from ..tools.evaluate import model_outputs, open_pack_model
    from .metadata import utc_now
    from .pack import load_pack

    prepared = open_prepared(data)
    target = _copy_pack(pack, out) if out is not None else Path(pack)
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
    size = load_pack(path).total_bytes()
    if size > PACK_BUDGET_BYTES:
        log.warning("%s is %.2f MB, over the %.0f MB budget for a device pack", path, size / 1e6,
                    PACK_BUDGET_BYTES / 1e6)
    return dict(record, pack=str(path), pack_bytes=size, member_bytes=len(stats.to_npz()))


def _copy_pack(pack, out) -> Path:
    src, dst = Path(pack), Path(out)
    if dst.exists():
        raise PackError(f"--out {dst} already exists; choose a new path (the copy is made there, then fitted)")
    if not src.exists():
        raise PackError(f"model pack {src} does not exist")
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    return dst


def rewrite_model(path, slot: str, meta, files: dict[str, bytes]) -> Path:
    """Replace one model's metadata *and embedded members* in a pack, keeping everything else, atomically.

    (:func:`cxr_edge.pack.rewrite_metadata` keeps the members as they are.)
    """
    from . import metadata as md
    from .pack import load_pack, write_pack

    pack = load_pack(path)
    models = {s: (m.content, m.metadata) for s, m in pack.models.items()}
    models[slot] = (md.embed(pack[slot].content, meta, files), meta)
    keep = {k: pack.manifest.get(k) for k in ("license", "description", "extra")}
    return write_pack(pack.path, models, name=pack.name, overwrite=True, **keep)
