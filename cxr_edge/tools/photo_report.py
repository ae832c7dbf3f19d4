"""The report of a real-photo evaluation: ``index.html`` + ``report.md`` and contact sheets.

``cxr-edge evaluate PACK --real-photos FOLDER --report OUT`` writes it from :func:`evaluate_photos`'s result.
A contact sheet shows every photo as a tile: the photo as given beside the film the models saw (straightened,
cropped, or the digital image as it is; turned upright where the orientation check turned it), with what
happened to it -- the path, the gate's score, the 4-class answer against the manifest's label, moiré, OOD flags,
the quality verdict. The tile's frame says it at a glance: green a hit, red a miss or an unanswered photo, grey
answered without a label to compare. Reading 17 rows of a table is slower than looking at 17 tiles.

Pillow only (no plotting library), written atomically. At most :data:`TILES_PER_SHEET` tiles per sheet
(``contact_sheet_01.png``, ``_02``, ...), so a folder of a thousand photos gives several sheets of bounded size.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageDraw, ImageFont

from ..runtime.atomic import write_atomic
from ..errors import ImageError
from ..runtime.images import load_image
from .evaluate_photos import SLOT
from .report_html import Page

__all__ = ["COLOURS", "THUMB", "TILES_PER_SHEET", "contact_sheets", "outcome", "tile_box", "write_photo_report"]

THUMB = 200                 # px: the longer side of each thumbnail in a tile
TILES_PER_SHEET = 30
COLUMNS = 3
_PAD = 8
_LINE = 17
_CAPTION_LINES = 5
_TILE = (2 * THUMB + 3 * _PAD, THUMB + 2 * _PAD + _CAPTION_LINES * _LINE + _PAD)
COLOURS = {"hit": (46, 160, 67), "miss": (200, 50, 40), "unlabelled": (150, 150, 150)}
_SHEET = re.compile(r"contact_sheet_\d+\.png")


def _font():
    try:
        return ImageFont.load_default(size=13)
    except (TypeError, OSError, ImportError):        # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _drawable(text: str, font) -> str:
    """``text`` as ``font`` can draw it: the bitmap font of a Pillow without FreeType has Latin-1 only."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


def outcome(p: dict) -> str:
    """A photo row's tile colour: 'hit', 'miss' (also: not answered) or 'unlabelled' (answered, no label to compare)."""
    if p["status"] != "ok" or (p["labelled"] and not p["hit"]):
        return "miss"
    return "hit" if p["labelled"] else "unlabelled"


def _caption(p: dict) -> list[str]:
    gate = "gate -" if p["gate_score"] is None else \
        f"gate {p['gate_score']:.3f} {'accepted' if p['gate_accepted'] else 'rejected'}"
    if p["cxr4_top"]:
        answer = f"{SLOT} {p['cxr4_top']} {p['cxr4_p_top']:.2f}"
        answer += f"  label {p['label']}: {'hit' if p['hit'] else 'miss'}" if p["labelled"] else \
            f"  label {p['label'] or '-'}"
    else:
        answer = f"not answered ({p['error'] or p['status']})  label {p['label'] or '-'}"
    flags = [f"quality {p['quality']}" if p["quality"] else "quality not checked"]
    if p["moire"]:
        flags.append("moire")           # the sheet's font has no accented letters
    if p["ood_unusual"]:
        flags.append("unusual for " + "/".join(p["ood_unusual"]))
    if p.get("turned_upright"):
        flags.append(f"turned upright ({p['turned_upright']} deg)")
    name = p["file"] if len(p["file"]) <= 52 else "..." + p["file"][-49:]
    return [name, f"{p['kind']} · path {p['path']} · {p['status']}", gate, answer, ", ".join(flags)]


