"""The field app, headless: pick → check → result → history with real images and a real int8 pack.

Runs Kivy with SDL's offscreen driver and Mesa (``SDL_VIDEODRIVER=offscreen``),
never the mock GL backend. Kivy's GL window and TensorFlow crash when they share
a process, so these tests run in a child process without TensorFlow that
``tests/test_app_gui.py`` starts (after building the test pack with TensorFlow).
Screenshots of every screen go to ``build/app-screenshots/`` (override with
``CXR_EDGE_SCREENSHOTS``), with ``timings.json`` (time from "Continue" to the
result on screen).
"""

import os
import tempfile

import pytest

if os.environ.get("CXR_EDGE_APP_GUI_CHILD") != "1":
    pytest.skip("runs inside the Kivy process that tests/test_app_gui.py starts (Kivy's GL window and TensorFlow "
                "cannot share a process)", allow_module_level=True)

os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
os.environ.setdefault("KIVY_NO_ARGS", "1")
os.environ.setdefault("KIVY_HOME", tempfile.mkdtemp(prefix="kivy-home-"))  # never touch ~/.kivy
os.environ.setdefault("KIVY_LOG_MODE", "PYTHON")

import json  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "mobile_app"))

from kivy.graphics.cgl import cgl_get_backend_name  # noqa: E402
from kivy.properties import BooleanProperty  # noqa: E402
from kivy.tests.common import GraphicUnitTest, UnitTestTouch  # noqa: E402
from kivy.uix.image import Image as KivyImage  # noqa: E402
from kivy.uix.scrollview import ScrollView  # noqa: E402

from cxr_edge.runtime.pipeline import Film  # noqa: E402
from cxr_edge.runtime.prediction import DISCLAIMER  # noqa: E402
from cxr_edge.tasks import get_task  # noqa: E402

assert cgl_get_backend_name() != "mock", "KIVY_GL_BACKEND=mock silently disables these tests; unset it"

SHOTS = Path(os.environ.get("CXR_EDGE_SCREENSHOTS") or REPO / "build" / "app-screenshots")
CXR = "nih_cxr14/images/00000061_012.png"
NON_CXR = "noncxr/images/skimage_coffee.png"
CXR4_LABELS = get_task("cxr4").labels


@pytest.fixture(scope="module")
def strict_pack():
    """The tiny test pack with a gate profile 'strict' that rejects everything, built by the parent process."""
    return Path(os.environ["CXR_EDGE_APP_TEST_PACK"])


class FakeCamera(KivyImage):
    """A camera widget that shows a fixed picture (or none), as Kivy's Camera would."""

    play = BooleanProperty(True)
    picture = None

    def __init__(self, index=0, resolution=(-1, -1), play=True, **kw):
        super().__init__(**kw)
        self._camera = object()
        if FakeCamera.picture is not None:
            from cxr_edge.app.imaging import to_texture

            self.texture = to_texture(FakeCamera.picture)


