"""Builders for the hostile-input corpus: image bombs, crafted DICOM, crafted packs and zips.

Everything is made at test time, in bounded memory: a bomb's pixels are
streamed through zlib row block by row block, never held.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

from cxr_edge.runtime.pack import FIELDS_KEY, fields_digest

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "cxr_edge" / "packs" / "default"


# --------------------------------------------------------------------------- PNG


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, *, bit_depth: int = 8, color_type: int = 0, rows: int | None = None,
              value: int = 0) -> bytes:
    """A PNG whose pixels are all ``value`` bytes, streamed through zlib (a 220 MB image in a few hundred KB).

    ``rows`` < height makes a truncated image data stream (the header still says ``height``)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    row = b"\0" + bytes([value]) * ((width * channels * bit_depth + 7) // 8)
    comp = zlib.compressobj(9)
    parts = []
    block = row * max(1, (1 << 22) // len(row))
    per_block = len(block) // len(row)
    left = height if rows is None else rows
    while left > 0:
        n = min(left, per_block)
        parts.append(comp.compress(block[: n * len(row)]))
        left -= n
    parts.append(comp.flush())
    out = [b"\x89PNG\r\n\x1a\n",
           _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))]
    if color_type == 3:
        out.append(_chunk(b"PLTE", bytes(range(256)) * 3))
    out += [_chunk(b"IDAT", b"".join(parts)), _chunk(b"IEND", b"")]
    return b"".join(out)


def gif_bomb(width: int = 65535, height: int = 65535) -> bytes:
    """A GIF whose screen and image claim ``width`` x ``height`` with almost no data."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + bytes(6)   # 2-colour global table
    desc = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    data = b"\x02\x02\x4c\x01\x00"      # LZW min code size 2, one sub-block: clear + end
    return head + desc + data + b"\x3b"


def tiff_bytes(width: int, height: int, *, bits: int = 8, data: bytes = b"\0" * 64) -> bytes:
    """A little-endian uncompressed grey TIFF that claims ``width`` x ``height`` with ``data`` as its only strip."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, 1), (262, 3, 1),
               (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, len(data))]
    ifd_offset = 8
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = ifd_offset + ifd_size
    out = b"II*\0" + struct.pack("<I", ifd_offset) + struct.pack("<H", len(entries))
    for tag, typ, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HHI", tag, typ, 1) + (struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value))
        out += packed
    return out + struct.pack("<I", 0) + data


def jpeg_header_bomb(width: int = 65500, height: int = 65500) -> bytes:
    """A baseline JPEG header that claims ``width`` x ``height`` and then ends."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    i = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, i + 5, height, width)
    sos = data.index(b"\xff\xda")
    return bytes(data[: sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big") + 8])   # ends in the scan


# --------------------------------------------------------------------------- DICOM


def dicom_bytes(rows: int, cols: int, *, frames: int = 1, bits: int = 16, deflate: bool = False,
                photometric: str = "MONOCHROME2", samples: int = 1, pixels: bool = True,
                rle_frames: bool = False) -> bytes:
    """A DICOM file of zero pixels, written in bounded memory (the pixel data is streamed, never held).

    ``deflate``: Deflated Explicit VR Little Endian (the whole data set deflated). ``rle_frames``: RLE
    Lossless, one tiny compressed frame each (8-bit grey only). ``pixels=False``: no Pixel Data element."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless,
                             SecondaryCaptureImageStorage, generate_uid)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = (RLELossless if rle_frames else DeflatedExplicitVRLittleEndian if deflate
                              else ExplicitVRLittleEndian)
    ds = Dataset()
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if rle_frames:
        assert bits == 8 and samples == 1 and (rows * cols) % 128 == 0
        segment = b"\x81\x00" * (rows * cols // 128)          # PackBits: 128 zeros per 2 bytes
        frame = struct.pack("<16I", 1, 64, *([0] * 14)) + segment
        ds.PixelData = encapsulate([frame] * frames)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    meta_io = DicomBytesIO()
    write_file_meta_info(meta_io, meta, enforce_standard=True)
    head = b"\0" * 128 + b"DICM" + meta_io.getvalue()
    parts = [body.getvalue()]
    if pixels and not rle_frames:
        n = rows * cols * frames * samples * bits // 8
        n += n % 2
        parts.append(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n))
        parts.append(None)  # n zero bytes, streamed below
    else:
        n = 0
    if not deflate:
        return head + b"".join(p if p is not None else b"\0" * n for p in parts)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [head]
    zeros = b"\0" * (1 << 22)
    for p in parts:
        if p is not None:
            out.append(comp.compress(p))
            continue
        left = n
        while left:
            k = min(left, len(zeros))
            out.append(comp.compress(zeros[:k]))
            left -= k
    out.append(comp.flush())
    return b"".join(out)


