"""``cxr-edge predict``: the gate and classifiers on files and folders."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext

import click

EXIT_SOME_FAILED = 1


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--pack", "pack", type=click.Path(path_type=str), default=None,
              help="Model pack directory or .zip (default: $CXR_EDGE_PACK, the config file, or the bundled pack).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image (JSON Lines) on stdout.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Interpreter CPU threads per model.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0, 32),
              help="Threads that decode images ahead of inference (0 = none).")
@click.option("--profile", default=None, help="Threshold profile stored in the pack (e.g. screening, balanced).")
@click.option("--backend", default=None, type=click.Choice(["ai-edge-litert", "tflite-runtime", "tf.lite", "tflite-java"]),
              help="Force an interpreter backend (default: the first that is installed).")
def predict(images, pack, as_json, threads, workers, profile, backend):
    """Predict IMAGES (files or folders; folders are searched recursively).

    The gate model runs first: an image that is not a chest X-ray is reported
    as rejected and the classifiers do not run on it. Accepted images get the
    4-class answer (COVID-19 / Normal / Pneumonia / Tuberculosis) and the NIH
    findings above the pack's thresholds.

    One bad file does not stop a batch: it gets an error entry, and the exit
    code is 1 when any image failed (2 for a bad pack or option).

    \b
    Examples:
      cxr-edge predict film.jpg
      cxr-edge predict scans/ --json > results.jsonl
      cxr-edge predict a.png b.dcm --pack my_pack --profile screening
    """
    from ..config import resolve_pack
    from ..images import iter_image_files
    from ..pipeline import DISCLAIMER, Pipeline

    pack_path, origin = resolve_pack(pack)
    pipeline = Pipeline(pack_path, threads=threads, profile=profile, backend=backend)
    files = list(iter_image_files(images))
    if not files:
        raise click.UsageError("no image files found in the given folders "
                               "(looked for .png .jpg .jpeg .bmp .tif .tiff .webp .gif .dcm)")
    if not as_json:
        info = pipeline.describe()
        click.echo(f"pack: {pack_path} ({origin}); {info['backend']} {info['backend_version']}, "
                   f"{threads} thread(s)", err=True)
    failed = 0
    show_progress = not as_json and len(files) > 20 and sys.stderr.isatty()
    results = pipeline.predict_many(files, workers=workers)
    if show_progress:
        results = click.progressbar(results, length=len(files), label="predicting", file=sys.stderr)
    with (results if show_progress else nullcontext(results)) as stream:
        for pred in stream:
            failed += pred.status == "error"
            if as_json:
                click.echo(json.dumps(pred.to_dict()))
            else:
                click.echo(_line(pred))
    if not as_json:
        click.echo(DISCLAIMER, err=True)
        if failed:
            click.echo(f"{failed} of {len(files)} image(s) could not be read.", err=True)
    if failed:
        sys.exit(EXIT_SOME_FAILED)


def _line(pred) -> str:
    if pred.status == "error":
        return f"{pred.file}: ERROR {pred.error['message']}"
    if pred.status == "rejected":
        return f"{pred.file}: {pred.message}"
    parts = []
    if pred.gate:
        parts.append(f"chest X-ray {pred.gate.score:.2f}")
    if pred.cxr4:
        probs = pred.cxr4.probabilities
        parts.append("cxr4 " + " ".join(f"{k} {v:.2f}" for k, v in sorted(probs.items(), key=lambda kv: -kv[1])))
    if pred.nih14:
        found = ", ".join(f"{k} {pred.nih14.probabilities[k]:.2f}" for k in pred.nih14.positive)
        parts.append(f"{pred.nih14.task}: {found or 'no finding above threshold'}")
    for w in pred.warnings:
        parts.append(f"WARNING {w}")
    return f"{pred.file}: " + " | ".join(parts)
