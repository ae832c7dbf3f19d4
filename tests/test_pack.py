"""Model packs: verified on load, refused when tampered, written atomically, metadata round-trips."""

import json
import shutil
import zipfile

import pytest

from cxr_edge.runtime import metadata as md
from cxr_edge.errors import PackError
from cxr_edge.runtime.pack import MANIFEST, load_pack
from cxr_edge.tools.pack_writer import rewrite_metadata, write_pack


@pytest.fixture
def pack(tiny_pack, tmp_path):
    """A private copy of the session's tiny pack that a test may damage."""
    return shutil.copytree(tiny_pack, tmp_path / "pack")


def test_pack_loads_and_describes_itself(tiny_pack):
    p = load_pack(tiny_pack)
    assert set(p.models) == {"gate", "cxr4", "nih14"}
    d = p.describe()
    assert d["models"]["cxr4"]["labels"] == ["COVID-19", "Normal", "Pneumonia", "Tuberculosis"]
    assert d["models"]["gate"]["input"]["size"] == 32
    assert d["total_bytes"] == sum(m["bytes"] for m in d["models"].values())
    assert p["nih14"].spec.input.size == 48  # the exported input spec wins over the registry default


def test_each_tflite_describes_itself_alone(tiny_pack):
    data = (tiny_pack / "cxr4.tflite").read_bytes()
    meta, files = md.read(data)
    assert meta.task == "cxr4" and meta.activation == "softmax" and meta.outputs.keys() == {"probs", "features"}
    assert meta.toolkit_version and meta.created and meta.thresholds["default"]["Normal"] == 0.5
    bare, archive = md.split_model(data)
    assert archive is not None and len(bare) < len(data)


def test_metadata_roundtrip_and_replacement(tiny_pack):
    data = (tiny_pack / "gate.tflite").read_bytes()
    meta, _ = md.read(data)
    meta.temperature = 1.7
    meta.thresholds["screening"] = {"chest_xray": 0.2}
    again = md.embed(data, meta, {"head.npz": b"\x00\x01"})
    meta2, files = md.read(again)
    assert meta2.to_dict() == meta.to_dict() and files == {"head.npz": b"\x00\x01"}
    assert md.split_model(again)[0] == md.split_model(data)[0]  # the model itself is untouched
    assert meta2.threshold_profile("screening") == {"chest_xray": 0.2}
    with pytest.raises(PackError, match="calibrate"):
        meta2.threshold_profile("nope")


def test_re_embedding_the_same_metadata_gives_the_same_bytes(tiny_pack, monkeypatch):
    """A pack rewrite (calibrate, ood fit, export of another slot) must not change an untouched model's file: the
    sha256 its evaluation record names stays its own. The embedded zip carries no clock time."""
    import time as _time

    data = (tiny_pack / "gate.tflite").read_bytes()
    meta, files = md.read(data)
    first = md.embed(data, meta, files)
    monkeypatch.setattr(_time, "time", lambda: 2_000_000_000.0)        # years later
    monkeypatch.setattr(_time, "localtime", lambda *a: _time.struct_time((2033, 5, 18, 3, 33, 20, 2, 138, 0)))
    assert md.embed(first, meta, files) == first
    meta.temperature = 1.3
    assert md.embed(first, meta, files) != first                          # a real change still shows


def test_a_flipped_byte_is_refused_naming_the_file(pack):
    target = pack / "cxr4.tflite"
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(PackError) as err:
        load_pack(pack)
    assert "cxr4.tflite" in str(err.value) and "checksum" in str(err.value)


def test_truncated_and_missing_files_are_refused(pack):
    (pack / "gate.tflite").write_bytes((pack / "gate.tflite").read_bytes()[:1000])
    with pytest.raises(PackError, match="gate.tflite.*truncated"):
        load_pack(pack)
    (pack / "gate.tflite").unlink()
    with pytest.raises(PackError, match="gate.tflite is missing"):
        load_pack(pack)


def test_hand_edited_manifest_is_refused(pack):
    manifest = json.loads((pack / MANIFEST).read_text())
    manifest["models"]["gate"]["metadata"]["thresholds"]["default"]["chest_xray"] = 0.01
    (pack / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="disagrees"):
        load_pack(pack)


@pytest.mark.parametrize("damage", [b"\xff\xfe not text", b"[1, 2, 3]", b'{"format": "cxr-edge-pack"',
                                    "model entry"])
