"""The pipeline: one image in, one typed result out: film → gate → classifiers (+ guards, heatmaps).

1. **Film.** A colour photo (or a large grey image) is searched for the X-ray
   film, which is warped upright (:mod:`cxr_edge.runtime.photo.rectify`); a photo with no
   film edges in view is taken as cropped to the film or screen (its flat
   borders trimmed), and a grey image showing a screen's pixel grid is such a
   photo too. The film is checked for blur, glare, exposure, pixels, tilt,
   colour cast, moiré and whether its edges were seen (:mod:`cxr_edge.runtime.photo.quality`;
   thresholds from the pack, else the defaults), and the models see it through
   :func:`cxr_edge.runtime.photo.film.finish_film`. ``rectify`` in the JSON says which path it
   took ('quadrilateral', 'cropped' or 'digital'). A digital image passes
   through untouched; a grey image smaller than ``GREY_SEARCH_MIN_SIDE`` is
   digital without a search (it pays nothing for the photo path).
   ``rectify=False`` skips all of this.
2. **Gate.** An image the gate rejects gets a plain "rejected: not a chest
   X-ray" result and the classifiers never see it.
3. **Classifiers.** Accepted images go through the classifier slots of the
   slot table (:data:`cxr_edge.tasks.CLASSIFIER_SLOTS`: ``cxr4``, then the NIH
   model); the pack's temperature rescales probabilities and the chosen
   profile's thresholds apply. The answers are :class:`~cxr_edge.runtime.prediction.Prediction`
   ``.results``, keyed by slot. Optional test-time augmentation (:mod:`cxr_edge.runtime.tta`)
   averages a few views.
4. **Guards and explanations.** Models with OOD statistics score how
   unusual the image's features are (:mod:`cxr_edge.runtime.ood`): far outside gives
   a warning even when the gate accepted. With ``heatmaps`` each reported
   finding gets a class activation map (:mod:`cxr_edge.runtime.cam`) in
   ``Prediction.heatmaps`` (never in the JSON).

Quality verdicts never stop a prediction by default: every check that does
not pass becomes a warning with its actionable message, and a failed one also
says the result may be unreliable. A field worker who cannot retake the photo
still gets an answer, flagged. ``on_poor_photo='skip'`` turns a failed check
into an ``error`` result of kind ``poor_photo`` instead.

An image that cannot be read gets an ``error`` result; it never stops a batch.

The photo stage is one method, :meth:`Pipeline.film`; ``predict(path)`` runs it, and
``predict(film)`` takes its result (the app shows the film and its checks first).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import os
import queue
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from ..config import BUNDLED_PACK, resolve_pack
from ..errors import CxrEdgeError, ImageError, PackError
from ..tasks import CLASSIFIER_SLOTS, TaskSpec
from . import cam
from . import ood as _ood
from . import orientation as _orientation
from . import tta as _tta
from .features import pooled
from .images import check_regular, decode_budget, load_image
from .interpreter import TFLiteModel
from .metadata import ModelMetadata
from .pack import ModelPack, PackModel, load_pack
from .photo.quality import QualityCheck, QualitySpec, advice, check_photo, overall_verdict
from .prediction import GateResult, Prediction, TaskResult, error_result, summary
from .preprocess import fit_to_square, normalize

__all__ = ["Film", "GREY_SEARCH_MIN_SIDE", "LoadedModel", "pack_quality_spec", "PHOTO_MIN_SIDE", "Pipeline",
           "POOR_PHOTO", "QUALITY_KEY"]

log = logging.getLogger(__name__)

#: JPEG photos decode (Pillow draft) with both sides at least this: a 12-MP 4:3 photo at 1/4 scale,
#: 1008 x 756, which is what the film finder works at anyway (it refines at 1024 px).
PHOTO_MIN_SIDE = 720
#: Grey images whose longer side is below this are digital images: no film search (it costs ~70 ms).
GREY_SEARCH_MIN_SIDE = 512
QUALITY_KEY = "quality_spec"     # where a pack stores its QualitySpec (manifest 'extra' or model extras)
POOR_PHOTO = ("The photo failed a quality check, so this result may be unreliable: take the photo again "
              "if you can.")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass
class Film:
    """An image ready for the models: the film (a rectified photo or a digital image, mode 'L'),
    how it was obtained (``rectify``, None when rectification was off) and the photo's quality checks
    (``quality``; while ``pending``, :meth:`check` runs them)."""

    image: Image.Image
    rectify: dict | None = None
    quality: list[QualityCheck] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    pending: Callable[[], list[QualityCheck]] | None = field(default=None, repr=False)

    def check(self) -> list[QualityCheck] | None:
        """The photo's quality checks, run now if they were deferred (timed as 'quality')."""
        if self.pending is not None:
            t0 = time.perf_counter()
            self.quality, self.pending = self.pending(), None
            self.timings_ms["quality"] = (time.perf_counter() - t0) * 1e3
        return self.quality


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
        width = model.outputs[probs_idx].shape[-1]
        if width != len(pm.metadata.labels):
            raise PackError(f"{pm.file}: its 'probs' output has {width} values but its metadata names "
                            f"{len(pm.metadata.labels)} labels; the labels do not match the model. Re-export the pack.")
        if model.input_shape != (pm.metadata.input.size, pm.metadata.input.size, pm.metadata.input.channels):
            raise PackError(f"{pm.file}: the model's input {model.input_shape} disagrees with its metadata "
                            f"({pm.metadata.input.size} px, {pm.metadata.input.channels} channel); re-export it")
        return cls(pm.slot, pm.spec, pm.metadata, model, pm.files)

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run one preprocessed input; returns {role: output without batch axis}."""
        return {role: out[0] for role, out in self.infer_batch(x[None]).items()}

    def infer_batch(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run a batch (N, S, S, C); returns {role: output with the batch axis}."""
        outputs = self.model.run(x)
        return {role: outputs[i] for role, i in self.metadata.outputs.items() if i < len(outputs)}

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """The model's output mapped by the pack's calibration (temperature, then per-label offsets)."""
        t, bias = self.metadata.temperature, self.metadata.bias_vector()
        if t == 1.0 and bias is None:
            return raw
        from .posthoc import apply_calibration

        return apply_calibration(raw[None], t, self.spec.activation, bias)[0]

    @property
    def head(self) -> cam.Head | None:
        """The head weights for heatmaps, or None when the model carries none."""
        if not hasattr(self, "_head"):
            self._head = cam.head_of(self)
        return self._head

    @property
    def orientation(self) -> _orientation.OrientationHead | None:
        """The fitted orientation head (on this model's pooled features), or None."""
        if not hasattr(self, "_orientation"):
            self._orientation = _orientation.head_of(self)
        return self._orientation

    @property
    def ood_stats(self) -> _ood.OODStats | None:
        """The fitted OOD statistics, or None."""
        if not hasattr(self, "_ood"):
            self._ood = _ood.stats_of(self)
        return self._ood


