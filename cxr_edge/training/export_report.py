"""The export report: ``report.json`` (everything export measured) and ``report.md`` (the same, to read).

Written for every export, passed or failed: sizes (float vs int8), each metric float vs int8 with
its delta and the allowed drop, agreement and probability differences, per-label AUROC, confusion
matrices, the calibration set, and on failure which check failed and the likely fixes.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..runtime.atomic import write_atomic
from ..tools.report_html import Page
from .export_check import SCALARS

__all__ = ["markdown", "SOURCE_TITLES", "write_report"]

SOURCE_TITLES = {"ptq": "int8 from the float model (post-training quantization)",
                 "qat": "int8 from the QAT model (quantization-aware training)"}


def _f(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _signed(value) -> str:
    return "—" if value is None else f"{value:+.4f}"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _check_lookup(result: dict) -> dict:
    return {(c["metric"], c["label"]): c for c in result["checks"]}


def _allowed(c: dict | None) -> str:
    """The allowed drop; when the one-pixel envelope widened it, the policy's number beside it."""
    if not c:
        return "not checked"
    if c.get("envelope") is not None and c["allowed"] > c.get("tolerance", c["allowed"]):
        capped = c.get("limit") is not None and c["envelope"] > c["allowed"]
        how = f"1-px envelope {_f(c['envelope'])}, capped by the policy's limit" if capped else "1-px envelope"
        return f"{_f(c['allowed'])} ({how}; policy {_f(c['tolerance'])})"
    return _f(c["allowed"])


def _verdict(c: dict | None) -> str:
    """ok / FAILED, with the permutation test's p when a drop past its allowance was tested for chance."""
    if not c:
        return ""
    if c.get("p_value") is None:
        return "ok" if c["passed"] else "FAILED"
    if c["passed"]:
        return f"ok: within chance (p {c['p_value']:.2f} over {c['films']} films)"
    beyond = "below the floor" if c["metric"] == "agreement" else "beyond the limit"
    why = f"{beyond} {_f(c['cap'])}" if c["chance"] else f"not chance (p {c['p_value']:.3f})"
    return f"FAILED: {why}"


def _allowed_min(c: dict | None) -> str:
    if not c:
        return ""
    if c.get("envelope") is not None and c["allowed_min"] < c.get("tolerance", c["allowed_min"]):
        capped = c.get("limit") is not None and c["envelope"] < c["allowed_min"]
        how = f"1-px envelope {_f(c['envelope'])}, capped by the policy's limit" if capped else "1-px envelope"
        return f">= {_f(c['allowed_min'])} ({how}; policy {_f(c['tolerance'])})"
    return f">= {_f(c['allowed_min'])}"


def _metric_rows(result: dict) -> list[list[str]]:
    checks = _check_lookup(result)
    rows = []
    for key in SCALARS:
        if key not in result["float"]:
            continue
        c = checks.get((key, None))
        rows.append([key, _f(result["float"][key]), _f(result["int8"][key]), _signed(result["delta"].get(key)),
                     _allowed(c), _verdict(c)])
    c = checks.get(("agreement", None))
    rows.append([f"agreement ({result['agreement_kind']})", "", _f(result["agreement"]), "",
                 _allowed_min(c), _verdict(c)])
    rows.append(["max |p_float - p_int8|", "", _f(result["max_abs_diff"]), "", "", ""])
    rows.append(["mean |p_float - p_int8|", "", _f(result["mean_abs_diff"]), "", "", ""])
    rows.append(["pooled-feature correlation", "", _f(result.get("feature_correlation")), "", "", ""])
    margin = result.get("float_margin") or {}
    if margin.get("n_flipped"):
        rows.append(["float margin of changed decisions (median)", _f(margin["median_flipped"]), "",
                     f"all: {_f(margin['median_all'])}", "", f"{margin['n_flipped']} changed"])
    return rows


