"""Where the model pack comes from when the user does not name one.

Order: the ``--pack`` flag, then ``$CXR_EDGE_PACK``, then ``"pack"`` in the
config file (``$CXR_EDGE_CONFIG`` or ``$XDG_CONFIG_HOME/cxr-edge/config.json``,
default ``~/.config/cxr-edge/config.json``), then the pack bundled with the
package (``cxr_edge/packs/default``).
"""

from __future__ import annotations

import importlib.resources
import json
import os
from pathlib import Path

from .errors import PackError

__all__ = ["BUNDLED_PACK", "config_path", "package_data", "read_config", "resolve_pack"]


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


def config_path() -> Path:
    if os.environ.get("CXR_EDGE_CONFIG"):
        return Path(os.environ["CXR_EDGE_CONFIG"])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "cxr-edge" / "config.json"


def read_config() -> dict:
    path = config_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PackError(f"config file {path} is not valid JSON ({exc}); fix or delete it") from exc
    if not isinstance(data, dict):
        raise PackError(f"config file {path} must hold a JSON object such as {{\"pack\": \"/path/to/pack\"}}")
    return data


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
