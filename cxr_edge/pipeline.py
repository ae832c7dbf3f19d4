"""The gate → classifiers pipeline: one image in, one typed result out.

The gate runs first. An image it rejects gets a plain "rejected: not a chest
X-ray" result and the classifiers never see it. Accepted images go through
``cxr4`` and the NIH model; thresholds of the chosen profile are applied and
the pack's temperature rescales probabilities. An image that cannot be read
gets an ``error`` result; it never stops a batch.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import CxrEdgeError, ImageError, PackError
from .images import load_image
from .interpreter import TFLiteModel
from .metadata import ModelMetadata
from .pack import ModelPack, PackModel, load_pack
from .preprocess import fit_to_square, normalize
from .tasks import TaskSpec

log = logging.getLogger(__name__)

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
    """One classifier's answer. ``positive`` lists the labels at or above their thresholds (argmax for softmax)."""

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
    """The result for one image: ``status`` is 'ok', 'rejected' or 'error'."""

    file: str
    status: str = "ok"
    gate: GateResult | None = None
    cxr4: TaskResult | None = None
    nih14: TaskResult | None = None
    error: dict | None = None
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    extras: dict = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"file": self.file, "status": self.status,
               "gate": self.gate.to_dict() if self.gate else None,
               "cxr4": self.cxr4.to_dict() if self.cxr4 else None,
               "nih14": self.nih14.to_dict() if self.nih14 else None,
               "error": self.error, "message": self.message, "warnings": self.warnings,
               "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()}}
        out.update(self.extras)
        return out


