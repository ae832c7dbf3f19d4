"""Signed model packs: who made a pack, not only that it arrived intact.

A pack's checksums say its files match its manifest; anyone who edits a pack
can recompute them. A signature says *who* vouches for the pack: the
publisher signs it with an Ed25519 private key (``cxr-edge pack sign``), and a
device that trusts the matching public key (``trusted_keys`` in its config)
can refuse every pack that someone else made or changed
(``require_signed``, or ``--require-signed``).

The signature is ``signature.json`` inside the pack::

    {"payload": {"format": "cxr-edge-pack-signature", "version": 1, "pack": NAME,
                 "files": {"manifest.json": SHA256, "gate.tflite": SHA256, ...},
                 "public_key": "ed25519:BASE64", "key_id": HEX16, "signer": TEXT, "signed_at": UTC},
     "signature": BASE64}

``files`` lists the sha256 of every other file in the pack, ``manifest.json``
included, so it covers every model, every manifest field (name, licence,
thresholds in ``extra``...) and every other file (the model card); the
signature is Ed25519 over the canonical JSON of ``payload``. Verification
recomputes every file's sha256 and refuses a pack with a file changed,
added or removed. This module checks signatures (what a device does);
:mod:`cxr_edge.tools.pack_signing` makes keys and signs packs (what a publisher does).

Keys: the private key is a PKCS#8 PEM file (mode 0600), the public key one
line ``ed25519:BASE64`` (the raw 32-byte key), which is what ``trusted_keys``
holds. Ed25519 comes from the ``cryptography`` package, imported only when a
key is made, a pack is signed or a signature is checked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass, field

from ..config import parse_public_key
from ..errors import ConfigError, PackError

log = logging.getLogger(__name__)

__all__ = ["canonical", "check_signature", "ed25519_api", "file_digests", "key_id", "public_key_text", "SIGNATURE",
           "SIGNATURE_FORMAT", "SIGNATURE_VERSION", "SignatureError", "SignatureInfo", "TrustPolicy"]

SIGNATURE = "signature.json"
SIGNATURE_FORMAT = "cxr-edge-pack-signature"
SIGNATURE_VERSION = 1


class SignatureError(PackError):
    """A pack that is unsigned where a signature is required, signed by an untrusted key, or whose
    signature does not match its files."""


@dataclass(frozen=True)
class TrustPolicy:
    """What a device accepts: ``trusted_keys`` ({name: 'ed25519:BASE64'}) and whether a pack must be signed
    by one of them."""

    require_signed: bool = False
    trusted_keys: dict = field(default_factory=dict)
    origin: str = "defaults"

    @classmethod
    def from_config(cls, require_signed: bool = False) -> "TrustPolicy":
        """The config file's ``require_signed`` and ``trusted_keys``; ``require_signed=True`` (the CLI's
        ``--require-signed``) can only make the policy stricter."""
        from ..config import config_path, read_config

        cfg = read_config()
        keys = cfg.get("trusted_keys") or {}
        return cls(require_signed=bool(require_signed or cfg.get("require_signed", False)),
                   trusted_keys=dict(keys), origin=f"config file {config_path()}")

    def name_of(self, public_key: str) -> str | None:
        for name, key in self.trusted_keys.items():
            if key.strip() == public_key:
                return name
        return None


@dataclass(frozen=True)
class SignatureInfo:
    """The outcome of checking a pack's signature."""

    signed: bool
    key_id: str = ""
    public_key: str = ""
    signer: str = ""
    signed_at: str = ""
    trusted_as: str | None = None

    def to_dict(self) -> dict:
        if not self.signed:
            return {"signed": False}
        return {"signed": True, "key_id": self.key_id, "public_key": self.public_key, "signer": self.signer,
                "signed_at": self.signed_at, "trusted": self.trusted_as is not None, "trusted_as": self.trusted_as}

    def describe(self) -> str:
        if not self.signed:
            return "unsigned"
        who = f"trusted as {self.trusted_as!r}" if self.trusted_as else "NOT a trusted key on this device"
        return f"signed by {self.signer or 'an unnamed signer'} (key {self.key_id}, {who}) at {self.signed_at}"


# --------------------------------------------------------------------------- keys and payloads


def ed25519_api():
    """The Ed25519 parts of the cryptography package: (ed25519, serialization, InvalidSignature)."""
    try:
        from cryptography.exceptions import InvalidSignature
    except ImportError as exc:
        from ..errors import DependencyError

        raise DependencyError(f"signing and checking model pack signatures needs the Python package 'cryptography', "
                              f"which is not installed ({exc}). Install it with: pip install cryptography") from exc
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519, serialization, InvalidSignature


