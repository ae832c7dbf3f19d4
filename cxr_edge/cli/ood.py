"""``cxr-edge ood``: the out-of-distribution guard's statistics in a model pack."""

from __future__ import annotations

import click

from . import json_text
from .options import fit_into_pack, progress_printer

__all__ = ["fit", "ood"]


@click.group()
def ood():
    """Fit the OOD guard: how far an image's features lie from the training images."""


@ood.command()
@fit_into_pack("Prepared data (cxr-edge data prepare) of the model to fit: its task picks the pack's slot.")
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "val", "test"]),
              help="Split whose features are fitted.")
@click.option("--threshold-split", default="val", show_default=True, type=click.Choice(["train", "val", "test"]),
              help="Held-out split whose scores set the threshold (the fit split when it is the same or empty).")
@click.option("--quantile", default=0.99, show_default=True, type=click.FloatRange(0.5, 1.0),
              help="Share of held-out images below the threshold (0.99: about 1 in 100 is flagged).")
@click.option("--components", default=32, show_default=True, type=click.IntRange(1, 512),
              help="Principal directions kept with their own variance (the rest share one).")
@click.option("--shrinkage", default=0.1, show_default=True, type=click.FloatRange(0.0, 0.99),
              help="Shrinkage of the variances towards their mean.")
def fit(pack, data, split, threshold_split, quantile, components, shrinkage, out, threads, as_json):
    """Fit OOD statistics for one model of PACK on prepared data, and store them in it.

    The pack's int8 model for the data's task runs on the split (the device
    path predict uses); the class means and a PCA-regularised shared covariance
    of its pooled features are stored in the model (member ood.npz, ~90 KB),
    with the threshold at --quantile of the held-out split's scores. predict
    then warns "unusual image for this model" above it. The pack is rewritten
    atomically; use --out to fit a copy instead.

    \b
    Examples:
      cxr-edge ood fit packs/default --data prepared/cxr4 --out packs/default-ood
      cxr-edge ood fit packs/default-ood --data prepared/nih14
    """
    from ..tools.ood_fit import fit_pack

    record = fit_pack(pack, data, split=split, threshold_split=threshold_split, components=components,
                      shrinkage=shrinkage, quantile=quantile, out=out, threads=threads,
                      progress=progress_printer(as_json))
    if as_json:
        click.echo(json_text(record))
        return
    click.echo(f"{record['pack']}: {record['slot']} model fitted on {record['n_fit']} {record['fit_split']} images "
               f"({record['classes']} class mean(s), {record['width']} features, {record['components']} components)")
    click.echo(f"threshold {record['threshold']:.3f} = {record['quantile']:g} quantile of {record['n_threshold']} "
               f"{record['threshold_split']} scores (train median {record['train_score_median']:.3f}); "
               f"member {record['member_bytes'] / 1024:.0f} KB, pack {record['pack_bytes'] / 1e6:.2f} MB")
