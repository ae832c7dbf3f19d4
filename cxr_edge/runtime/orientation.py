"""Is the film upright? Turned films are turned back before the models answer.

A field worker holds a film sideways against a window, a messaging app drops the EXIF orientation, a
monitor shows a study rotated: the gate still sees a chest X-ray and the classifiers answer the turned
film as if it were upright (measured on the real dev photos turned by 90 degrees: every one accepted,
and cxr4 called 12 of 15 COVID-19 against 4 of 15 upright; ``benchmarks/real_photo_variants.py``).

The check is a 4-way softmax head on the gate model's pooled features, which the gate computes for
every image anyway (no extra model run for an upright film). Its classes are the quarter turns
:data:`TURNS`: the film *as given* is the upright film turned counter-clockwise by 0, 90, 180 or 270
degrees (``numpy.rot90``'s direction on an image array, and PIL's ``rotate``). When the head's most
likely turn is not 0 and its probability reaches the fitted ``threshold``, the pipeline turns the film
back (:func:`upright`), prepares it again and runs the models on it, with a warning; below the threshold
the film is used as it is. The threshold is chosen on held-out upright films so that at most a stated
share of them (default 0.5 %) would be turned by mistake.

The head travels in the gate model as the member ``orientation.npz`` (feature mean and scale, float32
weights 1280 x 4: about 30 KB) with a summary in ``extras['orientation']``; fitting it is offline work
(:mod:`cxr_edge.tools.orientation_fit`, ``cxr-edge orientation fit``). numpy only.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np

from ..errors import PackError
from .safezip import open_npz

__all__ = ["EXTRAS_KEY", "MEMBER", "OrientationHead", "SLOT", "Turn", "TURNS", "WARNING", "head_of", "upright"]

MEMBER = "orientation.npz"
EXTRAS_KEY = "orientation"
SLOT = "gate"                       # whose pooled features the head reads
TURNS = (0, 90, 180, 270)           # degrees counter-clockwise from upright, one class each
WARNING = ("The film looked turned by {deg} degrees ({how}; orientation check {p:.2f}), so it was turned upright "
           "before the models ran. If the film was upright, this check was wrong: photograph it again with the "
           "patient's head at the top and compare.")
_HOW = {90: "head to the left", 180: "upside down", 270: "head to the right"}


@dataclass(frozen=True)
class Turn:
    """The check's verdict on one film: ``turned_by`` degrees counter-clockwise (0: upright), its probability,
    every turn's probability, and whether the film was turned back (``corrected``)."""

    turned_by: int
    probability: float
    probabilities: tuple[float, ...]
    threshold: float
    corrected: bool

    def to_dict(self) -> dict:
        return {"turned_by": self.turned_by, "probability": round(self.probability, 4),
                "probabilities": {str(t): round(p, 4) for t, p in zip(TURNS, self.probabilities)},
                "threshold": round(self.threshold, 4), "corrected": self.corrected}

    def warning(self) -> str:
        return WARNING.format(deg=self.turned_by, how=_HOW.get(self.turned_by, "turned"), p=self.probability)


@dataclass(frozen=True)
class OrientationHead:
    """Standardise the pooled features, then a linear softmax over :data:`TURNS`."""

    mean: np.ndarray       # (F,)
    scale: np.ndarray      # (F,) > 0
    weights: np.ndarray    # (F, 4)
    bias: np.ndarray       # (4,)
    threshold: float       # a turn below this probability is not acted on

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def probabilities(self, pooled: np.ndarray) -> np.ndarray:
        """Turn probabilities (N, 4) of pooled features (N, F), or (4,) for one (F,) vector."""
        x = np.asarray(pooled, np.float32)
        single = x.ndim == 1
        x = np.atleast_2d(x)
        if x.shape[1] != self.dim:
            raise ValueError(f"features of width {x.shape[1]} do not fit an orientation head of width {self.dim}")
        logits = ((x - self.mean) / self.scale) @ self.weights + self.bias
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        return p[0] if single else p

    def judge(self, pooled: np.ndarray) -> Turn:
        """The verdict on one film's pooled features (F,)."""
        p = self.probabilities(np.asarray(pooled, np.float32).reshape(-1))
        k = int(np.argmax(p))
        return Turn(TURNS[k], float(p[k]), tuple(float(v) for v in p), self.threshold,
                    corrected=k != 0 and float(p[k]) >= self.threshold)

    def to_npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, mean=self.mean.astype(np.float32), scale=self.scale.astype(np.float32),
                            weights=self.weights.astype(np.float32), bias=self.bias.astype(np.float32),
                            threshold=np.float32(self.threshold), turns=np.asarray(TURNS, np.int16))
        return buf.getvalue()

    @classmethod
    def from_npz(cls, data: bytes, *, source: str = MEMBER) -> "OrientationHead":
        try:
            with open_npz(data, source=source, max_member=4 * 2**20) as z:
                turns = tuple(int(t) for t in np.asarray(z["turns"]).ravel())
                head = cls(np.asarray(z["mean"], np.float32), np.asarray(z["scale"], np.float32),
                           np.asarray(z["weights"], np.float32), np.asarray(z["bias"], np.float32),
                           float(z["threshold"]))
        except (KeyError, ValueError, TypeError, OSError, zipfile.BadZipFile) as exc:
            raise PackError(f"{source}: the orientation head is unreadable ({exc}); fit it again with "
                            "cxr-edge orientation fit") from exc
        if turns != TURNS:
            raise PackError(f"{source}: the orientation head's turns are {turns}, this cxr-edge knows {TURNS}; "
                            "fit it again with cxr-edge orientation fit")
        head.check(source)
        return head

    def check(self, source: str) -> None:
        """Refuse a head that would turn films by NaN, by accident, or never say why."""
        m, s, w, b = self.mean, self.scale, self.weights, self.bias
        problem = None
        if m.ndim != 1 or s.shape != m.shape or w.shape != (m.shape[0], len(TURNS)) or b.shape != (len(TURNS),):
            problem = f"shapes mean {m.shape}, scale {s.shape}, weights {w.shape}, bias {b.shape} do not fit together"
        elif not all(np.isfinite(a).all() for a in (m, s, w, b)):
            problem = "it holds NaN or infinite values"
        elif not (s > 0).all():
            problem = "a feature scale is not > 0"
        elif not (np.isfinite(self.threshold) and 0.5 <= self.threshold <= 1.0):
            problem = f"its threshold {self.threshold} is not in [0.5, 1]"
        if problem:
            raise PackError(f"{source}: the orientation head is invalid ({problem}); fit it again with "
                            "cxr-edge orientation fit")


def head_of(model) -> OrientationHead | None:
    """The orientation head a LoadedModel/PackModel carries, or None."""
    member = (model.metadata.extras.get(EXTRAS_KEY) or {}).get("file", MEMBER)
    if member not in model.files:
        return None
    return OrientationHead.from_npz(model.files[member], source=f"{model.metadata.task} model: {member}")


def upright(image, turned_by: int):
    """The PIL image turned back: a film turned ``turned_by`` degrees counter-clockwise, turned clockwise."""
    if turned_by not in TURNS:
        raise ValueError(f"turned_by {turned_by}; valid: {TURNS}")
    return image if turned_by == 0 else image.rotate(-turned_by, expand=True)
