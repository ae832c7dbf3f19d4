"""Hostile packs (causes 5, 6, 7 of issue 16): zip bombs, values that silently change every answer, and types
that crashed the loader -- each one a PackError that names the field, at load and (for values) at write."""

from __future__ import annotations

import json
import math
import os
import socket
import zipfile

import pytest
from click.testing import CliRunner
from conftest import assert_clean_failure, run_cli, unprivileged_prefix
from hostile_corpus import (copy_pack, craft_pack, make_fifo, read_manifest, write_manifest, zip_bytes,
                            zip_lying_about_size, zip_with_zeros)

from cxr_edge.runtime import metadata as md
from cxr_edge.cli import main
from cxr_edge.errors import PackError
from cxr_edge.runtime.pack import FIELDS_KEY, load_pack
from cxr_edge.tools.pack_writer import write_pack


def _set(path: str, value):
    """A mutation of the metadata dict: ``path`` 'a.b.c' set to ``value`` (``DELETE`` removes it)."""
    def mutate(meta):
        keys = path.split(".")
        node = meta
        for k in keys[:-1]:
            node = node[k]
        if value is DELETE:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
        return meta
    return mutate


DELETE = object()
NAN, INF = float("nan"), float("inf")

# (slot, field path, value, text the PackError must contain)
BAD_VALUES = [
    ("cxr4", "temperature", 0, "temperature"), ("cxr4", "temperature", -1, "temperature"),
    ("cxr4", "temperature", NAN, "temperature"), ("nih14", "temperature", INF, "temperature"),
    ("cxr4", "temperature", "1.0", "temperature"), ("cxr4", "temperature", True, "temperature"),
    ("cxr4", "temperature", None, "temperature"),
    ("nih14", "thresholds.default.Mass", 1.01, "thresholds.default.Mass"),
    ("nih14", "thresholds.default.Mass", -0.1, "thresholds.default.Mass"),
    ("nih14", "thresholds.default.Mass", NAN, "thresholds.default.Mass"),
    ("nih14", "thresholds.default.Mass", "0.5", "thresholds.default.Mass"),
    ("nih14", "thresholds.default.Mass", None, "thresholds.default.Mass"),
    ("nih14", "thresholds.default.NotALabel", 0.5, "NotALabel"),
    ("nih14", "thresholds.default", "high", "thresholds.default"),
    ("nih14", "thresholds", [], "thresholds"), ("nih14", "thresholds", {}, "default_profile"),
    ("gate", "thresholds.default.chest_xray", 0.0, "gate"),
    ("gate", "thresholds.default.chest_xray", 1.5, "thresholds.default.chest_xray"),
    ("cxr4", "default_profile", "nope", "default_profile"), ("cxr4", "default_profile", 3, "default_profile"),
    ("nih14", "bias", {"Mass": NAN}, "bias.Mass"), ("nih14", "bias", {"Mass": INF}, "bias.Mass"),
    ("nih14", "bias", {"Mass": "x"}, "bias.Mass"), ("nih14", "bias", {"Nope": 0.1}, "bias.Nope"),
    ("nih14", "bias", [0.1], "bias"),
    ("cxr4", "labels", None, "labels"), ("cxr4", "labels", "COVID-19", "labels"), ("cxr4", "labels", [], "labels"),
    ("cxr4", "labels", ["COVID-19", "COVID-19", "Normal", "Pneumonia"], "labels"), ("cxr4", "labels", [1, 2, 3, 4], "labels"),
    ("cxr4", "outputs", "probs", "outputs"), ("cxr4", "outputs", {}, "outputs"),
    ("cxr4", "outputs", {"probs": -1}, "outputs.probs"), ("cxr4", "outputs", {"probs": "0"}, "outputs.probs"),
    ("cxr4", "outputs", {"probs": True}, "outputs.probs"),
    ("cxr4", "activation", "relu", "activation"), ("cxr4", "activation", None, "activation"),
    ("gate", "input", "224", "input"), ("gate", "input.size", "224", "input"), ("gate", "input.size", 0, "input"),
    ("gate", "input.channels", 2, "input"), ("gate", "input.scale", NAN, "input.scale"),
    ("gate", "input.scale", 0, "input"), ("gate", "input.offset", INF, "input.offset"),
    ("gate", "schema_version", "2", "schema_version"), ("gate", "schema_version", 99, "newer"),
    ("gate", "task", 7, "task"), ("gate", "extras", [], "extras"), ("gate", "quantization", "int8", "quantization"),
    ("gate", "labels", DELETE, "lacks labels"),
]