def test_a_damaged_manifest_is_a_pack_error_not_a_crash(pack, damage):
    if damage == "model entry":
        manifest = json.loads((pack / MANIFEST).read_text())
        manifest["models"]["gate"] = "gate.tflite"
        damage = json.dumps(manifest).encode()
    (pack / MANIFEST).write_bytes(damage)
    with pytest.raises(PackError, match="manifest.json") as err:
        load_pack(pack)
    assert "copy it again" in str(err.value) or "re-export" in str(err.value)


@pytest.mark.parametrize("field,value", [("license", "CC0 (edited)"), ("name", "renamed"),
                                         ("extra", {"quality_spec": {"blur_fail": 0.0}})])
def test_edited_manifest_fields_are_refused(pack, field, value):
    manifest = json.loads((pack / MANIFEST).read_text())
    manifest[field] = value
    (pack / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="edited after the pack was written"):
        load_pack(pack)


def test_wrong_format_version_and_not_a_pack(pack, tmp_path):
    manifest = json.loads((pack / MANIFEST).read_text())
    manifest["format_version"] = 99
    (pack / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="Upgrade"):
        load_pack(pack)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackError, match="manifest.json is missing"):
        load_pack(tmp_path / "empty")
    with pytest.raises(PackError, match="does not exist"):
        load_pack(tmp_path / "nowhere")


def test_labels_that_disagree_with_the_registry_are_refused(tiny_pack, tmp_path):
    pack = load_pack(tiny_pack)
    meta = pack["cxr4"].metadata
    meta.labels = ["COVID-19", "Normal", "Pneumonia", "TB"]
    meta.thresholds = {p: {("TB" if k == "Tuberculosis" else k): v for k, v in t.items()}
                       for p, t in meta.thresholds.items()}   # consistent in itself, so only the registry disagrees
    content = md.embed(pack["cxr4"].content, meta)
    write_pack(tmp_path / "renamed", {"cxr4": (content, meta)})
    with pytest.raises(PackError, match="made for labels"):
        load_pack(tmp_path / "renamed")


def test_single_file_zip_pack(tiny_pack, tmp_path):
    models = {s: (m.content, m.metadata) for s, m in load_pack(tiny_pack).models.items()}
    out = write_pack(tmp_path / "pack.zip", models)
    assert zipfile.is_zipfile(out) and load_pack(out).models.keys() == models.keys()
    # a zip of the pack directory (one top folder), as a user would make it, works too
    shutil.make_archive(str(tmp_path / "zipped"), "zip", tiny_pack.parent, tiny_pack.name)
    assert set(load_pack(tmp_path / "zipped.zip").models) == {"gate", "cxr4", "nih14"}
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(PackError, match="neither a pack directory"):
        load_pack(tmp_path / "junk.zip")


def test_writing_never_replaces_a_good_pack_with_a_broken_one(pack, monkeypatch):
    good = load_pack(pack)
    models = {s: (m.content, m.metadata) for s, m in good.models.items()}
    with pytest.raises(PackError, match="already exists"):
        write_pack(pack, models)
    before = {p.name: p.read_bytes() for p in pack.iterdir()}

    import os

    real_replace = os.replace
    for failing_call in (1, 2):  # the old pack moving aside fails / the new pack moving in fails
        calls = []

        def flaky(src, dst, failing_call=failing_call, calls=calls):
            calls.append(src)
            if len(calls) == failing_call:
                raise OSError("disk full")
            return real_replace(src, dst)

        monkeypatch.setattr("cxr_edge.tools.pack_writer.os.replace", flaky)
        with pytest.raises(OSError, match="disk full"):
            write_pack(pack, models, overwrite=True)
        monkeypatch.undo()
        assert {p.name: p.read_bytes() for p in pack.iterdir()} == before
        assert not [p for p in pack.parent.iterdir() if p.name.startswith(".pack")]  # no temp dirs left
    load_pack(pack)


def test_rewrite_metadata_keeps_the_pack_valid(pack):
    meta = load_pack(pack)["nih14"].metadata
    meta.temperature = 1.3
    meta.thresholds["screening"] = {label: 0.1 for label in meta.labels}
    rewrite_metadata(pack, {"nih14": meta})
    again = load_pack(pack)
    assert again["nih14"].metadata.temperature == 1.3 and "screening" in again["nih14"].metadata.thresholds
    assert again["gate"].sha256 == load_pack(pack)["gate"].sha256