class AppTest(GraphicUnitTest):
    """Shared driving helpers; the fixtures come in through an autouse fixture."""

    @pytest.fixture(autouse=True)
    def _fixtures(self, strict_pack, shared_data, tmp_path, monkeypatch):
        self.pack, self.data, self.tmp, self.monkeypatch = strict_pack, shared_data, tmp_path, monkeypatch
        SHOTS.mkdir(parents=True, exist_ok=True)

    def start(self, **kw):
        from cxr_edge.app.app import Controller

        self.Window.size = (360, 640)
        self.ctl = Controller(self.tmp / "userdata", pack=self.pack, **kw)
        self.render(self.ctl.root)
        self.wait(lambda: self.ctl.pipeline is not None or self.ctl.pack_error, "the model pack to load")
        assert self.ctl.pipeline is not None, self.ctl.pack_error
        return self.ctl

    def tearDown(self, fake=False):
        if not fake and getattr(self, "ctl", None) is not None:
            self.ctl.shutdown()
        super().tearDown(fake)

    def wait(self, cond, what, timeout=30.0):
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.advance_frames(1)
            time.sleep(0.005)
        self.advance_frames(2)

    def screen(self):
        return self.ctl.root.current_screen

    def texts(self, widget=None) -> str:
        widget = widget or self.screen()
        return "\n".join(str(w.text) for w in widget.walk() if isinstance(getattr(w, "text", None), str))

    def tap(self, widget):
        assert widget is not None and not widget.disabled, widget
        node = widget.parent
        while node is not None and not isinstance(node, ScrollView) and node.parent is not node:  # Window is its own parent
            node = node.parent
        if isinstance(node, ScrollView) and not node.collide_point(*node.to_parent(*node.to_widget(
                *widget.to_window(*widget.center)))):  # scroll it into view first, as a user would
            node.scroll_to(widget, padding=10, animate=False)
            self.advance_frames(2)
        x, y = widget.to_window(*widget.center)
        touch = UnitTestTouch(x, y)
        touch.touch_down()
        self.advance_frames(1)
        touch.touch_up()
        self.advance_frames(2)

    def tap_text(self, label, within=None):
        within = within or self.screen()
        widget = next((w for w in within.walk() if getattr(w, "text", None) == label), None)
        assert widget is not None, f"no {label!r} on {getattr(within, 'name', within)}: {self.texts(within)}"
        self.tap(widget)

    def shoot(self, name: str, *expected: str) -> Path:
        """Save the current screen; assert it is not blank and shows the expected texts."""
        self.advance_frames(3)
        path = SHOTS / f"{name}.png"
        self.ctl.root.export_to_png(str(path))
        grey = np.asarray(Image.open(path).convert("L"))
        _, counts = np.unique(grey, return_counts=True)
        assert grey.shape == (640, 360) and grey.std() > 10 and len(counts) > 16, f"{path} looks blank"
        assert counts.max() / grey.size < 0.95, f"{path} is nearly one colour"
        shown = self.texts()
        for t in expected:
            assert t in shown, f"{t!r} not on the {self.screen().name} screen: {shown}"
        return path

    def pick(self, relative: str):
        """On the Capture screen's file picker: select a file and press 'Open image'."""
        capture = self.ctl.screen("capture")
        assert self.ctl.root.current == "capture" and capture.mode == "picker", capture.message
        path = self.tmp / "pictures" / Path(relative).name  # a phone-sized folder, not the 1,400-image data set
        path.parent.mkdir(exist_ok=True)
        shutil.copyfile(self.data / relative, path)
        capture.chooser.path = str(path.parent)
        capture.chooser.selection = [str(path)]
        self.tap_text("Open image")
        self.wait(lambda: self.ctl.screen("check").can_continue or self.ctl.screen("check").film_note,
                  "the Check screen")

    def analyse(self):
        """Press Continue on Check; wait for the result (and, for accepted images, the save)."""
        self.tap(self.ctl.screen("check").ids.continue_button)
        result = self.ctl.screen("result")
        self.wait(lambda: not result.ids.busy.active, "the result")
        if result.title == "Result":
            self.wait(lambda: result.saved_text.startswith(("Saved as", "NOT saved")), "the case to be saved")
        return result