@pytest.mark.parametrize("slot, where, value, text", BAD_VALUES,
                         ids=[f"{s}-{w}={v!r}"[:60] for s, w, v, _ in BAD_VALUES])
def test_cause06_07_bad_metadata_values_and_types_are_refused_at_load(tmp_path, slot, where, value, text):
    """A pack that passes its checksums but carries a value that would silently change every answer (or a type
    that crashed the loader with 'Internal error') is refused, and the message names the field."""
    pack = craft_pack(tmp_path / "p", slot, _set(where, value))
    with pytest.raises(PackError) as err:
        load_pack(pack)
    assert text in str(err.value)


@pytest.mark.parametrize("where, value", [("temperature", 0.0), ("temperature", NAN), ("bias", {"Mass": NAN}),
                                          ("thresholds", 1.01), ("thresholds", -1.0)])
def test_cause06_write_pack_refuses_bad_values(bundled, tmp_path, where, value):
    """The toolkit's own write_pack refuses what it would refuse to load (it wrote such packs before)."""
    pack = load_pack(bundled)
    models = {s: (m.content, m.metadata) for s, m in pack.models.items()}
    meta = pack["nih14"].metadata
    if where == "thresholds":
        meta.thresholds[meta.default_profile]["Mass"] = value
    else:
        setattr(meta, where, value)
    with pytest.raises(PackError, match=where):
        write_pack(tmp_path / "out", models)
    assert not (tmp_path / "out").exists()


def test_cause06_labels_must_match_the_model_outputs(tmp_path):
    # 'probs' pointing at the feature map: the labels no longer match what the model outputs
    pack = craft_pack(tmp_path / "p", "cxr4", _set("outputs", {"probs": 1, "features": 0}))
    res, _ = run_cli("predict", tmp_path / "nothing.png", "--pack", pack)
    assert_clean_failure(res, text="do not match")


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_cause06_json_output_never_prints_nan(value):
    from cxr_edge.cli import json_text

    import numpy as np

    text = json_text({"a": value, "b": [1.0, value], "c": np.float32(value), "d": {"e": np.array([value, 2.0])}})
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": None, "d": {"e": [None, 2.0]}}


def test_cause06_digest_removed_and_fields_edited_is_refused(bundled, tmp_path):
    pack = copy_pack(tmp_path / "p", bundled)
    manifest = read_manifest(pack)
    del manifest[FIELDS_KEY]
    manifest["extra"] = {"quality_spec": {"blur_fail": 0.0, "blur_warn": 0.0}}
    manifest["license"] = "public domain"
    write_manifest(pack, manifest, rehash=False)
    with pytest.raises(PackError, match=FIELDS_KEY):
        load_pack(pack)


def test_cause06_digest_removed_alone_is_refused(bundled, tmp_path):
    pack = copy_pack(tmp_path / "p", bundled)
    manifest = read_manifest(pack)
    del manifest[FIELDS_KEY]
    write_manifest(pack, manifest, rehash=False)
    with pytest.raises(PackError, match=FIELDS_KEY):
        load_pack(pack)


# --------------------------------------------------------------------------- manifest types (cause 7)


def _entry(field, value):
    def mutate(m):
        m["models"]["gate"][field] = value
        return m
    return mutate


def _top(field, value):
    def mutate(m):
        m[field] = value
        return m
    return mutate


