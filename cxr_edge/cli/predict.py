"""``cxr-edge predict``: the gate and classifiers on files and folders."""

from __future__ import annotations

import sys
from contextlib import closing, nullcontext

import click

from . import json_text
from .options import backend_option

__all__ = ["EXIT_SOME_FAILED", "predict"]

EXIT_SOME_FAILED = 1


@click.command()
# readable=False: click's own check would end the whole batch over one unreadable file; each file gets its own result.
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str, readable=False))
@click.option("--pack", "pack", type=click.Path(path_type=str, readable=False), default=None,
              help="Model pack directory or .zip (default: $CXR_EDGE_PACK, the config file, or the bundled pack).")
@click.option("--require-signed", "require_signed", is_flag=True,
              help="Refuse a pack that is not signed by a key in the config's trusted_keys "
                   "(the config's require_signed does the same).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image (JSON Lines) on stdout.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Interpreter CPU threads per model.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0, 32),
              help="Images predicted at a time, each on a thread with interpreters of its own "
                   "(2 on 2 cores: about 1.8x one at a time, +45 MB). 0 = one at a time, the least memory.")
@click.option("--profile", default=None, help="Threshold profile stored in the pack (e.g. screening, balanced).")
@backend_option
@click.option("--no-rectify", "no_rectify", is_flag=True,
              help="Use every image as it is: no film search, no straightening, no photo quality checks.")
