"""Entry point of the cxr-edge field app: ``python main.py`` on a desktop, and the APK's main module.

On a desktop, ``cxr-edge app [--pack P] [--threads N]`` does the same with options.
"""

import os
import sys

os.environ.setdefault("KIVY_NO_ARGS", "1")  # the app has no command line of its own; Kivy must not parse argv
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # cxr_app (and, in the APK, cxr_edge) live here

from cxr_edge.app.app import main  # noqa: E402

if __name__ == "__main__":
    main()
