"""``cxr-edge export``: a training run to a checked int8 model in a model pack (or a refusal, exit code 3)."""

from __future__ import annotations

import click

from . import json_text

__all__ = ["export", "format_report"]

_path = click.Path(path_type=str)


@click.command()
@click.argument("run_dir", type=_path)
@click.option("--int8", "int8", is_flag=True,
              help="Build the full-integer model (int8 weights and activations, I/O per the policy) and check it.")
@click.option("--from", "source", type=click.Choice(["auto", "qat", "float"]), default=None,
              help="int8 from the QAT model, from the float model (post-training quantization with the calibration "
                   "set), or auto: both, keep the better (default: the policy's, normally auto).")
@click.option("--policy", type=_path, default=None,
              help="Export policy JSON (default: ./export/<task>.json, else the one shipped in the package): "
                   "calibration set, I/O type, allowed deltas.")
@click.option("--out", type=_path, default=None,
              help="Model pack to create, or whose slot for this task to replace (other models are kept). "
                   "Without --out the model is checked and reported, nothing else is written.")
@click.option("--calibration", type=_path, default=None, help="Calibration manifest (overrides the policy's).")
@click.option("--data-root", type=_path, default=None,
              help="Folder calibration manifest paths are relative to (the shared data folder; default "
                   "$CXR_EDGE_DATA_ROOT, $CXR_EDGE_SHARED/data or <repo>/../shared/data).")
@click.option("--split", type=click.Choice(["val", "test"]), default=None,
              help="Held-out split the float-vs-int8 check runs on (default: the policy's, normally val).")
@click.option("--variant", "variants", multiple=True, type=click.Choice(["float16", "dynamic", "float32"]),
              help="Also write this variant of the float model beside the report (not into the pack). Repeatable.")
@click.option("--report", "report_dir", type=_path, default=None,
              help="Folder for report.json / report.md (default: RUN_DIR/export).")
@click.option("--name", default=None, help="Pack name for a new pack (default: the folder name).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def export(run_dir, int8, source, policy, out, calibration, data_root, split, variants, report_dir, name, as_json):
    """Convert RUN_DIR's model to int8, check it against the float model, and write it into a pack.

    After conversion the Keras float model and the int8 model run on the same
    held-out images (the int8 one exactly as `cxr-edge predict` runs it) and
    are compared: nih14 mean and per-label AUROC, cxr4 accuracy and macro-F1,
    gate accuracy and AUROC, and for every task the agreement rate. A drop
    past the policy's tolerance that a paired permutation test over the
    check films cannot tell from chance passes, up to the policy's limit,
    and so does an agreement below its bar when int8 changes no more
    decisions than moving the films by one pixel does, as far as a
    sign-flip test over the films can tell, down to the policy's floor
    (check.significance; the report gives each p). With the shipped
    policies the PTQ candidate is bias-corrected first: the mean shift that
    rounding the weights to int8 adds is measured on 128 calibration images
    and taken out of the BatchNorm means (quantization.bias_correction;
    about 1 to 3 minutes at 224 px). If the
    int8 model loses more than the policy allows, export exits with code 3,
    names what failed and how to fix it, and writes no pack (an existing
    pack stays as it was). A report (JSON + Markdown) is written either way.

    \b
    Examples:
      cxr-edge export runs/gate  --int8 --out packs/default
      cxr-edge export runs/cxr4  --int8 --from auto --out packs/default
      cxr-edge export runs/nih14 --int8 --from qat --policy my_nih14_policy.json --out packs/default
      cxr-edge export runs/cxr4  --int8 --variant float16 --variant dynamic     (check only, no pack)
    """
    from ..training.export import export_run

    report = export_run(run_dir, out=out, int8=int8, source=source, policy=policy, calibration=calibration,
                        data_root=data_root, split=split, variants=variants, report_dir=report_dir, name=name)
    click.echo(json_text(report, default=str) if as_json else format_report(report))


def _f(v) -> str:
    return "—" if v is None else f"{v:.4f}"


def format_report(r: dict) -> str:
    """A short human summary of a successful export."""
    lines = [f"{r['task']}: {r['data']['n']} {r['split']} images; kept {r['chosen'] or 'no int8 model'}"]
    for src, c in r["candidates"].items():
        scalars = [k for k in ("accuracy", "auroc", "mean_auroc", "macro_f1") if k in c["float"]]
        lines.append(f"  {src}: {'PASSED' if c['passed'] else 'FAILED'}  {c['bytes'] / 1e6:.2f} MB  "
                     f"agreement {_f(c['agreement'])}  "
                     + "  ".join(f"{k} {_f(c['float'][k])}->{_f(c['int8'][k])}" for k in scalars))
    for v in r.get("variants", []):
        lines.append(f"  {v['mode']}: {v['bytes'] / 1e6:.2f} MB  agreement {_f(v['agreement'])}  -> {v['file']}")
    lines += [f"  note: {n}" for n in r["notes"]]
    lines.append(f"pack: {r['pack']} (slot {r['slot']})" if r["written"] else "pack: not written (no --out)")
    lines.append(f"report: {r['report']['markdown']}   ({r['seconds']} s)")
    return "\n".join(lines)
