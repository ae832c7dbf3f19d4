"""Real photos as a first-class input: a folder of phone photos with a manifest, through ``predict``.

Simulated photos measure the photo path on known films; real ones say whether it holds up in the
field. :func:`evaluate_photos` runs every photo of a manifest through the same :class:`Pipeline` as
``cxr-edge predict`` (gate first, OOD guard, quality checks) and reports, overall and per ``kind``
(e.g. film_photo / screen_photo):

* answered (status ok), rejected by the gate, errors by kind: the answered rate;
* gate acceptance and the gate's scores;
* the path each photo took (quadrilateral / cropped / digital), moiré found, OOD flags, quality verdicts;
* per label: hits of the 4-class model (its top class equals the manifest's label; labels the model does
  not have, such as "unknown", count as unlabelled).

The manifest is a CSV with at least ``file`` (relative to the folder) and ``label`` columns; ``kind`` and
``view`` are used when present (``../shared/data/real_photos_dev/manifest.csv`` has them). Images in the
folder that the manifest does not list, and listed files that are missing, are reported, not dropped.
:func:`format_photo_result` is the text, :func:`card_section` the model card's "Real photos" section,
both from the JSON-able dict :func:`evaluate_photos` returns; :mod:`cxr_edge.tools.photo_report` writes its report
folder (contact sheets of every photo beside the film the models saw).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["card_section", "evaluate_photos", "FILM_THUMB", "format_photo_result", "read_photo_manifest",
           "SLOT"]

log = logging.getLogger(__name__)

SLOT = "cxr4"        # the classifier whose top class is compared with the manifest's label


def read_photo_manifest(folder: Path, manifest: Path | None = None) -> list[dict]:
    """The manifest's rows (``folder/manifest.csv`` by default); raises DataError on a bad manifest."""
    folder = Path(folder)
    path = Path(manifest) if manifest is not None else folder / "manifest.csv"
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder. Give the folder holding the photos and their manifest.csv.")
    if not path.is_file():
        raise DataError(f"{path}: no manifest. A photo folder needs a CSV with 'file' and 'label' columns "
                        "(and optionally 'kind', 'view'); pass it with --manifest if it lives elsewhere.")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = {"file", "label"} - set(rows[0] if rows else {})
    if not rows or missing:
        raise DataError(f"{path}: {'is empty' if not rows else 'has no ' + ', '.join(sorted(missing)) + ' column'}; "
                        "a photo manifest needs 'file' and 'label' columns (and optionally 'kind', 'view').")
    return rows


FILM_THUMB = 200       # px: the longer side of the copies ``films=`` keeps (a report's thumbnails: 40 KB each)


def evaluate_photos(pipeline, folder, manifest=None, *, progress=None, films: dict | None = None) -> dict:
    """Predict every photo the manifest lists with ``pipeline`` (a :class:`~cxr_edge.runtime.pipeline.Pipeline`)
    and summarise (module docstring). Returns a JSON-able dict: ``summary``, ``by_kind``, ``by_label``,
    ``photos`` (one row per listed file), ``unlisted`` and ``missing`` files.

    ``films``: a dict that gets, per listed file that could be read, a small copy (at most :data:`FILM_THUMB` px)
    of the film the models saw -- straightened, cropped or the digital image, turned upright where the
    orientation check turned it (``cxr_edge.tools.photo_report`` draws them). The prediction is the same."""
    from ..runtime.images import scan_image_files

    folder = Path(folder)
    rows = read_photo_manifest(folder, manifest)
    labels = pipeline.models[SLOT].spec.labels if SLOT in pipeline.models else ()
    listed = {(folder / r["file"]).resolve() for r in rows}
    scan = scan_image_files([folder])
    unlisted = sorted(str(p.relative_to(folder)) for p in scan.files if p.resolve() not in listed)
    photos, missing = [], []
    for i, row in enumerate(rows):
        path = folder / row["file"]
        if not path.exists():
            missing.append(row["file"])
            continue
        pred = _predict(pipeline, path, row["file"], films)
        photos.append(_photo_row(row, pred, labels))
        if progress:
            progress("photos", i + 1, len(rows))
    return {"folder": str(folder), "manifest": str(manifest or folder / "manifest.csv"),
            "pack": str(pipeline.pack.path), "model_labels": list(labels),
            "summary": _summary(photos), "by_kind": _grouped(photos, "kind"),
            "by_label": _by_label(photos), "photos": photos, "unlisted": unlisted, "missing": missing}