MANIFEST_CASES = [
    ("file-int", _entry("file", 7), "models.gate.file"), ("file-null", _entry("file", None), "file"),
    ("file-traversal", _entry("file", "../gate.tflite"), "plain file name"),
    ("file-absolute", _entry("file", "/etc/passwd"), "plain file name"),
    ("file-subdir", _entry("file", "sub/gate.tflite"), "plain file name"),
    ("file-hidden", _entry("file", ".gate.tflite"), "plain file name"),
    ("file-empty", _entry("file", ""), "plain file name"),
    ("sha-int", _entry("sha256", 5), "models.gate.sha256"), ("sha-wrong", _entry("sha256", "0" * 64), "checksum"),
    ("bytes-str", _entry("bytes", "12"), "models.gate.bytes"), ("bytes-neg", _entry("bytes", -1), "bytes"),
    ("bytes-huge", _entry("bytes", 2**40), "bytes"), ("bytes-bool", _entry("bytes", True), "models.gate.bytes"),
    ("metadata-list", _entry("metadata", []), "models.gate.metadata"),
    ("task-int", _entry("task", 3), "models.gate.task"),
    ("models-str", _top("models", "gate"), "models"), ("models-list", _top("models", []), "models"),
    ("models-empty", _top("models", {}), "no models"), ("entry-list", lambda m: {**m, "models": {"gate": []}}, "not an object"),
    ("format", _top("format", "other"), "not a cxr-edge model pack"),
    ("version-str", _top("format_version", "1"), "format version"),
    ("version-2", _top("format_version", 2), "format version"), ("version-bool", _top("format_version", True), "format version"),
    ("name-int", _top("name", 5), "'name'"), ("extra-str", _top("extra", "x"), "'extra'"),
    ("license-list", _top("license", ["a"]), "'license'"), ("digest-int", _top(FIELDS_KEY, 1), FIELDS_KEY),
    ("slot-unknown", lambda m: {**m, "models": {"gate": m["models"]["gate"], "cat": m["models"]["cxr4"]}}, "slot"),
]


@pytest.mark.parametrize("name, mutate, text", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_cause07_manifest_type_errors_are_pack_errors(bundled, tmp_path, name, mutate, text):
    pack = copy_pack(tmp_path / "p", bundled)
    write_manifest(pack, mutate(read_manifest(pack)), rehash=name != "digest-int")
    with pytest.raises(PackError) as err:
        load_pack(pack)
    assert text in str(err.value)


@pytest.mark.parametrize("content, text", [
    (b"", "not valid JSON"), (b"\xff\xfe\x00garbage", "not valid JSON"), (b"[1, 2]", "not a pack manifest"),
    (b"[" * 100000 + b"]" * 100000, "manifest"), (b'"pack"', "not a pack manifest"), (b"null", "not a pack manifest"),
    (b'{"format": "cxr-edge-pack", "format_version": 1, "models": {"gate": {"file": "gate.tflite"}}}', "sha256"),
], ids=["empty", "binary", "list", "deep", "string", "null", "no-sha"])
def test_cause07_damaged_manifests(bundled, tmp_path, content, text):
    pack = copy_pack(tmp_path / "p", bundled)
    (pack / "manifest.json").write_bytes(content)
    with pytest.raises(PackError) as err:
        load_pack(pack)
    assert text in str(err.value)


@pytest.mark.parametrize("kind", ["directory", "fifo", "socket", "symlink-outside", "missing", "devnull-link",
                                  "oversized"])
def test_cause07_a_model_file_that_is_not_a_file(bundled, tmp_path, kind, monkeypatch):
    pack = copy_pack(tmp_path / "p", bundled)
    target = pack / "gate.tflite"
    target.unlink()
    sock = None
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        make_fifo(target)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(target))
    elif kind == "symlink-outside":
        (tmp_path / "outside.tflite").write_bytes((bundled / "gate.tflite").read_bytes())
        os.symlink(tmp_path / "outside.tflite", target)
    elif kind == "devnull-link":
        os.symlink("/dev/zero", target)
    elif kind == "oversized":
        from cxr_edge.runtime import pack as pack_mod

        target.write_bytes((bundled / "gate.tflite").read_bytes())
        monkeypatch.setattr(pack_mod, "MAX_MEMBER_BYTES", 1000)
    try:
        with pytest.raises(PackError):
            load_pack(pack)
    finally:
        if sock:
            sock.close()


def test_cause07_metadata_that_is_not_an_object_or_not_json(tmp_path):
    for i, raw in enumerate([b"[1]", b"\xff\xfe", b"{", b'"x"']):
        pack = craft_pack(tmp_path / f"p{i}", "gate", None, raw=raw)
        with pytest.raises(PackError):
            load_pack(pack)


