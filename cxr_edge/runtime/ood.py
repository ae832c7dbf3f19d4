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

The statistics travel in the model as the member ``ood.npz`` (float32 means,
float16 directions: ~90 KB for F = 1280, k = 32) with a summary in the
metadata ``extras['ood']``; fitting them is offline work
(:mod:`cxr_edge.tools.ood_fit`, ``cxr-edge ood fit``). numpy only.
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass

import numpy as np

from ..errors import PackError
from .safezip import open_npz

__all__ = ["EXTRAS_KEY", "OODStats", "OOD_MEMBER", "WARNING", "stats_of"]

log = logging.getLogger(__name__)

OOD_MEMBER = "ood.npz"
EXTRAS_KEY = "ood"
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
            with open_npz(data, source=source) as z:
                stats = cls(np.asarray(z["class_means"], np.float32), np.asarray(z["components"], np.float32),
                            np.asarray(z["variances"], np.float32), float(z["residual_var"]), float(z["threshold"]))
        except (KeyError, ValueError, TypeError, OSError, zipfile.BadZipFile) as exc:
            raise PackError(f"{source}: the OOD statistics are unreadable ({exc}); fit them again with "
                            "cxr-edge ood fit") from exc
        stats.check(source)
        return stats

    def check(self, source: str) -> None:
        """Refuse statistics that would score every image NaN or never flag one by accident."""
        m, p, v = self.class_means, self.components, self.variances
        problem = None
        if m.ndim != 2 or p.ndim != 2 or v.ndim != 1 or p.shape[0] != m.shape[1] or p.shape[1] != v.shape[0]:
            problem = f"shapes class_means {m.shape}, components {p.shape}, variances {v.shape} do not fit together"
        elif not (np.isfinite(m).all() and np.isfinite(p).all() and np.isfinite(v).all()):
            problem = "they hold NaN or infinite values"
        elif not (v > 0).all() or not (np.isfinite(self.residual_var) and self.residual_var > 0):
            problem = "a variance is not > 0"
        elif np.isnan(self.threshold):
            problem = "the threshold is NaN"
        if problem:
            raise PackError(f"{source}: the OOD statistics are invalid ({problem}); fit them again with "
                            "cxr-edge ood fit")


def stats_of(model) -> OODStats | None:
    """The OOD statistics a LoadedModel/PackModel carries, or None."""
    member = (model.metadata.extras.get(EXTRAS_KEY) or {}).get("file", OOD_MEMBER)
    if member not in model.files:
        return None
    return OODStats.from_npz(model.files[member], source=f"{model.metadata.task} model: {member}")