def _fit(img: Image.Image | None, text: str, font) -> Image.Image:
    """``img`` shrunk into a THUMB x THUMB dark square, or the square with ``text`` when there is none."""
    box = Image.new("RGB", (THUMB, THUMB), (40, 40, 40))
    if img is None:
        ImageDraw.Draw(box).text((10, THUMB // 2 - 8), _drawable(text, font), fill=(220, 220, 220), font=font)
        return box
    img = img.convert("RGB")
    img.thumbnail((THUMB, THUMB), Image.Resampling.BILINEAR, reducing_gap=2.0)
    box.paste(img, ((THUMB - img.width) // 2, (THUMB - img.height) // 2))
    return box


def _photo_thumb(folder: Path, file: str) -> Image.Image | None:
    try:       # decoded at reduced size (JPEG draft): a 12-MP photo costs a fraction of a full decode
        return load_image(folder / file, mode="RGB", min_size=THUMB)
    except ImageError:
        return None


def _tile(p: dict, photo: Image.Image | None, film: Image.Image | None, font) -> Image.Image:
    tile = Image.new("RGB", _TILE, (255, 255, 255))
    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, 0, _TILE[0] - 1, _TILE[1] - 1), outline=COLOURS[outcome(p)], width=4)
    tile.paste(_fit(photo, "unreadable", font), (_PAD, _PAD))
    tile.paste(_fit(film, "no film: " + (p["error"] or p["status"]), font), (2 * _PAD + THUMB, _PAD))
    y = THUMB + 2 * _PAD
    for line in _caption(p):
        draw.text((_PAD, y), _drawable(line, font), fill=(20, 20, 20), font=font)
        y += _LINE
    return tile


def tile_box(i: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the ``i``-th tile of a contact sheet (0-based, row by row)."""
    x, y = _PAD + (i % COLUMNS) * (_TILE[0] + _PAD), _PAD + (i // COLUMNS) * (_TILE[1] + _PAD)
    return x, y, x + _TILE[0], y + _TILE[1]


def contact_sheets(r: dict, films: dict[str, Image.Image], *, progress=None) -> Iterator[Image.Image]:
    """One image per :data:`TILES_PER_SHEET` photos of ``r`` (:func:`evaluate_photos`' result), made one at a time:
    each photo (read again from ``r['folder']``) beside its film from ``films`` (file -> the film the models saw)."""
    folder, photos, font = Path(r["folder"]), r["photos"], _font()
    for start in range(0, len(photos), TILES_PER_SHEET):
        part = photos[start:start + TILES_PER_SHEET]
        rows = -(-len(part) // COLUMNS)
        sheet = Image.new("RGB", (COLUMNS * (_TILE[0] + _PAD) + _PAD, rows * (_TILE[1] + _PAD) + _PAD),
                          (235, 235, 235))
        for i, p in enumerate(part):
            tile = _tile(p, _photo_thumb(folder, p["file"]), films.get(p["file"]), font)
            sheet.paste(tile, tile_box(i)[:2])
            if progress:
                progress("report", start + i + 1, len(photos))
        yield sheet


def write_photo_report(r: dict, films: dict[str, Image.Image], out, *, progress=None) -> Path:
    """Write the report of ``r`` into folder ``out`` (created if needed); returns the folder. Each sheet is
    written as soon as it is drawn (memory: one sheet at a time). Contact sheets of an earlier report in ``out``
    that this one does not have are removed once the new pages are written, so the folder never mixes two."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for i, sheet in enumerate(contact_sheets(r, films, progress=progress), start=1):
        buf = io.BytesIO()
        sheet.save(buf, format="PNG", optimize=False)
        names.append(f"contact_sheet_{i:02d}.png")
        write_atomic(out / names[-1], buf.getvalue())
        del sheet, buf
    _page(r, names).write(out)
    for stale in out.iterdir():
        if _SHEET.fullmatch(stale.name) and stale.name not in names and stale.is_file():
            stale.unlink()
    return out


def _page(r: dict, sheets: list[str]) -> Page:
    s = r["summary"]
    page = Page(f"Real photos: {Path(r['folder']).resolve().name}")
    page.text(f"{s['n'] + len(r['missing'])} photos listed in {r['manifest']}, each one found went through "
              f"`cxr-edge predict` with the pack {r['pack']}.", muted=True)
    hits = f"{s['hits']}/{s['labelled']}" if s["labelled"] else "no photo has a label the model has"
    page.bullets([f"answered {s['answered']}/{s['n']}; rejected by the gate {s['rejected']}; errors "
                  f"{sum(s['errors'].values())}" + (f" ({', '.join(f'{k} {v}' for k, v in s['errors'].items())})"
                                                    if s["errors"] else ""),
                  f"gate accepted {s['gate_accepted']}/{s['n']}",
                  "paths: " + (", ".join(f"{k} {v}" for k, v in s["paths"].items()) or "-"),
                  f"moiré found {s['moire_found']}; unusual for a model (OOD) {s['ood_unusual']}; turned upright "
                  f"{s.get('turned_upright', 0)}",
                  f"{SLOT} top class = label: {hits}"])
    for name, files in (("not in the manifest", r["unlisted"]), ("listed but missing", r["missing"])):
        if files:
            page.alert(f"{len(files)} image(s) {name}: {', '.join(files[:20])}{' ...' if len(files) > 20 else ''}")
    page.heading("By kind of photo")
    page.table(["kind", "photos", "answered", "gate accepted", "straightened / cropped / digital", "moiré",
                f"{SLOT} hits"],
               [[k, g["n"], g["answered"], g["gate_accepted"],
                 " / ".join(str(g["paths"].get(x, 0)) for x in ("quadrilateral", "cropped", "digital")),
                 g["moire_found"], f"{g['hits']}/{g['labelled']}" if g["labelled"] else "-"]
                for k, g in list(r["by_kind"].items()) + [("all", s)]])
    page.heading("By label")
    page.table(["label", "photos", "answered", "hits", f"{SLOT} top classes"],
               [[label, d["n"], d["answered"], "-" if d["hits"] is None else d["hits"],
                 ", ".join(f"{k} {v}" for k, v in d["cxr4_top"].items()) or "-"]
                for label, d in r["by_label"].items()])
    page.heading("Every photo")
    page.text("Each tile: the photo as given (left) and the film the models saw (right). Frame: green = the "
              f"{SLOT} answer matches the label, red = it does not or the photo was not answered, grey = answered, "
              "no label the model has.", muted=True)
    for i, name in enumerate(sheets, start=1):
        page.image(name, f"contact sheet {i} of {len(sheets)}")
    page.table(["file", "kind", "path", "status", "gate", f"{SLOT} top", "p", "label", "hit", "flags"],
               [[p["file"], p["kind"], p["path"], p["status"] + (f" ({p['error']})" if p["error"] else ""),
                 "-" if p["gate_score"] is None else f"{p['gate_score']:.3f}", p["cxr4_top"] or "-",
                 "-" if p["cxr4_p_top"] is None else f"{p['cxr4_p_top']:.2f}", p["label"],
                 ("yes" if p["hit"] else "no") if p["labelled"] else "-", _caption(p)[-1]]
                for p in r["photos"]])
    return page
