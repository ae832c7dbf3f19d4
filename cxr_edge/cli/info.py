"""``cxr-edge info``: what a model pack is and how it was measured."""

from __future__ import annotations

import click

__all__ = ["format_description", "info"]

from . import json_text


@click.command()
@click.argument("pack", required=False, type=click.Path(path_type=str, readable=False))
@click.option("--json", "as_json", is_flag=True, help="Print the full verified description as JSON.")
@click.option("--require-signed", "require_signed", is_flag=True,
              help="Refuse a pack that is not signed by a key in the config's trusted_keys.")
def info(pack, as_json, require_signed):
    """Describe PACK (default: the pack predict would use) after verifying its checksums.

    Shows each model's task, labels, input, quantization, thresholds,
    temperature, calibration set hash and the float-vs-int8 metrics measured
    at export.
    """
    from ..config import resolve_pack
    from ..runtime.pack import load_pack
    from ..runtime.signing import TrustPolicy

    path, origin = resolve_pack(pack)
    desc = load_pack(path, trust=TrustPolicy.from_config(require_signed)).describe()
    if as_json:
        click.echo(json_text(desc, indent=2, sort_keys=True))
        return
    click.echo(format_description(desc, origin))


def format_description(desc: dict, origin: str = "") -> str:
    lines = [f"pack      {desc['path']}" + (f"  ({origin})" if origin else ""),
             f"name      {desc.get('name')}   created {desc.get('created')}   by cxr-edge {desc.get('toolkit_version')}",
             f"license   {desc.get('license')}",
             f"size      {desc['total_bytes'] / 1e6:.2f} MB in {len(desc['models'])} model(s); checksums OK"]
    sig = desc.get("signature") or {}
    lines.append("signature " + (f"signed by {sig.get('signer') or 'an unnamed signer'}, key {sig.get('key_id')} "
                                 + (f"(trusted as {sig['trusted_as']!r})" if sig.get("trusted")
                                    else "(NOT a trusted key here)") + f", {sig.get('signed_at')}"
                                 if sig.get("signed") else "unsigned"))
    if desc.get("description"):
        lines.append(f"about     {desc['description']}")
    for slot, m in desc["models"].items():
        inp = m["input"]
        q = m.get("quantization") or {}
        lines += ["", f"[{slot}] {m['task']}  {m['file']}  {m['bytes'] / 1e6:.2f} MB  sha256 {m['sha256'][:16]}…",
                  f"  labels       {', '.join(m['labels'])} ({m['activation']})",
                  f"  input        {inp['size']}x{inp['size']}x{inp['channels']}, x = pixel*{inp['scale']:.6g}"
                  f"{inp['offset']:+g}, {inp['resize']}" + (", CLAHE" if inp.get("clahe") else ""),
                  f"  quantization {q.get('mode', '?')} ({q.get('source', '?')}"
                  + (f", bias-corrected on {q['bias_correction'].get('images', '?')} images"
                     if isinstance(q.get("bias_correction"), dict) else "")
                  + f"), I/O {q.get('io_dtype', '?')}",
                  f"  temperature  {m.get('temperature', 1.0):g}   profiles: "
                  + ", ".join(f"{p}{' (default)' if p == m.get('default_profile') else ''}" for p in m["thresholds"])]
        if m.get("bias"):
            lines.append("  offsets      " + ", ".join(f"{k} {v:+.2f}" for k, v in m["bias"].items())
                         + "  (logit, after the temperature)")
        cal = m.get("calibration") or {}
        if cal.get("used") is False:
            lines.append(f"  calibration  none used ({cal.get('note', 'no calibration set')})")
        elif cal:
            lines.append(f"  calibration  {cal.get('n', '?')} images, sha256 {str(cal.get('sha256', '?'))[:16]}…"
                         + (f" ({cal['split']} split)" if cal.get("split") else ""))
        lines += _guard_lines(m.get("extras") or {})
        lines += _metric_lines(m.get("metrics") or {})
    return "\n".join(lines)


def _guard_lines(extras: dict) -> list[str]:
    """The checks a model carries beyond its answer: the OOD guard and the orientation check."""
    out = []
    ood = extras.get("ood")
    if ood:
        out.append(f"  ood guard    threshold {ood.get('threshold', '?')} ({ood.get('quantile', '?')} quantile of "
                   f"{ood.get('n_threshold', '?')} {ood.get('threshold_split', '?')} images): predict flags images "
                   "above it as unusual for this model")
    turn = extras.get("orientation")
    if turn:
        h = turn.get("held_out") or {}
        pct = (lambda v: "?" if v is None else f"{100 * v:.1f}%")
        out.append(f"  orientation  turns sideways / upside-down films upright at p >= {turn.get('threshold', '?')}; "
                   f"on {h.get('upright', '?')} held-out {turn.get('threshold_split', '?')} films: upright turned by "
                   f"mistake {pct(h.get('upright_turned_by_mistake'))}, turned ones turned back right "
                   f"{pct(h.get('turned_corrected'))}")
    return out