def _label_rows(result: dict) -> list[list[str]]:
    per_f = result["float"].get("per_label_auroc")
    if not per_f:
        return []
    checks = _check_lookup(result)
    agree = result.get("agreement_per_label") or {}
    rows = []
    for label, value in per_f.items():
        c = checks.get(("auroc", label))
        rows.append([label, str(result["float"]["n_positive"].get(label, "")), _f(value),
                     _f(result["int8"]["per_label_auroc"][label]), _signed(result["delta"]["per_label_auroc"][label]),
                     _allowed(c), _verdict(c),
                     _f(agree.get(label))])
    return rows


def _confusion(page: Page, labels, counts, title: str) -> None:
    page.text(title)
    page.table(["true \\ predicted", *labels], [[lbl, *map(str, row)] for lbl, row in zip(labels, counts)])


def _checked_on(report: dict, n: int) -> str:
    views = report.get("check_views")
    if not views:
        return f"{n} images"
    return (f"{n} paired decisions ({views['films']} films x {len(views['shifts'])} views: as they are and moved by "
            "one pixel)")


def _candidate(page: Page, cand: dict, labels, report: dict) -> None:
    page.heading(SOURCE_TITLES.get(cand["source"], cand["source"]), 2)
    q = cand["quantization"]
    status = "PASSED" if cand["passed"] else "FAILED"
    page.text(f"Check {status} on {_checked_on(report, cand['n'])}. {_mb(cand['bytes'])}, converted in "
              f"{cand['convert_seconds']} s; "
              f"input {q['input']['dtype']} scale {q['input']['scale']:.6g} zero point {q['input']['zero_point']}; "
              f"per-channel weights: {q['per_channel']}.")
    if not cand["passed"]:
        page.alert("; ".join(cand["failures"]))
    page.table(["metric", "float", "int8", "Δ (int8 − float)", "allowed drop", "check"], _metric_rows(cand))
    if cand.get("by_view"):
        keys = [k for k in SCALARS if k in cand["by_view"][0]["float"]]
        page.text("Per view (reported, not checked: the checks above pool all views):")
        page.table(["view (down, right)", "agreement", *[f"{k} float -> int8" for k in keys]],
                   [[str(tuple(v["shift"])) + (" as is" if not any(v["shift"]) else ""), _f(v["agreement"]),
                     *[f"{_f(v['float'][k])} -> {_f(v['int8'][k])}" for k in keys]] for v in cand["by_view"]])
    rows = _label_rows(cand)
    if rows:
        page.table(["label", "n positive", "AUROC float", "AUROC int8", "Δ", "allowed drop", "check", "agreement"],
                   rows)
    if "confusion_matrix" in cand["float"]:
        _confusion(page, labels, cand["float"]["confusion_matrix"], "Confusion matrix, float (rows: true class):")
        _confusion(page, labels, cand["int8"]["confusion_matrix"], "Confusion matrix, int8:")
    if cand.get("qat_keras"):
        qk = cand["qat_keras"]
        page.text("QAT Keras model itself: " + ", ".join(f"{k} {_f(qk['metrics'][k])}" for k in SCALARS
                                                          if k in qk["metrics"])
                  + f"; its int8 conversion agrees with it on {_f(qk['int8_agreement_with_qat_keras'])} of decisions "
                    f"(mean |Δp| {_f(qk['int8_mean_abs_diff_vs_qat_keras'])}).")
    if cand.get("fixes"):
        page.text("Likely fixes:")
        page.bullets(cand["fixes"])


def _views_row(views: dict | None) -> str:
    if not views:
        return "the images as they are"
    shifts = ", ".join(str(tuple(v)) for v in views["shifts"][1:])
    return (f"each image as it is and moved by one pixel (down, right) {shifts}: {views['n']} paired float/int8 "
            "decisions, every checked number pooled over them")