def test_cause07_cli_exit_codes_are_not_70(tmp_path):
    """The type errors of the issue ('file': 7, a .tflite that is a directory, outputs as a string, labels
    null) through the CLI: exit 2 with a message, not 70 'Internal error'."""
    packs = [craft_pack(tmp_path / "outputs", "cxr4", _set("outputs", "probs")),
             craft_pack(tmp_path / "labels", "cxr4", _set("labels", None))]
    file7 = copy_pack(tmp_path / "file7")
    write_manifest(file7, _entry("file", 7)(read_manifest(file7)))
    packs.append(file7)
    folder = copy_pack(tmp_path / "folder")
    (folder / "gate.tflite").unlink()
    (folder / "gate.tflite").mkdir()
    packs.append(folder)
    for pack in packs:
        for args in (["info", str(pack)], ["predict", "x.png", "--pack", str(pack)]):
            res = CliRunner().invoke(main, args)
            assert res.exit_code == 2 and "Error:" in res.output and "Internal" not in res.output, (args, res.output)


# --------------------------------------------------------------------------- zip packs (cause 5)


def _pack_members(bundled) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(bundled.iterdir()) if p.suffix != ".md"}


def test_cause05_a_zip_bomb_member_is_refused_before_inflating(bundled, tmp_path):
    """A 3 GiB member in a few MB: refused from the zip's directory (it reached 3.2 GB, then MemoryError)."""
    members = _pack_members(bundled)
    path = tmp_path / "bomb.zip"
    path.write_bytes(zip_with_zeros("gate.tflite", 3 * 2**30, {k: v for k, v in members.items() if k != "gate.tflite"}))
    assert path.stat().st_size < 20e6
    res, peak = run_cli("info", path)
    assert_clean_failure(res, text="gate.tflite")
    assert peak < 300, peak


@pytest.mark.parametrize("case", ["ratio", "total", "lying-size", "manifest-bomb", "encrypted-flag", "not-a-zip",
                                  "empty-zip", "truncated-zip", "traversal-name", "two-tops"])
def test_cause05_crafted_zips(bundled, tmp_path, case, monkeypatch):
    from cxr_edge.runtime import safezip

    members = _pack_members(bundled)
    path = tmp_path / "pack.zip"
    if case == "ratio":
        data = zip_with_zeros("gate.tflite", 200 * 2**20, {k: v for k, v in members.items() if k != "gate.tflite"})
    elif case == "total":
        monkeypatch.setattr(safezip, "MAX_TOTAL_BYTES", 4 * 2**20)
        data = zip_bytes(members)
    elif case == "lying-size":
        data = zip_lying_about_size("manifest.json", members["manifest.json"], 10)
    elif case == "manifest-bomb":
        data = zip_with_zeros("manifest.json", 300 * 2**20)
    elif case == "encrypted-flag":
        raw = bytearray(zip_bytes(members))
        for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            start = 0
            while (i := raw.find(sig, start)) >= 0:
                raw[i + off] |= 1
                start = i + 4
        data = bytes(raw)
    elif case == "not-a-zip":
        data = os.urandom(5000)
    elif case == "empty-zip":
        data = zip_bytes({})
    elif case == "truncated-zip":
        data = zip_bytes(members)[: 3_000_000]
    elif case == "traversal-name":
        data = zip_bytes({"../manifest.json": members["manifest.json"]})
    else:
        data = zip_bytes({f"a/{k}": v for k, v in members.items()} | {"b/x": b"1"})
    path.write_bytes(data)
    with pytest.raises(PackError):
        load_pack(path)


def test_cause05_a_good_zip_pack_still_loads(bundled, tmp_path):
    path = tmp_path / "good.zip"
    path.write_bytes(zip_bytes(_pack_members(bundled)))
    assert load_pack(path).name == load_pack(bundled).name
    nested = tmp_path / "nested.zip"
    nested.write_bytes(zip_bytes({f"default/{k}": v for k, v in _pack_members(bundled).items()}))
    assert set(load_pack(nested).models) == {"gate", "cxr4", "nih14"}


def test_cause05_a_bomb_inside_the_embedded_metadata_is_refused(bundled):
    """The .tflite's own metadata archive is a zip too: a 300 MiB member in it is refused the same way."""
    bare, _ = md.split_model((bundled / "gate.tflite").read_bytes())
    for member in ("metadata.json", "head.npz"):
        others = {"metadata.json": b"{}"} if member != "metadata.json" else None
        bomb = bare + _with_comment(zip_with_zeros(member, 300 * 2**20, others), len(bare))
        assert md.split_model(bomb)[1] is not None       # it is found as the model's metadata archive
        with pytest.raises(PackError, match="300 MiB|ratio"):
            md.read(bomb, source="bomb.tflite")


