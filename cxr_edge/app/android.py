"""What only Android needs: runtime permissions and where shared pictures live. No-ops elsewhere.

Kept in one small module so the rest of the app never imports ``android``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kivy.utils import platform

__all__ = ["export_dir", "ON_ANDROID", "pictures_dir", "request_camera", "request_storage"]

log = logging.getLogger(__name__)

ON_ANDROID = platform == "android"


def request_camera(callback) -> None:
    """Ask for the camera permission; ``callback(granted: bool, reason: str)`` runs on the main thread."""
    if not ON_ANDROID:
        callback(True, "")
        return
    from android.permissions import Permission, check_permission, request_permissions  # noqa: PLC0415
    from kivy.clock import mainthread

    if check_permission(Permission.CAMERA):
        callback(True, "")
        return

    @mainthread
    def answered(permissions, grants):
        granted = bool(grants) and all(grants)
        callback(granted, "" if granted else
                 "Camera permission was refused. Allow it in Android Settings > Apps > cxr-edge > Permissions, "
                 "or choose an image file.")

    request_permissions([Permission.CAMERA], answered)


def request_storage() -> None:
    """Ask for read access to shared pictures (Android 13+ READ_MEDIA_IMAGES, older READ_EXTERNAL_STORAGE)."""
    if not ON_ANDROID:
        return
    from android.permissions import Permission, check_permission, request_permissions  # noqa: PLC0415

    wanted = [getattr(Permission, name) for name in ("READ_MEDIA_IMAGES", "READ_EXTERNAL_STORAGE")
              if hasattr(Permission, name)]
    if not any(check_permission(p) for p in wanted):  # one of them is enough, depending on the Android version
        request_permissions(wanted)


def pictures_dir() -> Path:
    """Where the file picker starts: the shared storage root on Android, the home folder elsewhere."""
    if ON_ANDROID:
        from android.storage import primary_external_storage_path  # noqa: PLC0415

        return Path(primary_external_storage_path())
    return Path.home()


def export_dir(user_data_dir) -> Path:
    """Where the export picker starts: on Android the app's external files folder
    (Android/data/<package>/files: writable without any permission, reachable over USB), elsewhere home."""
    if ON_ANDROID:
        from jnius import autoclass  # noqa: PLC0415

        folder = autoclass("org.kivy.android.PythonActivity").mActivity.getExternalFilesDir(None)
        return Path(folder.getAbsolutePath()) if folder is not None else Path(user_data_dir)
    return Path.home()