@dataclass
class _Run:
    """One model's outputs on one image: probabilities (after temperature, averaged over views) and
    the first view's raw probabilities and feature map."""

    probs: np.ndarray
    raw: np.ndarray
    features: np.ndarray | None


class Pipeline:
    """Runs a pack on images. Build once, call :meth:`predict` many times (models load once).

    ``Pipeline.from_pack("default")`` is the bundled pack (:meth:`from_pack`); ``Pipeline(pack)`` takes
    a pack folder, ``.zip`` or loaded :class:`~cxr_edge.runtime.pack.ModelPack`.
    ``rectify``: find and straighten films in photos, with quality checks
    (module docstring). ``heatmaps``: class activation maps of the reported
    findings. ``tta``: test-time augmentation (True or a
    :class:`~cxr_edge.runtime.tta.TTAConfig`). ``ood``: score images with the pack's
    OOD statistics where it has them. ``quality_spec``: overrides the pack's
    thresholds. ``on_poor_photo``: 'predict' (warn) or 'skip' (an error
    result) when a quality check fails. ``upright``: turn a film that the pack's orientation check finds
    turned (:mod:`cxr_edge.runtime.orientation`) upright before the models answer; False still reports the
    check's verdict and warns, but answers the film as it is.
    """

    def __init__(self, pack: ModelPack | str | Path, *, threads: int = 1, profile: str | None = None,
                 backend: str | None = None, gate_first: bool = True, rectify: bool = True,
                 heatmaps: bool = False, tta: bool | _tta.TTAConfig = False, ood: bool = True,
                 quality_spec: QualitySpec | None = None, on_poor_photo: str = "predict", upright: bool = True):
        self.pack = pack if isinstance(pack, ModelPack) else load_pack(pack)
        self.profile = profile
        self.gate_first = gate_first
        self.threads, self.backend = threads, backend
        if gate_first and "gate" not in self.pack:
            # Without the gate every image -- a photo of a cat, a CT slice -- would get a chest X-ray answer.
            raise PackError(f"{self.pack.path} has no gate model (it has: {', '.join(self.pack.models)}), so "
                            "nothing would stop a non-X-ray image from being classified. Add one "
                            "(cxr-edge export runs/gate --int8 --out PACK) or use a complete pack such as the "
                            "bundled one.")
        self.models = {slot: LoadedModel.from_pack(pm, threads=threads, backend=backend)
                       for slot, pm in self.pack.models.items()}
        if profile is not None and not any(profile in m.metadata.thresholds for m in self.models.values()):
            # fail now, not on the first image; the message lists the profiles that exist
            next(iter(self.models.values())).metadata.threshold_profile(profile)
        for slot, m in self.models.items():
            if profile is not None and profile not in m.metadata.thresholds:
                log.warning("the %s model has no %r threshold profile; it uses its default %r (each result says "
                            "which profile it used)", slot, profile, m.metadata.default_profile)
        if on_poor_photo not in ("predict", "skip"):
            raise ValueError(f"on_poor_photo must be 'predict' or 'skip', got {on_poor_photo!r}")
        # Decode large JPEGs only as big as the largest model input needs.
        self.decode_size = max(m.spec.input.size for m in self.models.values())
        self.rectify = rectify
        self.heatmaps = heatmaps
        self.tta = (tta if isinstance(tta, _tta.TTAConfig) else _tta.TTAConfig()) if tta else None
        self.ood = ood
        self.on_poor_photo = on_poor_photo
        self.quality_spec = quality_spec or pack_quality_spec(self.pack)
        self.upright = upright
        # loaded now: a tampered head is a clean PackError before the first image, not an error per image
        slot = _orientation.SLOT
        self.orientation = self.models[slot].orientation if slot in self.models else None
        if heatmaps:
            self._check_heads()

    @classmethod
    def from_pack(cls, pack: ModelPack | str | os.PathLike | None = "default", **options) -> "Pipeline":
        """A pipeline for ``pack``; ``options`` are the constructor's (``profile=``, ``threads=``, ...).

        ``pack``: ``"default"`` (the pack bundled with cxr-edge), None (the pack ``cxr-edge predict``
        uses without ``--pack``: ``$CXR_EDGE_PACK``, then the config file, then the bundled one), a
        pack folder or ``.zip`` (a folder really called ``default`` is ``"./default"``), or a loaded
        :class:`~cxr_edge.runtime.pack.ModelPack`.
        """
        if isinstance(pack, str) and pack == "default":
            pack = BUNDLED_PACK
        elif pack is None:
            pack, _ = resolve_pack(None)
        return cls(pack, **options)

    def _check_heads(self) -> None:
        missing = [s for s in CLASSIFIER_SLOTS if s in self.models and self.models[s].head is None]
        if missing and len(missing) == len([s for s in CLASSIFIER_SLOTS if s in self.models]):
            raise PackError(f"{self.pack.path}: its models carry no head weights (head.npz) or no 'features' "
                            "output, so no heatmaps can be made. Re-export them with cxr-edge export, or drop "
                            "--heatmap.")
        for slot in missing:
            log.warning("%s: the %s model has no head weights; it gets no heatmaps", self.pack.path, slot)

    def describe(self) -> dict:
        first = next(iter(self.models.values())).model
        return {"pack": str(self.pack.path), "backend": first.backend, "backend_version": first.backend_version,
                "delegate": first.delegate, "threads": first.threads,
                "models": {s: m.spec.name for s, m in self.models.items()},
                "rectify": self.rectify, "tta": self.tta is not None, "heatmaps": self.heatmaps,
                "ood": {s: m.ood_stats is not None for s, m in self.models.items()} if self.ood else False,
                "orientation": None if self.orientation is None else
                ("turns films upright" if self.upright else "reports turned films")}

    # ------------------------------------------------------------------ stages

    def load(self, source, name: str | None = None):
        """Decode an image once for all models, as grey, without the photo path (raises ImageError)."""
        return load_image(source, mode="L", min_size=self.decode_size)

    def film(self, source, name: str | None = None, *, rectify: bool | None = None, checks: bool = True) -> Film:
        """Decode an image and, for a photo, find and straighten the film (or take the photo as cropped to
        it) and check it (raises ImageError for an unreadable image). ``checks=False`` defers the quality
        checks to :meth:`Film.check` (``predict`` runs them only once the gate has accepted the image)."""
        t0 = time.perf_counter()
        if not (self.rectify if rectify is None else rectify):
            img = self.load(source)
            return Film(img, None, None, {"decode": (time.perf_counter() - t0) * 1e3})
        name = name or _name(source)
        if _is_stream(source):
            source = source.read()
        elif isinstance(source, (str, os.PathLike)):
            check_regular(source, name)   # a FIFO or /dev/zero is refused before anything opens it
        colour, size = _peek(source)
        if not colour and (size is None or max(size) < GREY_SEARCH_MIN_SIDE):
            img = self.load(source)    # a small grey image or a DICOM file: digital, nothing to search
            return Film(img, _digital(searched=False), None, {"decode": (time.perf_counter() - t0) * 1e3})
        big = size is None or max(size) >= GREY_SEARCH_MIN_SIDE
        img = load_image(source, mode="RGB" if colour else "L", min_size=PHOTO_MIN_SIDE if big else self.decode_size)
        timings = {"decode": (time.perf_counter() - t0) * 1e3}
        if size is None:
            size = img.size
        elif (size[0] > size[1]) != (img.size[0] > img.size[1]):
            size = size[::-1]          # EXIF orientation turned the photo
        film = self._film_from(img, tuple(size), name, timings)
        if checks:
            film.check()
        return film

    def _film_from(self, img: Image.Image, size, name: str, timings: dict) -> Film:
        from .photo.rectify import is_grayscale, rectify

        t0 = time.perf_counter()
        if img.mode == "RGB" and is_grayscale(img):
            img = img.convert("L")     # a grey image stored as RGB: judged as the grey image it is
        if img.mode == "L" and max(img.size) < GREY_SEARCH_MIN_SIDE:
            timings["rectify"] = (time.perf_counter() - t0) * 1e3
            return Film(img, _digital(searched=False), None, timings)
        r = rectify(img, mode="L", allow_passthrough=img.mode == "L")
        timings["rectify"] = (time.perf_counter() - t0) * 1e3
        if r.passthrough:
            return Film(r.image, _digital(searched=True), None, timings)
        if not r.ok:          # only with cropping switched off; kept so that a caller's rectify cannot lie
            raise ImageError(f"{name}: no X-ray film found in the photo ({r.detection.reason}).",
                             kind="no_film", path=name, detail=r.detection.reason)
        scale = max(size) / max(img.size)    # decoded at reduced size: corners back to the photo's pixels
        t1 = time.perf_counter()
        film = r.film                        # finish_film: moiré out, levels stretched: what the models see
        timings["finish"] = (time.perf_counter() - t1) * 1e3
        info = dict(r.to_dict(), photo=True, corners=np.round(r.corners * scale, 2).tolist(), photo_size=list(size),
                    searched_at=list(img.size))
        if r.box is not None:
            info["box"] = [round(v * scale) for v in r.box]
        photo = img if img.mode == "RGB" else None
        return Film(film, info, None, timings,
                    pending=lambda: check_photo(r, photo=photo, photo_scale=scale, spec=self.quality_spec))

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

    def classify(self, inputs: dict[str, np.ndarray], pred: Prediction, *, film_size=None,
                 heatmaps: bool | None = None, accepted: Callable[[Prediction], bool] | None = None,
                 gate_run: _Run | None = None) -> Prediction:
        """Run the gate, then (if it accepts) the classifiers, filling ``pred``; then the OOD guard and,
        with ``heatmaps`` and ``film_size`` (w, h), the heatmaps. ``accepted(pred)``, when given, runs
        between the gate and the classifiers; returning False stops there (``pred`` as it left it).
        ``gate_run``: the gate's outputs on ``inputs['gate']`` when they were already computed."""
        runs: dict[str, _Run] = {}
        if "gate" in self.models:
            t0 = time.perf_counter()
            gate = self.models["gate"]
            runs["gate"] = gate_run if gate_run is not None else self._run(gate, inputs["gate"])
            score = float(runs["gate"].probs[0])
            threshold = float(self._thresholds(gate)[1].get(gate.spec.labels[0], gate.spec.default_threshold))
            pred.gate = GateResult(score, threshold, score >= threshold)
            earlier = pred.timings_ms.get("gate", 0.0) if gate_run is not None else 0.0
            pred.timings_ms["gate"] = earlier + (time.perf_counter() - t0) * 1e3
            if not pred.gate.accepted and self.gate_first:
                pred.status = "rejected"
                pred.message = f"rejected: not a chest X-ray (score {score:.2f} < {threshold:.2f})"
                self._ood(runs, pred)
                return pred
        if accepted is not None and not accepted(pred):
            return pred
        for slot in CLASSIFIER_SLOTS:
            if slot in self.models:
                t0 = time.perf_counter()
                runs[slot] = self._run(self.models[slot], inputs[slot])
                pred.results[slot] = self._task_result(self.models[slot], runs[slot].probs)
                pred.timings_ms[slot] = (time.perf_counter() - t0) * 1e3
        if self.tta is not None:
            pred.tta = {s: self._view_names(self.models[s]) for s in runs}
        self._ood(runs, pred)
        if (self.heatmaps if heatmaps is None else heatmaps) and film_size is not None:
            t0 = time.perf_counter()
            pred.heatmaps = self._heatmaps(runs, pred, film_size)
            pred.timings_ms["heatmaps"] = (time.perf_counter() - t0) * 1e3
        pred.message = summary(pred)
        return pred

    def _view_names(self, m: LoadedModel) -> list[str]:
        return self.tta.view_names(_tta.uses_flip(self.tta, m.metadata.training))

    def _run(self, m: LoadedModel, x: np.ndarray) -> _Run:
        if self.tta is None:
            outs = m.infer(x)
            return _Run(m.probabilities(outs["probs"]), outs["probs"], outs.get("features"))
        flip = _tta.uses_flip(self.tta, m.metadata.training)
        outs = m.infer_batch(_tta.views(x, self.tta, fill=float(m.spec.input.offset), flip=flip))
        probs = np.mean([m.probabilities(p) for p in outs["probs"]], axis=0)
        feats = outs.get("features")
        return _Run(probs, outs["probs"][0], None if feats is None else feats[0])

    def _task_result(self, m: LoadedModel, probs: np.ndarray) -> TaskResult:
        profile, thresholds = self._thresholds(m)
        labels = m.spec.labels
        top = labels[int(np.argmax(probs))]
        # Sigmoid: the findings. Softmax: ``top`` is the answer; ``positive`` flags every class whose probability
        # reaches its one-vs-rest threshold in the profile (a 'screening' profile holds TB at sensitivity >= 0.90,
        # so TB can be flagged while another class is the most likely).
        positive = [lbl for lbl, p in zip(labels, probs) if p >= thresholds.get(lbl, m.spec.default_threshold)]
        return TaskResult(m.spec.name, {lbl: float(p) for lbl, p in zip(labels, probs)},
                          {lbl: float(thresholds.get(lbl, m.spec.default_threshold)) for lbl in labels},
                          positive, top, profile, m.metadata.temperature)

    def _thresholds(self, m: LoadedModel) -> tuple[str, dict[str, float]]:
        """The chosen profile where the model has it, else the model's default profile."""
        name = self.profile if self.profile in m.metadata.thresholds else m.metadata.default_profile
        return name, m.metadata.threshold_profile(name)

    def _ood(self, runs: dict[str, _Run], pred: Prediction) -> None:
        if not self.ood:
            return
        t0 = time.perf_counter()
        scores = {}
        for slot, run in runs.items():
            stats = self.models[slot].ood_stats
            if stats is None or run.features is None:
                continue
            score = float(stats.score(pooled(run.features)))
            scores[slot] = {"score": round(score, 3), "threshold": round(stats.threshold, 3),
                            "unusual": score > stats.threshold}
            if score > stats.threshold and pred.status == "ok":
                pred.warnings.append(_ood.WARNING.format(slot=slot, score=score, threshold=stats.threshold))
        if scores:
            pred.ood = scores
            pred.timings_ms["ood"] = (time.perf_counter() - t0) * 1e3

    def _heatmaps(self, runs: dict[str, _Run], pred: Prediction, film_size) -> dict[str, np.ndarray]:
        maps: dict[str, np.ndarray] = {}
        for slot in CLASSIFIER_SLOTS:
            result, m = pred.results.get(slot), self.models.get(slot)
            if result is None or m.head is None or runs[slot].features is None:
                continue
            names = ([result.top] + [lbl for lbl in result.positive if lbl != result.top]
                     if m.spec.activation == "softmax" else result.positive)
            # the same label can be reported by both models (Pneumonia): the second gets the task's name
            wanted = {(lbl if lbl not in maps else f"{lbl} ({slot})"): m.spec.labels.index(lbl) for lbl in names}
            maps.update(cam.heatmaps(runs[slot].features, m.head, m.spec.input, wanted, film_size,
                                     probs=runs[slot].raw))
        return maps

    # ------------------------------------------------------------------ entry points

    def predict(self, source, name: str | None = None, *, rectify: bool | None = None,
                heatmaps: bool | None = None) -> Prediction:
        """Predict one image (path, bytes, PIL image or array), or a :class:`Film` from :meth:`film`.
        Unreadable input gives an 'error' result.

        A :class:`Film` skips the photo stage it has been through: its quality checks and how it was
        found still go into the result (the app shows the film on its Check screen, then predicts it).
        ``rectify`` / ``heatmaps`` override the pipeline's settings for this call.
        """
        name = name or (str(source) if isinstance(source, (str, Path)) else "<image>")
        try:
            with decode_budget():   # a large image's memory stays counted until its prediction is done
                if isinstance(source, Film):
                    # the caller's Film stays as it was
                    film = dataclasses.replace(source, timings_ms=dict(source.timings_ms))
                else:
                    film = self.film(source, name, rectify=rectify, checks=False)
                t0 = time.perf_counter()
                inputs = self.prepare(film.image)
                film.timings_ms["preprocess"] = (time.perf_counter() - t0) * 1e3
                return self._finish_one(name, film, inputs, heatmaps)
        except ImageError as exc:
            return error_result(name, exc)
        except Exception as exc:  # one image must never stop a batch; the log keeps the traceback
            log.debug("%s: unexpected %s while predicting", name, type(exc).__name__, exc_info=True)
            return error_result(name, CxrEdgeError(
                f"{name}: unexpected error ({type(exc).__name__}: {exc}). The other images are not affected. "
                "This is a bug in cxr-edge: please report it with this file (cxr-edge -vv predict ... shows the traceback)."),
                kind="internal")

    def _finish_one(self, name: str, film: Film, inputs, heatmaps: bool | None) -> Prediction:
        t0 = time.perf_counter()
        before = sum(film.timings_ms.values())
        pred = Prediction(file=name, timings_ms=dict(film.timings_ms), rectify=film.rectify, quality=film.quality)

        def judge(pred: Prediction) -> bool:
            """The photo's quality checks, once the gate has accepted it (a rejected image is not worth
            them); False stops the classifiers (--on-poor-photo skip)."""
            quality = film.check()
            if "quality" in film.timings_ms:
                pred.timings_ms["quality"] = film.timings_ms["quality"]
            pred.quality = quality
            if not quality:
                return True
            pred.warnings += advice(quality)
            if overall_verdict(quality) == "fail":
                if self.on_poor_photo == "skip":
                    pred.status = "error"
                    pred.error = {"kind": "poor_photo", "message": " ".join(advice(quality))}
                    pred.message = f"error: the photo failed a quality check; {pred.error['message']}"
                    return False
                pred.warnings.insert(0, POOR_PHOTO)
            return True

        want_maps = self.heatmaps if heatmaps is None else heatmaps
        film, inputs, gate_run = self._orient(film, inputs, pred)
        pred = self.classify(inputs, pred, film_size=film.image.size, heatmaps=want_maps, accepted=judge,
                             gate_run=gate_run)
        if want_maps and pred.status == "ok":
            pred.film = film.image
        pred.timings_ms["total"] = before + (time.perf_counter() - t0) * 1e3
        return pred

    def _orient(self, film: Film, inputs, pred: Prediction):
        """The orientation check on the gate's run (which classify then reuses). A film found turned is turned
        upright and prepared again -- only when the gate accepts it both as given and turned: the check has
        only seen chest X-rays, so an image the gate rejects is never turned for a second chance at the gate.
        ``upright=False``: only reported. Returns (film, inputs, the gate's run on the returned inputs)."""
        if self.orientation is None:
            return film, inputs, None
        slot = _orientation.SLOT
        gate = self.models[slot]
        t0 = time.perf_counter()
        run = self._run(gate, inputs[slot])
        t1 = time.perf_counter()
        pred.timings_ms[slot] = (t1 - t0) * 1e3      # classify adds its own (tiny) share when it reuses the run
        if run.features is None:
            return film, inputs, run
        turn = self.orientation.judge(pooled(run.features))
        pred.orientation = turn.to_dict()
        if turn.corrected:
            threshold = float(self._thresholds(gate)[1].get(gate.spec.labels[0], gate.spec.default_threshold))
            if float(run.probs[0]) < threshold:
                pred.orientation.update(corrected=False,
                                        note="not turned: the gate does not accept the image as given")
            elif not self.upright:
                pred.orientation["corrected"] = False
                pred.warnings.append(f"The film looks turned by {turn.turned_by} degrees (orientation check "
                                     f"{turn.probability:.2f}) and was answered as it is (--no-upright): turn it "
                                     "upright for a meaningful answer.")
            else:
                turned_film = dataclasses.replace(film, image=_orientation.upright(film.image, turn.turned_by))
                turned_inputs = self.prepare(turned_film.image)
                turned_run = self._run(gate, turned_inputs[slot])
                if float(turned_run.probs[0]) < threshold:
                    pred.orientation.update(corrected=False,
                                            note="not turned: the gate does not accept the image turned")
                else:
                    pred.warnings.append(turn.warning())
                    film, inputs, run = turned_film, turned_inputs, turned_run
        pred.timings_ms["orientation"] = (time.perf_counter() - t1) * 1e3
        return film, inputs, run

    def predict_many(self, sources: Iterable, *, workers: int = 2) -> Iterator[Prediction]:
        """Predict many images, yielding one result per source, in input order.

        With ``workers`` >= 1, ``workers`` threads run whole predictions (decode, film, preprocessing
        and the models), each with interpreters of its own: this pipeline's, and copies loaded up front
        on the calling thread. LiteRT, Pillow's decoders and the photo stage's large numpy operations
        release the GIL, so two threads use two cores: on a mixed batch of 1024-px PNGs and 12-MP JPEGs
        two threads ran 1.83x the plain loop at 126 MB PSS, where two worker processes ran 1.74x at
        212 MB (``benchmarks/batch_workers.py``, RESULTS.md). At most ``2 * workers`` images are in
        flight, so memory stays flat however long the list (an unbounded read-ahead held every decoded
        image of a 1,000-image batch: 480 MB). When the caller stops early, is interrupted or fails,
        the images not yet started are dropped. ``workers=0`` or a single source: everything on the
        calling thread.
        """
        items = ((src.read() if _is_stream(src) else src, _path_name(src)) for src in sources)
        if hasattr(sources, "__len__"):          # no more workers than images; one image needs none
            workers = min(workers, len(sources)) if len(sources) > 1 else 0
        if workers <= 0:
            for src, name in items:
                yield self.predict(src, name)
            return
        # Every interpreter is made here, on the calling thread, before any worker starts: loading one
        # sends the runtime's native log lines through a process-wide stderr redirection, which must not
        # overlap the workers' own output (it swallowed the safety line when threads loaded in parallel).
        free: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(workers):
            free.put(self if i == 0 else self._replica())

        def one(src, name):
            replica = free.get()         # never waits: no more tasks run at once than there are replicas
            try:
                return replica.predict(src, name)
            finally:
                free.put(replica)

        window: deque = deque()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cxr-edge-predict")
        finished = False
        try:
            for src, name in items:
                window.append(pool.submit(one, src, name))
                if len(window) >= 2 * workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
            finished = True
        finally:   # done: the threads end now; the caller stopped or failed: the images not started are dropped
            pool.shutdown(wait=finished, cancel_futures=not finished)

    def _replica(self) -> "Pipeline":
        """The same pipeline with interpreters of its own (an interpreter runs one image at a time)."""
        clone = copy.copy(self)
        clone.models = {slot: LoadedModel.from_pack(pm, threads=self.threads, backend=self.backend)
                        for slot, pm in self.pack.models.items()}
        return clone