class TestFlow(AppTest):
    def test_cxr_then_non_cxr_with_screenshots_and_no_network(self):
        attempts = []

        def no_network(*args, **kw):
            attempts.append(args)
            raise AssertionError("the app tried to use the network")

        class NoSocket(socket.socket):
            def __init__(self, *args, **kw):
                no_network(*args)

        for name in ("create_connection", "getaddrinfo", "socketpair", "create_server"):
            self.monkeypatch.setattr(socket, name, no_network)
        self.monkeypatch.setattr(socket, "socket", NoSocket)

        ctl = self.start()
        self.shoot("01-home", "New case", "History", "Settings", DISCLAIMER, "tiny-test-pack")

        # Capture: no camera on this machine -> the picker, with the reason
        self.tap_text("New case")
        self.shoot("02-capture-picker", "No camera was found on this device", "Open image")
        self.pick(CXR)
        check = ctl.screen("check")
        # the photo stage is Pipeline.film, as predict runs it: a digital image is used as it is, unjudged
        assert ctl.draft.checks == [] and ctl.draft.film.rectify["passthrough"]
        self.shoot("03-check", "Digital image: used as it is.", "Retake", check.continue_text,
                   "No quality checks apply to this image.")

        result = self.analyse()
        self.shoot("04-result", "Result", "Chest X-ray: yes", *CXR4_LABELS,
                   "Findings above the 'default' thresholds", DISCLAIMER)
        assert result.saved_text == "Saved as case #1."
        # the tiny pack carries head.npz: real class activation maps from the int8 features, cxr4's answer first
        assert not result.heatmap_toggle.disabled and result.heatmap_choice.text == ctl.draft.prediction.results["cxr4"].top
        assert "heatmaps" not in ctl.store.get(1).result
        bars = {w.label: w.value for w in result.walk() if type(w).__name__ == "ProbBar"}
        assert bars == pytest.approx(ctl.draft.prediction.results["cxr4"].probabilities, abs=1e-4)  # to_dict rounds

        self.tap_text("History")
        self.shoot("05-history", "History (1 case)", "Open", "Delete", "Export CSV",
                   ctl.store.get(1).summary)
        self.tap_text("Open")
        self.shoot("06-saved-case", "Case #1", "Chest X-ray: yes", *CXR4_LABELS,
                   "Heatmaps are not kept with saved cases.", DISCLAIMER)

        # Settings: switch to the gate profile that rejects everything
        self.tap_text("Home")
        self.tap_text("Settings")
        settings = ctl.screen("settings")
        assert set(settings.ids.profile.values) == {"(pack default)", "default", "strict"}
        self.shoot("07-settings", "Settings", "Threshold profile", "tiny-test-pack", "Apply")
        settings.ids.profile.text = "strict"
        self.tap_text("Apply")
        self.wait(lambda: ctl.pipeline is not None and ctl.pipeline.profile == "strict", "the strict profile")
        assert ctl.settings.profile == "strict" and "strict" in (self.tmp / "userdata/settings.json").read_text()

        # A non-CXR is rejected plainly; nothing that looks like a finding is shown; nothing is saved
        self.tap_text("Back")
        self.tap_text("New case")
        self.pick(NON_CXR)
        result = self.analyse()
        self.shoot("08-rejected", "Not a chest X-ray", "No results are given for it.",
                   "Not saved: the image is not a chest X-ray.", DISCLAIMER)
        shown = self.texts()
        for misleading in (*CXR4_LABELS, "Findings", "%", "heatmap", "Chest X-ray: yes"):
            assert misleading not in shown, misleading
        assert not [w for w in result.walk() if type(w).__name__ in ("ProbBar", "ToggleButton")]
        assert ctl.store.count() == 1

        assert attempts == []
        timings = ctl.timings
        assert len(timings) == 2 and all(t["continue_to_result_s"] < 10 for t in timings)
        (SHOTS / "timings.json").write_text(json.dumps(
            {"what": "seconds from tapping Continue to the result on screen (tiny test pack, this machine)",
             "runs": timings}, indent=2))

    def test_the_bundled_pack_answers_a_cxr_and_its_real_gate_rejects_a_photo(self):
        """The product as shipped: the bundled int8 pack, its own gate and thresholds (no test profile)."""
        from cxr_edge.config import BUNDLED_PACK

        if not (BUNDLED_PACK / "manifest.json").is_file():
            pytest.skip("the bundled pack is not in this checkout")
        self.pack = BUNDLED_PACK
        ctl = self.start()
        runs = []
        for name, relative in (("09-result-bundled-pack", CXR), ("10-rejected-bundled-pack", NON_CXR)):
            self.tap_text("New case")
            self.pick(relative)
            result = self.analyse()
            runs.append(dict(ctl.timings[-1], image=relative, status=ctl.draft.prediction.status))
            if relative == CXR:
                pred = ctl.draft.prediction
                assert pred.status == "ok" and pred.gate.accepted, pred.message
                self.shoot(name, "Chest X-ray: yes", *pred.results["cxr4"].probabilities, DISCLAIMER)
                assert result.saved_text.startswith("Saved as")
            else:
                self.shoot(name, "Not a chest X-ray", "Not saved: the image is not a chest X-ray.", DISCLAIMER)
                assert "%" not in self.texts() and ctl.draft.prediction.gate.score < 0.1
            self.tap_text("Home")
        (SHOTS / "timings-bundled-pack.json").write_text(json.dumps(
            {"what": "seconds from tapping Continue to the result on screen (bundled int8 pack, this machine)",
             "runs": runs}, indent=2))

    def test_photo_of_a_film_is_found_and_straightened(self):
        from cxr_edge.runtime.images import load_image
        from cxr_edge.tools.photosim import simulate_photo

        ctl = self.start()
        photo = simulate_photo(load_image(self.data / CXR), "mild", 1, background="desk", long_side=800).to_image()
        ctl.open_image(photo, name="photo")
        self.wait(lambda: ctl.screen("check").film_note, "the Check screen")
        assert ctl.draft.film.rectify["found"] and not ctl.draft.film.rectify["passthrough"]
        names = [q.name for q in ctl.draft.checks]
        assert names, "a photo gets its quality checks"
        self.shoot("03b-check-photo", "Film found, straightened and its contrast evened out.", *names)
        result = self.analyse()     # predict(film): the checks Check showed are the result's own
        assert [q["name"] for q in ctl.draft.prediction.to_dict()["quality"]["checks"]] == names

    def test_progress_shows_while_models_run_and_the_ui_keeps_running(self):
        ctl = self.start()
        gate = threading.Event()
        predict = ctl.pipeline.predict
        self.monkeypatch.setattr(ctl.pipeline, "predict", lambda *a, **k: (gate.wait(20), predict(*a, **k))[1])
        ctl.new_case()
        self.advance_frames(2)
        self.pick(CXR)
        self.tap(ctl.screen("check").ids.continue_button)
        busy = ctl.screen("result").ids.busy
        seen, end = set(), time.monotonic() + 0.6
        while time.monotonic() < end:  # frames keep coming while the worker is blocked: the UI thread is free
            self.advance_frames(1)
            time.sleep(0.01)
            seen.add(busy.progress)
        assert busy.active and len(seen) > 3
        self.shoot("04a-result-running", "Running the models...")
        gate.set()
        self.wait(lambda: not busy.active, "the result")
        assert ctl.screen("result").title == "Result"

    def test_heatmap_toggle_and_ood_warning(self):
        ctl = self.start()
        predict = ctl.pipeline.predict
        warning = "Unusual image for this model (OOD score 9.1, limit 5.0): read the result with care."

        def with_extras(*a, **k):  # heatmaps as Prediction.heatmaps carries them, and an OOD warning
            assert isinstance(a[0], Film) and k.get("heatmaps") is True  # the film Check showed, not the file again
            pred = predict(*a, **k)
            ramp = np.tile(np.linspace(0, 255, 7).astype(np.uint8), (7, 1))
            pred.heatmaps = {pred.results["cxr4"].top: ramp, "Effusion": ramp.T.copy()}
            pred.warnings.append(warning)
            return pred

        self.monkeypatch.setattr(ctl.pipeline, "predict", with_extras)
        ctl.new_case()
        self.advance_frames(2)
        self.pick(CXR)
        result = self.analyse()
        assert f"Warning: {warning}" in self.texts()
        plain = bytes(result.film_image.texture.pixels)
        self.tap(result.heatmap_toggle)
        assert result.heatmap_toggle.state == "down"
        assert result.heatmap_choice.text == ctl.draft.prediction.results["cxr4"].top  # the reported class first
        assert bytes(result.film_image.texture.pixels) != plain
        self.shoot("04b-result-heatmap", f"Heatmap for {ctl.draft.prediction.results['cxr4'].top}", f"Warning: {warning}")
        result.heatmap_choice.text = "Effusion"
        self.advance_frames(2)
        assert "Heatmap for Effusion" in self.texts()
        self.tap(result.heatmap_toggle)
        assert bytes(result.film_image.texture.pixels) == plain
        saved = ctl.store.get(1).result
        assert saved["warnings"] == [warning] and "heatmaps" not in saved  # maps are not stored, warnings are

    def test_history_delete_and_export(self):
        ctl = self.start()
        ctl.new_case()
        self.advance_frames(2)
        self.pick(CXR)
        self.analyse()
        self.tap_text("History")
        history = ctl.screen("history")
        history.ids.with_images.active = True
        self.tap_text("Export CSV")
        out = self.tmp / "export"
        out.mkdir()
        history.popup.chooser.path = str(out)
        self.advance_frames(2)
        self.tap_text("Export here", within=history.popup)
        self.wait(lambda: history.popup.parent is None, "the export dialog to close")
        self.wait(lambda: history.message.startswith(("Exported", "Export failed")), "the export")
        assert history.message.startswith("Exported 1 case(s)"), history.message
        assert len(list(out.glob("cxr-cases-*.csv"))) == 1 and len(list(out.rglob("case-1-*.png"))) == 1
        self.tap_text("Delete")
        self.tap_text("Delete", within=history.popup)
        assert ctl.store.count() == 0 and "History (0 cases)" in self.texts() and "Case #1 deleted." in self.texts()

    def test_an_unreadable_file_keeps_the_app_on_capture_with_the_reason(self):
        ctl = self.start()
        bad = self.tmp / "film.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
        ctl.new_case()
        self.advance_frames(2)
        ctl.open_image(bad, name=bad.name)
        self.wait(lambda: ctl.root.current == "capture", "the return to Capture")
        assert ctl.screen("capture").message.startswith("Could not open film.png:")


