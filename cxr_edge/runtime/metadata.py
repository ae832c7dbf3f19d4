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
import re
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from .. import __version__
from ..errors import PackError
from ..tasks import InputSpec, TaskSpec

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
        d = dict(d)
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
        d["input"] = InputSpec.from_dict(d["input"])
        d["outputs"] = {str(k): int(v) for k, v in d["outputs"].items()}
        return cls(**d)

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


def split_model(data: bytes) -> tuple[bytes, zipfile.ZipFile | None]:
    """Separate the bare flatbuffer from the appended metadata archive (None when there is none)."""
    if len(data) < 22 or b"PK\x05\x06" not in data[-65557:]:
        return data, None
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return data, None
    match = _COMMENT.match(archive.comment or b"")
    if not match:
        return data, None
    return data[: int(match.group(1))], archive


def embed(model: bytes, metadata: ModelMetadata, files: dict[str, bytes] | None = None) -> bytes:
    """Return the model with ``metadata`` (and extra binary members) appended; replaces any earlier metadata."""
    bare, _ = split_model(model)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(METADATA_MEMBER, json.dumps(metadata.to_dict(), indent=2, sort_keys=True))
        for name, content in (files or {}).items():
            if name == METADATA_MEMBER:
                raise ValueError(f"{METADATA_MEMBER} is reserved")
            zf.writestr(name, content)
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
        meta = json.loads(archive.read(METADATA_MEMBER))
        files = {n: archive.read(n) for n in archive.namelist() if n != METADATA_MEMBER}
    except (zipfile.BadZipFile, json.JSONDecodeError, OSError) as exc:
        raise PackError(f"{source}: embedded metadata is damaged ({exc}); re-export the model") from exc
    return ModelMetadata.from_dict(meta, source=source), files
