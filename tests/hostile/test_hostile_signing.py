"""Signed packs: keygen, sign, verify, and a device that refuses unsigned packs and packs from unknown keys."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from conftest import assert_clean_failure, cli_env, json_rows, run_cli
from hostile_corpus import copy_pack, read_manifest, write_manifest, zip_bytes

from cxr_edge.cli import main
from cxr_edge.errors import PackError
from cxr_edge.runtime.pack import load_pack
from cxr_edge.tools.pack_signing import generate_key, sign_pack
from cxr_edge.runtime.signing import SIGNATURE, SignatureError, TrustPolicy, key_id

pytest.importorskip("cryptography", reason="signing needs the cryptography package (pip install cryptography)")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    _, _, publisher = generate_key(d / "publisher.key")
    _, _, stranger = generate_key(d / "stranger.key")
    return {"dir": d, "publisher": publisher, "stranger": stranger}


@pytest.fixture
def signed(tmp_path, bundled, keys):
    pack = copy_pack(tmp_path / "pack", bundled)
    (pack / "MODEL_CARD.md").write_text("# card\n")
    sign_pack(pack, keys["dir"] / "publisher.key", signer="Radiology AI team")
    return pack


def trust(keys, require=True, name="publisher"):
    return TrustPolicy(require_signed=require, trusted_keys={name: keys[name]})


def test_keygen_writes_a_secret_private_key_and_a_public_line(keys):
    private = keys["dir"] / "publisher.key"
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    assert (keys["dir"] / "publisher.key.pub").read_text().strip() == keys["publisher"]
    assert keys["publisher"].startswith("ed25519:") and len(key_id(keys["publisher"])) == 16
    with pytest.raises(Exception, match="--force"):
        generate_key(private)


def test_a_signed_pack_verifies_against_its_trusted_key(signed, keys):
    pack = load_pack(signed, trust=trust(keys))
    assert pack.signature.trusted_as == "publisher" and pack.signature.signer == "Radiology AI team"
    assert pack.describe()["signature"]["trusted"] is True


def test_require_signed_refuses_an_unsigned_pack(bundled, tmp_path, keys):
    with pytest.raises(SignatureError, match="not signed"):
        load_pack(bundled, trust=trust(keys))


def test_require_signed_refuses_a_pack_from_an_unknown_key(signed, keys):
    with pytest.raises(SignatureError, match="not among this device's trusted keys"):
        load_pack(signed, trust=trust(keys, name="stranger"))
    pack = load_pack(signed, trust=TrustPolicy(trusted_keys={"stranger": keys["stranger"]}))  # not required: loads
    assert pack.signature.trusted_as is None


@pytest.mark.parametrize("tamper", ["model-card-edited", "file-added", "file-removed", "manifest-field-rehashed",
                                    "signer-edited", "signature-garbage", "signature-swapped-key",
                                    "signature-not-json", "signature-version", "signature-a-folder"])
def test_any_change_after_signing_is_refused_even_when_not_required(signed, keys, tamper):
    sig_path = signed / SIGNATURE
    body = json.loads(sig_path.read_text())
    if tamper == "model-card-edited":
        (signed / "MODEL_CARD.md").write_text("# a different card\n")
    elif tamper == "file-added":
        (signed / "extra.bin").write_bytes(b"x")
    elif tamper == "file-removed":
        (signed / "MODEL_CARD.md").unlink()
    elif tamper == "manifest-field-rehashed":
        manifest = read_manifest(signed)
        manifest["license"] = "anything goes"
        write_manifest(signed, manifest)          # digest recomputed: the checksums pass, the signature does not
    elif tamper == "signer-edited":
        body["payload"]["signer"] = "Someone Else"
        sig_path.write_text(json.dumps(body))
    elif tamper == "signature-garbage":
        body["signature"] = "AAAA" + body["signature"][4:]
        sig_path.write_text(json.dumps(body))
    elif tamper == "signature-swapped-key":
        body["payload"]["public_key"] = keys["stranger"]
        sig_path.write_text(json.dumps(body))
    elif tamper == "signature-not-json":
        sig_path.write_bytes(b"\xff\x00")
    elif tamper == "signature-version":
        body["payload"]["version"] = 99
        sig_path.write_text(json.dumps(body))
    else:
        sig_path.unlink()
        sig_path.mkdir()
    for policy in (TrustPolicy(), trust(keys)):
        with pytest.raises(PackError):
            load_pack(signed, trust=policy)


def test_a_zip_pack_is_signed_and_verified(bundled, tmp_path, keys):
    path = tmp_path / "pack.zip"
    path.write_bytes(zip_bytes({p.name: p.read_bytes() for p in bundled.iterdir()}))
    sign_pack(path, keys["dir"] / "publisher.key")
    assert load_pack(path, trust=trust(keys)).signature.trusted_as == "publisher"
    with pytest.raises(SignatureError):
        load_pack(path, trust=trust(keys, name="stranger"))


def test_signing_again_replaces_the_signature_and_rewriting_drops_it(signed, keys):
    from cxr_edge.tools.pack_writer import rewrite_metadata

    sign_pack(signed, keys["dir"] / "stranger.key")
    assert load_pack(signed, trust=trust(keys, name="stranger")).signature.trusted_as == "stranger"
    rewrite_metadata(signed, {})
    assert not (signed / SIGNATURE).exists()
    with pytest.raises(SignatureError, match="not signed"):
        load_pack(signed, trust=trust(keys))


def test_signing_refuses_a_damaged_pack_and_a_wrong_key(bundled, tmp_path, keys):
    pack = copy_pack(tmp_path / "p", bundled)
    with pytest.raises(PackError, match="not an unencrypted PEM"):
        sign_pack(pack, keys["dir"] / "publisher.key.pub")
    with pytest.raises(PackError, match="cannot read the signing key"):
        sign_pack(pack, keys["dir"] / "nope.key")
    (pack / "gate.tflite").write_bytes(b"x")
    with pytest.raises(PackError):
        sign_pack(pack, keys["dir"] / "publisher.key")
    assert not (pack / SIGNATURE).exists()


def test_end_to_end_through_the_cli(bundled, tmp_path):
    """keygen -> sign -> trust in the config -> predict --require-signed accepts; an unsigned pack and a pack
    from another key are refused (exit 2), by the flag and by the config switch alike."""
    from PIL import Image

    image = tmp_path / "img.png"
    Image.new("L", (64, 64), 100).save(image)
    pack = copy_pack(tmp_path / "pack", bundled)
    unsigned = copy_pack(tmp_path / "unsigned", bundled)
    cfg = tmp_path / "config.json"
    cfg.write_text("{}")
    env = cli_env(CXR_EDGE_CONFIG=cfg)
    res, _ = run_cli("pack", "keygen", "--out", tmp_path / "pub.key", env=env)
    assert res.returncode == 0 and "ed25519:" in res.stdout, res.stderr
    public = (tmp_path / "pub.key.pub").read_text().strip()
    res, _ = run_cli("pack", "sign", pack, "--key", tmp_path / "pub.key", "--signer", "Team", env=env)
    assert res.returncode == 0 and "signed by Team" in res.stdout, res.stderr
    res, _ = run_cli("pack", "verify", pack, env=env)
    assert_clean_failure(res, text="not among this device's trusted keys")
    cfg.write_text(json.dumps({"trusted_keys": {"team": public}}))
    res, _ = run_cli("pack", "verify", pack, env=env)
    assert res.returncode == 0 and "trusted as 'team'" in res.stdout, res.stderr
    res, _ = run_cli("predict", image, "--pack", pack, "--require-signed", "--json", env=env)
    assert res.returncode == 0 and len(json_rows(res.stdout)) == 1, res.stderr
    res, _ = run_cli("predict", image, "--pack", unsigned, "--require-signed", env=env)
    assert_clean_failure(res, text="is not signed")
    cfg.write_text(json.dumps({"trusted_keys": {"team": public}, "require_signed": True}))
    res, _ = run_cli("predict", image, "--pack", unsigned, env=env)
    assert_clean_failure(res, text="accepts only signed packs")
    res, _ = run_cli("info", unsigned, env=env)
    assert_clean_failure(res, text="is not signed")
    res, _ = run_cli("info", pack, env=env)
    assert res.returncode == 0 and "trusted as 'team'" in res.stdout
    (pack / "MODEL_CARD.md").write_text("edited\n")
    res, _ = run_cli("predict", image, "--pack", pack, env=env)
    assert_clean_failure(res, text="no longer matches its signature")


def test_pack_help_documents_the_workflow():
    res = CliRunner().invoke(main, ["pack", "--help"])
    assert res.exit_code == 0 and "keygen" in res.output and "trusted_keys" in res.output
    for sub in ("keygen", "sign", "verify"):
        assert CliRunner().invoke(main, ["pack", sub, "--help"]).exit_code == 0


def test_the_private_key_is_not_world_readable_even_with_a_lax_umask(tmp_path):
    old = os.umask(0)
    try:
        generate_key(tmp_path / "k")
    finally:
        os.umask(old)
    assert (tmp_path / "k").stat().st_mode & 0o077 == 0
