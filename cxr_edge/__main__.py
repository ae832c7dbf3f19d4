"""``python -m cxr_edge`` is the same as the ``cxr-edge`` command."""

from .cli import main

main(prog_name="cxr-edge")
