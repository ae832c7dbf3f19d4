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
import os
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from . import metadata as md
from ..errors import PackError, UnknownTaskError, file_kind
from ..tasks import TaskSpec, get_task
from .safezip import MAX_MEMBER_BYTES, MAX_TOTAL_BYTES, ZipLimitError, check_archive, read_member

__all__ = ["fields_digest", "FIELDS_KEY", "FORMAT_VERSION", "load_pack", "MANIFEST", "ModelPack", "PACK_FORMAT",
           "PackModel", "pack_files", "sha256_bytes", "SIGNATURE_FILE", "SLOTS", "check_manifest"]

log = logging.getLogger(__name__)

PACK_FORMAT = "cxr-edge-pack"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FIELDS_KEY = "fields_sha256"   # the manifest's own fields, hashed (see fields_digest)
SLOTS = ("gate", "cxr4", "nih14")
SIGNATURE_FILE = "signature.json"   # cxr_edge.runtime.signing.SIGNATURE


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
    signature: object = None    # a signing.SignatureInfo when the signature was checked

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
        out["signature"] = self.signature.to_dict() if self.signature is not None else {"signed": False}
        out["models"] = {}
        for slot, m in self.models.items():
            meta = m.metadata.to_dict()
            meta.update(file=m.file, bytes=len(m.content), sha256=m.sha256)
            out["models"][slot] = meta
        return out


# --------------------------------------------------------------------------- reading


def load_pack(path, *, trust=None, verify_signature: bool = True) -> ModelPack:
    """Read and verify a pack directory or ``.zip``; raises :class:`PackError` when anything is off.

    ``trust`` (a :class:`~cxr_edge.runtime.signing.TrustPolicy`, default: from the
    config file) says whether the pack must be signed by a trusted key; a
    signature that is present is always checked (``verify_signature=False``
    skips it, for re-signing).
    """
    path = Path(path)
    reader = _reader(path)
    manifest = _read_manifest(reader, path)
    models = {}
    for slot, entry in manifest["models"].items():
        models[slot] = _verify_model(reader, path, slot, entry)
    if not models:
        raise PackError(f"{path}: the manifest lists no models; re-export the pack")
    pack = ModelPack(path=path, manifest=manifest, models=models)
    if verify_signature:
        from .signing import TrustPolicy, check_signature

        policy = trust if trust is not None else TrustPolicy.from_config()
        if policy.require_signed or reader.has(SIGNATURE_FILE):
            files = reader.read_all()
            if reader.has(SIGNATURE_FILE) and SIGNATURE_FILE not in files:
                raise PackError(f"{path}/{SIGNATURE_FILE} is not a file; the pack was damaged or tampered with. "
                                "Get it again from its publisher.")
            pack.signature = check_signature(files, policy, source=os.fspath(path))
    return pack


def pack_files(path) -> dict[str, bytes]:
    """Every file of a pack ({name: bytes}, names relative to the pack), read within the limits."""
    return _reader(Path(path)).read_all()


