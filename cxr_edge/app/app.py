"""The controller behind the screens, the Kivy App, and ``main()``.

The flow: Home → Capture (camera or file) → Check (rectified film + quality
verdicts) → Result (gate, cxr4, findings, heatmaps, warnings) → saved in
History. Everything slow runs on one worker thread; results come back on the
main thread. Nothing here opens a network connection.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kivy.app import App

from cxr_edge.runtime.cases import CaseStore, CaseStoreError
from cxr_edge.config import resolve_pack
from cxr_edge.errors import CxrEdgeError, ImageError
from cxr_edge.runtime.images import load_image
from cxr_edge.runtime.pack import load_pack
from cxr_edge.runtime.pipeline import Film, Pipeline

from . import android
from .camera import CameraFacade
from .imaging import to_texture
from .screens import Root
from .settings import AppSettings
from .worker import Worker

__all__ = ["Controller", "CxrEdgeApp", "Draft", "main"]

log = logging.getLogger(__name__)


@dataclass
class Draft:
    """The case being made: what was opened, the film found in it (:meth:`Pipeline.film`: the image the
    models see, how it was found, the photo's quality checks), what the models said."""

    name: str
    photo: object = None         # what was opened: a path, or the camera's PIL image
    film: Film | None = None     # None until the film is found (or when no film was found)
    prediction: object = None
    case: object = None
    timings: dict = field(default_factory=dict)

    @property
    def checks(self) -> list:
        """The photo's quality checks (none for a digital image, as predict has none for it)."""
        return list(self.film.quality or []) if self.film is not None else []


class Controller:
    """Owns the services (pipeline, case store, camera, worker, settings) and moves between screens."""

    def __init__(self, data_dir, *, pack=None, threads: int | None = None, camera: CameraFacade | None = None,
                 app_pack=None):
        self.data_dir = Path(data_dir)
        self.app_pack = Path(app_pack) if app_pack else None   # a pack shipped inside the APK (mobile_app/pack)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CaseStoreError(f"cannot create the app's data folder {self.data_dir} ({exc.strerror or exc}); "
                                 "choose a folder you may write to (XDG_CONFIG_HOME, or HOME).") from exc
        self.settings = AppSettings.load(self.data_dir / "settings.json")
        self.pack_flag = pack
        self.threads_flag = threads
        self.camera = camera or CameraFacade()
        self.worker = Worker()
        self.pipeline: Pipeline | None = None
        self.pack_origin = ""
        self.pack_error = ""
        self.draft: Draft | None = None
        self.timings: list[dict] = []
        self.root = Root(self)
        self.store: CaseStore | None = None
        self.store_error = ""
        try:
            self.store = CaseStore(self.data_dir)
        except CxrEdgeError as exc:
            self.store_error = str(exc)
        self.reload_pipeline()

    # ----------------------------------------------------------------- navigation

    def screen(self, name: str):
        return self.root.get_screen(name)

    def go(self, name: str) -> None:
        self.root.current = name

    def go_home(self) -> None:
        self.worker.drop("case")
        self.go("home")

    def new_case(self) -> None:
        self.worker.drop("case")
        self.draft = None
        if self.root.current == "capture":  # "Retake" from Capture itself: start over
            self.screen("capture").start()
        self.go("capture")

    def show_history(self) -> None:
        self.refresh_history()
        self.go("history")

    def show_settings(self) -> None:
        self.go("settings")

    # ----------------------------------------------------------------- model pack

    @property
    def threads(self) -> int:
        return self.threads_flag or self.settings.threads

    def pack_path(self) -> tuple[Path, str]:
        if self.pack_flag:
            return Path(self.pack_flag), "--pack"
        if self.settings.pack:
            return Path(self.settings.pack), "settings"
        if self.app_pack is not None and (self.app_pack / "manifest.json").is_file():
            return self.app_pack, "bundled with the app"
        return resolve_pack(None)

    def reload_pipeline(self) -> None:
        self.pipeline, self.pack_error = None, ""
        self._home_text("Loading the model pack...")

        def build():
            path, origin = self.pack_path()
            profile = self.settings.profile or None
            pack = load_pack(path)
            if profile and not any(profile in m.metadata.thresholds for m in pack.models.values()):
                return Pipeline(pack, threads=self.threads), origin, (
                    f"Threshold profile '{profile}' is not in this pack; its default thresholds are used. "
                    "Choose a profile in Settings.")
            return Pipeline(pack, threads=self.threads, profile=profile), origin, ""

        self.worker.submit(build, self._pipeline_ready, self._pipeline_failed, key="pipeline")

    def _pipeline_ready(self, built) -> None:
        self.pipeline, self.pack_origin, note = built
        log.info("model pack %s loaded from %s (%s)", self.pipeline.pack.name, self.pipeline.pack.path,
                 self.pack_origin)
        if note:
            self.settings.profile = ""
        self._home_text(self._pack_line() + (f"\n{note}" if note else ""))
        settings = self.screen("settings")
        if self.root.current == "settings":
            settings.load()
        settings.message = note or "Model pack loaded."

    def _pipeline_failed(self, exc: Exception) -> None:
        self.pack_error = _message(exc)
        log.warning("no model pack: %s", self.pack_error)
        self._home_text(f"No model pack: {self.pack_error}\nOpen Settings to choose one.")
        self.screen("settings").message = self.pack_error

    def _pack_line(self) -> str:
        p = self.pipeline
        info = p.describe()
        profile = self.settings.profile or "pack default"
        return (f"Model pack: {p.pack.name} ({self.pack_origin}), {len(p.models)} models, thresholds: {profile}, "
                f"{info['threads']} thread(s)")

    def _home_text(self, text_: str) -> None:
        extra = f"\nCase store unavailable: {self.store_error}" if self.store_error else ""
        self.screen("home").pack_text = text_ + extra

    def pack_in_use(self) -> str:
        try:
            path, origin = self.pack_path()
        except CxrEdgeError:
            return "no pack found"
        return f"in use: {path} ({origin})"

    def pack_profiles(self) -> list[str]:
        if self.pipeline is None:
            return []
        return sorted({name for m in self.pipeline.models.values() for name in m.metadata.thresholds})

    def pack_summary(self) -> str:
        if self.pipeline is None:
            return self.pack_error or "Loading..."
        pack = self.pipeline.pack
        models = ", ".join(f"{slot}: {m.spec.name} {m.spec.input.size} px" for slot, m in self.pipeline.models.items())
        info = self.pipeline.describe()
        return (f"{pack.name} - {pack.path}\n{models}\ncreated {pack.manifest.get('created', '?')}, "
                f"licence {pack.manifest.get('license', '?')}\n{info['backend']} {info['backend_version']}")

    def apply_settings(self, *, pack: str, profile: str, threads: int) -> None:
        if pack != self.settings.pack:
            self.pack_flag = None  # the user's choice in the app wins over the launch flag from now on
        self.threads_flag = None
        self.settings.pack, self.settings.profile, self.settings.threads = pack, profile, threads
        self.settings.save()
        self.reload_pipeline()

    # ----------------------------------------------------------------- capture and check

    def request_camera(self, callback) -> None:
        android.request_camera(callback)

    def picker_start_dir(self) -> Path:
        android.request_storage()  # Android: ask to read shared pictures when the picker is first needed
        last = Path(self.settings.last_dir) if self.settings.last_dir else None
        return last if last is not None and last.is_dir() else android.pictures_dir()

    def export_start_dir(self) -> Path:
        last = Path(self.settings.export_dir) if self.settings.export_dir else None
        return last if last is not None and last.is_dir() else android.export_dir(self.data_dir)

    def remember_dir(self, folder: Path) -> None:
        self.settings.last_dir = str(folder)
        self.settings.save()

    def open_image(self, source, name: str) -> None:
        """Find, straighten and check the film in an image (path, bytes or PIL image) on the worker, with
        :meth:`Pipeline.film`: the photo stage ``cxr-edge predict`` runs, with the pack's quality
        thresholds. Show it on Check; Continue predicts that film (:meth:`continue_to_result`)."""
        self.draft = draft = Draft(name, photo=source)
        check = self.screen("check")
        check.busy("Finding the film...")
        self.go("check")
        pipeline = self.pipeline
        if pipeline is None:
            check.failed(f"The model pack is not loaded. {self.pack_error or 'Wait a moment and try again.'}")
            return

        def prepare():
            try:
                return pipeline.film(source, name), None
            except ImageError as exc:
                if exc.kind != "no_film":
                    raise
                return None, (load_image(source, mode="RGB"), exc)   # the photo, to show with the reason

        def ready(out):
            draft.film, no_film = out
            if draft.film is not None:
                check.show(draft.film)
            else:
                check.no_film(*no_film)

        def failed(exc):
            if isinstance(exc, ImageError):
                self.go("capture")
                self.screen("capture").message = f"Could not open {name}: {exc}"
            else:
                check.failed(_message(exc))

        self.worker.submit(prepare, ready, failed, key="case")

    # ----------------------------------------------------------------- result

    def continue_to_result(self) -> None:
        draft = self.draft
        result = self.screen("result")
        if draft is None or draft.film is None:
            return
        t0 = time.perf_counter()
        result.busy("Running the models...")
        self.go("result")
        if self.pipeline is None:
            result.failed(f"The model pack is not loaded. {self.pack_error or 'Wait a moment and try again.'}")
            return
        pipeline, film = self.pipeline, draft.film

        def done(pred):
            draft.prediction = pred
            heatmaps = pred.heatmaps   # uint8 maps over the film (cxr_edge.runtime.cam); never stored with the case
            result.show(pred.to_dict(), film.image, heatmaps=heatmaps,
                        heatmap_note="" if heatmaps else "This model pack gives no heatmaps.")
            draft.timings["continue_to_result_s"] = time.perf_counter() - t0
            draft.timings["models_ms"] = pred.timings_ms.get("total")
            self.timings.append(dict(draft.timings))
            log.info("continue -> result: %.3f s", draft.timings["continue_to_result_s"])
            if pred.status == "ok":
                self.save_case(draft)
            elif pred.status == "rejected":
                result.saved("Not saved: the image is not a chest X-ray.")

        # the film was found, straightened and checked for the Check screen: predict takes it as it is
        self.worker.submit(lambda: pipeline.predict(film, name=draft.name, heatmaps=True), done,
                           lambda exc: result.failed(_message(exc)), key="case")

    def save_case(self, draft: Draft) -> None:
        result = self.screen("result")
        if self.store is None:
            result.saved(f"Not saved: {self.store_error}")
            return
        result.saved("Saving...")
        pack_name = self.pipeline.pack.name if self.pipeline else ""

        def save():
            return self.store.save(draft.prediction, draft.film.image, quality=draft.checks, source=draft.name,
                                   pack_name=pack_name, profile=self.settings.profile)

        def saved(case):
            draft.case = case
            if self.draft is draft and self.root.current == "result":
                result.saved(f"Saved as case #{case.id}.")
            elif self.root.current == "history":  # the user went there before the save finished
                self.refresh_history()

        def failed(exc):
            result.saved(f"NOT saved: {_message(exc)}")

        self.worker.submit(save, saved, failed)  # no key: nothing supersedes a save

    # ----------------------------------------------------------------- history

    def refresh_history(self, message: str = "") -> None:
        history = self.screen("history")
        if self.store is None:
            history.refresh([], f"Case store unavailable: {self.store_error}")
            return
        history.refresh(self.store.list(), message)

    def case_thumbnail(self, case):
        if not case.thumbnail:
            return None
        try:
            return to_texture(load_image(case.thumbnail, mode="L"))
        except ImageError as exc:
            log.warning("case %s: thumbnail unreadable (%s)", case.id, exc)
            return None

    def open_case(self, case_id: int) -> None:
        result = self.screen("result")
        try:
            case = self.store.get(case_id)
            film = self.store.film(case_id)
        except CxrEdgeError as exc:
            self.refresh_history(_message(exc))
            return
        self.draft = None
        result.show(case.result, film, heatmap_note="Heatmaps are not kept with saved cases.")
        result.title = f"Case #{case.id}"
        result.saved(f"Saved {case.created_local}; {case.source}")
        self.go("result")

    def delete_case(self, case_id: int) -> None:
        try:
            self.store.delete(case_id)
        except CxrEdgeError as exc:
            self.refresh_history(_message(exc))
            return
        self.refresh_history(f"Case #{case_id} deleted.")

    def export_cases(self, folder: Path, *, images: bool) -> None:
        history = self.screen("history")
        history.message = "Exporting..."
        self.settings.export_dir = str(folder)
        self.settings.save()

        def done(res):
            extra = f" and the images in {res.images_dir.name}" if res.images_dir else ""
            history.message = f"Exported {res.count} case(s) to {res.csv_path}{extra}."

        self.worker.submit(lambda: self.store.export_csv(folder, images=images), done,
                           lambda exc: setattr(history, "message", f"Export failed: {_message(exc)}"), key="export")

    def shutdown(self) -> None:
        self.camera.close()
        self.worker.shutdown()
        if self.store is not None:
            self.store.close()


