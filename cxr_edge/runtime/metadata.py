"""Self-describing models: the metadata every exported ``.tflite`` carries inside itself.

The metadata travels as a small ZIP archive appended to the flatbuffer (the
approach Ultralytics uses): TFLite interpreters ignore trailing bytes, and any
ZIP reader finds the archive from the end of the file. It holds
``metadata.json`` plus optional binary members (e.g. ``head.npz`` with the
head weights for class activation maps). The archive's comment records the
length of the bare model, so the metadata can be replaced without guessing.

A :class:`ModelMetadata` says everything a reader needs: task, labels, head
activation, input spec, which output is which, quantization, thresholds
(named profiles), temperature and per-label offsets, toolkit version, creation time, calibration
set hash, measured float-vs-int8 metrics and training-data provenance.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from .. import __version__
from ..errors import PackError
from ..tasks import InputSpec, TaskSpec
from .safezip import check_archive, read_member

__all__ = ["embed", "METADATA_MEMBER", "ModelMetadata", "read", "SCHEMA_VERSION", "split_model", "utc_now"]

# 2: ``bias`` (per-label logit offsets) joined ``temperature``; a toolkit that ignored them would report other
# probabilities than the pack was calibrated to, so version-1 readers refuse these packs.
SCHEMA_VERSION = 2
METADATA_MEMBER = "metadata.json"
_COMMENT = re.compile(rb"^cxr-edge model_bytes=(\d+)$")


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class ModelMetadata:
    """What one exported model is and how it was measured."""

    task: str
    labels: list[str]
    activation: str
    input: InputSpec
    outputs: dict[str, int]                       # role ('probs', 'features') -> output index in the .tflite
    quantization: dict = field(default_factory=dict)   # mode, io_dtype, source (ptq/qat), input scale/zero point
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)  # profile -> label -> threshold
    default_profile: str = "default"
    temperature: float = 1.0
    bias: dict[str, float] = field(default_factory=dict)   # label -> logit offset after the temperature (sigmoid)
    toolkit_version: str = __version__
    created: str = field(default_factory=utc_now)
    calibration: dict = field(default_factory=dict)    # sha256, size and origin of the calibration set
    metrics: dict = field(default_factory=dict)        # float, int8, delta, tolerance, passed
    training: dict = field(default_factory=dict)       # recipe, data hashes, licence, image count
    extras: dict = field(default_factory=dict)         # e.g. OOD statistics, quality spec, head file name
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def for_task(cls, spec: TaskSpec, outputs: dict[str, int], **kwargs) -> "ModelMetadata":
        """Metadata for a model of ``spec``, with the task's default thresholds as profile 'default'."""
        thresholds = kwargs.pop("thresholds", None) or {
            "default": {label: spec.default_threshold for label in spec.labels}
        }
        return cls(task=spec.name, labels=list(spec.labels), activation=spec.activation, input=spec.input,
                   outputs=dict(outputs), thresholds=thresholds, **kwargs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input"] = self.input.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "metadata") -> "ModelMetadata":
        if not isinstance(d, dict):
            raise PackError(f"{source}: metadata is a {type(d).__name__}, not an object; re-export the model")
        d = dict(d)
        _check_types(d, source)
        version = d.get("schema_version", 0)
        if version > SCHEMA_VERSION:
            raise PackError(
                f"{source}: metadata schema version {version} is newer than this toolkit understands "
                f"({SCHEMA_VERSION}). Upgrade cxr-edge: pip install -U cxr-edge"
            )
        missing = [k for k in ("task", "labels", "activation", "input", "outputs") if k not in d]
        if missing:
            raise PackError(f"{source}: metadata lacks {', '.join(missing)}; re-export the model with cxr-edge export")
        known = set(cls.__dataclass_fields__)
        d = {k: v for k, v in d.items() if k in known}
        try:
            d["input"] = InputSpec.from_dict(d["input"])
        except (TypeError, ValueError) as exc:
            raise _invalid(source, "input", f"is not a valid input spec ({exc})") from None
        meta = cls(**d)
        meta.check(source)
        return meta

    def check(self, source: str = "metadata") -> "ModelMetadata":
        """Refuse (PackError naming the field) values that would silently change every answer: a temperature
        that is not a finite number > 0, thresholds outside [0, 1], non-finite offsets, labels that do not
        match, an unknown activation, outputs without 'probs'. Called when a pack is written and when it is read."""
        _check_types(self.to_dict(), source)
        labels = list(self.labels)
        if not labels or len(set(labels)) != len(labels):
            raise _invalid(source, "labels", f"must be a non-empty list of distinct names, got {labels!r}")
        if self.activation not in ("sigmoid", "softmax"):
            raise _invalid(source, "activation", f"is {self.activation!r}; valid: 'sigmoid', 'softmax'")
        inp = self.input
        for key in ("size", "channels", "clahe_tiles"):
            if isinstance(getattr(inp, key), bool) or not isinstance(getattr(inp, key), int):
                raise _invalid(source, f"input.{key}", f"is {getattr(inp, key)!r}; it must be an integer")
        for key in ("scale", "offset", "clahe_clip"):
            if not _finite(getattr(inp, key)):
                raise _invalid(source, f"input.{key}", f"is {getattr(inp, key)!r}; it must be a finite number")
        if inp.scale == 0 or not isinstance(inp.clahe, bool):
            raise _invalid(source, "input", f"has scale {inp.scale!r} / clahe {inp.clahe!r}; the scale must not be 0 "
                           "and clahe must be true or false")
        if "probs" not in self.outputs:
            raise _invalid(source, "outputs", f"names no 'probs' output ({self.outputs!r})")
        if not (_finite(self.temperature) and self.temperature > 0):
            raise _invalid(source, "temperature", f"is {self.temperature!r}; it must be a finite number > 0 "
                           "(1.0 = uncalibrated)")
        for label, value in self.bias.items():
            if label not in labels:
                raise _invalid(source, f"bias.{label}", f"names a label the model does not have; labels: {labels}")
            if not _finite(value):
                raise _invalid(source, f"bias.{label}", f"is {value!r}; it must be a finite number")
        if not self.thresholds or self.default_profile not in self.thresholds:
            raise _invalid(source, "default_profile", f"{self.default_profile!r} is not among the threshold profiles "
                           f"{sorted(self.thresholds)}")
        for profile, table in self.thresholds.items():
            for label, value in table.items():
                where = f"thresholds.{profile}.{label}"
                if label not in labels:
                    raise _invalid(source, where, f"names a label the model does not have; labels: {labels}")
                if not (_finite(value) and 0.0 <= value <= 1.0):
                    raise _invalid(source, where, f"is {value!r}; a threshold must be a number in [0, 1]")
                if value == 0.0 and self._is_gate():
                    raise _invalid(source, where, "is 0: a gate that accepts every image (a photo of a cat, a CT "
                                   "slice) is no gate; its threshold must be > 0")
        return self

    def _is_gate(self) -> bool:
        from ..tasks import get_task

        try:
            return get_task(self.task).family == "gate"
        except KeyError:   # an unknown task is refused where the pack is read
            return False

    def bias_vector(self) -> list[float] | None:
        """The per-label offsets in label order, or None when the model has none."""
        if not self.bias:
            return None
        return [float(self.bias.get(lbl, 0.0)) for lbl in self.labels]

    def threshold_profile(self, profile: str | None = None) -> dict[str, float]:
        """Thresholds of a named profile (the default one when ``profile`` is None)."""
        name = profile or self.default_profile
        if name not in self.thresholds:
            raise PackError(
                f"threshold profile {name!r} is not in the {self.task} model; it has: "
                f"{', '.join(sorted(self.thresholds)) or 'none'}. Create it with cxr-edge calibrate --profile {name}"
            )
        return self.thresholds[name]


_TYPES = {"task": str, "labels": list, "activation": str, "input": dict, "outputs": dict, "quantization": dict,
          "thresholds": dict, "default_profile": str, "temperature": (int, float), "bias": dict,
          "toolkit_version": str, "created": str, "calibration": dict, "metrics": dict, "training": dict,
          "extras": dict, "schema_version": int}


def _invalid(source: str, field_name: str, problem: str) -> PackError:
    return PackError(f"{source}: metadata field '{field_name}' {problem}. The pack is damaged or was edited; "
                     "re-export it (cxr-edge export, cxr-edge calibrate).")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_types(d: dict, source: str) -> None:
    """The JSON types of the metadata fields, so a wrong one is a PackError naming it, not a crash later."""
    for key, want in _TYPES.items():
        if key not in d:
            continue
        value = d[key]
        if isinstance(value, bool) and want is not bool or not isinstance(value, want):
            names = " or ".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            raise _invalid(source, key, f"is {type(value).__name__} {value!r:.60}; it must be {names}")
    if not all(isinstance(x, str) for x in d.get("labels", [])):
        raise _invalid(source, "labels", "must be a list of label names (strings)")
    for role, index in d.get("outputs", {}).items():
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise _invalid(source, f"outputs.{role}", f"is {index!r}; it must be an output index (an integer >= 0)")
    for profile, table in d.get("thresholds", {}).items():
        if not isinstance(table, dict):
            raise _invalid(source, f"thresholds.{profile}", f"is {type(table).__name__}; it must be an object "
                           "mapping labels to thresholds")


def split_model(data: bytes) -> tuple[bytes, zipfile.ZipFile | None]:
    """Separate the bare flatbuffer from the appended metadata archive (None when there is none)."""
    if len(data) < 22 or b"PK\x05\x06" not in data[-65557:]:
        return data, None
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):   # trailing bytes that only look like a zip
        return data, None
    match = _COMMENT.match(archive.comment or b"")
    if not match:
        return data, None
    return data[: int(match.group(1))], archive


