"""``cxr-edge data``: prepare a data set (splits + cache) and look at it before training."""

from __future__ import annotations

import sys

import click

__all__ = ["data", "prepare", "ProgressBar", "report"]


def _fractions(ctx, param, value):
    try:
        parts = tuple(float(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give three numbers, e.g. 0.8,0.1,0.1") from None
    if len(parts) != 3:
        raise click.BadParameter(f"{value!r}: give three numbers (train,val,test), e.g. 0.8,0.1,0.1")
    return parts


def _aliases(ctx, param, values):
    out = []
    for v in values:
        name, sep, label = v.partition("=")
        if not sep or not name.strip() or not label.strip():
            raise click.BadParameter(f"{v!r}: use NAME=LABEL, e.g. --alias 'covid pneumonia=COVID-19'")
        out.append((name.strip(), label.strip()))
    return tuple(out)


_path = click.Path(path_type=str)


@click.group()
def data():
    """Prepare data sets (patient-level splits + a cache) and report on them."""


@data.command()
@click.argument("task")
@click.option("--source", "sources", multiple=True, type=_path,
              help="A manifest CSV (file + label / label columns / is_cxr), an NIH Data_Entry CSV, or a "
                   "folder-per-class tree. Repeatable.")
@click.option("--positives", multiple=True, type=_path, help="gate: a folder or manifest of chest X-rays.")
@click.option("--negatives", multiple=True, type=_path, help="gate: a folder or manifest of non-CXR images.")
@click.option("--out", "out", required=True, type=_path, help="Output folder (outside the repository).")
@click.option("--images", multiple=True, type=_path,
              help="Folders holding the images a Data_Entry table names (images_0NN folders or flat).")
@click.option("--root", type=_path, help="Base folder for relative paths in manifests (default: detected).")
@click.option("--official-test", is_flag=True,
              help="Use the official test set (official_split column, NIH test_list.txt, --test-list, or test/ "
                   "folders); train/val split the rest in the --split ratio.")
@click.option("--test-list", type=_path, help="NIH test_list.txt(.gz) (default: found next to Data_Entry).")
@click.option("--split", "fractions", default="0.8,0.1,0.1", show_default=True, callback=_fractions,
              help="train,val,test fractions of images (patient-level, stratified).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--fraction", default=1.0, show_default=True, type=float,
              help="Keep this fraction of patients, preserving the label distribution.")
@click.option("--size", type=int, help="Input size in pixels (default: the task's).")
@click.option("--clahe", is_flag=True,
              help="Contrast-limited histogram equalisation of every cached input; the model trained on them, "
                   "its pack and predict then apply it too (it is part of the input spec).")
@click.option("--clahe-clip", default=0.01, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="CLAHE clip limit (share of a tile one histogram bin may hold).")
@click.option("--clahe-tiles", default=8, show_default=True, type=click.IntRange(1, 64),
              help="CLAHE tiles per side.")
@click.option("--no-finding", is_flag=True,
              help="NIH: keep 'No Finding' as an extra reported column of nih13/nih14 (not a model output; "
                   "the task nih15 trains it as a 15th label).")
@click.option("--duplicates", multiple=True, type=_path,
              help="duplicates.csv: groups of the same image, kept in one split. Repeatable.")
@click.option("--metadata", multiple=True, type=_path,
              help="Manifests to take patient id/sex/age/view/licence from, matched by file. Repeatable.")
@click.option("--alias", "aliases", multiple=True, callback=_aliases,
              help="Map a class/label name onto a task label: NAME=LABEL. Repeatable.")
@click.option("--patient-pattern", help="Regex with one group: the patient id in a file name.")
@click.option("--license", "license_", help="Licence for sources that record none.")
@click.option("--permissive-only", is_flag=True,
              help="Leave out images whose licence is not permissive (commercial use allowed).")
@click.option("--redistributable-only", is_flag=True,
              help="Leave out images whose licence forbids handing on a model trained on them "
                   "(research-only, custom terms, no licence recorded).")
@click.option("--shard-size", default=1024, show_default=True, type=int, help="Images per cache shard.")
@click.option("--workers", type=int, help="Decoding threads (default: CPU count).")
@click.option("--force", is_flag=True, help="Rebuild an output prepared with other parameters (swapped in when done).")
def prepare(task, sources, positives, negatives, out, images, root, official_test, test_list, fractions, seed,
            fraction, size, clahe, clahe_clip, clahe_tiles, no_finding, duplicates, metadata, aliases, patient_pattern, license_, permissive_only,
            redistributable_only, shard_size, workers, force):
    """Read TASK's data sources, split them by patient and cache the model-size images in OUT.

    \b
    Examples:
      cxr-edge data prepare nih14 --source Data_Entry_2017.csv --images nih/ --official-test --out prep/nih14
      cxr-edge data prepare cxr4 --source data/cxr4/manifest.csv --duplicates data/duplicates.csv --out prep/cxr4
      cxr-edge data prepare gate --positives cxr/ --negatives other/ --out prep/gate

    Re-running with the same options resumes an interrupted run; other options are refused unless --force.
    """
    from ..data.prepare import PrepareConfig, describe
    from ..data.prepare import prepare as run_prepare
    from ..data.sources import SourceOptions, SourceSpec
    from ..data.splits import SplitConfig

    specs = tuple([SourceSpec(p) for p in sources] + [SourceSpec(p, "positive") for p in positives]
                  + [SourceSpec(p, "negative") for p in negatives])
    config = PrepareConfig(
        task=task, sources=specs,
        source_options=SourceOptions(images=images, root=root, test_list=test_list, metadata=metadata,
                                     patient_pattern=patient_pattern, license=license_, aliases=aliases),
        split=SplitConfig(fractions=fractions, seed=seed, official_test=official_test, sample_fraction=fraction),
        size=size, clahe=clahe, clahe_clip=clahe_clip, clahe_tiles=clahe_tiles, no_finding=no_finding,
        duplicates=duplicates, permissive_only=permissive_only, redistributable_only=redistributable_only,
        shard_size=shard_size)
    with ProgressBar() as progress:
        prepared = run_prepare(config, out, force=force, workers=workers, progress=progress)
    click.echo(describe(prepared))


@data.command()
@click.argument("prepared_dir", type=_path)
@click.option("--out", type=_path, help="Report folder (default: PREPARED_DIR/report).")
def report(prepared_dir, out):
    """Write the EDA report of a prepared folder: PNG plots plus index.html and report.md."""
    from ..data.report import write_report

    path = write_report(prepared_dir, out)
    click.echo(f"report: {path / 'index.html'}")
    for png in sorted(path.glob("*.png")):
        click.echo(f"  {png}")


class ProgressBar:
    """A click progress bar on stderr, created when the total is known."""

    def __init__(self):
        self._bar = None

    def __call__(self, done: int, total: int):
        if self._bar is None:
            self._bar = click.progressbar(length=total, label="decoding", file=sys.stderr, show_pos=True)
            self._bar.__enter__()
        self._bar.update(done - self._bar.pos)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
