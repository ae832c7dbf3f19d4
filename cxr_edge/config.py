"""Where the model pack comes from when the user does not name one.

Order: the ``--pack`` flag, then ``$CXR_EDGE_PACK``, then ``"pack"`` in the
config file (``$CXR_EDGE_CONFIG`` or ``$XDG_CONFIG_HOME/cxr-edge/config.json``,
default ``~/.config/cxr-edge/config.json``), then the pack bundled with the
package (``cxr_edge/packs/default``).

The config file also says which packs a device accepts: ``require_signed``
(true: refuse unsigned packs and packs signed by a key not listed) and
``trusted_keys`` ({name: "ed25519:BASE64"}, see :mod:`cxr_edge.runtime.signing`).
"""

from __future__ import annotations

import base64
import importlib.resources
import json
import logging
import os
import stat
from pathlib import Path

from .errors import ConfigError, PackError, file_kind

log = logging.getLogger(__name__)

__all__ = ["BUNDLED_PACK", "KEYS", "check_config", "config_path", "package_data", "parse_public_key", "read_config",
           "resolve_pack"]


def package_data(*parts: str) -> Path:
    """A file or folder shipped inside the installed package (``packs/default``, ``resources/export``...),
    found through :mod:`importlib.resources`, so a wheel finds it as a source checkout does."""
    ref = importlib.resources.files("cxr_edge")
    for part in parts:
        ref = ref.joinpath(part)
    if not isinstance(ref, Path):   # a zipped install: packs and policies must be real files
        raise PackError(f"cxr-edge's package data ({'/'.join(parts)}) is not on the file system ({ref}); "
                        "install cxr-edge unzipped (pip install, not a zipapp)")
    return ref


BUNDLED_PACK = package_data("packs", "default")


#: The keys a config file may hold, and their JSON types.
KEYS = {"pack": str, "require_signed": bool, "trusted_keys": dict}
_EXAMPLE = ('{"pack": "/path/to/pack", "require_signed": true, '
            '"trusted_keys": {"publisher": "ed25519:BASE64..."}}')
#: A config file is a few hundred bytes; anything this large is not one.
_MAX_BYTES = 1 << 20


def config_path() -> Path:
    """``$CXR_EDGE_CONFIG``, else ``$XDG_CONFIG_HOME/cxr-edge/config.json``, else ``~/.config/cxr-edge/config.json``."""
    if os.environ.get("CXR_EDGE_CONFIG"):
        return Path(os.environ["CXR_EDGE_CONFIG"])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "cxr-edge" / "config.json"


def read_config() -> dict:
    """The config file's settings, checked ({} when there is none).

    A missing file means no config; a default location that cannot be
    searched (an unreadable ``$XDG_CONFIG_HOME``) too, with a warning. A file that exists but cannot be read or is not a
    valid config raises :class:`ConfigError`: it holds settings the user meant
    to apply (maybe ``require_signed``), so it is never skipped silently.
    """
    path = config_path()
    explicit = bool(os.environ.get("CXR_EDGE_CONFIG"))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if explicit:   # the way scripts and tests say "no config file" (it always meant that)
            log.info("CXR_EDGE_CONFIG names %s, which does not exist: no config file is used", path)
        return {}
    except OSError as exc:
        if explicit:
            raise ConfigError(f"CXR_EDGE_CONFIG names {path}, which cannot be reached ({exc.strerror or exc}); fix "
                              "its permissions or unset CXR_EDGE_CONFIG.") from exc
        log.warning("cannot look for a config file at %s (%s); going on without one. Fix the permissions of that "
                    "folder or set CXR_EDGE_CONFIG.", path, exc.strerror or exc)
        return {}
    if _is_devnull(st):   # CXR_EDGE_CONFIG=/dev/null: the usual way to say "no config file"
        return {}
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"config file {path} is {file_kind(st.st_mode)}, not a JSON file. Point CXR_EDGE_CONFIG "
                          f"at the file itself (e.g. {path / 'config.json'}), or remove it.")
    if st.st_size > _MAX_BYTES:
        raise ConfigError(f"config file {path} is {st.st_size} bytes; a config file is a small JSON object such as "
                          f"{_EXAMPLE}. Point CXR_EDGE_CONFIG at the right file.")
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read(_MAX_BYTES + 1).decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc}); fix its permissions.") from exc
    except (ValueError, RecursionError) as exc:   # JSONDecodeError, UnicodeDecodeError (a binary file)
        raise ConfigError(f"config file {path} is not valid JSON text ({type(exc).__name__}: {exc}); fix or delete "
                          f"it. Example: {_EXAMPLE}") from exc
    return check_config(data, path)


def _is_devnull(st: os.stat_result) -> bool:
    try:
        null = os.stat(os.devnull)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and (st.st_rdev, st.st_ino, st.st_dev) == (null.st_rdev, null.st_ino, null.st_dev)


def check_config(data, path) -> dict:
    """Refuse (ConfigError naming the key) a config that is not an object of known keys of the right types."""
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object such as {_EXAMPLE}; it holds a "
                          f"{type(data).__name__}")
    for key, value in data.items():
        want = KEYS.get(key)
        if want is None:
            raise ConfigError(f"config file {path}: unknown key {key!r}; valid keys: {', '.join(KEYS)}")
        if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
            raise ConfigError(f"config file {path}: {key!r} is {type(value).__name__} {value!r:.60}; it must be a "
                              f"{ {str: 'string', bool: 'true or false', dict: 'JSON object'}[want]}")
    if data.get("pack") == "":
        raise ConfigError(f"config file {path}: 'pack' is empty; give a pack folder or .zip, or remove the key")
    for name, key in (data.get("trusted_keys") or {}).items():
        parse_public_key(key, where=f"config file {path}: trusted_keys[{name!r}]")
    return data


def parse_public_key(text: str, *, where: str = "public key") -> bytes:
    """The raw 32 bytes of an ``ed25519:BASE64`` public key (as ``trusted_keys`` holds it); ConfigError when it
    is not one. (Checked here, with the standard library, so that a bad key is found when the config is read.)"""
    prefix = "ed25519:"
    if not isinstance(text, str) or not text.strip().startswith(prefix):
        raise ConfigError(f"{where} {text!r:.80} is not an Ed25519 public key; expected 'ed25519:' followed by "
                          "base64, as cxr-edge pack keygen prints it")
    try:
        raw = base64.b64decode(text.strip()[len(prefix):], validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{where} {text!r:.80} is not a valid Ed25519 public key (not 32 bytes of base64); copy "
                          "it again from the .pub file cxr-edge pack keygen wrote")
    return raw


def resolve_pack(flag: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The pack path to use and where that choice came from ('--pack', 'CXR_EDGE_PACK', config, bundled)."""
    if flag:
        return Path(flag), "--pack"
    if os.environ.get("CXR_EDGE_PACK"):
        return Path(os.environ["CXR_EDGE_PACK"]), "CXR_EDGE_PACK"
    cfg = read_config()
    if cfg.get("pack"):
        return Path(cfg["pack"]).expanduser(), f"config {config_path()}"
    if (BUNDLED_PACK / "manifest.json").is_file():
        return BUNDLED_PACK, "bundled default"
    raise PackError(
        "no model pack was given and no default pack is installed. Pass --pack PACK, set CXR_EDGE_PACK, "
        f"or put {{\"pack\": \"/path/to/pack\"}} in {config_path()}. Build a pack with cxr-edge export."
    )
