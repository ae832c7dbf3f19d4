"""Options several commands share, defined once."""

from __future__ import annotations

import click

from ..runtime.backends import BACKENDS

__all__ = ["backend_option", "fit_into_pack", "progress_printer"]

#: ``--backend``: one of :data:`cxr_edge.runtime.backends.BACKENDS` (stdlib only: cheap to import)
backend_option = click.option("--backend", default=None, type=click.Choice(BACKENDS),
                              help="Force an interpreter backend (default: the first that is installed).")


def fit_into_pack(data_help: str):
    """What every ``... fit PACK --data PREPARED`` command takes (``cxr-edge ood fit``, ``cxr-edge orientation
    fit``): the pack, the prepared data, ``--out`` for a fitted copy, ``--threads`` and ``--json``."""
    def decorate(command):
        for option in reversed([
                click.argument("pack", type=click.Path(exists=True, path_type=str)),
                click.option("--data", "data", required=True,
                             type=click.Path(exists=True, file_okay=False, path_type=str), help=data_help),
                click.option("--out", "out", default=None, type=click.Path(path_type=str),
                             help="Write a fitted COPY of the pack here (must not exist); PACK stays untouched."),
                click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 64)),
                click.option("--json", "as_json", is_flag=True, help="Print the stored record as JSON.")]):
            command = option(command)
        return command
    return decorate


def progress_printer(as_json: bool):
    """``progress(stage, done, total)`` that prints every 256 images and the last to stderr (not with --json)."""
    def progress(stage, done, total):
        if not as_json and (done == total or done % 256 == 0):
            click.echo(f"  {stage}: {done}/{total}", err=True)
    return progress
