"""``cxr-edge pack``: make signing keys, sign model packs, check their signatures."""

from __future__ import annotations

import click

from . import json_text

__all__ = ["pack"]

_path = click.Path(path_type=str, readable=False)


@click.group()
def pack():
    """Sign model packs so that devices can tell who made them.

    \b
    The workflow (the README's "Signed packs" section has it in full):
      cxr-edge pack keygen --out publisher.key     # once: publisher.key (secret) + publisher.key.pub
      cxr-edge pack sign my_pack --key publisher.key --signer "Radiology AI team"
      cxr-edge pack verify my_pack                 # on a device: signer, key, trusted or not
    A device trusts the key by listing the .pub line in its config file
    ({"trusted_keys": {"radiology-ai": "ed25519:..."}, "require_signed": true});
    then predict, info and the app refuse unsigned packs and packs signed by any other key.
    """


@pack.command()
@click.option("--out", "out", required=True, type=_path,
              help="The private key file to write (mode 0600); the public key goes to OUT.pub.")
@click.option("--force", is_flag=True, help="Replace existing key files.")
def keygen(out, force):
    """Make an Ed25519 signing key pair: OUT (keep it secret) and OUT.pub (give it to devices)."""
    from ..tools.pack_signing import generate_key
    from ..runtime.signing import key_id

    private, public, text = generate_key(out, overwrite=force)
    click.echo(f"private key {private} (keep it secret: whoever has it can sign packs)")
    click.echo(f"public key  {public} (key {key_id(text)}); put it in a device's config file:")
    click.echo(f'  "trusted_keys": {{"{_name_hint(private)}": "{text}"}}')


def _name_hint(path) -> str:
    from pathlib import Path

    return Path(path).stem or "publisher"


@pack.command()
@click.argument("pack_path", metavar="PACK", type=_path)
@click.option("--key", "key", required=True, type=_path, help="The private key file from cxr-edge pack keygen.")
@click.option("--signer", default="", help="Who signs, as devices will show it (e.g. an organisation).")
def sign(pack_path, key, signer):
    """Sign PACK (a folder or .zip) in place: its files are verified, then signature.json is added.

    The signature covers the sha256 of every file of the pack, manifest.json
    included (so every manifest field). Rewriting a pack (cxr-edge calibrate,
    cxr-edge ood fit) drops the signature: sign it again afterwards.
    """
    from ..tools.pack_signing import sign_pack

    info = sign_pack(pack_path, key, signer=signer)
    click.echo(f"{pack_path}: {info.describe()}")


@pack.command()
@click.argument("pack_path", metavar="PACK", required=False, type=_path)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def verify(pack_path, as_json):
    """Check PACK's checksums and signature against this device's trusted keys (default: the pack predict
    would use). Exit 0 only when it is signed by a trusted key; 2 otherwise, with the reason."""
    from ..config import resolve_pack
    from ..runtime.pack import load_pack
    from ..runtime.signing import TrustPolicy

    path, _ = resolve_pack(pack_path)
    loaded = load_pack(path, trust=TrustPolicy.from_config(require_signed=True))
    if as_json:
        click.echo(json_text(dict(loaded.signature.to_dict(), pack=str(path))))
    else:
        click.echo(f"{path}: checksums OK; {loaded.signature.describe()}")
