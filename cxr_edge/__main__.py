"""``python -m cxr_edge`` is the same as the ``cxr-edge`` command."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="cxr-edge")
