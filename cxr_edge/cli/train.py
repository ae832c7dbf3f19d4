"""``cxr-edge train RECIPE``: staged MobileNetV2 training into a run directory (resumable)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import json_text

__all__ = ["default_out", "epoch_line", "parse_sets", "train"]

_path = click.Path(path_type=str)


def epoch_line(row: dict) -> str:
    """One line per epoch: where it is, the losses, the validation metrics, speed, a * for a new best."""
    parts = [f"epoch {row['epoch']:>3}  {row['stage']} {row['stage_epoch']}"]
    for key, label in (("lr", "lr"), ("loss", "loss"), ("val_loss", "val_loss"), ("val_mean_auroc", "val_mean_auroc"),
                       ("val_auroc", "val_auroc"), ("val_macro_f1", "val_macro_f1"), ("val_accuracy", "val_acc"),
                       ("val_float_agreement", "agree_float"), ("val_int8_agreement", "agree_int8")):
        if key == "val_mean_auroc" and row.get("val_auroc") is not None:
            continue  # one label: the same number
        value = row.get(key)
        if value is not None:
            parts.append(f"{label} {value:.3g}" if key == "lr" else f"{label} {value:.4f}")
    if row.get("images_per_s"):
        parts.append(f"{row['seconds']:.0f}s {row['images_per_s']:.0f} img/s")
    return "  ".join(parts) + ("  *best" if row.get("best") else "")


def parse_sets(values) -> dict:
    """``--set KEY=VALUE`` pairs (VALUE in TOML syntax) into a dict."""
    from ..training.recipe import parse_value

    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r}: use KEY=VALUE, e.g. --set stages[1].epochs=3", param_hint="--set")
        out[key.strip()] = parse_value(value.strip())
    return out


def default_out(recipe_arg: str, name: str) -> Path:
    """A run directory given as RECIPE (or its recipe.json) is its own output; otherwise runs/<name>."""
    p = Path(recipe_arg)
    run = p if p.is_dir() else p.parent
    if (run / "run.json").is_file() and (p.is_dir() or p.name == "recipe.json"):
        return run
    return Path("runs") / name


@click.command()
@click.argument("recipe", type=_path)
@click.option("--out", type=_path, help="Run directory (default: runs/<recipe name>; a run directory given as "
                                        "RECIPE is its own).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last completed epoch.")
@click.option("--weights", type=_path, help="Backbone weights: a local MobileNetV2 no-top .h5 for the recipe's "
                                            "alpha, or 'none' to train from scratch (overrides model.weights).")
@click.option("--data-dir", type=_path, help="Prepared data folder (overrides data.dir; with the recipe's sources "
                                             "it is prepared there, or reused when the parameters match).")
@click.option("--strategy", type=click.Choice(["default", "mirrored", "multiworker"]), default="default",
              show_default=True, help="tf.distribute: one device, MirroredStrategy (all local GPUs), or "
                                      "MultiWorkerMirroredStrategy (machines listed in TF_CONFIG).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set stages[0].epochs=5 --set train.batch_size=16. Repeatable.")
@click.option("--check", is_flag=True, help="Only validate and resolve the recipe, print it, and exit.")
@click.option("--prepare-only", is_flag=True,
              help="Prepare (or reuse) the recipe's data folder, print where it is, and exit: for a look with "
                   "cxr-edge data report before the hours of training.")
def train(recipe, out, resume, weights, data_dir, strategy, sets, check, prepare_only):
    """Train the model RECIPE describes (train/gate.toml, train/cxr4.toml, train/nih14.toml).

    The recipe is checked first: an unknown key, a missing file or an impossible value stops here
    with the key named. The data is prepared from the recipe's sources if needed (reused when it
    already is), then the stages run: a frozen backbone with a new head on cached features, then
    the top of the backbone at a low learning rate, then (optionally) everything. After each
    epoch the best model on the task's primary validation metric is kept in RUN_DIR/float.h5.

    \b
    Examples:
      cxr-edge train train/cxr4.toml --out runs/cxr4
      cxr-edge train runs/cxr4 --resume                 continue after Ctrl-C or a crash
      cxr-edge train train/nih14.toml --set stages[1].epochs=2 --check
      cxr-edge train train/cxr4.toml --prepare-only     then: cxr-edge data report prepared/cxr4
      TF_CONFIG=... cxr-edge train train/nih14.toml --strategy multiworker   (see train/README.md)

    Next: cxr-edge qat RUN_DIR, then cxr-edge export RUN_DIR --int8.
    """
    from ..training.recipe import describe, load_recipe

    rec = load_recipe(recipe, overrides=parse_sets(sets), weights=weights, data_dir=data_dir)
    if check:
        
        click.echo(describe(rec))
        click.echo(json_text(rec.to_dict(), indent=2))
        return
    from .data import ProgressBar

    if prepare_only:
        from ..training.trainer import ensure_data

        if not rec.data.prepares:
            raise click.UsageError(f"the recipe names no data sources; {rec.data.dir} is used as it is")
        with ProgressBar() as progress:
            prepared = ensure_data(rec, progress=progress)
        click.echo(f"{prepared.path}: prepared ({', '.join(f'{s} {len(prepared.table(s))}' for s in prepared.splits)}"
                   f" images). Next: cxr-edge data report {prepared.path}")
        return
    from ..training.trainer import train as run_training

    run_dir = Path(out) if out else default_out(recipe, rec.name)
    click.echo(describe(rec), err=True)
    click.echo(f"run directory: {run_dir}", err=True)
    with ProgressBar() as progress:
        run = run_training(rec, run_dir, resume=resume, strategy=strategy,
                           verbose=1 if sys.stdout.isatty() else 0,
                           on_epoch=lambda row: click.echo(epoch_line(row), err=True), data_progress=progress)
    if run is None:  # a non-chief multi-worker process
        click.echo("worker finished (the chief writes the run directory)")
        return
    best = run.info.get("best") or {}
    click.echo(f"{run.path}: {run.info['status']}; best {best.get('metric')} {best.get('value', float('nan')):.4f} "
               f"(epoch {best.get('epoch')}, stage {best.get('stage')}); {run.info.get('wall_time_s')} s of training")
    click.echo(f"next: cxr-edge qat {run.path}")
