"""Making signing keys and signing model packs: what a pack's publisher does (:mod:`cxr_edge.runtime.signing` has the
format, and the checks a device makes)."""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from ..errors import PackError
from ..runtime.signing import (SIGNATURE, SIGNATURE_FORMAT, SIGNATURE_VERSION, SignatureInfo, TrustPolicy, canonical,
                      check_signature, ed25519_api, file_digests, key_id, public_key_text)


__all__ = ["generate_key", "make_signature", "sign_pack"]


def generate_key(out, *, overwrite: bool = False) -> tuple[Path, Path, str]:
    """Make a key pair: ``out`` (private, PKCS#8 PEM, mode 0600) and ``out.pub`` (the public key line).

    Returns (private path, public path, public key text)."""
    from ..runtime.atomic import write_atomic

    ed25519, serialization, _ = ed25519_api()
    out = Path(out)
    pub_path = out.with_name(out.name + ".pub")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    text = public_key_text(raw)
    write_atomic(out, pem, overwrite=overwrite, mode=0o600)
    write_atomic(pub_path, (text + "\n").encode(), overwrite=overwrite)
    return out, pub_path, text


def _load_private_key(path):
    ed25519, serialization, _ = ed25519_api()
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PackError(f"cannot read the signing key {path} ({exc.strerror or exc}); make one with "
                        "cxr-edge pack keygen --out KEY") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PackError(f"{path} is not an unencrypted PEM private key ({exc}); pass the private key file "
                        "cxr-edge pack keygen wrote (not the .pub file)") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise PackError(f"{path} holds a {type(key).__name__}, not an Ed25519 key; make one with cxr-edge pack keygen")
    return key


def make_signature(files: dict[str, bytes], key_path, *, pack_name: str, signer: str = "") -> bytes:
    """The ``signature.json`` bytes that sign ``files`` ({name: bytes}) with the private key at ``key_path``."""
    _, serialization, _ = ed25519_api()
    key = _load_private_key(key_path)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    public = public_key_text(raw)
    payload = {"format": SIGNATURE_FORMAT, "version": SIGNATURE_VERSION, "pack": pack_name,
               "files": file_digests(files), "public_key": public, "key_id": key_id(public),
               "signer": signer, "signed_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat()}
    sig = key.sign(canonical(payload))
    body = {"payload": payload, "signature": base64.b64encode(sig).decode("ascii")}
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()


def sign_pack(path, key_path, *, signer: str = "") -> SignatureInfo:
    """Sign the pack at ``path`` (a folder or .zip) in place; returns what a device will see."""
    from ..runtime.pack import load_pack, pack_files
    from .pack_writer import replace_pack_file

    pack = load_pack(path, verify_signature=False)   # a pack is signed only once its files verify
    files = pack_files(pack.path)
    files.pop(SIGNATURE, None)      # signing again replaces an earlier signature
    data = make_signature(files, key_path, pack_name=pack.name, signer=signer)
    replace_pack_file(pack.path, SIGNATURE, data)
    files[SIGNATURE] = data
    trusted = TrustPolicy.from_config().trusted_keys
    return check_signature(files, TrustPolicy(trusted_keys=trusted), source=os.fspath(pack.path), warn_untrusted=False)