# --------------------------------------------------------------------------- packs


def copy_pack(dst: Path, src: Path = BUNDLED) -> Path:
    """A copy of the bundled pack without its model card (a pack is its models and manifest)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.md"))
    return dst


def read_manifest(pack: Path) -> dict:
    return json.loads((pack / "manifest.json").read_text())


def write_manifest(pack: Path, manifest: dict, *, rehash: bool = True) -> None:
    """Write a crafted manifest; ``rehash`` recomputes its fields digest the way an attacker could."""
    if rehash and isinstance(manifest.get("models"), dict) and FIELDS_KEY in manifest:
        try:
            manifest[FIELDS_KEY] = fields_digest(manifest)
        except (AttributeError, TypeError):
            pass
    (pack / "manifest.json").write_text(json.dumps(manifest, indent=1))


def zip_bytes(members: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def zip_with_zeros(name: str, size: int, others: dict[str, bytes] | None = None) -> bytes:
    """A real zip holding ``size`` zero bytes under ``name`` (a 3 GiB member in ~3 MB), made in seconds: one
    deflated 1 MiB block of zeros ends in a full flush, so the same bytes can be repeated, then a final block.
    The CRC is the true one, so a reader that trusted the directory would inflate all of it."""
    chunk = 1 << 20
    assert size % chunk == 0 and size < 2**32
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = comp.compress(b"\0" * chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    final = tail.compress(b"") + tail.flush()
    data = block * (size // chunk) + final
    crc = 0
    zeros = b"\0" * chunk
    for _ in range(size // chunk):
        crc = zlib.crc32(zeros, crc)
    members = zip_bytes(others or {}) if others else b""
    buf = io.BytesIO(members)
    with zipfile.ZipFile(buf, "a" if others else "w") as zf:
        info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.CRC, info.compress_size, info.file_size = crc, len(data), size
        offset = zf.start_dir
        zf.fp.seek(offset)
        zf.fp.write(info.FileHeader(zip64=False))
        zf.fp.write(data)
        info.header_offset = offset
        zf.filelist.append(info)
        zf.NameToInfo[name] = info
        zf.start_dir = zf.fp.tell()
        zf._didModify = True
    return buf.getvalue()


def zip_lying_about_size(name: str, real: bytes, claimed: int) -> bytes:
    """A zip whose directory says ``name`` is ``claimed`` bytes although it holds ``real`` (patched headers)."""
    data = bytearray(zip_bytes({name: real}))
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = data.index(sig)
        struct.pack_into("<I", data, i + offset, claimed)
    return bytes(data)


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def embed_raw(model: bytes, meta: dict | str | bytes, files: dict[str, bytes] | None = None) -> bytes:
    """``metadata.embed`` without its checks: any JSON (or raw bytes) as the embedded metadata."""
    from cxr_edge.runtime import metadata as md

    bare, _ = md.split_model(model)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(md.METADATA_MEMBER, meta if isinstance(meta, (str, bytes)) else json.dumps(meta))
        for name, content in (files or {}).items():
            zf.writestr(name, content)
        zf.comment = b"cxr-edge model_bytes=%d" % len(bare)
    return bare + buf.getvalue()


def craft_pack(dst: Path, slot: str, mutate, *, manifest_too: bool = True, raw: bytes | None = None) -> Path:
    """A copy of the bundled pack whose ``slot`` model carries metadata ``mutate(dict)`` returned (or ``raw``
    metadata bytes), with the manifest's sha256, size, metadata copy and fields digest all made to match:
    what someone who rebuilt a pack by hand, or with an older writer, would ship."""
    import hashlib

    from cxr_edge.runtime import metadata as md

    pack = copy_pack(dst)
    manifest = read_manifest(pack)
    entry = manifest["models"][slot]
    content = (pack / entry["file"]).read_bytes()
    _, archive = md.split_model(content)
    meta = json.loads(archive.read(md.METADATA_MEMBER))
    files = {n: archive.read(n) for n in archive.namelist() if n != md.METADATA_MEMBER}
    new_meta = mutate(meta) if raw is None else None
    new = embed_raw(content, raw if raw is not None else new_meta, files)
    (pack / entry["file"]).write_bytes(new)
    entry.update(sha256=hashlib.sha256(new).hexdigest(), bytes=len(new))
    if manifest_too and new_meta is not None:
        entry["metadata"] = new_meta
    else:
        entry.pop("metadata", None)
    write_manifest(pack, manifest)
    return pack