def public_key_text(raw: bytes) -> str:
    """The one-line form of a raw 32-byte Ed25519 public key, as ``trusted_keys`` holds it."""
    return "ed25519:" + base64.b64encode(raw).decode("ascii")


def key_id(public_key: str) -> str:
    """A short fingerprint of a public key (16 hex digits of its sha256), for messages."""
    return hashlib.sha256(parse_public_key(public_key)).hexdigest()[:16]


# --------------------------------------------------------------------------- checking


def canonical(payload: dict) -> bytes:
    """The exact bytes that are signed."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def file_digests(files: dict[str, bytes]) -> dict[str, str]:
    """{name: sha256} of a pack's files, less its signature."""
    return {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items()) if name != SIGNATURE}


def check_signature(files: dict[str, bytes], policy: TrustPolicy, *, source: str,
                    warn_untrusted: bool = True) -> SignatureInfo:
    """Check a pack's signature (``files``: every file of the pack, {name: bytes}) against ``policy``.

    A signature that does not match the files is always refused; an unsigned
    pack or one signed by a key outside ``policy.trusted_keys`` is refused
    only when ``policy.require_signed`` (else the second is logged)."""
    if SIGNATURE not in files:
        if policy.require_signed:
            raise SignatureError(f"{source} is not signed, and this device accepts only signed packs "
                                 f"(require_signed, from {policy.origin} or --require-signed). Ask the pack's "
                                 "publisher for the signed pack, or sign it: cxr-edge pack sign PACK --key KEY.")
        return SignatureInfo(signed=False)
    payload, sig = _parse(files[SIGNATURE], source)
    public = payload["public_key"]
    ed25519, _, InvalidSignature = ed25519_api()
    try:
        raw = parse_public_key(public, where=f"{source}/{SIGNATURE} public_key")
        ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(sig, canonical(payload))
    except (InvalidSignature, ConfigError, ValueError) as exc:
        raise SignatureError(f"{source}: its signature is not valid ({type(exc).__name__}{': ' if str(exc) else ''}"
                             f"{exc}): {SIGNATURE} was made for other content or edited. Do not use this pack; "
                             "get it again from its publisher.") from None
    _compare_files(payload["files"], file_digests(files), source)
    info = SignatureInfo(True, key_id(public), public, str(payload.get("signer", "")),
                         str(payload.get("signed_at", "")), policy.name_of(public))
    if info.trusted_as is None:
        if policy.require_signed:
            raise SignatureError(f"{source} is signed by key {info.key_id} ({info.signer or 'unnamed'}), which is not "
                                 f"among this device's trusted keys ({', '.join(policy.trusted_keys) or 'none'}; from "
                                 f"{policy.origin}). If you trust its publisher, add "
                                 f"\"{public}\" to trusted_keys in the config file.")
        if warn_untrusted:
            log.warning("%s is signed by key %s, which is not a trusted key here: its origin is not verified",
                        source, info.key_id)
    return info


def _parse(data: bytes, source: str) -> tuple[dict, bytes]:
    try:
        body = json.loads(data)
        payload, sig = body["payload"], base64.b64decode(body["signature"], validate=True)
        ok = (isinstance(payload, dict) and payload.get("format") == SIGNATURE_FORMAT
              and isinstance(payload.get("files"), dict) and isinstance(payload.get("public_key"), str)
              and all(isinstance(k, str) and isinstance(v, str) for k, v in payload["files"].items()))
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{source}/{SIGNATURE} is damaged ({type(exc).__name__}: {exc}); get the pack again "
                             "from its publisher") from None
    if not ok:
        raise SignatureError(f"{source}/{SIGNATURE} is not a cxr-edge pack signature; get the pack again from its "
                             "publisher")
    if payload.get("version") != SIGNATURE_VERSION:
        raise SignatureError(f"{source}/{SIGNATURE} has signature version {payload.get('version')!r}; this cxr-edge "
                             f"reads version {SIGNATURE_VERSION}. Upgrade: pip install -U cxr-edge")
    return payload, sig


def _compare_files(signed: dict, actual: dict, source: str) -> None:
    changed = sorted(n for n in signed if n in actual and signed[n] != actual[n])
    missing = sorted(set(signed) - set(actual))
    added = sorted(set(actual) - set(signed))
    if changed or missing or added:
        parts = [f"{what}: {', '.join(names)}" for what, names in
                 (("changed", changed), ("missing", missing), ("not signed", added)) if names]
        raise SignatureError(f"{source} no longer matches its signature ({'; '.join(parts)}). Do not use it; get "
                             "the pack again from its publisher.")
