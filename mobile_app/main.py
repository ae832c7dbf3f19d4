"""Entry point of the cxr-edge field app: ``python main.py`` on a desktop, and the APK's main module.

The app itself is the package ``cxr_edge.app``; on a desktop, ``cxr-edge app [--pack P] [--threads N]``
runs it with options. In the APK, ``cxr_edge`` and ``pack/`` are copied beside this file (README.md).
"""

import os
import sys

os.environ.setdefault("KIVY_NO_ARGS", "1")  # the app has no command line of its own; Kivy must not parse argv
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # in the APK, cxr_edge lives here

from cxr_edge.app.app import main  # noqa: E402

#: a pack shipped inside the APK (buildozer copies mobile_app/pack into the app)
APP_PACK = os.path.join(HERE, "pack")

if __name__ == "__main__":
    main(app_pack=APP_PACK)