def _predict(pipeline, path: Path, name: str, films: dict | None):
    """``pipeline.predict(path)``; with ``films``, through the :class:`Film` stage so that the film is kept."""
    if films is None:
        return pipeline.predict(path, name)
    from ..runtime.images import decode_budget
    from ..runtime.orientation import upright

    with decode_budget():        # as predict holds it: the photo stage's copies of a large photo stay counted
        try:
            film = pipeline.film(path, name, checks=False)
        except Exception:        # noqa: BLE001 -- predict gives the same failure as its error row, never a lost run
            return pipeline.predict(path, name)
        pred = pipeline.predict(film, name)
        thumb = film.image.copy()
    thumb.thumbnail((FILM_THUMB, FILM_THUMB), reducing_gap=2.0)
    turned = (pred.orientation or {}).get("turned_by", 0) if (pred.orientation or {}).get("corrected") else 0
    films[name] = upright(thumb, turned)
    return pred


def _photo_row(row: dict, pred, labels) -> dict:
    r = pred.rectify or {}
    cxr4 = pred.results.get("cxr4")
    label = row.get("label", "")
    top = cxr4.top if cxr4 else None
    quality = pred.to_dict()["quality"]
    return {"file": row["file"], "kind": row.get("kind") or "unknown", "view": row.get("view", ""),
            "label": label, "labelled": label in labels, "status": pred.status,
            "error": (pred.error or {}).get("kind"), "path": r.get("path") if pred.rectify else "none",
            "gate_score": None if pred.gate is None else round(pred.gate.score, 4),
            "gate_accepted": bool(pred.gate and pred.gate.accepted), "cxr4_top": top,
            "cxr4_p_top": None if cxr4 is None else round(cxr4.probabilities[top], 4),
            "hit": bool(top is not None and top == label),
            "moire": bool((r.get("moire") or {}).get("found")),
            "ood_unusual": sorted(s for s, v in (pred.ood or {}).items() if v["unusual"]),
            "turned_upright": _turned(pred.orientation),
            "quality": None if quality is None else quality["verdict"],
            "warnings": len(pred.warnings)}


def _turned(orientation: dict | None) -> int | None:
    """Degrees the orientation check turned the photo back (0: not turned; None: the pack has no check)."""
    if orientation is None:
        return None
    return orientation["turned_by"] if orientation.get("corrected") else 0


def _summary(photos: list[dict]) -> dict:
    n = len(photos)
    labelled = [p for p in photos if p["labelled"]]
    answered = sum(p["status"] == "ok" for p in photos)
    return {"n": n, "answered": answered, "answered_rate": answered / n if n else None,
            "rejected": sum(p["status"] == "rejected" for p in photos),
            "errors": dict(Counter(p["error"] for p in photos if p["status"] == "error")),
            "gate_accepted": sum(p["gate_accepted"] for p in photos),
            "gate_acceptance": float(np.mean([p["gate_accepted"] for p in photos])) if n else None,
            "gate_score_median": _median([p["gate_score"] for p in photos]),
            "paths": dict(Counter(p["path"] for p in photos)),
            "moire_found": sum(p["moire"] for p in photos),
            "ood_unusual": sum(bool(p["ood_unusual"]) for p in photos),
            "turned_upright": sum(bool(p.get("turned_upright")) for p in photos),
            "quality": dict(Counter(p["quality"] or "not checked" for p in photos)),
            "labelled": len(labelled), "hits": sum(p["hit"] for p in labelled),
            "hit_rate": sum(p["hit"] for p in labelled) / len(labelled) if labelled else None}


def _grouped(photos: list[dict], key: str) -> dict:
    return {k: _summary([p for p in photos if p[key] == k]) for k in sorted({p[key] for p in photos})}


def _by_label(photos: list[dict]) -> dict:
    out = {}
    for label in sorted({p["label"] for p in photos}):
        group = [p for p in photos if p["label"] == label]
        tops = Counter(p["cxr4_top"] for p in group if p["cxr4_top"])
        out[label] = {"n": len(group), "labelled": group[0]["labelled"],
                      "hits": sum(p["hit"] for p in group) if group[0]["labelled"] else None,
                      "answered": sum(p["status"] == "ok" for p in group), "cxr4_top": dict(tops.most_common())}
    return out


def _median(values):
    v = [x for x in values if x is not None]
    return float(np.median(v)) if v else None


# --------------------------------------------------------------------------- text and card


