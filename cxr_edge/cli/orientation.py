"""``cxr-edge orientation``: the check that turns sideways and upside-down films upright, in a model pack."""

from __future__ import annotations

import click

from . import json_text
from .options import fit_into_pack, progress_printer

__all__ = ["fit", "orientation"]


@click.group()
def orientation():
    """Fit the orientation check: is the film upright, or turned by 90, 180 or 270 degrees?"""


@orientation.command()
@fit_into_pack("Prepared chest X-rays (cxr-edge data prepare), any task: their films are shown turned.")
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "val"]),
              help="Split whose films the head is fitted on.")
@click.option("--threshold-split", default="val", show_default=True, type=click.Choice(["train", "val"]),
              help="Held-out split whose upright films set the threshold (never the fit split, never test).")
@click.option("--n", "n_fit", default=800, show_default=True, type=click.IntRange(20, 100000),
              help="Films drawn from --split (each shown 4 ways).")
@click.option("--max-turned-upright", default=0.005, show_default=True, type=click.FloatRange(0.0, 0.2),
              help="Share of held-out upright films the check may turn by mistake; sets the threshold.")
@click.option("--seed", default=0, show_default=True, type=int)
def fit(pack, data, split, threshold_split, n_fit, max_turned_upright, seed, out, threads, as_json):
    """Fit the orientation check into PACK's gate model.

    Every drawn film is shown to the gate model (int8, as predict runs it) as
    it is and turned by 90, 180 and 270 degrees, and a 4-way softmax on its
    pooled features learns the turn (member orientation.npz, ~30 KB). The
    threshold is the lowest probability at which at most --max-turned-upright
    of the held-out split's upright films would be turned by mistake. predict
    then turns a film found turned upright before the models answer, and
    warns (predict --no-upright only warns). The pack is rewritten atomically;
    use --out to fit a copy instead.

    \b
    Examples:
      cxr-edge orientation fit packs/default --data prepared/cxr4 --out packs/default-upright
      cxr-edge orientation fit my_pack --data prepared/gate --json
    """
    from ..tools.orientation_fit import fit_pack

    record = fit_pack(pack, data, split=split, threshold_split=threshold_split, n_fit=n_fit,
                      max_turned_upright=max_turned_upright, seed=seed, out=out, threads=threads,
                      progress=progress_printer(as_json))
    if as_json:
        click.echo(json_text(record))
        return
    h = record["held_out"]
    pct = (lambda v: "-" if v is None else f"{100 * v:.1f}%")
    click.echo(f"{record['pack']}: orientation check fitted on {record['n_fit']} {record['fit_split']} films x 4 "
               f"turns (fit accuracy {100 * record['fit_accuracy']:.1f}%); member {record['member_bytes'] / 1024:.0f} "
               f"KB, pack {record['pack_bytes'] / 1e6:.2f} MB")
    click.echo(f"threshold {record['threshold']:.2f}, on {h['upright']} held-out {record['threshold_split']} films: "
               f"upright turned by mistake {pct(h['upright_turned_by_mistake'])}; of {h['turned']} turned films, "
               f"turned back right {pct(h['turned_corrected'])}, the wrong way {pct(h['turned_wrong_way'])}, "
               f"left as they are {pct(h['turned_left_as_is'])}")
