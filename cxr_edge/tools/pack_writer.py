"""Writing model packs, atomically: a new pack, or a pack with some models' metadata or members replaced.

The format is :mod:`cxr_edge.runtime.pack`'s, which reads and verifies what this writes. A pack
directory is written into a temporary folder beside it and renamed into place (an existing pack is
moved aside first and back if the rename fails); a ``.zip`` goes through
:func:`~cxr_edge.runtime.atomic.write_atomic`. A failed write never replaces a good pack.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from .. import __version__
from ..errors import PackError
from ..runtime import metadata as md
from ..runtime.atomic import write_atomic
from ..runtime.pack import (FIELDS_KEY, FORMAT_VERSION, MANIFEST, PACK_FORMAT, SIGNATURE_FILE, check_manifest,
                            fields_digest, load_pack, pack_files, sha256_bytes)
from ..tasks import get_task

log = logging.getLogger(__name__)

__all__ = ["build_manifest", "checked_size", "copy_pack", "PACK_BUDGET_BYTES", "replace_pack_file", "rewrite_metadata",
           "rewrite_model", "write_pack", "zip_bytes"]

PACK_BUDGET_BYTES = 9_000_000          # the whole int8 pack must stay at or below 9 MB


def build_manifest(models: dict[str, tuple[bytes, md.ModelMetadata]], *, name: str, license: str = "unspecified",
                   description: str = "", extra: dict | None = None) -> tuple[dict, dict[str, bytes]]:
    """The manifest and file contents of a pack; ``models`` maps slot -> (model with embedded metadata, metadata)."""
    files, entries = {}, {}
    for slot, (content, meta) in models.items():
        meta.check(f"the {slot} model's metadata")   # a pack is refused when it is written, not only when read
        spec = get_task(meta.task)
        if spec.family != slot:
            raise PackError(f"a {meta.task!r} model cannot go in slot {slot!r}; its slot is {spec.family!r}")
        fname = f"{slot}.tflite"
        files[fname] = content
        entries[slot] = {"task": meta.task, "file": fname, "sha256": sha256_bytes(content), "bytes": len(content),
                         "metadata": meta.to_dict()}
    manifest = {"format": PACK_FORMAT, "format_version": FORMAT_VERSION, "name": name,
                "toolkit_version": __version__, "created": md.utc_now(), "license": license,
                "description": description, "models": entries, "extra": extra or {}}
    check_manifest(manifest, f"the manifest of pack {name!r}")
    manifest[FIELDS_KEY] = fields_digest(manifest)
    return manifest, files


def write_pack(out, models: dict[str, tuple[bytes, md.ModelMetadata]], *, name: str | None = None,
               license: str = "unspecified", description: str = "", extra: dict | None = None,
               overwrite: bool = False, other_files: dict[str, bytes] | None = None) -> Path:
    """Write a pack directory (or a single ``.zip`` when ``out`` ends in .zip) atomically.

    ``other_files``: files that travel with the pack but are not its models or manifest (a MODEL_CARD.md)."""
    out = Path(out)
    manifest, files = build_manifest(models, name=name or out.stem, license=license, description=description,
                                     extra=extra)
    clash = sorted(set(other_files or {}) & (set(files) | {MANIFEST}))
    if clash:
        raise PackError(f"{clash}: a pack's own file names cannot be given as other files")
    files.update(other_files or {})
    files[MANIFEST] = json.dumps(manifest, indent=2, sort_keys=True).encode()
    return _write_atomically(out, files, overwrite=overwrite)


def rewrite_metadata(path, updates: dict[str, md.ModelMetadata]) -> Path:
    """Replace the metadata of some models in an existing pack (e.g. after calibration), atomically."""
    pack = _load_for_rewrite(path)
    models = {}
    for slot, m in pack.models.items():
        meta = updates.get(slot, m.metadata)
        models[slot] = (md.embed(m.content, meta, m.files), meta)
    return _rewrite(pack, models)


def rewrite_model(path, slot: str, meta, files: dict[str, bytes]) -> Path:
    """Replace one model's metadata *and embedded members* in a pack, keeping everything else, atomically.

    (:func:`rewrite_metadata` keeps the members as they are.)
    """
    pack = _load_for_rewrite(path)
    models = {s: (m.content, m.metadata) for s, m in pack.models.items()}
    models[slot] = (md.embed(pack[slot].content, meta, files), meta)
    return _rewrite(pack, models)


def _rewrite(pack, models: dict) -> Path:
    """Write ``models`` over ``pack`` keeping its name, licence, description, extra and the files that are not
    models (a MODEL_CARD.md stays; a signature is dropped: it no longer matches what it signed)."""
    keep = {k: pack.manifest[k] for k in ("license", "description", "extra") if k in pack.manifest}
    own = {MANIFEST, SIGNATURE_FILE} | {f"{slot}.tflite" for slot in {*pack.models, *models}}
    others = {name: data for name, data in pack_files(pack.path).items() if name not in own}
    return write_pack(pack.path, models, name=pack.name, overwrite=True, other_files=others, **keep)


def _load_for_rewrite(path):
    pack = load_pack(path)
    if pack.signature is not None and pack.signature.signed:
        log.warning("%s was signed; the rewritten pack is not (sign it again: cxr-edge pack sign)", pack.path)
    return pack


def replace_pack_file(path, name: str, data: bytes) -> None:
    """Add or replace one file of a pack (e.g. its signature) atomically: in a folder, the file; a .zip is
    rewritten whole."""
    path = Path(path)
    if path.is_dir():
        write_atomic(path / name, data, overwrite=True)
        return
    files = pack_files(path)
    files[name] = data
    write_atomic(path, zip_bytes(files), overwrite=True)


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A pack's files as one uncompressed .zip; the same files give the same bytes (a fixed entry date), so a
    re-written pack that did not change is not a new file to ship or commit."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for fname, content in sorted(files.items()):
            info = zipfile.ZipInfo(fname, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, content)
    return buf.getvalue()


def _write_atomically(out: Path, files: dict[str, bytes], *, overwrite: bool) -> Path:
    if out.exists() and not overwrite:
        raise PackError(f"{out} already exists; pass --force to replace it (the old pack stays until the new "
                        "one is complete)")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".zip":
        return write_atomic(out, zip_bytes(files), overwrite=overwrite)
    if os.path.islink(out) or (out.exists() and not out.is_dir()):
        raise PackError(f"{out} exists and is not a pack folder; choose another output name")
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        for fname, content in files.items():
            (tmp_dir / fname).write_bytes(content)
        if not out.exists():
            os.replace(tmp_dir, out)
            return out
        # Two renames: the old pack moves aside, the new one takes its place; a failure moves the old one back.
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        try:
            os.replace(out, aside / "pack")
            try:
                os.replace(tmp_dir, out)
            except BaseException:
                os.replace(aside / "pack", out)
                raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out


def copy_pack(pack, out) -> Path:
    """A copy of a pack (folder or .zip) at ``out``, which must not exist: what a command's ``--out`` fits.
    Copied beside ``out`` first and renamed into place, so an interrupted copy leaves no half pack there."""
    src, dst = Path(pack), Path(out)
    if dst.exists() or dst.is_symlink():
        raise PackError(f"--out {dst} already exists; choose a new path (the copy is made there, then fitted)")
    if not src.exists():
        raise PackError(f"model pack {src} does not exist")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.copy-", dir=dst.parent))
    try:
        staged = tmp / "pack"
        if src.is_dir():
            shutil.copytree(src, staged)
        else:
            shutil.copy2(src, staged)
        os.replace(staged, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def checked_size(path) -> int:
    """The pack's size in bytes, with a warning when it is over :data:`PACK_BUDGET_BYTES`."""
    size = load_pack(path).total_bytes()
    if size > PACK_BUDGET_BYTES:
        log.warning("%s is %.2f MB, over the %.0f MB budget for a device pack", path, size / 1e6,
                    PACK_BUDGET_BYTES / 1e6)
    return size