def _member(name: str) -> zipfile.ZipInfo:
    """A member with a fixed date: the same model and metadata give the same bytes (and sha256) every time."""
    return zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))


def embed(model: bytes, metadata: ModelMetadata, files: dict[str, bytes] | None = None) -> bytes:
    """Return the model with ``metadata`` (and extra binary members) appended; replaces any earlier metadata.
    Deterministic: re-embedding unchanged metadata into a model gives the same bytes."""
    bare, _ = split_model(model)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(_member(METADATA_MEMBER), json.dumps(metadata.to_dict(), indent=2, sort_keys=True),
                    compress_type=zipfile.ZIP_DEFLATED)
        for name, content in (files or {}).items():
            if name == METADATA_MEMBER:
                raise ValueError(f"{METADATA_MEMBER} is reserved")
            zf.writestr(_member(name), content, compress_type=zipfile.ZIP_DEFLATED)
        zf.comment = b"cxr-edge model_bytes=%d" % len(bare)
    return bare + buf.getvalue()


def read(model: bytes, *, source: str = "model") -> tuple[ModelMetadata, dict[str, bytes]]:
    """The embedded metadata and extra members of a model; a model without them is refused."""
    _, archive = split_model(model)
    if archive is None or METADATA_MEMBER not in archive.namelist():
        raise PackError(
            f"{source} carries no cxr-edge metadata, so its task, labels and input are unknown. "
            "Export it with cxr-edge export, which embeds them."
        )
    try:
        check_archive(archive, source=source)
        meta = json.loads(read_member(archive, METADATA_MEMBER, source=source))
        files = {n: read_member(archive, n, source=source) for n in archive.namelist() if n != METADATA_MEMBER}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError) as exc:  # ValueError: bad JSON, limits
        raise PackError(f"{source}: embedded metadata is damaged ({exc}); re-export the model") from exc
    if not isinstance(meta, dict):
        raise PackError(f"{source}: embedded metadata is a JSON {type(meta).__name__}, not an object; re-export "
                        "the model")
    return ModelMetadata.from_dict(meta, source=source), files
