"""The six screens and their small widgets. They show what the controller (``app.Controller``) gives them
and call it back; none of them touches a model, an image file or the case store directly."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from kivy.clock import Clock
from kivy.factory import Factory
from kivy.lang import Builder
from kivy.metrics import dp
from kivy.properties import (BooleanProperty, DictProperty, NumericProperty, ObjectProperty, StringProperty)
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.button import Button
from kivy.uix.filechooser import FileChooserListView
from kivy.uix.floatlayout import FloatLayout
from kivy.uix.image import Image as KivyImage
from kivy.uix.label import Label
from kivy.uix.popup import Popup
from kivy.uix.recycleview.views import RecycleDataViewBehavior
from kivy.uix.screenmanager import NoTransition, Screen, ScreenManager
from kivy.uix.spinner import Spinner
from kivy.uix.togglebutton import ToggleButton
from kivy.uix.widget import Widget

from cxr_edge.runtime.cam import overlay
from cxr_edge.runtime.images import IMAGE_SUFFIXES
from cxr_edge.runtime.photo.quality import overall_verdict
from cxr_edge.tasks import CLASSIFIER_SLOTS, get_slot

from .imaging import to_texture

__all__ = ["AMBER", "AppScreen", "BusyIndicator", "CaptureScreen", "CaseRow", "CheckScreen", "dialog", "FilmGuide",
           "GREEN", "HistoryScreen", "HomeScreen", "KV_FILE", "PICKER_FILTERS", "ProbBar", "RED", "ResultScreen",
           "Root", "SettingsScreen", "text", "VERDICT_COLORS"]

log = logging.getLogger(__name__)

KV_FILE = Path(__file__).with_name("cxr_app.kv")
if str(KV_FILE) not in Builder.files:
    Builder.load_file(str(KV_FILE))

AMBER = (1, 0.76, 0.3, 1)
RED = (1, 0.45, 0.4, 1)
GREEN = (0.45, 0.85, 0.5, 1)
VERDICT_COLORS = {"pass": GREEN, "warn": AMBER, "fail": RED}
PICKER_FILTERS = [f"*{s}" for s in IMAGE_SUFFIXES] + [f"*{s.upper()}" for s in IMAGE_SUFFIXES]


def text(s: str, **kw) -> Label:
    """A wrapping label whose height follows its text (the kv ``Text`` rule)."""
    return Factory.Text(text=s, **kw)


def dialog(title: str, content, action: str, on_action, *, cancel: str = "Cancel", size=(0.95, 0.9)) -> Popup:
    """A popup with ``content`` above [cancel] [action] buttons; ``on_action()`` runs after it closes."""
    box = BoxLayout(orientation="vertical", spacing=dp(8), padding=dp(4))
    box.add_widget(content)
    buttons = BoxLayout(size_hint_y=None, height=dp(48), spacing=dp(8))
    popup = Popup(title=title, content=box, size_hint=size, auto_dismiss=False)
    no, yes = Button(text=cancel), Button(text=action)
    no.bind(on_release=lambda *_: popup.dismiss())
    yes.bind(on_release=lambda *_: (popup.dismiss(), on_action()))
    buttons.add_widget(no)
    buttons.add_widget(yes)
    box.add_widget(buttons)
    popup.open()
    return popup


# --------------------------------------------------------------------------- widgets


class BusyIndicator(BoxLayout):
    """A progress bar that sweeps while the worker runs, with what it is doing."""

    active = BooleanProperty(False)
    text = StringProperty("")
    progress = NumericProperty(0)
    _event = None

    def start(self, message: str) -> None:
        self.text, self.active, self.progress = message, True, 0
        if self._event is None:
            self._event = Clock.schedule_interval(self._tick, 1 / 20)

    def _tick(self, dt):
        self.progress = (self.progress + 4) % 104

    def stop(self) -> None:
        self.active = False
        if self._event is not None:
            self._event.cancel()
            self._event = None


class ProbBar(BoxLayout):
    label = StringProperty("")
    value = NumericProperty(0)
    highlight = BooleanProperty(False)


class FilmGuide(Widget):
    """A film-shaped outline over the camera preview."""

    ASPECT = 35 / 43

    def guide_rect(self, *_):
        h = self.height * 0.86
        w = min(self.width * 0.86, h * self.ASPECT)
        h = w / self.ASPECT
        return (self.center_x - w / 2, self.center_y - h / 2, w, h)


class CaseRow(RecycleDataViewBehavior, BoxLayout):
    case_id = NumericProperty(0)
    title = StringProperty("")
    summary = StringProperty("")
    thumbnail = ObjectProperty(None, allownone=True)
    history = ObjectProperty(None)

    def refresh_view_attrs(self, rv, index, data):
        super().refresh_view_attrs(rv, index, data)
        self.thumbnail = data["history"].thumbnail_texture(data["case_id"])


# --------------------------------------------------------------------------- screens


class AppScreen(Screen):
    ctl = ObjectProperty(None)

    def find(self, text_: str):
        """The first widget in this screen showing ``text_`` (tests and accessibility checks use it)."""
        return next((w for w in self.walk() if getattr(w, "text", None) == text_), None)


class HomeScreen(AppScreen):
    pack_text = StringProperty("Loading the model pack...")


class CaptureScreen(AppScreen):
    mode = StringProperty("")        # "camera" or "picker"
    message = StringProperty("")
    chooser = ObjectProperty(None, allownone=True)

    def on_pre_enter(self, *_):
        self.start()

    def on_leave(self, *_):
        self.ctl.camera.close()

    def start(self) -> None:
        self.message = ""
        self.ctl.request_camera(self._camera_allowed)

    def _camera_allowed(self, granted: bool, reason: str) -> None:
        if not granted:
            self.show_picker(reason)
            return
        try:
            preview = self.ctl.camera.open()
        except Exception as exc:  # CameraUnavailable, or anything a driver throws
            self.show_picker(f"{exc}. Choose an image file instead.")
            return
        area = self.ids.area
        area.clear_widgets()
        box = FloatLayout()
        preview.size_hint = (1, 1)
        preview.pos_hint = {"x": 0, "y": 0}
        box.add_widget(preview)
        box.add_widget(FilmGuide(size_hint=(1, 1), pos_hint={"x": 0, "y": 0}))
        area.add_widget(box)
        self.mode = "camera"
        self.message = "Fit the whole film inside the outline, with the lightbox behind it."
        Clock.schedule_once(self._check_first_frame, self.ctl.camera.first_frame_timeout)

    def _check_first_frame(self, _dt) -> None:
        if self.mode == "camera" and not self.ctl.camera.has_frame():
            self.ctl.camera.close()
            self.show_picker("The camera opened but sends no picture. Choose an image file instead.")

    def show_picker(self, message: str) -> None:
        self.ctl.camera.close()
        area = self.ids.area
        area.clear_widgets()
        start = self.ctl.picker_start_dir()
        self.chooser = FileChooserListView(path=str(start), filters=PICKER_FILTERS)
        area.add_widget(self.chooser)
        self.mode = "picker"
        self.message = message or "Choose an image of a chest X-ray (PNG, JPEG, DICOM...)."

    def take_photo(self) -> None:
        try:
            image = self.ctl.camera.capture()
        except Exception as exc:
            self.show_picker(f"{exc}. Choose an image file instead.")
            return
        self.ctl.camera.close()
        self.ctl.open_image(image, name=time.strftime("photo %Y-%m-%d %H:%M:%S"))

    def open_selected(self) -> None:
        selection = self.chooser.selection if self.chooser else []
        if not selection:
            self.message = "Select an image file first."
            return
        path = Path(selection[0])
        self.ctl.remember_dir(path.parent)
        self.ctl.open_image(path, name=path.name)


class CheckScreen(AppScreen):
    film_note = StringProperty("")
    can_continue = BooleanProperty(False)
    continue_text = StringProperty("Continue")

    def busy(self, message: str) -> None:
        self.ids.busy.start(message)
        self.ids.film.texture = None
        self.ids.checks.clear_widgets()
        self.film_note, self.can_continue, self.continue_text = "", False, "Continue"

    def show(self, film) -> None:
        """The film :meth:`Pipeline.film` found (a :class:`~cxr_edge.runtime.pipeline.Film`) and its checks."""
        self.ids.busy.stop()
        box = self.ids.checks
        box.clear_widgets()
        checks = film.quality or []
        self.ids.film.texture = to_texture(film.image)
        if not (film.rectify or {}).get("photo"):
            self.film_note = "Digital image: used as it is."
        elif film.rectify.get("path") == "cropped":
            self.film_note = ("No film edges in view: the photo is used as cropped to the film, its flat borders "
                              "trimmed and its contrast evened out.")
        else:
            self.film_note = "Film found, straightened and its contrast evened out."
        order = {"fail": 0, "warn": 1, "pass": 2}  # what needs acting on first
        for check in sorted(checks, key=lambda c: order.get(c.verdict, 0)):
            box.add_widget(text(f"{check.verdict.upper()}  {check.name}: {check.message}",
                                color=VERDICT_COLORS.get(check.verdict, AMBER)))
        if not checks:
            box.add_widget(text("No quality checks apply to this image."))
        self.can_continue = True
        self.continue_text = "Continue anyway" if overall_verdict(checks) == "fail" else "Continue"

    def no_film(self, photo, error) -> None:
        """A photo in which no film was found: the photo, and the reason (an ImageError of kind no_film)."""
        self.ids.busy.stop()
        self.ids.checks.clear_widgets()
        self.ids.film.texture = to_texture(photo)
        reason = getattr(error, "detail", None) or "no film outline was found"
        self.film_note = f"No film found in this photo ({reason}). Retake it with the whole film in view."

    def failed(self, message: str) -> None:
        self.ids.busy.stop()
        self.film_note = message


class ResultScreen(AppScreen):
    title = StringProperty("Result")
    saved_text = StringProperty("")
    heatmaps = DictProperty({})
    _film = None
    _film_texture = None

    def busy(self, message: str) -> None:
        self.title, self.saved_text = "Analysing", ""
        self.ids.body.clear_widgets()
        self.ids.busy.start(message)

    def failed(self, message: str) -> None:
        self.ids.busy.stop()
        self.title = "Could not analyse the image"
        self.ids.body.clear_widgets()
        self.ids.body.add_widget(text(message, color=RED))

    def show(self, result: dict, film, *, heatmaps=None, heatmap_note: str = "") -> None:
        """Show a prediction (``Prediction.to_dict()`` or a saved case's result) for ``film``."""
        self.ids.busy.stop()
        body = self.ids.body
        body.clear_widgets()
        self._film = film
        self.heatmaps = dict(heatmaps or {})
        status = result.get("status")
        if status == "error":
            self.title = "Could not analyse the image"
            body.add_widget(text((result.get("error") or {}).get("message") or result.get("message", ""), color=RED))
            return
        if status == "rejected":
            self._show_rejected(result, film)
            return
        self.title = "Result"
        gate = result.get("gate")
        if gate:
            body.add_widget(text(f"Chest X-ray: yes (gate score {gate['score']:.2f}, needs {gate['threshold']:.2f})",
                                 color=GREEN))
        for warning in result.get("warnings") or []:
            body.add_widget(text(f"Warning: {warning}", color=AMBER, bold=True))
        for slot in CLASSIFIER_SLOTS:   # the slot table: a class slot as bars, a findings slot as a list
            if result.get(slot):
                (self._classes if get_slot(slot).answer == "class" else self._findings)(body, result[slot])
        self._film_widgets(body, film, result, heatmap_note)

    def _show_rejected(self, result: dict, film) -> None:
        body = self.ids.body
        self.title = "Not a chest X-ray"
        gate = result.get("gate") or {}
        score = f" (gate score {gate['score']:.2f}, needs {gate['threshold']:.2f})" if gate else ""
        body.add_widget(text(f"This image was not accepted as a frontal chest X-ray{score}. "
                             "No results are given for it.", color=AMBER))
        body.add_widget(text("Take a new photo of the whole film, or choose another image."))
        body.add_widget(self._image_widget(to_texture(film), height=dp(200)))

    def _image_widget(self, texture, height):
        return KivyImage(texture=texture, size_hint_y=None, height=height, fit_mode="contain")

    def _film_widgets(self, body, film, result, heatmap_note):
        self._film_texture = to_texture(film)
        self.film_image = self._image_widget(self._film_texture, dp(260))
        body.add_widget(self.film_image)
        row = BoxLayout(size_hint_y=None, height=dp(44), spacing=dp(8))
        self.heatmap_toggle = ToggleButton(text="Show heatmap", disabled=not self.heatmaps)
        self.heatmap_toggle.bind(state=lambda *_: self._update_film())
        row.add_widget(self.heatmap_toggle)
        self.heatmap_choice = None
        if self.heatmaps:
            order = _heatmap_order(self.heatmaps, result)
            self.heatmap_choice = Spinner(text=order[0], values=order)
            self.heatmap_choice.bind(text=lambda *_: self._update_film())
            row.add_widget(self.heatmap_choice)
        body.add_widget(row)
        if self.heatmaps:
            self.heatmap_caption = text("", font_size="13sp")
            body.add_widget(self.heatmap_caption)
        else:
            body.add_widget(text(heatmap_note or "No heatmaps for this result.", font_size="13sp"))

    def _update_film(self) -> None:
        on = self.heatmap_toggle.state == "down" and self.heatmap_choice is not None
        if on:
            label = self.heatmap_choice.text
            self.film_image.texture = to_texture(overlay(self._film, self.heatmaps[label]))
            self.heatmap_caption.text = (f"Heatmap for {label}: where the model's evidence for it lies. It is not an "
                                         "outline of a lesion, and its colours do not show how likely the finding "
                                         "is; read the film itself.")
        else:
            self.film_image.texture = self._film_texture
            if self.heatmaps:
                self.heatmap_caption.text = ""

    def _classes(self, body, r: dict) -> None:
        probs = r["probabilities"]
        body.add_widget(text(" / ".join(probs), bold=True))    # the pack's labels, in its order
        for label in sorted(probs, key=lambda k: -probs[k]):
            body.add_widget(ProbBar(label=label, value=float(probs[label]), highlight=label == r["top"]))
        flagged = [lbl for lbl in r.get("positive") or [] if lbl != r["top"]]
        if flagged:
            body.add_widget(text(f"Also above the '{r['profile']}' threshold: "
                                 + ", ".join(f"{lbl} {probs[lbl]:.0%}" for lbl in flagged)))

    def _findings(self, body, r: dict) -> None:
        body.add_widget(text(f"Findings above the '{r['profile']}' thresholds ({r['task']})", bold=True))
        if not r["positive"]:
            body.add_widget(text("No finding above its threshold."))
        for label in sorted(r["positive"], key=lambda k: -r["probabilities"][k]):
            body.add_widget(text(f"{label}: {r['probabilities'][label]:.0%} (threshold {r['thresholds'][label]:.0%})"))

    def saved(self, message: str) -> None:
        self.saved_text = message


def _heatmap_order(heatmaps: dict, result: dict) -> list[str]:
    """Heatmap labels, the reported ones first (a class slot's answer, a findings slot's findings, in slot
    order), then the rest."""
    first = []
    for slot in CLASSIFIER_SLOTS:
        r = result.get(slot) or {}
        first += [r.get("top")] if get_slot(slot).answer == "class" else list(r.get("positive") or [])
    ordered = [k for k in first if k in heatmaps]
    return ordered + sorted(k for k in heatmaps if k not in ordered)


class HistoryScreen(AppScreen):
    title = StringProperty("History")
    message = StringProperty("")
    count = NumericProperty(0)

    def __init__(self, **kw):
        super().__init__(**kw)
        self._thumbs: dict[int, object] = {}

    def refresh(self, cases, message: str = "") -> None:
        self.count = len(cases)
        self.title = f"History ({len(cases)} case{'s' if len(cases) != 1 else ''})"
        self.message = message or ("No saved cases yet." if not cases else "")
        self._cases = {c.id: c for c in cases}
        self.ids.rv.data = [{"case_id": c.id, "title": f"#{c.id}  {c.created_local}", "summary": c.summary,
                             "history": self} for c in cases]

    def thumbnail_texture(self, case_id: int):
        if case_id not in self._thumbs:
            self._thumbs[case_id] = self.ctl.case_thumbnail(self._cases[case_id])
        return self._thumbs[case_id]

    def open_case(self, case_id: int) -> None:
        self.ctl.open_case(case_id)

    def confirm_delete(self, case_id: int, title: str) -> None:
        message = Label(text=f"Delete case {title}?\nThis cannot be undone.", halign="center")
        self.popup = dialog("Delete case", message, "Delete", lambda: self.ctl.delete_case(case_id),
                            cancel="Keep", size=(0.9, 0.4))

    def choose_export_folder(self) -> None:
        chooser = FileChooserListView(path=str(self.ctl.export_start_dir()), dirselect=True)

        def export():
            folder = Path(chooser.selection[0]) if chooser.selection else Path(chooser.path)
            self.ctl.export_cases(folder if folder.is_dir() else folder.parent, images=self.ids.with_images.active)

        self.popup = dialog("Export to which folder?", chooser, "Export here", export)
        self.popup.chooser = chooser


class SettingsScreen(AppScreen):
    pack_info = StringProperty("")
    message = StringProperty("")
    data_info = StringProperty("")

    def on_pre_enter(self, *_):
        self.load()

    def load(self) -> None:
        s = self.ctl.settings
        self.ids.pack_input.text = s.pack
        self.ids.pack_input.hint_text = self.ctl.pack_in_use()
        profiles = self.ctl.pack_profiles()
        self.ids.profile.values = ["(pack default)"] + profiles
        self.ids.profile.text = s.profile if s.profile in profiles else "(pack default)"
        self.ids.threads.values = [str(n) for n in range(1, 9)]
        self.ids.threads.text = str(self.ctl.threads)
        self.pack_info = self.ctl.pack_summary()
        self.data_info = f"Cases are kept on this device only, in {self.ctl.data_dir}"
        self.message = ""

    def apply(self) -> None:
        profile = self.ids.profile.text
        self.ctl.apply_settings(pack=self.ids.pack_input.text.strip(),
                                profile="" if profile.startswith("(") else profile,
                                threads=int(self.ids.threads.text))
        self.message = "Loading the model pack..."

    def choose_pack(self) -> None:
        chooser = FileChooserListView(path=str(self.ctl.picker_start_dir()), dirselect=True, filters=["*.zip"])

        def pick():
            if chooser.selection:
                self.ids.pack_input.text = chooser.selection[0]

        self.popup = dialog("Choose a model pack (folder or .zip)", chooser, "Use this pack", pick)
        self.popup.chooser = chooser


class Root(ScreenManager):
    """All screens; ``ctl`` is the controller every screen talks to."""

    def __init__(self, ctl, **kw):
        super().__init__(transition=NoTransition(), **kw)
        for name, cls in (("home", HomeScreen), ("capture", CaptureScreen), ("check", CheckScreen),
                          ("result", ResultScreen), ("history", HistoryScreen), ("settings", SettingsScreen)):
            self.add_widget(cls(name=name, ctl=ctl))