class TestCamera(AppTest):
    def test_a_camera_that_fails_to_open_falls_back_to_the_picker(self):
        from cxr_edge.app.camera import CameraFacade

        def broken(**kw):
            raise RuntimeError("camera device busy")

        ctl = self.start(camera=CameraFacade(factory=broken))
        self.tap_text("New case")
        capture = ctl.screen("capture")
        assert capture.mode == "picker" and "camera device busy" in capture.message
        assert "Choose an image file instead." in capture.message and capture.ids.take.disabled

    def test_a_camera_that_sends_no_picture_falls_back_after_a_timeout(self):
        from cxr_edge.app.camera import CameraFacade

        FakeCamera.picture = None
        ctl = self.start(camera=CameraFacade(factory=FakeCamera, first_frame_timeout=0.2))
        self.tap_text("New case")
        capture = ctl.screen("capture")
        assert capture.mode == "camera"
        self.wait(lambda: capture.mode == "picker", "the fallback")
        assert "sends no picture" in capture.message

    def test_refused_permission_falls_back_to_the_picker(self):
        ctl = self.start()
        self.monkeypatch.setattr(ctl, "request_camera", lambda cb: cb(False, "Camera permission was refused."))
        self.tap_text("New case")
        assert ctl.screen("capture").mode == "picker"
        assert ctl.screen("capture").message == "Camera permission was refused."

    def test_a_working_camera_previews_with_a_guide_and_captures(self):
        from cxr_edge.app.camera import CameraFacade
        from cxr_edge.tools.photosim import simulate_photo

        from cxr_edge.runtime.images import load_image

        photo = simulate_photo(load_image(self.data / CXR), "mild", 2, background="lightbox",
                               long_side=640).to_image()
        FakeCamera.picture = photo
        try:
            ctl = self.start(camera=CameraFacade(factory=FakeCamera, first_frame_timeout=0.2))
            self.tap_text("New case")
            capture = ctl.screen("capture")
            assert capture.mode == "camera" and [w for w in capture.walk() if type(w).__name__ == "FilmGuide"]
            self.wait(lambda: True, "a few frames", timeout=1)
            time.sleep(0.3)
            self.advance_frames(3)
            assert capture.mode == "camera"  # a picture arrived: no fallback
            self.shoot("02b-capture-camera", "Fit the whole film inside the outline", "Take photo")
            self.tap_text("Take photo")
            self.wait(lambda: ctl.screen("check").film_note, "the Check screen")
            assert np.array_equal(np.asarray(ctl.draft.photo), np.asarray(photo))  # upright, every pixel
            assert ctl.draft.film.rectify["found"]
        finally:
            FakeCamera.picture = None