def _rate(k, n) -> str:
    return f"{k}/{n}" + (f" ({k / n:.0%})" if n else "")


def format_photo_result(r: dict) -> str:
    """The evaluation as text: the summary, per kind, per label, and one line per photo."""
    s = r["summary"]
    lines = [f"real photos {r['folder']} ({s['n']} listed) with {r['pack']}", "",
             f"answered        {_rate(s['answered'], s['n'])};  rejected by the gate {s['rejected']};  "
             f"errors {sum(s['errors'].values())} {s['errors'] or ''}".rstrip(),
             f"gate accepted   {_rate(s['gate_accepted'], s['n'])};  median gate score {_f(s['gate_score_median'])}",
             f"paths           {_counts(s['paths'])}",
             f"moiré found     {s['moire_found']};  OOD unusual {s['ood_unusual']};  turned upright "
             f"{s.get('turned_upright', 0)};  quality {_counts(s['quality'])}",
             f"{SLOT} hits       {_rate(s['hits'], s['labelled'])} of the photos with a label the model has", ""]
    lines.append(_kind_table(r))
    lines += ["", f"{'label':<24} {'n':>3} {'answered':>9} {'hits':>6}  {SLOT} top classes"]
    for label, d in r["by_label"].items():
        hits = "-" if d["hits"] is None else str(d["hits"])
        lines.append(f"{label[:24]:<24} {d['n']:>3} {d['answered']:>9} {hits:>6}  {_counts(d['cxr4_top'])}")
    lines += ["", f"{'file':<44} {'kind':<13} {'path':<13} {'status':<8} {'gate':>5} {SLOT + ' top':<14} label"]
    for p in r["photos"]:
        gate = "  -  " if p["gate_score"] is None else f"{p['gate_score']:.2f}"
        flags = (" moiré" if p["moire"] else "") + (" OOD" if p["ood_unusual"] else "")
        lines.append(f"{_short(p['file'], 44):<44} {p['kind'][:13]:<13} {str(p['path'])[:13]:<13} "
                     f"{p['status']:<8} {gate:>5} {str(p['cxr4_top'] or '-')[:14]:<14} {p['label']}{flags}")
    for name, files in (("not in the manifest", r["unlisted"]), ("listed but missing", r["missing"])):
        if files:
            lines.append(f"{len(files)} image(s) {name}: {', '.join(files[:10])}{' ...' if len(files) > 10 else ''}")
    return "\n".join(lines)


def _kind_table(r: dict) -> str:
    head = f"{'kind':<14} {'n':>3} {'answered':>10} {'gate acc.':>10} {'hits':>9}  paths"
    rows = [head]
    for kind, s in list(r["by_kind"].items()) + [("all", r["summary"])]:
        rows.append(f"{kind[:14]:<14} {s['n']:>3} {s['answered']:>10} {s['gate_accepted']:>10} "
                    f"{str(s['hits']) + '/' + str(s['labelled']):>9}  {_counts(s['paths'])}")
    return "\n".join(rows)


def card_section(r: dict, *, title: str = "Real photos") -> str:
    """Markdown for the model card: what the pack does with real phone photos (from :func:`evaluate_photos`)."""
    s = r["summary"]
    lines = [f"## {title}", "",
             f"{s['n']} real phone or camera photos of chest X-rays on films and monitors "
             f"(`{Path(r['folder']).name}`), through `cxr-edge predict` as a user runs it:", "",
             "| kind | photos | answered | gate accepted | straightened / cropped / digital | moiré found | "
             f"{SLOT} top = label |", "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for kind, k in list(r["by_kind"].items()) + [("all", s)]:
        paths = k["paths"]
        split = " / ".join(str(paths.get(p, 0)) for p in ("quadrilateral", "cropped", "digital"))
        hits = f"{k['hits']}/{k['labelled']}" if k["labelled"] else "-"
        lines.append(f"| {kind} | {k['n']} | {k['answered']} | {k['gate_accepted']} | {split} | "
                     f"{k['moire_found']} | {hits} |")
    lines += ["", f"Labels compared: {', '.join(l for l, d in r['by_label'].items() if d['labelled']) or 'none'}; "
              "photos without a label the model has are counted as answered or not, not as hits. "
              "A handful of photos from public COVID-era collections: they show what the photo path does with "
              "real field images (tight crops, moiré, colour casts, overlay text), not clinical accuracy."]
    return "\n".join(lines)


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]