@dataclass
class LoadedModel:
    """A pack model with its interpreter and the indices of its outputs."""

    slot: str
    spec: TaskSpec
    metadata: ModelMetadata
    model: TFLiteModel
    files: dict[str, bytes]

    @classmethod
    def from_pack(cls, pm: PackModel, *, threads: int, backend: str | None) -> "LoadedModel":
        model = TFLiteModel(pm.content, threads=threads, backend=backend, name=pm.file)
        probs_idx = pm.metadata.outputs.get("probs")
        if probs_idx is None or probs_idx >= len(model.outputs):
            raise PackError(f"{pm.file}: metadata names no valid 'probs' output; re-export the pack")
        if model.input_shape != (pm.metadata.input.size, pm.metadata.input.size, pm.metadata.input.channels):
            raise PackError(f"{pm.file}: the model's input {model.input_shape} disagrees with its metadata "
                            f"({pm.metadata.input.size} px, {pm.metadata.input.channels} channel); re-export it")
        return cls(pm.slot, pm.spec, pm.metadata, model, pm.files)

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run one preprocessed input; returns {role: output without batch axis}."""
        outputs = self.model.run(x)
        return {role: outputs[i][0] for role, i in self.metadata.outputs.items() if i < len(outputs)}

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        t = self.metadata.temperature
        if t == 1.0:
            return raw
        from .calibration import apply_temperature

        return apply_temperature(raw[None], t, self.spec.activation)[0]


class Pipeline:
    """Runs a pack on images. Build once, call :meth:`predict` many times (models load once)."""

    def __init__(self, pack: ModelPack | str | Path, *, threads: int = 1, profile: str | None = None,
                 backend: str | None = None, gate_first: bool = True):
        self.pack = pack if isinstance(pack, ModelPack) else load_pack(pack)
        self.profile = profile
        self.gate_first = gate_first
        self.models = {slot: LoadedModel.from_pack(pm, threads=threads, backend=backend)
                       for slot, pm in self.pack.models.items()}
        if profile is not None and not any(profile in m.metadata.thresholds for m in self.models.values()):
            # fail now, not on the first image; the message lists the profiles that exist
            next(iter(self.models.values())).metadata.threshold_profile(profile)
        # Decode large JPEGs only as big as the largest model input needs.
        self.decode_size = max(m.spec.input.size for m in self.models.values())

    def describe(self) -> dict:
        first = next(iter(self.models.values())).model
        return {"pack": str(self.pack.path), "backend": first.backend, "backend_version": first.backend_version,
                "delegate": first.delegate, "threads": first.threads,
                "models": {s: m.spec.name for s, m in self.models.items()}}

    # ------------------------------------------------------------------ stages

    def load(self, source, name: str | None = None):
        """Decode an image once for all models (raises ImageError)."""
        return load_image(source, mode="L", min_size=self.decode_size)

    def prepare(self, image) -> dict[str, np.ndarray]:
        """Model inputs for every slot from one decoded image (sizes may differ per model)."""
        cache: dict = {}
        inputs = {}
        for slot, m in self.models.items():
            key = m.spec.input
            if key not in cache:
                cache[key] = normalize(fit_to_square(image, key), key)
            inputs[slot] = cache[key]
        return inputs

    def classify(self, inputs: dict[str, np.ndarray], pred: Prediction) -> Prediction:
        """Run the gate, then (if it accepts) the classifiers, filling ``pred``."""
        if "gate" in self.models:
            t0 = time.perf_counter()
            gate = self.models["gate"]
            score = float(gate.probabilities(gate.infer(inputs["gate"])["probs"])[0])
            threshold = float(self._thresholds(gate)[1].get(gate.spec.labels[0], gate.spec.default_threshold))
            pred.gate = GateResult(score, threshold, score >= threshold)
            pred.timings_ms["gate"] = (time.perf_counter() - t0) * 1e3
            if not pred.gate.accepted and self.gate_first:
                pred.status = "rejected"
                pred.message = f"rejected: not a chest X-ray (score {score:.2f} < {threshold:.2f})"
                return pred
        for slot in ("cxr4", "nih14"):
            if slot in self.models:
                t0 = time.perf_counter()
                setattr(pred, slot, self._task_result(self.models[slot], inputs[slot]))
                pred.timings_ms[slot] = (time.perf_counter() - t0) * 1e3
        pred.message = _summary(pred)
        return pred

    def _task_result(self, m: LoadedModel, x: np.ndarray) -> TaskResult:
        probs = m.probabilities(m.infer(x)["probs"])
        profile, thresholds = self._thresholds(m)
        labels = m.spec.labels
        top = labels[int(np.argmax(probs))]
        if m.spec.activation == "softmax":
            positive = [top]
        else:
            positive = [lbl for lbl, p in zip(labels, probs)
                        if p >= thresholds.get(lbl, m.spec.default_threshold)]
        return TaskResult(m.spec.name, {lbl: float(p) for lbl, p in zip(labels, probs)},
                          {lbl: float(thresholds.get(lbl, m.spec.default_threshold)) for lbl in labels},
                          positive, top, profile, m.metadata.temperature)

    def _thresholds(self, m: LoadedModel) -> tuple[str, dict[str, float]]:
        """The chosen profile where the model has it, else the model's default profile."""
        name = self.profile if self.profile in m.metadata.thresholds else m.metadata.default_profile
        return name, m.metadata.threshold_profile(name)

    # ------------------------------------------------------------------ entry points

    def predict(self, source, name: str | None = None) -> Prediction:
        """Predict one image (path, bytes, PIL image or array). Unreadable input gives an 'error' result."""
        name = name or (str(source) if isinstance(source, (str, Path)) else "<image>")
        t0 = time.perf_counter()
        try:
            image = self.load(source)
            inputs = self.prepare(image)
        except ImageError as exc:
            return _error(name, exc)
        pred = Prediction(file=name)
        pred.timings_ms["decode"] = (time.perf_counter() - t0) * 1e3
        pred = self.classify(inputs, pred)
        pred.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
        return pred

    def predict_many(self, sources: Iterable, *, workers: int = 2) -> Iterator[Prediction]:
        """Predict many images in order; decoding and preprocessing run ahead in ``workers`` threads."""
        sources = list(sources)

        def decode(src):
            t0 = time.perf_counter()
            try:
                return self.prepare(self.load(src)), None, (time.perf_counter() - t0) * 1e3
            except ImageError as exc:
                return None, exc, 0.0

        if workers <= 0:
            results = map(decode, sources)
            yield from self._finish(sources, results)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            yield from self._finish(sources, pool.map(decode, sources))

    def _finish(self, sources, results) -> Iterator[Prediction]:
        for src, (inputs, exc, decode_ms) in zip(sources, results):
            name = str(src)
            if exc is not None:
                yield _error(name, exc)
                continue
            t0 = time.perf_counter()
            pred = Prediction(file=name, timings_ms={"decode": decode_ms})
            pred = self.classify(inputs, pred)
            pred.timings_ms["total"] = decode_ms + (time.perf_counter() - t0) * 1e3
            yield pred


def _error(name: str, exc: CxrEdgeError) -> Prediction:
    kind = getattr(exc, "kind", type(exc).__name__)
    return Prediction(file=name, status="error", error={"kind": kind, "message": str(exc)},
                      message=f"error: {exc}")


def _summary(pred: Prediction) -> str:
    parts = []
    if pred.cxr4:
        parts.append(f"{pred.cxr4.top} {pred.cxr4.probabilities[pred.cxr4.top]:.2f}")
    if pred.nih14:
        parts.append("findings: " + (", ".join(pred.nih14.positive) or "none above threshold"))
    return "; ".join(parts) or "accepted"
