"""Model packs: the int8 models a device runs, with a manifest that vouches for them.

A pack is a directory (or a ``.zip`` of one) holding one ``.tflite`` per
pipeline slot (``gate``, ``cxr4``, ``nih14``) and ``manifest.json``::

    {"format": "cxr-edge-pack", "format_version": 1, "name": ..., "created": ...,
     "toolkit_version": ..., "license": ..., "description": ...,
     "models": {"gate": {"task": "gate", "file": "gate.tflite", "sha256": ..., "bytes": ...,
                         "metadata": {... the same metadata embedded in the .tflite ...}}, ...},
     "extra": {...}}

Loading verifies the format version, each file's size and sha256, that the
embedded metadata equals the manifest's copy, that the manifest's own fields
(name, licence, ``extra``) match their ``fields_sha256``, and that labels
match this toolkit's task registry. Anything off is refused with a message that names
the file and the fix. Writing packs is offline work: :mod:`cxr_edge.tools.pack_writer`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from . import metadata as md
from ..errors import PackError, UnknownTaskError
from ..tasks import TaskSpec, get_task

__all__ = ["fields_digest", "FIELDS_KEY", "FORMAT_VERSION", "load_pack", "MANIFEST", "ModelPack", "PACK_FORMAT",
           "PackModel", "sha256_bytes", "SLOTS"]

log = logging.getLogger(__name__)

PACK_FORMAT = "cxr-edge-pack"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FIELDS_KEY = "fields_sha256"   # the manifest's own fields, hashed (see fields_digest)
SLOTS = ("gate", "cxr4", "nih14")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class PackModel:
    """One verified model of a pack."""

    slot: str
    file: str
    content: bytes
    metadata: md.ModelMetadata
    files: dict[str, bytes] = field(default_factory=dict)  # extra members embedded with the metadata

    @property
    def spec(self) -> TaskSpec:
        """The task spec, with the input spec the model was actually exported with."""
        spec = get_task(self.metadata.task)
        return spec if spec.input == self.metadata.input else spec.with_input(**self.metadata.input.to_dict())

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.content)


@dataclass
class ModelPack:
    """A loaded, verified pack."""

    path: Path
    manifest: dict
    models: dict[str, PackModel]

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.path.name)

    def __contains__(self, slot: str) -> bool:
        return slot in self.models

    def __getitem__(self, slot: str) -> PackModel:
        try:
            return self.models[slot]
        except KeyError:
            raise PackError(f"pack {self.path} has no {slot!r} model; it has: {', '.join(self.models)}") from None

    def total_bytes(self) -> int:
        return sum(len(m.content) for m in self.models.values())

    def describe(self) -> dict:
        """A JSON-ready summary for ``cxr-edge info``."""
        out = {k: v for k, v in self.manifest.items() if k != "models"}
        out["path"] = str(self.path)
        out["total_bytes"] = self.total_bytes()
        out["models"] = {}
        for slot, m in self.models.items():
            meta = m.metadata.to_dict()
            meta.update(file=m.file, bytes=len(m.content), sha256=m.sha256)
            out["models"][slot] = meta
        return out


# --------------------------------------------------------------------------- reading


def load_pack(path) -> ModelPack:
    """Read and verify a pack directory or ``.zip``; raises :class:`PackError` when anything is off."""
    path = Path(path)
    if not path.exists():
        raise PackError(f"model pack {path} does not exist. Pass --pack DIR, set CXR_EDGE_PACK, "
                        "or build one with cxr-edge export.")
    reader = _ZipReader(path) if path.is_file() else _DirReader(path)
    manifest = _read_manifest(reader, path)
    models = {}
    for slot, entry in manifest["models"].items():
        models[slot] = _verify_model(reader, path, slot, entry)
    if not models:
        raise PackError(f"{path}: the manifest lists no models; re-export the pack")
    return ModelPack(path=path, manifest=manifest, models=models)


class _DirReader:
    def __init__(self, root: Path):
        self.root = root

    def read(self, name: str) -> bytes:
        target = (self.root / name).resolve()
        if self.root.resolve() not in target.parents:
            raise PackError(f"{self.root}: manifest names a file outside the pack ({name!r}); the pack is not safe")
        try:
            return target.read_bytes()
        except FileNotFoundError:
            raise PackError(f"{self.root}: {name} is missing. The pack is incomplete; copy the whole pack "
                            "directory again or re-export it.") from None


class _ZipReader:
    def __init__(self, path: Path):
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise PackError(f"{path} is neither a pack directory nor a readable pack .zip ({exc}). "
                            "Copy the pack again.") from exc
        names = self.zf.namelist()
        # A zip of the pack directory itself has one top folder; accept both layouts.
        tops = {n.split("/", 1)[0] for n in names}
        self.prefix = "" if MANIFEST in names else (next(iter(tops)) + "/" if len(tops) == 1 else "")
        self.path = path

    def read(self, name: str) -> bytes:
        try:
            return self.zf.read(self.prefix + name)
        except KeyError:
            raise PackError(f"{self.path}: {name} is missing from the pack archive; re-export it") from None
        except (zipfile.BadZipFile, OSError) as exc:
            raise PackError(f"{self.path}: {name} is damaged in the archive ({exc}); copy the pack again") from exc


def _read_manifest(reader, path: Path) -> dict:
    try:
        manifest = json.loads(reader.read(MANIFEST))
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        raise PackError(f"{path}/{MANIFEST} is not valid JSON ({exc}); the pack was damaged, copy it again") from exc
    if not isinstance(manifest, dict):
        raise PackError(f"{path}/{MANIFEST} holds a JSON {type(manifest).__name__}, not a pack manifest object; "
                        "the pack was damaged, copy it again or re-export it")
    if manifest.get("format") != PACK_FORMAT:
        raise PackError(f"{path} is not a cxr-edge model pack ({MANIFEST} has format "
                        f"{manifest.get('format')!r}, expected {PACK_FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PackError(f"{path}: pack format version {version!r} is not supported by cxr-edge {__version__} "
                        f"(supports up to {FORMAT_VERSION}). Upgrade: pip install -U cxr-edge")
    if not isinstance(manifest.get("models"), dict):
        raise PackError(f"{path}/{MANIFEST} has no 'models' table; re-export the pack")
    for slot, entry in manifest["models"].items():
        if not isinstance(entry, dict):
            raise PackError(f"{path}/{MANIFEST}: the entry for model {slot!r} is not an object; re-export the pack")
    _check_fields(manifest, path)
    made_by = str(manifest.get("toolkit_version", "0"))
    if made_by.split(".")[0] != __version__.split(".")[0]:
        log.warning("%s was made by cxr-edge %s; this is %s", path, made_by, __version__)
    return manifest


def fields_digest(manifest: dict) -> str:
    """sha256 of the manifest's own fields: name, licence, creation time, ``extra`` (e.g. the photo
    quality thresholds) and which file fills which slot. The models' files vouch for themselves (size,
    sha256, embedded metadata); this vouches for the rest."""
    body = {k: v for k, v in manifest.items() if k not in ("models", FIELDS_KEY)}
    body["models"] = {slot: {k: e.get(k) for k in ("task", "file", "sha256", "bytes")}
                      for slot, e in sorted(manifest["models"].items())}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode())


def _check_fields(manifest: dict, path: Path) -> None:
    recorded = manifest.get(FIELDS_KEY)
    if recorded is None:   # packs written before the digest existed
        log.info("%s/%s has no %s; its top-level fields are not verified", path, MANIFEST, FIELDS_KEY)
        return
    if recorded != fields_digest(manifest):
        raise PackError(f"{path}/{MANIFEST} was edited after the pack was written: its fields (name, licence, "
                        "'extra' such as the photo quality thresholds, or the slot -> file table) no longer match "
                        f"{FIELDS_KEY}. Do not use it; copy the pack again or re-export it (cxr-edge calibrate and "
                        "cxr-edge ood fit rewrite a pack properly).")


def _normalized(d, path: Path, name: str) -> dict | None:
    """The manifest's copy of a model's metadata as this toolkit writes it (fields added since filled in)."""
    try:
        return md.ModelMetadata.from_dict(d, source=f"{path}/{MANIFEST} ({name})").to_dict()
    except (TypeError, ValueError, AttributeError):
        return None


def _verify_model(reader, path: Path, slot: str, entry: dict) -> PackModel:
    name = entry.get("file")
    if not name:
        raise PackError(f"{path}/{MANIFEST}: model {slot!r} has no file name; re-export the pack")
    content = reader.read(name)
    if "bytes" in entry and len(content) != entry["bytes"]:
        raise PackError(
            f"{path}/{name} is {len(content)} bytes but the manifest says {entry['bytes']}: the file is truncated "
            "or was replaced. Copy the pack again or re-export it."
        )
    digest = sha256_bytes(content)
    if digest != entry.get("sha256"):
        raise PackError(
            f"{path}/{name} does not match its checksum (sha256 {digest[:12]}…, manifest "
            f"{str(entry.get('sha256'))[:12]}…): the file was modified or damaged. Do not use it; copy the pack "
            "again or re-export it."
        )
    meta, files = md.read(content, source=f"{path}/{name}")
    if "metadata" in entry and _normalized(entry["metadata"], path, name) != meta.to_dict():
        raise PackError(f"{path}: the manifest's metadata for {slot!r} disagrees with the metadata inside {name}; "
                        "the manifest was edited by hand. Re-export the pack or run cxr-edge calibrate again.")
    try:
        spec = get_task(meta.task)
    except UnknownTaskError as exc:
        raise PackError(f"{path}/{name}: {exc}. The pack needs a newer cxr-edge.") from None
    if tuple(meta.labels) != spec.labels:
        raise PackError(f"{path}/{name} was made for labels {meta.labels}, but this toolkit's {spec.name} task has "
                        f"{list(spec.labels)}. Use a pack exported by this toolkit version.")
    if spec.family != slot:
        raise PackError(f"{path}: slot {slot!r} holds a {meta.task!r} model; it belongs in slot {spec.family!r}")
    return PackModel(slot=slot, file=name, content=content, metadata=meta, files=files)
