"""``cxr-edge app``: the Kivy field app on a desktop (a laptop, or a Raspberry Pi with a screen)."""

from __future__ import annotations

import os
from pathlib import Path

import click

__all__ = ["app"]


@click.command()
@click.option("--pack", "pack", type=click.Path(path_type=str), default=None,
              help="Model pack directory or .zip (default: the app's setting, $CXR_EDGE_PACK, the config file, "
                   "or the bundled pack).")
@click.option("--threads", default=None, type=click.IntRange(1, 64),
              help="Interpreter CPU threads per model (default: the app's setting, 2).")
def app(pack, threads):
    """Start the field app: photograph or open a film, check it, get a result offline, keep the case.

    It opens a window; on a machine without a camera, images are opened from
    files. Cases are stored on this machine only (the app's data folder), and
    nothing is sent anywhere. Results are decision support, not a diagnosis.

    \b
    Examples:
      cxr-edge app
      cxr-edge app --pack my_pack --threads 4
    """
    from ..errors import PackError, require

    if pack and not Path(pack).exists():
        raise PackError(f"model pack {pack} does not exist. Pass an existing pack directory or .zip, "
                        "or leave --pack out to use the default pack.")
    os.environ.setdefault("KIVY_NO_ARGS", "1")  # Kivy must not read cxr-edge's own arguments
    os.environ.setdefault("KIVY_LOG_MODE", "PYTHON")  # Kivy logs through cxr-edge's logging, leaves stderr alone
    _make_kivy_home()
    require("kivy", "app", "cxr-edge app")
    from ..app.app import main

    main(pack=pack, threads=threads)


def _make_kivy_home() -> None:
    """Kivy makes its folder (``$KIVY_HOME``, default ``~/.kivy``) with a plain mkdir when it is imported, so on a
    fresh device whose home folder does not exist yet the app died with FileNotFoundError: make the parents."""
    from ..errors import ConfigError

    home = Path(os.environ.get("KIVY_HOME") or Path("~/.kivy").expanduser())
    try:
        home.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {home.parent} for the app's settings ({exc.strerror or exc}). Set HOME "
                          "(or KIVY_HOME and XDG_CONFIG_HOME) to a folder you may write to.") from exc