@click.option("--heatmap", "heatmap_dir", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Write a heatmap overlay PNG per reported finding into this folder (see below).")
@click.option("--force", is_flag=True, help="Replace heatmap files that already exist (else each is a warning).")
@click.option("--tta", is_flag=True,
              help="Test-time augmentation: average each model over a few shifted/zoomed views (about 4x the "
                   "model time; flips only for models trained with flips).")
@click.option("--no-ood", "no_ood", is_flag=True, help="Do not score how unusual an image is for the models.")
@click.option("--no-upright", "no_upright", is_flag=True,
              help="Answer a film the orientation check finds turned as it is (still warned), instead of turning "
                   "it upright first.")
@click.option("--all-models", "all_models", is_flag=True, hidden=True,
              help="Run every model on every image whatever the gate says (benchmarks: cxr-edge bench measures "
                   "memory and start-up with it, on a stand-in film a real gate rejects).")
@click.option("--on-poor-photo", "on_poor_photo", default="predict", show_default=True,
              type=click.Choice(["predict", "skip"]),
              help="When a photo fails a quality check: predict anyway with warnings, or skip it (an error entry).")
def predict(images, pack, require_signed, as_json, threads, workers, profile, backend, no_rectify, heatmap_dir, force,
            tta, no_ood, no_upright, all_models, on_poor_photo):
    """Predict IMAGES (files or folders; folders are searched recursively).

    Phone photos of films: the film is found, straightened and checked for
    blur, glare, exposure, pixels, tilt, colour cast and a monitor's moiré. A
    photo with no film edges in view is taken as cropped to the film or screen
    (flat borders trimmed) and says so in a warning. Each check that does not
    pass becomes a warning saying what to do; the models still run (use
    --on-poor-photo skip to skip failed photos). Digital images pass through
    untouched. The JSON's "rectify.path" says which way each image went.

    Folders are searched by content, so .jfif, .jpe and suffix-less JPEGs,
    WebP and HEIC (with the [heic] extra) are found; every other file is
    listed as skipped, with the reason.

    The gate model runs first: an image that is not a chest X-ray is reported
    as rejected and the classifiers do not run on it. Accepted images get the
    4-class answer (COVID-19 / Normal / Pneumonia / Tuberculosis) and the NIH
    findings above the pack's thresholds. Where the pack has OOD statistics,
    an image whose features are far from the training images is flagged
    "unusual for this model", even when the gate accepted it. Where the pack
    has an orientation check, a film held sideways or upside down is turned
    upright before the models answer, with a warning ("orientation" in the
    JSON; --no-upright answers it as it is).

    Heatmaps (--heatmap DIR) show where on the film the evidence for each
    reported finding came from (class activation maps). They can show that the
    model looked at the lungs and not at a marker, a tube or a glare spot.
    They cannot show that a finding is present, or outline a lesion: the map
    is coarse (7 x 7 cells over the film), each map is scaled to its own
    maximum (a weak result looks as hot as a strong one), and a hot spot may
    be a shortcut the model learned. Read the film.

    One bad file does not stop a batch: it gets an error entry, and the exit
    code is 1 when any image failed (2 for a bad pack or option). A heatmap
    that cannot be written (a full or read-only folder, an existing file
    without --force) becomes a warning on its image's row; the results are
    kept and the exit code is 1.

    \b
    Examples:
      cxr-edge predict film.jpg
      cxr-edge predict IMG_2041.jpg --heatmap maps/ --json
      cxr-edge predict scans/ --json --no-rectify > results.jsonl
      cxr-edge predict a.png b.dcm --pack my_pack --profile screening --tta
    """
    from ..config import resolve_pack
    from ..runtime.images import scan_image_files
    from ..runtime.pack import load_pack
    from ..runtime.pipeline import Pipeline
    from ..runtime.prediction import DISCLAIMER
    from ..runtime.signing import TrustPolicy

    pack_path, origin = resolve_pack(pack)
    loaded = load_pack(pack_path, trust=TrustPolicy.from_config(require_signed))
    pipeline = Pipeline(loaded, threads=threads, profile=profile, backend=backend, rectify=not no_rectify,
                        heatmaps=heatmap_dir is not None, tta=tta, ood=not no_ood, on_poor_photo=on_poor_photo,
                        gate_first=not all_models, upright=not no_upright)
    scan = scan_image_files(images)
    files = scan.files
    if not files:
        why = "; ".join(f"{s.path}: {s.reason}" for s in scan.skipped[:5]) or "the folders are empty"
        raise click.UsageError(f"no image files found in the given folders ({why}"
                               f"{'; ...' if len(scan.skipped) > 5 else ''}). Images are recognised by their "
                               "content: JPEG (.jpg .jpeg .jfif .jpe or none), PNG, BMP, TIFF, WebP, GIF, HEIC, "
                               "DICOM.")
    info = pipeline.describe()   # on stderr, so that --json output stays one object per line on stdout
    click.echo(f"pack: {pack_path} ({origin}); {info['backend']} {info['backend_version']} "
               f"({info['delegate']}), {threads} thread(s)", err=True)
    failed = unwritten = 0
    taken: set = set()
    table = _Table(files + [s.path for s in scan.skipped], pipeline)
    if not as_json:
        click.echo(table.header())
    show_progress = not as_json and len(files) > 20 and sys.stderr.isatty()
    predictions = pipeline.predict_many(files, workers=workers)
    results = predictions
    if show_progress:
        results = click.progressbar(results, length=len(files), label="predicting", file=sys.stderr)
    # closing: on Ctrl-C or an error the images not yet started are dropped at once
    with closing(predictions), (results if show_progress else nullcontext(results)) as stream:
        for pred in stream:
            failed += pred.status == "error"
            if heatmap_dir is not None and pred.heatmaps:
                unwritten += not _write_heatmaps(pred, heatmap_dir, taken, force)
            if as_json:
                click.echo(json_text(pred.to_dict()))
            else:
                click.echo(table.row(pred))
    for skipped in scan.skipped:        # every file of the folders that was not read, and why
        click.echo(json_text(_skipped_dict(skipped)) if as_json else table.skipped_row(skipped))
    if not as_json:
        click.echo(DISCLAIMER, err=True)
        if failed:
            click.echo(f"{failed} of {len(files)} image(s) could not be analysed (see their ERROR lines).", err=True)
    if scan.skipped:
        kinds = sorted({s.kind.replace("_", " ") for s in scan.skipped})
        where = '"status": "skipped" entries' if as_json else "skipped lines"
        click.echo(f"{len(scan.skipped)} file(s) in the folders were skipped ({', '.join(kinds)}): see their "
                   f"{where}.", err=True)
    if unwritten:
        click.echo(f"the heatmaps of {unwritten} image(s) could not be written to {heatmap_dir} (see their warnings); "
                   "their results above are complete.", err=True)
    if failed or unwritten:
        sys.exit(EXIT_SOME_FAILED)


def _write_heatmaps(pred, heatmap_dir: str, taken: set, force: bool) -> bool:
    """Write one image's heatmap overlays; a failure becomes a warning on its row, never a lost batch."""
    from pathlib import Path

    from ..runtime.cam import write_overlays
    from ..errors import CxrEdgeError

    try:
        pred.extras["heatmaps"] = write_overlays(pred.film, pred.heatmaps, heatmap_dir, Path(pred.file).stem, taken,
                                                 overwrite=force)
        return True
    except (CxrEdgeError, OSError) as exc:
        pred.warnings.append(f"heatmap not written: {exc}")
        return False


class _Table:
    """The plain-text output: one row per image (file, status, gate score, then a column per classifier
    slot of the slot table: a class slot's answer (the 4-class one), a findings slot's findings above the
    profile's thresholds), with its warnings and heatmap files indented below it."""

    def __init__(self, files, pipeline):
        from ..tasks import CLASSIFIER_SLOTS, get_slot

        self.file_w = min(max([len(str(f)) for f in files] + [4]), 48)
        self.profile = pipeline.profile
        self.tasks = {slot: m.spec.name for slot, m in pipeline.models.items()}
        self.slots = [get_slot(s) for s in CLASSIFIER_SLOTS]

    def header(self) -> str:
        profile = f", profile {self.profile}" if self.profile else ""
        cols = ["file".ljust(self.file_w), "status  ", "gate "]
        cols += [self.tasks.get(s.name, "-").ljust(26) if s.answer == "class" else
                 f"{self.tasks.get(s.name, '-')} findings{profile}" for s in self.slots]
        line = "  ".join(cols)
        return line + "\n" + "-" * len(line)

    def row(self, pred) -> str:
        name = self._name(pred.file)
        gate = f"{pred.gate.score:.2f}" if pred.gate else "  -  "
        status = {"error": "ERROR", "rejected": "rejected"}.get(pred.status, "ok")
        cells = [name.ljust(self.file_w), status.ljust(8), gate.ljust(5)]
        below = []
        if pred.status == "error":
            cells.append(pred.error["message"])
        elif pred.status == "rejected":
            cells.append(pred.message)
        else:
            cells += [_answer(pred.results.get(s.name)).ljust(26) if s.answer == "class" else
                      _findings(pred.results.get(s.name)) for s in self.slots]
        below += [f"warning: {w}" for w in pred.warnings]
        below += [f"heatmap {label}: {path}" for label, path in (pred.extras.get("heatmaps") or {}).items()]
        return "  ".join(cells).rstrip() + "".join(f"\n{' ' * 4}{b}" for b in below)

    def skipped_row(self, skipped) -> str:
        return "  ".join([self._name(skipped.path).ljust(self.file_w), "skipped ", "  -  ", skipped.reason])

    def _name(self, path) -> str:
        name = str(path)
        return "…" + name[-(self.file_w - 1):] if len(name) > self.file_w else name


def _skipped_dict(skipped) -> dict:
    """A skipped file as one JSON line, with the keys of an image's result."""
    return {"file": str(skipped.path), "status": "skipped", "gate": None, "cxr4": None, "nih14": None,
            "error": {"kind": skipped.kind, "message": f"{skipped.path}: skipped: {skipped.reason}"},
            "message": f"skipped: {skipped.reason}", "warnings": [], "timings_ms": {}, "rectify": None,
            "quality": None, "ood": None, "tta": None, "orientation": None}


def _answer(result) -> str:
    """A class slot's answer: the top class and its probability, and any other class its threshold flags."""
    if result is None:
        return "-"
    text = f"{result.top} {result.probabilities[result.top]:.2f}"
    others = [lbl for lbl in result.positive if lbl != result.top]
    if others:
        text += " +" + ",".join(f"{lbl} {result.probabilities[lbl]:.2f}" for lbl in others)
    return text


def _findings(result) -> str:
    if result is None:
        return "-"
    found = sorted(result.positive, key=lambda k: -result.probabilities[k])
    return ", ".join(f"{k} {result.probabilities[k]:.2f}" for k in found) or "none above threshold"