def pack_quality_spec(pack: ModelPack) -> QualitySpec:
    """The pack's quality thresholds (manifest ``extra['quality_spec']``, else the first model's
    ``extras['quality_spec']``), else the defaults."""
    found = [(f"{pack.path}/manifest.json extra", (pack.manifest.get("extra") or {}).get(QUALITY_KEY))]
    found += [(f"{pack.path} {s} model extras", m.metadata.extras.get(QUALITY_KEY)) for s, m in pack.models.items()]
    for where, d in found:
        if d:
            try:
                return QualitySpec.from_dict(d)
            except (ValueError, TypeError) as exc:
                raise PackError(f"{where}: {QUALITY_KEY} is invalid ({exc}); fix or re-export the pack") from exc
    return QualitySpec()


def _digital(*, searched: bool) -> dict:
    return {"path": "digital", "photo": False, "passthrough": True, "searched": searched}


def _path_name(source) -> str | None:
    """The file name a result carries for a path; None (predict's own naming) for anything else."""
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else None


def _name(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or "<image>"


def _is_stream(source) -> bool:
    return hasattr(source, "read") and not isinstance(source, (Image.Image, np.ndarray, bytes, str, os.PathLike))


def _peek(source) -> tuple[bool, tuple[int, int] | None]:
    """(colour?, (width, height) as stored) without decoding the pixels. (False, None) for DICOM (never
    a phone photo); (True, None) when unknown (then the image is decoded in colour and judged from its
    pixels, or load_image raises the right ImageError)."""
    if isinstance(source, Image.Image):
        return source.mode not in _GREY_MODES, source.size
    if isinstance(source, np.ndarray):
        return source.ndim == 3 and source.shape[-1] >= 3, (int(source.shape[1]), int(source.shape[0]))
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")       # odd headers are load_image's to judge, not a warning here
            with Image.open(fp) as im:     # reads the header only
                return im.mode not in _GREY_MODES, im.size
    except Exception:   # missing, damaged, DICOM...
        pass
    if isinstance(source, bytes):
        return (source[128:132] != b"DICM"), None
    try:
        with open(source, "rb") as fh:
            head = fh.read(132)
    except (OSError, TypeError):
        return True, None
    is_dicom = head[128:132] == b"DICM" or os.fspath(source).lower().endswith((".dcm", ".dicom"))
    return (not is_dicom), None


