"""``cxr-edge calibrate``: temperature scaling and named threshold profiles, written into a pack."""

from __future__ import annotations

import click

from . import json_text
from .evaluate import StageProgress, format_number

__all__ = ["calibrate", "format_result"]

_path = click.Path(path_type=str)


@click.command()
@click.argument("pack", type=_path)
@click.option("--data", "data", multiple=True, required=True, type=_path,
              help="Prepared data folder; its task picks the pack's model. Repeat to calibrate several models.")
@click.option("--split", default="val", show_default=True, type=click.Choice(["train", "val", "test"]))
@click.option("--rule", default="max-f1", show_default=True,
              help="How thresholds are chosen: max-f1, youden, sensitivity:X or specificity:X (X in (0, 1]).")
@click.option("--profile", default=None,
              help="Name of the threshold profile to write (default: the rule, e.g. max-f1 or sensitivity-0.9).")
@click.option("--default", "make_default", is_flag=True,
              help="Make this profile the pack's default (it also becomes the default when the current default "
                   "was never calibrated).")
@click.option("--keep-temperature", is_flag=True,
              help="Keep the pack's temperature (and label offsets); only choose thresholds.")
@click.option("--bias/--no-bias", "bias", default=None,
              help="With the temperature, fit a logit offset per label (default: on for sigmoid heads -- gate, "
                   "nih14 -- where training's positive weights inflate every probability; softmax heads get a "
                   "temperature only).")
@click.option("--photos", "photos", default=None, metavar="SEVERITY",
              help="Also fit on simulated phone photos of the same images, straightened as predict straightens "
                   "them (evaluate --photos' photos): mild, moderate, severe or 0..1. Use it for the gate: its "
                   "few digital val non-CXRs alone leave the threshold anywhere in a wide gap.")
@click.option("--dry-run", is_flag=True, help="Compute and print everything, write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object on stdout.")
@click.option("--allow-test-split", is_flag=True,
              help="Calibrate on the test split anyway (only if it will never be used to report results).")
@click.option("--allow-train-split", is_flag=True, help="Calibrate on images the model trained on anyway.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 64), help="Interpreter threads.")
def calibrate(pack, data, split, rule, profile, make_default, keep_temperature, bias, photos, dry_run, as_json,
              allow_test_split, allow_train_split, threads):
    """Fit a temperature and choose per-label thresholds for PACK on a prepared split.

    The model runs on the split exactly as `cxr-edge predict` runs it. A
    temperature T is fitted to its outputs (T > 1 softens an over-confident
    model), for sigmoid heads together with a logit offset per label that
    moves each label's probabilities to its base rate (a split the model
    gets entirely right cannot set a temperature: the model's is kept, with a
    warning). Then a threshold per
    label is chosen by --rule on the calibrated probabilities and stored as a
    named profile. A pack can hold several
    profiles (e.g. screening and balanced); `cxr-edge predict --profile NAME`
    picks one, and the default profile is used otherwise.

    Prints the expected calibration error (ECE) before and after, and each
    label's threshold with its sensitivity and specificity on this split. The
    pack is rewritten atomically; what was used (data hash, split, n, rule,
    ECE) is recorded in it, so `cxr-edge evaluate` refuses to score the pack on
    the same images. The test split is refused: calibrate on val.

    \b
    Examples:
      cxr-edge calibrate my_pack --data prepared/nih14 --rule max-f1 --profile balanced --default
      cxr-edge calibrate my_pack --data prepared/cxr4 --rule sensitivity:0.90 --profile screening
      cxr-edge calibrate my_pack --data prepared/gate --data prepared/cxr4 --data prepared/nih14
      cxr-edge calibrate my_pack --data prepared/nih14 --rule youden --dry-run --json
      cxr-edge calibrate my_pack --data prepared/gate --rule youden --photos moderate --profile balanced
    """
    from ..tools.posthoc_pack import calibrate as run_calibrate

    with StageProgress() as progress:
        result = run_calibrate(pack, list(data), split=split, rule=rule, profile=profile,
                               make_default=make_default, temperature=not keep_temperature, bias=bias,
                               allow_test_split=allow_test_split, allow_train_split=allow_train_split,
                               dry_run=dry_run, threads=threads, progress=progress, photos=photos)
    click.echo(json_text(result) if as_json else format_result(result))


def format_result(r: dict) -> str:
    """A human summary of a calibration result."""
    lines = []
    for slot, m in r["models"].items():
        d, t, e = m["data"], m["temperature"], m["ece"]
        shots = d.get("photos")
        lines += [f"{slot}: {m['task']} model ({m['file']}), data {d['prepared']} split {d['split']}: {d['n']} images"
                  + (f" + {shots['n']} simulated {shots['severity']} photos of them" if shots else ""),
                  f"  temperature {t['before']:.4g} -> {t['after']:.4g}{'' if t['fitted'] else ' (kept)'}    "
                  f"ECE {format_number(e['before'])} -> {format_number(e['after'])}  (raw outputs {format_number(e['raw'])})",
                  *_bias_line(m.get("bias") or {}),
                  f"  profile {m['profile']!r} by rule {m['rule']}; default profile {m['default_profile']!r}"
                  f"{' (changed: ' + m['default_reason'] + ')' if m['default_changed'] else ''}",
                  f"  {'label':<20} {'n+':>5}  threshold  sensitivity  specificity   F1"]
        for label, s in m["thresholds"].items():
            lines.append(f"  {label:<20} {s['n_positive']:>5}  {format_number(s['threshold'], 4):>9}  {format_number(s['sensitivity']):>11}"
                         f"  {format_number(s['specificity']):>11}  {format_number(s['f1'])}")
        for name, t_old in m["remapped_profiles"].items():
            lines.append(f"  profile {name!r}: thresholds re-expressed for the new calibration (temperature was "
                         f"{t_old:.4g}); its decisions are unchanged")
        lines += [f"  warning: {w}" for w in m["warnings"]]
    lines.append(f"written: {r['pack']}" if r["written"] else "dry run: nothing written")
    return "\n".join(lines)


def _bias_line(b: dict) -> list[str]:
    after = b.get("after") or {}
    if not any(after.values()):
        return []
    how = "fitted" if b.get("fitted") else "kept"
    return [f"  label offsets ({how}): " + ", ".join(f"{k} {v:+.2f}" for k, v in after.items())]