def _reader(path: Path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise PackError(f"model pack {path} does not exist. Pass --pack DIR, set CXR_EDGE_PACK, "
                        "or build one with cxr-edge export.") from None
    except OSError as exc:
        raise PackError(f"model pack {path} cannot be read ({exc.strerror or exc}); check its permissions.") from exc
    if stat.S_ISDIR(st.st_mode):
        return _DirReader(path)
    if stat.S_ISREG(st.st_mode):
        return _ZipReader(path)
    raise PackError(f"model pack {path} is {file_kind(st.st_mode)}, not a pack folder or .zip. Pass --pack DIR, "
                    "or fix CXR_EDGE_PACK / the config file's \"pack\".")


class _DirReader:
    def __init__(self, root: Path):
        self.root = root

    def _target(self, name: str) -> Path:
        target = (self.root / name).resolve()
        if self.root.resolve() not in target.parents:
            raise PackError(f"{self.root}: manifest names a file outside the pack ({name!r}); the pack is not safe")
        return target

    def has(self, name: str) -> bool:
        return os.path.lexists(self.root / name)

    def read(self, name: str) -> bytes:
        target = self._target(name)
        try:
            return _read_regular_file(target, f"{self.root}/{name}")
        except FileNotFoundError:
            raise PackError(f"{self.root}: {name} is missing. The pack is incomplete; copy the whole pack "
                            "directory again or re-export it.") from None

    def read_all(self) -> dict[str, bytes]:
        files, total = {}, 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for fname in sorted(filenames):
                rel = Path(dirpath, fname).relative_to(self.root).as_posix()
                files[rel] = self.read(rel)
                total += len(files[rel])
                if total > MAX_TOTAL_BYTES:
                    raise PackError(f"{self.root} holds more than {MAX_TOTAL_BYTES / 2**20:.0f} MiB of files; it is "
                                    "not a pack this toolkit wrote")
        return files


def _read_regular_file(target: Path, shown: str) -> bytes:
    """A pack member's bytes: a regular file within the size limit, opened without blocking."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise PackError(f"{shown} cannot be read ({exc.strerror or exc}); copy the pack again.") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PackError(f"{shown} is {file_kind(st.st_mode)}, not a file; the pack is damaged. Copy it again or "
                            "re-export it.")
        if st.st_size > MAX_MEMBER_BYTES:
            raise PackError(f"{shown} is {st.st_size / 2**20:.0f} MiB; a pack file may be at most "
                            f"{MAX_MEMBER_BYTES / 2**20:.0f} MiB. It is not a pack this toolkit wrote.")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(MAX_MEMBER_BYTES + 1)
    except OSError as exc:
        raise PackError(f"{shown} cannot be read ({exc.strerror or exc}); copy the pack again.") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_MEMBER_BYTES:
        raise PackError(f"{shown} grew past {MAX_MEMBER_BYTES / 2**20:.0f} MiB while being read; copy the pack again.")
    return data


class _ZipReader:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.zf = zipfile.ZipFile(path)
            check_archive(self.zf, source=str(path))
        except ZipLimitError as exc:
            raise PackError(f"{exc}. Do not use this pack.") from None
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise PackError(f"{path} is neither a pack directory nor a readable pack .zip ({exc}). "
                            "Copy the pack again.") from exc
        names = self.zf.namelist()
        # A zip of the pack directory itself has one top folder; accept both layouts.
        tops = {n.split("/", 1)[0] for n in names}
        self.prefix = "" if MANIFEST in names else (next(iter(tops)) + "/" if len(tops) == 1 else "")

    def has(self, name: str) -> bool:
        return self.prefix + name in self.zf.namelist()

    def read(self, name: str) -> bytes:
        try:
            return read_member(self.zf, self.prefix + name, source=str(self.path))
        except KeyError:
            raise PackError(f"{self.path}: {name} is missing from the pack archive; re-export it") from None
        except ZipLimitError as exc:
            raise PackError(f"{exc}. Do not use this pack.") from None
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError) as exc:  # RuntimeError: encrypted
            raise PackError(f"{self.path}: {name} is damaged in the archive ({exc}); copy the pack again") from exc

    def read_all(self) -> dict[str, bytes]:
        return {n[len(self.prefix):]: self.read(n[len(self.prefix):]) for n in sorted(self.zf.namelist())
                if n.startswith(self.prefix) and not n.endswith("/")}


def _read_manifest(reader, path: Path) -> dict:
    try:
        manifest = json.loads(reader.read(MANIFEST))
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        raise PackError(f"{path}/{MANIFEST} is not valid JSON ({exc}); the pack was damaged, copy it again") from exc
    except RecursionError:
        raise PackError(f"{path}/{MANIFEST} is nested too deeply to be a pack manifest; the pack was damaged") from None
    if not isinstance(manifest, dict):
        raise PackError(f"{path}/{MANIFEST} holds a JSON {type(manifest).__name__}, not a pack manifest object; "
                        "the pack was damaged, copy it again or re-export it")
    if manifest.get("format") != PACK_FORMAT:
        raise PackError(f"{path} is not a cxr-edge model pack ({MANIFEST} has format "
                        f"{manifest.get('format')!r}, expected {PACK_FORMAT!r})")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise PackError(f"{path}: pack format version {version!r} is not supported by cxr-edge {__version__} "
                        f"(supports up to {FORMAT_VERSION}). Upgrade: pip install -U cxr-edge")
    if not isinstance(manifest.get("models"), dict):
        raise PackError(f"{path}/{MANIFEST} has no 'models' table; re-export the pack")
    check_manifest(manifest, f"{path}/{MANIFEST}")
    _check_fields(manifest, path)
    made_by = str(manifest.get("toolkit_version", "0"))
    if made_by.split(".")[0] != __version__.split(".")[0]:
        log.warning("%s was made by cxr-edge %s; this is %s", path, made_by, __version__)
    return manifest


_TOP_TYPES = {"name": str, "license": str, "description": str, "created": str, "toolkit_version": str,
              "extra": dict, FIELDS_KEY: str}
_ENTRY_TYPES = {"task": str, "file": str, "sha256": str, "bytes": int, "metadata": dict}


def check_manifest(manifest: dict, where: str) -> None:
    """The manifest's fields have the types this toolkit writes (PackError naming the field otherwise)."""
    for key, want in _TOP_TYPES.items():
        if key in manifest and not isinstance(manifest[key], want):
            raise _bad_field(where, key, manifest[key], want)
    for slot, entry in manifest["models"].items():
        if not isinstance(entry, dict):
            raise PackError(f"{where}: the entry for model {slot!r} is not an object; re-export the pack")
        for key, want in _ENTRY_TYPES.items():
            value = entry.get(key)
            if key in ("file", "sha256") and value is None:
                raise PackError(f"{where}: model {slot!r} has no {key!r}; re-export the pack")
            if value is not None and (not isinstance(value, want) or isinstance(value, bool)):
                raise _bad_field(where, f"models.{slot}.{key}", value, want)
        name = entry["file"]
        if not name or name != Path(name).name or name.startswith(".") or "\\" in name:
            raise PackError(f"{where}: models.{slot}.file {name!r} is not a plain file name in the pack; the pack is "
                            "not safe")
        if entry.get("bytes", 0) < 0 or entry.get("bytes", 0) > MAX_MEMBER_BYTES:
            raise PackError(f"{where}: models.{slot}.bytes {entry['bytes']} is outside 0..{MAX_MEMBER_BYTES}")


def _bad_field(where: str, key: str, value, want) -> PackError:
    return PackError(f"{where}: field '{key}' is {type(value).__name__} {value!r:.60}; it must be {want.__name__}. "
                     "The pack was damaged or edited; copy it again or re-export it.")


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
    if recorded is None:   # every pack this toolkit writes has one: removing it must not switch the check off
        raise PackError(f"{path}/{MANIFEST} has no {FIELDS_KEY}, so its fields (name, licence, 'extra' such as the "
                        "photo quality thresholds) cannot be verified; it was edited by hand. Do not use it; copy "
                        "the pack again or re-export it.")
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
    name = entry["file"]
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