def _with_comment(archive: bytes, model_bytes: int) -> bytes:
    import io

    buf = io.BytesIO(archive)
    with zipfile.ZipFile(buf, "a") as zf:
        zf.comment = b"cxr-edge model_bytes=%d" % model_bytes
    return buf.getvalue()


@pytest.mark.parametrize("member", ["head.npz", "ood.npz"])
def test_cause05_npz_members_are_bounded_and_checked(tmp_path, member):
    import io

    import numpy as np

    from cxr_edge.runtime.cam import Head
    from cxr_edge.runtime.ood import OODStats

    bomb = zip_with_zeros("kernel.npy", 200 * 2**20)
    buf = io.BytesIO()
    np.savez(buf, kernel=np.full((4, 2), np.nan, np.float32), bias=np.zeros(2, np.float32),
             class_means=np.zeros((2, 4), np.float32), components=np.zeros((4, 2), np.float32),
             variances=np.zeros(2, np.float32), residual_var=np.float32(0), threshold=np.float32(np.nan))
    for data in (bomb, buf.getvalue(), b"not a zip"):
        with pytest.raises(PackError):
            if member == "head.npz":
                Head.from_npz(data, activation="sigmoid", num_labels=2)
            else:
                OODStats.from_npz(data)


@pytest.mark.parametrize("target", ["/dev/null", "/dev/zero", "fifo", "socket", "missing", "empty-dir",
                                    "random-file", "unreadable-dir"])
def test_cause07_pack_paths_that_are_not_packs(tmp_path, target):
    sock = None
    if target == "fifo":
        path = make_fifo(tmp_path / "fifo")
    elif target == "socket":
        path = tmp_path / "sock"
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
    elif target == "missing":
        path = tmp_path / "nope"
    elif target == "empty-dir":
        path = tmp_path / "empty"
        path.mkdir()
    elif target == "random-file":
        path = tmp_path / "x.zip"
        path.write_bytes(os.urandom(100))
    elif target == "unreadable-dir":
        path = tmp_path / "locked"
        copy_pack(path)
        (path / "manifest.json").chmod(0)
    else:
        path = target
    try:
        prefix = unprivileged_prefix() if target == "unreadable-dir" else ()
        env_res, _ = run_cli("info", path, timeout=60, prefix=prefix)
        assert env_res.returncode == 2 and "Internal error" not in env_res.stderr, env_res.stderr[-2000:]
        if target == "unreadable-dir" and os.geteuid() == 0:
            return   # root reads it anyway; the unprivileged case is below
        with pytest.raises(PackError):
            load_pack(path)
    finally:
        if sock:
            sock.close()


def test_cause08_pack_env_pointing_at_dev_null_is_a_clean_error():
    from conftest import cli_env

    res, _ = run_cli("predict", "x.png", env=cli_env(CXR_EDGE_PACK="/dev/null"))
    assert_clean_failure(res, text="character device")


def test_unreadable_pack_file_as_a_normal_user(tmp_path):
    from conftest import unprivileged_prefix

    pack = copy_pack(tmp_path / "p")
    (pack / "gate.tflite").chmod(0)
    res, _ = run_cli("info", pack, prefix=unprivileged_prefix())
    assert_clean_failure(res, text="Permission denied")


def test_values_that_were_valid_still_load(bundled, tmp_path):
    """The checks refuse nothing a real pack holds: every bundled value, and the edge values 0 and 1 for a
    classifier's threshold, a tiny temperature, large offsets."""
    pack = craft_pack(tmp_path / "p", "nih14", lambda m: {**m, "temperature": 1e-3,
                                                           "bias": {"Mass": -30.0, "Hernia": 12.5},
                                                           "thresholds": {"balanced": {"Mass": 0.0, "Hernia": 1.0}}})
    meta = load_pack(pack)["nih14"].metadata
    assert meta.temperature == 1e-3 and meta.thresholds["balanced"]["Hernia"] == 1.0
    assert math.isfinite(meta.bias["Mass"])