def _message(exc: Exception) -> str:
    if isinstance(exc, CxrEdgeError):
        return str(exc)
    log.error("unexpected error", exc_info=exc)
    return f"Internal error ({type(exc).__name__}: {exc}). Please report it."


class CxrEdgeApp(App):
    title = "cxr-edge"

    def __init__(self, *, pack=None, threads: int | None = None, data_dir=None, app_pack=None, **kw):
        super().__init__(**kw)
        self._pack, self._threads, self._data_dir, self._app_pack = pack, threads, data_dir, app_pack
        self.controller: Controller | None = None

    @property
    def user_data_dir(self) -> str:
        """Kivy's data folder (``$XDG_CONFIG_HOME`` or ``~/.config``, then the app's name, on Linux), with
        its parents made first: Kivy makes only the last folder, so on a fresh device, with no ~/.config
        yet, the app could not start. A folder that cannot be made is a clear error, not a traceback."""
        from kivy.utils import platform

        if platform not in ("android", "ios", "win", "macosx"):
            base = Path(os.environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser()
            try:
                base.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CaseStoreError(f"cannot create the app's data folder in {base} ({exc.strerror or exc}). Set "
                                     "XDG_CONFIG_HOME (or HOME) to a folder you may write to.") from exc
        try:
            return super().user_data_dir
        except OSError as exc:
            raise CaseStoreError(f"cannot create the app's data folder ({exc.strerror or exc}: "
                                 f"{exc.filename}). Set XDG_CONFIG_HOME (or HOME) to a folder you may write to.") from exc

    def build(self):
        self.controller = Controller(self._data_dir or self.user_data_dir, pack=self._pack, threads=self._threads,
                                     app_pack=self._app_pack)
        return self.controller.root

    def on_pause(self):  # Android: keep the app alive when the camera app or the file picker comes up
        return True

    def on_stop(self):
        if self.controller is not None:
            self.controller.shutdown()


def main(pack=None, threads: int | None = None, data_dir=None, app_pack=None) -> None:
    """Run the app (desktop or Android). Ctrl-C in the terminal stops it the way closing the window does
    (``on_stop`` closes the case store), then raises KeyboardInterrupt for the CLI's exit 130.

    ``app_pack``: a pack shipped with the app (the APK's ``pack/`` folder, which ``mobile_app/main.py``
    passes), used when neither ``pack`` nor the Settings name one."""
    app = CxrEdgeApp(pack=pack, threads=threads, data_dir=data_dir, app_pack=app_pack)
    with _stop_on_sigint(app) as interrupted:
        app.run()
    if interrupted:
        raise KeyboardInterrupt


class _stop_on_sigint:
    """While the app runs, SIGINT asks the main loop to stop instead of raising KeyboardInterrupt wherever
    the main thread happens to be: inside a Kivy callback the exception can be swallowed (the app then
    never ends), or cut a save short. A second Ctrl-C raises at once. True when SIGINT arrived."""

    def __init__(self, app):
        self.app, self.hit, self.previous = app, False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():   # only the main thread may set handlers
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False

    def __bool__(self):
        return self.hit

    def _handler(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True
        log.info("interrupted: stopping the app")
        from kivy.clock import Clock

        Clock.schedule_once(lambda dt: self.app.stop(), 0)
