"""What the pipeline says about one image: the gate's verdict, the classifiers' answers keyed by slot,
warnings, and the photo stage's record, with the JSON ``cxr-edge predict --json`` prints.

The slots come from the one slot table, :data:`cxr_edge.tasks.SLOTS`: a pack's ``cxr4`` model answers
under ``results["cxr4"]`` (and the JSON key ``"cxr4"``) whichever task fills that slot, and its
``task`` field says which (``cxr4``, or ``cxr3`` in a permissive pack).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..errors import CxrEdgeError
from ..tasks import CLASSIFIER_SLOTS, get_slot
from .photo.quality import QualityCheck, overall_verdict

__all__ = ["DISCLAIMER", "GateResult", "Prediction", "TaskResult", "error_result", "summary"]

DISCLAIMER = "Decision support only, not a diagnosis: a clinician must review every image."


@dataclass
class GateResult:
    score: float
    threshold: float
    accepted: bool

    def to_dict(self) -> dict:
        return {"score": round(self.score, 4), "threshold": self.threshold, "accepted": self.accepted}


@dataclass
class TaskResult:
    """One classifier's answer. ``positive`` lists the labels at or above their thresholds in the profile;
    for a softmax task ``top`` (the most likely class) is the answer and ``positive`` the classes flagged."""

    task: str
    probabilities: dict[str, float]
    thresholds: dict[str, float]
    positive: list[str]
    top: str
    profile: str
    temperature: float = 1.0

    def to_dict(self) -> dict:
        return {"task": self.task, "top": self.top, "positive": self.positive,
                "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()},
                "thresholds": self.thresholds, "profile": self.profile, "temperature": self.temperature}


@dataclass
class Prediction:
    """The result for one image: ``status`` is 'ok', 'rejected' or 'error'.

    ``gate`` is the gate's verdict; ``results`` the classifiers' answers keyed by slot
    (:data:`cxr_edge.tasks.CLASSIFIER_SLOTS`: ``results["cxr4"]``, ``results["nih14"]``; a slot whose
    model did not run, or that the pack lacks, is absent). ``rectify`` says how the film was obtained (None when rectification was
    off), ``quality`` holds the photo's quality checks (None for a digital
    image), ``ood`` the OOD scores per model, ``tta`` the views used, ``orientation`` the orientation
    check's verdict (:class:`cxr_edge.runtime.orientation.Turn`; None when the pack has no check).
    ``heatmaps`` ({name: uint8 HxW over the film}) and ``film`` (the image
    the models saw) are kept only when heatmaps were asked for, and never go
    into :meth:`to_dict`.
    """

    file: str
    status: str = "ok"
    gate: GateResult | None = None
    results: dict[str, TaskResult] = field(default_factory=dict)
    error: dict | None = None
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    extras: dict = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    rectify: dict | None = None
    quality: list[QualityCheck] | None = None
    ood: dict | None = None
    tta: dict | None = None
    orientation: dict | None = None
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    film: Image.Image | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """The JSON-ready result (``cxr-edge predict --json``): the gate, then one key per classifier slot of
        the slot table (None where no result), errors, warnings, timings and the photo stage's record."""
        out = {"file": self.file, "status": self.status, "gate": self.gate.to_dict() if self.gate else None}
        out.update({slot: self.results[slot].to_dict() if slot in self.results else None
                    for slot in CLASSIFIER_SLOTS})
        out.update({"error": self.error, "message": self.message, "warnings": self.warnings,
                    "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
                    "rectify": self.rectify,
                    "quality": None if self.quality is None else {
                        "verdict": overall_verdict(self.quality), "checks": [c.to_dict() for c in self.quality]},
                    "ood": self.ood, "tta": self.tta, "orientation": self.orientation})
        out.update(self.extras)
        return out


def error_result(name: str, exc: CxrEdgeError, kind: str | None = None) -> Prediction:
    """An 'error' result for ``name``: the error's kind (or ``kind``) and its message."""
    kind = kind or getattr(exc, "kind", type(exc).__name__)
    return Prediction(file=name, status="error", error={"kind": kind, "message": str(exc)},
                      message=f"error: {exc}")


def summary(pred: Prediction) -> str:
    """A one-line message: each class slot's top class and probability, each findings slot's findings."""
    parts = []
    for slot in CLASSIFIER_SLOTS:
        r = pred.results.get(slot)
        if r is None:
            continue
        if get_slot(slot).answer == "class":
            parts.append(f"{r.top} {r.probabilities[r.top]:.2f}")
        else:
            parts.append("findings: " + (", ".join(r.positive) or "none above threshold"))
    return "; ".join(parts) or "accepted"
