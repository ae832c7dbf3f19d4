"""``python -m cxr_edge`` is the same as the ``cxr-edge`` command."""

import os
import sys

if __name__ == "__main__":
    try:
        from .cli import run
    except KeyboardInterrupt:  # Ctrl-C while the CLI itself is still loading: nothing has started yet
        print("Interrupted.", file=sys.stderr, flush=True)
        os._exit(130)          # not sys.exit: see cxr_edge.cli.run
    run()