def _metric_lines(metrics: dict) -> list[str]:
    if not metrics:
        return ["  metrics      none recorded (not exported with a float-vs-int8 check)"]
    views = metrics.get("check_views")
    where = (f" on {views['films']} held-out images x {len(views['shifts'])} one-pixel views ({metrics['n']} paired "
             f"decisions, {metrics.get('split', '?')} split)" if views and "n" in metrics else
             f" on {metrics['n']} held-out images ({metrics.get('split', '?')} split)" if "n" in metrics else "")
    out = [f"  int8 check   {'PASSED' if metrics.get('passed') else 'FAILED'}" + where]
    flt, q, delta = metrics.get("float", {}), metrics.get("int8", {}), metrics.get("delta", {})
    for key in sorted(set(flt) & set(q)):
        if isinstance(flt[key], (int, float)) and isinstance(q[key], (int, float)):
            d = delta.get(key)
            out.append(f"    {key:<14} float {flt[key]:.4f}  int8 {q[key]:.4f}" + (f"  Δ {d:+.4f}" if d is not None else ""))
    for key in ("agreement", "max_abs_diff", "mean_abs_diff"):
        if isinstance(metrics.get(key), (int, float)):
            out.append(f"    {key:<14} {metrics[key]:.4f}")
    per_label = delta.get("per_label_auroc") or {}
    known = {k: v for k, v in per_label.items() if isinstance(v, (int, float))}
    if known:
        worst = min(known, key=known.get)
        out.append(f"    per-label AUROC Δ from {known[worst]:+.4f} ({worst}) to {max(known.values()):+.4f}")
    sizes = metrics.get("sizes") or {}
    if sizes.get("float_h5_bytes"):
        int8 = [f"{k[5:-6]} {v / 1e6:.2f} MB" for k, v in sorted(sizes.items())
                if k.startswith("int8_") and k.endswith("_bytes")]
        out.append(f"    sizes          float .h5 {sizes['float_h5_bytes'] / 1e6:.2f} MB, float32 weights "
                   f"{sizes.get('float32_weights_bytes', 0) / 1e6:.2f} MB; int8 " + ", ".join(int8))
    out += _check_lines(metrics)
    return out


def _check_lines(metrics: dict) -> list[str]:
    """What the export check allowed, which checks failed, and the candidates export compared."""
    out = []
    checks = metrics.get("checks") or []
    allowed = {}
    for c in checks:
        name = c["metric"] if c.get("label") is None else "per-label auroc"
        if name in allowed:   # per-label rows: show the policy's number once
            continue
        if "allowed_min" in c:
            allowed[name] = f"≥ {c['allowed_min']:.4g}"
        else:
            allowed[name] = f"drop ≤ {(c.get('tolerance', c['allowed']) if c.get('label') else c['allowed']):.4g}"
    if allowed:
        out.append("    allowed        " + ", ".join(f"{k} {v}" for k, v in allowed.items()))
    env = metrics.get("envelope")
    if env:
        limits = {c["metric"] if c.get("label") is None else "per-label auroc": c["limit"]
                  for c in checks if c.get("limit") is not None}
        out.append(f"    1-px envelope  the float model agrees with itself on {env['agreement']:.4f} of decisions when "
                   "the images move by one pixel; tolerances widened to it where it is larger"
                   + (" (never past " + ", ".join(f"{k} {v:.4g}" for k, v in limits.items()) + ")" if limits else ""))
    for c in checks:
        name = f"{c['metric']}{'[' + c['label'] + ']' if c.get('label') else ''}"
        if not c.get("passed", True):
            out.append(f"    FAILED         {name}")
        elif c.get("p_value") is not None:
            out.append(f"    chance         {name} passed past its bar as chance (p {c['p_value']:.2f} over "
                       f"{c['films']} films; check.significance)")
    cands = metrics.get("candidates") or {}
    if len(cands) > 1 or (cands and metrics.get("source")):
        out.append("    candidates     " + "; ".join(
            f"{s} {'passed' if c.get('passed') else 'failed'} (agreement {c['agreement']:.4f})"
            if isinstance(c.get("agreement"), (int, float)) else s for s, c in cands.items())
            + (f" -> kept {metrics['source']}" if metrics.get("source") else ""))
    return out
