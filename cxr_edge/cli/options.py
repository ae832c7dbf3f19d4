"""Options several commands share, defined once."""

from __future__ import annotations

import click

from ..runtime.backends import BACKENDS

__all__ = ["backend_option"]

#: ``--backend``: one of :data:`cxr_edge.runtime.backends.BACKENDS` (stdlib only: cheap to import)
backend_option = click.option("--backend", default=None, type=click.Choice(BACKENDS),
                              help="Force an interpreter backend (default: the first that is installed).")