def markdown(report: dict) -> str:
    page = Page(f"cxr-edge export: {report['task']} from {Path(report['run']).name}")
    passed = report.get("passed")
    if passed is False:
        page.alert(f"int8 check FAILED (best candidate: {report['chosen']}). No pack was written"
                   + (f"; {report['pack']} was left as it was." if report.get("pack") else "."))
    elif passed:
        page.text(f"int8 check PASSED; kept: {report['chosen']}. "
                  + (f"Written into pack {report['pack']} (slot {report['slot']})." if report["written"]
                     else "No --out given: nothing written."))
    data, pol = report["data"], report["policy"]
    rows = [["run", report["run"]], ["task / slot", f"{report['task']} / {report['slot']}"],
            ["input", f"{report['input']['size']} px, {report['input']['channels']} channel(s)"],
            ["check split", f"{report['split']}: {data['n']} images ({data.get('pixels')}) of {data['prepared']}"],
            ["check views", _views_row(report.get("check_views"))],
            ["policy", f"{pol['path']} (from {pol['from']}, I/O {pol['io_dtype']})"],
            ["created", report["created"]], ["wall time", f"{report.get('seconds', '?')} s"]]
    cal = report.get("calibration")
    if cal:
        rows.append(["calibration set", f"{cal['manifest']}: {cal['n']} images from {cal['split']}, sha256 "
                                        f"{cal['sha256'][:16]}…, {cal['overlap_with_check_split']} in the check "
                                        "split"])
    bc = report.get("bias_correction")
    if bc:
        rows.append(["bias correction", f"PTQ from the float model with the int8 weight rounding's mean shift taken "
                                        f"out: {bc['layers']} layers on {bc['images']} calibration images, "
                                        f"{bc['seconds']} s (largest mean shifts: "
                                        + ", ".join(f"{k} {v:.3g}" for k, v in bc["largest_shifts"].items()) + ")"])
    page.table(["", ""], rows)
    page.heading("Sizes", 2)
    sizes = report["sizes"]
    base = sizes["float32_weights_bytes"]
    page.table(["model", "bytes", "size", "vs float32 weights"],
               [[k.removesuffix("_bytes"), str(v), _mb(v), f"{v / base:.2f}×"] for k, v in sizes.items()])
    page.heading("Float model on the check split", 2)
    page.text(", ".join(f"{k} {_f(report['float'][k])}" for k in SCALARS if k in report["float"]))
    env = report.get("envelope")
    if env:
        page.text("The float model's own one-pixel envelope (the same images moved by one pixel; the policy's "
                  "tolerances are widened to the worst of the four shifts, never narrowed):")
        keys = [k for k in SCALARS if k in env["drop"]]
        page.table(["shift (down, right)", "agreement with unshifted", *[f"{k} drop" for k in keys]],
                   [[str(tuple(r["shift"])), _f(r["agreement"]), *[_signed(r["drop"].get(k)) for k in keys]]
                    for r in env["shifts"]]
                   + [["envelope", _f(env["agreement"]), *[_f(env["drop"][k]) for k in keys]]])
    for cand in report["candidates"].values():
        _candidate(page, cand, list(report["float"].get("n_positive", {})), report)
    if report.get("variants"):
        page.heading("Variants (not in the pack)", 2)
        page.table(["mode", "file", "size", "agreement with float", "max |Δp|", "mean |Δp|", "convert s"],
                   [[v["mode"], Path(v["file"]).name, _mb(v["bytes"]), _f(v["agreement"]), _f(v["max_abs_diff"]),
                     _f(v["mean_abs_diff"]), str(v["convert_seconds"])] for v in report["variants"]])
    if report["notes"]:
        page.heading("Notes", 2)
        page.bullets(report["notes"])
    return page.markdown()


def write_report(report: dict, folder) -> dict[str, Path]:
    """Write ``report.json`` and ``report.md`` into ``folder`` (atomically); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "markdown": folder / "report.md"}
    report = dict(report, report={k: str(v) for k, v in paths.items()})
    write_atomic(paths["json"], json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    write_atomic(paths["markdown"], markdown(report))
    return paths
