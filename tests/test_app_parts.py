"""The app's parts on their own: worker delivery, settings, camera frames (in the Kivy child process).

The heatmap overlay the Result screen draws is :func:`cxr_edge.runtime.cam.overlay`, tested in tests/test_cam.py."""

import os
import tempfile

import pytest

if os.environ.get("CXR_EDGE_APP_GUI_CHILD") != "1":
    pytest.skip("runs inside the Kivy process that tests/test_app_gui.py starts (Kivy's GL window and TensorFlow "
                "cannot share a process)", allow_module_level=True)

os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
os.environ.setdefault("KIVY_NO_ARGS", "1")
os.environ.setdefault("KIVY_HOME", tempfile.mkdtemp(prefix="kivy-home-"))
os.environ.setdefault("KIVY_LOG_MODE", "PYTHON")

import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mobile_app"))

from kivy.clock import Clock  # noqa: E402

from cxr_edge.app.settings import AppSettings  # noqa: E402
from cxr_edge.app.worker import Worker  # noqa: E402


def pump(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        Clock.tick()
        time.sleep(0.005)


def test_worker_runs_jobs_off_the_main_thread_and_delivers_on_it():
    worker = Worker()
    main = threading.current_thread()
    seen = {}

    def job():
        seen["job_thread"] = threading.current_thread()
        return 42

    def done(value):
        seen["value"], seen["done_thread"] = value, threading.current_thread()

    worker.submit(job, done, pytest.fail)
    assert worker.busy
    pump(lambda: "value" in seen)
    assert seen["value"] == 42 and seen["job_thread"] is not main and seen["done_thread"] is main
    assert not worker.busy
    errors = []
    worker.submit(lambda: 1 / 0, pytest.fail, errors.append)
    pump(lambda: errors)
    assert isinstance(errors[0], ZeroDivisionError)
    worker.shutdown()


def test_a_superseded_result_is_dropped_but_its_job_still_runs():
    worker = Worker()
    release, ran, got = threading.Event(), [], []
    worker.submit(lambda: (release.wait(5), ran.append("first"))[1], got.append, pytest.fail, key="case")
    worker.submit(lambda: ran.append("second") or "second", got.append, pytest.fail, key="case")
    release.set()
    pump(lambda: not worker.busy)
    assert ran == ["first", "second"] and got == ["second"]
    worker.submit(lambda: "third", got.append, pytest.fail, key="case")
    worker.drop("case")  # the user left the screen
    pump(lambda: not worker.busy)
    assert got == ["second"]
    worker.shutdown()


def test_settings_round_trip_and_survive_a_damaged_file(tmp_path):
    path = tmp_path / "settings.json"
    s = AppSettings.load(path)
    assert (s.pack, s.profile, s.threads) == ("", "", 2)
    s.pack, s.profile, s.threads = "/packs/field", "screening", 99
    s.save()
    again = AppSettings.load(path)
    assert (again.pack, again.profile, again.threads) == ("/packs/field", "screening", 8)  # clamped
    path.write_text("{not json")
    assert AppSettings.load(path).pack == ""
    assert not list(tmp_path.glob(".settings.json.*"))  # no temp file left behind


def test_camera_frames_come_out_upright():
    from kivy.core.window import Window  # a GL context for textures

    from cxr_edge.app.camera import texture_to_image
    from cxr_edge.app.imaging import to_texture

    assert Window is not None
    img = Image.fromarray(np.arange(12 * 8 * 3, dtype=np.uint8).reshape(8, 12, 3), "RGB")
    shown = to_texture(img)  # uploaded top row first, shown flipped, like camera providers do
    assert np.array_equal(np.asarray(texture_to_image(shown)), np.asarray(img))
    from kivy.graphics.texture import Texture

    plain = Texture.create(size=(12, 8), colorfmt="rgba")  # uploaded bottom row first
    plain.blit_buffer(img.transpose(Image.Transpose.FLIP_TOP_BOTTOM).convert("RGBA").tobytes(), colorfmt="rgba")
    assert np.array_equal(np.asarray(texture_to_image(plain)), np.asarray(img))


def test_android_only_code_stays_out_of_the_way_on_a_desktop():
    from cxr_edge.app import android

    assert not android.ON_ANDROID
    answers = []
    android.request_camera(lambda granted, reason: answers.append((granted, reason)))
    android.request_storage()
    assert answers == [(True, "")] and android.pictures_dir() == Path.home()


def test_main_py_is_the_apps_entry_point():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cxr_main", Path(__file__).resolve().parents[1] / "mobile_app/main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports the app without running it
    from cxr_edge.app.app import CxrEdgeApp, main

    assert module.main is main and CxrEdgeApp().name == "cxredge"  # the user data folder is named after it


def test_no_app_module_imports_a_network_library():
    import ast

    network = {"socket", "urllib", "http", "requests", "ssl", "ftplib", "smtplib", "websocket", "asyncio"}
    for path in [*(Path(__file__).resolve().parents[1] / "cxr_edge" / "app").rglob("*.py"),
                 Path(__file__).resolve().parents[1] / "mobile_app" / "main.py"]:
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & network, f"{path} imports {names & network}"
