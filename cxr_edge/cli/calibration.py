"""``cxr-edge calibration``: build and verify the calibration-set manifests int8 export calibrates on."""

from __future__ import annotations

import click

__all__ = ["build", "calibration", "verify"]

_path = click.Path(path_type=str)


@click.group()
def calibration():
    """Calibration sets for int8 export: file lists with sha256, drawn from prepared data.

    (Temperature and thresholds are `cxr-edge calibrate`; this is the
    representative data for post-training quantization.)
    """


@calibration.command()
@click.argument("prepared", type=_path)
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "val"]),
              help="Split to draw from (never test). Train keeps the set apart from the val split export checks on.")
@click.option("--n", "n", default=300, show_default=True, type=click.IntRange(1, None), help="Images to draw.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--data-root", type=_path, default=None,
              help="The shared data folder the manifest's paths are made relative to (default: the prepared "
                   "data's source root, $CXR_EDGE_DATA_ROOT or $CXR_EDGE_SHARED/data).")
@click.option("--out", required=True, type=_path, help="Manifest CSV to write, e.g. calibration_data/cxr4.csv "
                                                       "(its sidecar gets .json).")
@click.option("--force", is_flag=True, help="Replace an existing manifest.")
def build(prepared, split, n, seed, data_root, out, force):
    """Draw a stratified, seeded calibration set from a split of PREPARED and write its manifest.

    \b
    Examples:
      cxr-edge calibration build /data/prepared/cxr4 --out calibration_data/cxr4.csv
      cxr-edge calibration build /data/prepared/nih14 --n 500 --seed 1 --out calibration_data/nih14.csv --force
    """
    from ..tools.ptq_set import build_calibration_set, write_calibration_set

    cs = build_calibration_set(prepared, split=split, n=n, seed=seed, data_root=data_root)
    path = write_calibration_set(cs, out, overwrite=force)
    strata = ", ".join(f"{k} {v['chosen']}/{v['available']}" for k, v in cs.info["strata"].items())
    click.echo(f"{cs.task}: {cs.n} images from {split} (seed {seed}); strata chosen/available: {strata}")
    click.echo(f"set sha256 {cs.sha256}")
    click.echo(f"written: {path} (+ {path.with_suffix('.json').name})")


@calibration.command()
@click.argument("manifest", type=_path)
@click.option("--data-root", type=_path, default=None, help="The shared data folder (see build).")
def verify(manifest, data_root):
    """Check that every file of MANIFEST exists under the data root with its recorded sha256."""
    from ..tools.ptq_set import load_calibration_set, resolve_data_root

    cs = load_calibration_set(manifest)
    root = resolve_data_root(data_root, manifest)
    cs.read(root)
    click.echo(f"{manifest}: {cs.n} {cs.task} images under {root}, all present with matching sha256; "
               f"set sha256 {cs.sha256}")
