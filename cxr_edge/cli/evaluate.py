"""``cxr-edge evaluate``: metrics with CIs, subgroups, sources and phone photos for a pack or a run."""

from __future__ import annotations

import sys

import click

from . import json_text
from .options import backend_option

__all__ = ["evaluate", "format_number", "format_result", "StageProgress"]

_path = click.Path(path_type=str)


class StageProgress:
    """Progress bars on stderr, one per stage ('digital', 'photos', ...), created when a stage starts."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._bar = None
        self._stage = None

    def __call__(self, stage: str, done: int, total: int):
        if not self.enabled:
            return
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = click.progressbar(length=total, label=f"{stage:>8}", file=sys.stderr, show_pos=True)
            self._bar.__enter__()
        self._bar.update(done - self._bar.pos)

    def close(self):
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@click.command()
@click.argument("model", type=_path)
@click.option("--data", "data", default=None, type=_path,
              help="Prepared data folder (cxr-edge data prepare); its task picks the pack's model.")
@click.option("--real-photos", "real_photos", default=None, type=_path, metavar="FOLDER",
              help="Instead of --data: a folder of real phone photos with a manifest.csv (file, label; kind, "
                   "view optional), each predicted as `cxr-edge predict` does (MODEL must be a pack).")
@click.option("--manifest", "manifest", default=None, type=_path,
              help="With --real-photos: the manifest CSV, when it is not FOLDER/manifest.csv.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]))
@click.option("--photos", "photos", default=None, metavar="SEVERITY",
              help="Also evaluate simulated phone photos of the same images: mild, moderate, severe or 0..1.")
@click.option("--photo-size", default=1280, show_default=True, type=click.IntRange(64, 4096),
              help="Long side of the simulated photos in pixels. Their sensor noise and JPEG blocks are per "
                   "pixel, so 1280 is a 1.6-MP camera's photo and 4000 a 12-MP phone's, about half as noisy at the "
                   "model input (benchmarks/RESULTS.md) and about 13x slower.")
@click.option("--profile", default=None, help="Threshold profile of the pack (default: its default profile).")
@click.option("--n-boot", default=1000, show_default=True, type=click.IntRange(0, 100_000),
              help="Bootstrap resamples (by patient) for the 95% CIs; 0 = no CIs.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the bootstrap and the photos.")
@click.option("--min-group", default=10, show_default=True, type=click.IntRange(1),
              help="Smallest subgroup / source dataset that gets metrics.")
@click.option("--report", "report", default=None, type=_path,
              help="Write a report folder: index.html, report.md and PNG figures (with --real-photos: contact "
                   "sheets of every photo beside the film the models saw).")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as one JSON object on stdout.")
@click.option("--allow-train-split", is_flag=True,
              help="Evaluate even on images the model trained on (the result is flagged as optimistic).")
@click.option("--allow-calibration-split", is_flag=True,
              help="Evaluate even on the images the temperature/thresholds were fitted on (flagged).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 64), help="Interpreter threads.")
@backend_option
def evaluate(model, data, real_photos, manifest, split, photos, photo_size, profile, n_boot, seed, min_group, report,
             as_json, allow_train_split, allow_calibration_split, threads, backend):
    """Evaluate MODEL (a model pack, or a training run directory) on a prepared split.

    A pack's model for the data's task runs exactly as `cxr-edge predict` runs it
    (int8 interpreter, same preprocessing, the pack's temperature and threshold
    profile); a run's float model runs through Keras (needs TensorFlow).

    Prints per-label and mean metrics with 95% confidence intervals from a
    bootstrap over patients, results per sex / view (PA, AP) / age band and per
    source dataset, and a shortcut check: how well a linear probe tells the
    source dataset from the model's features. --photos adds the same images as
    simulated phone photos of the film (raw and rectified) beside the digital
    result.

    The train split of the data the model trained on is refused, and so is the
    split the pack was calibrated on; the --allow-* flags override that and the
    result says so loudly.

    --real-photos FOLDER evaluates real phone photos instead: every photo its
    manifest lists goes through the pack as `cxr-edge predict` runs it, and the
    result gives the answered rate, gate acceptance, the path each photo took
    (straightened / cropped / digital), and the 4-class model's hits per
    label, overall and per kind of photo (film, screen); --report adds
    contact sheets: every photo beside the film the models saw, with its
    answer.

    \b
    Examples:
      cxr-edge evaluate my_pack --data prepared/cxr4 --split test
      cxr-edge evaluate my_pack --real-photos ../shared/data/real_photos_dev --json > real_photos.json
      cxr-edge evaluate my_pack --real-photos ../shared/data/real_photos_dev --report reports/real_photos
      cxr-edge evaluate my_pack --data prepared/nih14 --photos moderate --report reports/nih14
      cxr-edge evaluate runs/cxr4 --data prepared/cxr4 --json > cxr4_float.json
      cxr-edge evaluate my_pack --data prepared/nih14 --profile screening --n-boot 0
    """
    if (data is None) == (real_photos is None):
        raise click.UsageError("give exactly one of --data (a prepared split) and --real-photos (a folder of photos)")
    if report is not None:
        _report_folder(report)           # before the evaluation, not after minutes of it
    if real_photos is not None:
        ctx = click.get_current_context()
        given = [f"--{name.replace('_', '-')}" for name in _DATA_ONLY
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --data (a prepared "
                                   "split); --real-photos takes the photos as they are, with MODEL's thresholds")
        _evaluate_real_photos(model, real_photos, manifest, profile, threads, backend, as_json, report)
        return
    if manifest is not None:
        raise click.UsageError("--manifest goes with --real-photos")
    from ..tools.evaluate import evaluate as run_evaluate
    from ..training.run_model import open_run_model   # TensorFlow only once a training run is opened

    with StageProgress() as progress:
        ev = run_evaluate(model, data, split=split, photos=photos, photo_size=photo_size, profile=profile,
                          n_boot=n_boot, seed=seed, min_group=min_group, report=report,
                          allow_train_split=allow_train_split, allow_calibration_split=allow_calibration_split,
                          threads=threads, backend=backend, progress=progress, run_opener=open_run_model)
    r = ev.result
    for flag in r["leakage"]["flags"]:
        click.secho(f"WARNING: {flag}", err=True, fg="red", bold=True)
    click.echo(json_text(r) if as_json else format_result(r))


def _report_folder(path: str) -> None:
    """Say clearly, before any work, why --report cannot be a folder the report can be written to (the folder is
    created only when the report is written, so a refused run leaves nothing behind)."""
    import os
    from pathlib import Path

    folder = Path(path).absolute()
    if folder.exists() and not folder.is_dir():
        raise click.UsageError(f"--report {path}: a file of that name exists; give a folder (created if needed)")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise click.UsageError(f"--report {path}: {existing} is a file, so no folder can be made under it; give "
                               "a folder you can write to")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise click.UsageError(f"--report {path}: {existing} is not writable; give a folder you can write to")


#: evaluate's options that only mean something with --data (a prepared split); refused with --real-photos
_DATA_ONLY = ("split", "photos", "photo_size", "n_boot", "seed", "min_group", "allow_train_split",
              "allow_calibration_split")


def _evaluate_real_photos(model, folder, manifest, profile, threads, backend, as_json, report):
    from ..tools.evaluate_photos import evaluate_photos, format_photo_result
    from ..runtime.pipeline import Pipeline

    pipeline = Pipeline(model, threads=threads, profile=profile, backend=backend)
    films = {} if report else None
    with StageProgress(enabled=not as_json) as progress:
        r = evaluate_photos(pipeline, folder, manifest, progress=progress, films=films)
        if report:
            from ..tools.photo_report import write_photo_report

            folder = write_photo_report(r, films, report, progress=progress)
            r["report"] = {"path": str(folder), "files": sorted(p.name for p in folder.iterdir())}
    text = json_text(r) if as_json else format_photo_result(r)
    if report and not as_json:
        text += f"\nreport: {r['report']['path']}/index.html"
    click.echo(text)


def format_number(v, digits: int = 3) -> str:
    """``v`` with ``digits`` decimals, or a dash for None."""
    return "  —  " if v is None else f"{v:.{digits}f}"


def _ci(d) -> str:
    if not d or d.get("value") is None:
        return "—"
    ci = d.get("ci")
    return format_number(d["value"]) + (f" [{format_number(ci[0])}, {format_number(ci[1])}]" if ci and ci[0] is not None else "")


def format_result(r: dict) -> str:
    """A human summary of an evaluation result (the report and --json have everything)."""
    m, d, mo = r["metrics"], r["data"], r["model"]
    lines = [f"{mo['kind']} {mo['path']}: {mo['task']} model, temperature {mo.get('temperature', 1):g}, "
             f"thresholds {repr(mo['profile']) if mo.get('profile') else 'task defaults'}",
             f"data {d['path']} split {d['split']}: {d['n_images']} images, {d['n_patients']} patients "
             f"(pixels from the {d['pixels']})", ""]
    lines.append(f"{m['primary']['name']:>12}  {_ci(m['primary'])}    (95% CI, {m['bootstrap']['n_resamples']} "
                 f"resamples by {m['bootstrap']['unit']})")
    lines.append(f"{'mean AUROC':>12}  {_ci(m['mean_auroc'])}")
    lines.append(f"{'accuracy':>12}  {_ci(m['accuracy'])}")
    c = r["calibration"]
    lines.append(f"{'ECE':>12}  {format_number(c['ece_raw'])} raw -> {format_number(c['ece'])} at temperature {c['temperature']:g}")
    lines.append("")
    multilabel = m["activation"] == "sigmoid"
    head = "threshold  sens   spec   F1" if multilabel else "precision recall F1"
    lines.append(f"{'label':<20} {'n+':>5}  {'AUROC [95% CI]':<24} {head}")
    for label, e in m["per_label"].items():
        auc = _ci({"value": e["auroc"], "ci": e["auroc_ci"]})
        extra = (f"{format_number(e['threshold'])}     {format_number(e['sensitivity'], 2)}   {format_number(e['specificity'], 2)}   {format_number(e['f1'], 2)}"
                 if multilabel else f"{format_number(e['precision'])}     {format_number(e['recall'])}  {format_number(e['f1'])}")
        lines.append(f"{label:<20} {e['n_positive']:>5}  {auc:<24} {extra}")
    if "photos" in r:
        lines.append("")
        side = r["photos"].get("photo_long_side")
        lines.append(f"simulated phone photos ({r['photos']['severity']}{f', {side} px' if side else ''}): "
                     f"{m['primary']['name']} / gap vs digital")
        if side and side <= 1600:
            lines.append(f"  ({side} px stands for a small camera: more noise at the model input than the real dev photos "
                         "carry (benchmarks/RESULTS.md); --photo-size 4000 is a 12-MP phone)")
        for name, v in r["photos"]["variants"].items():
            lines.append(f"  {name:<16} {_ci(v['metrics']['primary'])}   gap {_ci(v['gap_vs_digital'])}")
    probe = r["shortcut"].get("all", {})
    if probe and "accuracy" in probe:
        lines.append("")
        lines.append(f"source probe: {probe['accuracy']:.3f} accuracy telling {len(probe['datasets'])} source datasets "
                     f"apart (majority baseline {probe['majority_baseline']:.3f})")
    for note in r["notes"]:
        lines.append(f"note: {note}")
    if "report" in r:
        lines.append(f"report: {r['report']['path']}/index.html")
    return "\n".join(lines)
