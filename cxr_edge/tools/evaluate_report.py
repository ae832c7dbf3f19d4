"""The evaluation report: ``index.html`` + ``report.md`` with PNG figures, from an :class:`Evaluation`.

Figures: ROC curves per label (photo variants dashed), reliability diagrams
(raw outputs vs after the pack's temperature), the confusion matrix for
softmax tasks (digital and photos side by side) and a forest plot of the
primary metric per subgroup and source dataset. matplotlib is imported here
only, and only when the report is written; without it the pages are written
without figures and say how to get them.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np

from ..errors import DependencyError, require
from .metrics import reliability_curve, roc_curve
from ..runtime.atomic import write_atomic
from .report_html import Page

__all__ = ["VARIANT_NAMES", "VARIANT_STYLES", "write_report"]

log = logging.getLogger(__name__)

VARIANT_NAMES = {"digital": "digital", "photo": "phone photo (raw)", "photo_rectified": "phone photo (rectified)"}
VARIANT_STYLES = {"digital": "-", "photo": ":", "photo_rectified": "--"}


def write_report(ev, out) -> Path:
    """Write the report of ``ev`` into folder ``out``; returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures, missing = [], None
    try:
        mpl = require("matplotlib", "train", "the evaluation report's plots")
    except DependencyError as exc:
        missing = str(exc)
        log.warning("%s: writing the report without figures", exc)
    else:
        mpl.rcParams.update({"font.size": 8, "axes.spines.top": False, "axes.spines.right": False})
        for name, fn in _FIGURES.items():
            fig = fn(ev)
            if fig is not None:
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
                write_atomic(out / f"{name}.png", buf.getvalue())
                figures.append(name)
    _page(ev, figures, missing).write(out)
    log.info("evaluation report written to %s", out)
    return out


# --------------------------------------------------------------------------- formatting


def _f(v, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _ci(d) -> str:
    """'value [low, high]' from {"value", "ci"}."""
    if not d:
        return "—"
    ci = d.get("ci")
    return _f(d.get("value")) + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else "")


# --------------------------------------------------------------------------- figures


def _variants(ev) -> dict[str, np.ndarray]:
    return {"digital": ev.probs, **ev.variants}


def _roc(ev):
    from ..data.report import figure

    labels = ev.spec.labels
    ncols = min(4, len(labels))
    nrows = math.ceil(len(labels) / ncols)
    fig, ax = figure(2.6 * ncols + 0.4, 2.5 * nrows + 0.4, nrows, ncols)
    for j, label in enumerate(labels):
        a = ax[j // ncols, j % ncols]
        a.plot([0, 1], [0, 1], color="#bbb", lw=0.8)
        yj = ev.y[:, j]
        if yj.min() == yj.max():
            a.text(0.5, 0.5, "one class only:\nno ROC", ha="center", va="center", color="#888")
        else:
            for name, p in _variants(ev).items():
                fpr, tpr, _ = roc_curve(yj, p[:, j])
                auc = float(np.trapezoid(tpr, fpr))
                a.plot(fpr, tpr, VARIANT_STYLES[name], lw=1.3, label=f"{VARIANT_NAMES[name]} {auc:.3f}")
            a.legend(loc="lower right", fontsize=6, frameon=False, title="AUROC", title_fontsize=6)
        a.set_title(f"{label} (n+={int(yj.sum())})")
        a.set_aspect("equal")
    for k in range(len(labels), nrows * ncols):
        ax[k // ncols, k % ncols].set_visible(False)
    fig.supxlabel("false positive rate (1 − specificity)")
    fig.supylabel("true positive rate (sensitivity)")
    return fig


def _reliability(ev):
    from ..data.report import figure

    multiclass = not ev.spec.multilabel
    truth = ev.y.argmax(axis=1) if multiclass else ev.y
    t = ev.result["calibration"]["temperature"]
    offsets = bool(ev.result["calibration"].get("bias"))
    curves = {f"after temperature {t:.3g}" + (" + label offsets" if offsets else ""): ev.probs}
    if t != 1.0 or offsets:
        curves = {"raw model output": ev.raw, **curves}
    for name, p in ev.variants.items():
        curves[VARIANT_NAMES[name]] = p
    fig, ax = figure(8.5, 3.6, 1, 2)
    a, h = ax[0, 0], ax[0, 1]
    a.plot([0, 1], [0, 1], color="#bbb", lw=0.8, label="perfect calibration")
    edges = None
    for name, p in curves.items():
        rc = reliability_curve(truth, p, multiclass=multiclass)
        edges = rc["bin_edges"]
        ok = rc["count"] > 0
        a.plot(rc["confidence"][ok], rc["frequency"][ok], "o-", ms=3, lw=1.2, label=name)
        h.stairs(rc["count"], edges, label=name)
    kind = "top-label confidence" if multiclass else "predicted probability (all label decisions)"
    a.set_xlabel(kind)
    a.set_ylabel("observed accuracy" if multiclass else "observed frequency")
    a.set_xlim(0, 1)
    a.set_ylim(0, 1)
    a.legend(fontsize=6, frameon=False)
    a.set_title("reliability diagram")
    h.set_yscale("log")
    h.set_ylim(bottom=0.8)
    h.set_xlabel(kind)
    h.set_ylabel("decisions per bin")
    h.set_title("how many predictions fall in each bin")
    return fig


def _confusion(ev):
    if ev.spec.multilabel:
        return None
    from ..data.report import figure, heatmap

    labels = list(ev.spec.labels)
    variants = _variants(ev)
    fig, ax = figure(3.4 * len(variants) + 0.6, 3.3, 1, len(variants))
    truth = ev.y.argmax(axis=1)
    for a, (name, p) in zip(ax[0], variants.items()):
        cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
        np.add.at(cm, (truth, p.argmax(axis=1)), 1)
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        heatmap(a, share, cm, labels, labels, "Blues", 1.0, dark_above=0.6, rotation=30)
        a.set_xlabel("predicted")
        a.set_title(f"{VARIANT_NAMES[name]}: accuracy {np.trace(cm) / max(cm.sum(), 1):.3f}")
    ax[0, 0].set_ylabel("true (colour: share of the row)")
    return fig


def _forest_rows(ev):
    """(subgroup rows on the primary metric, source rows on accuracy): (name, {value, ci}, n)."""
    r = ev.result
    sub = [("all", r["metrics"]["primary"], r["data"]["n_images"])]
    for col, groups in r["subgroups"].items():
        sub += [(f"{col}: {k}", g["primary"], g["n"]) for k, g in groups.items() if "primary" in g]
    # one source often holds one class, where AUROC and macro-F1 mean little: sources are compared on accuracy
    src = [("all", r["metrics"]["accuracy"], r["data"]["n_images"])]
    src += [(k[:40], g["accuracy"], g["n"]) for k, g in r["datasets"].items() if "accuracy" in g]
    keep = [[(name, d, n) for name, d, n in rows if d.get("value") is not None] for rows in (sub, src)]
    named = zip(keep, (ev.spec.primary_metric, "accuracy"), ("subgroups", "source datasets"))
    return [(rows, metric, title) for rows, metric, title in named if len(rows) > 1]


def _forest_panel(a, rows, metric: str, title: str):
    for i, (name, d, n) in enumerate(rows):
        v, ci = d["value"], d.get("ci")
        colour = "#C44E52" if i == 0 else "#4C72B0"
        if ci and ci[0] is not None:
            a.errorbar(v, i, xerr=[[v - ci[0]], [ci[1] - v]], fmt="o", ms=4, color=colour, capsize=2)
        else:
            a.plot(v, i, "o", ms=4, color=colour)
        a.text(1.01, i, f"n={n}", transform=a.get_yaxis_transform(), va="center", fontsize=7)
    a.axvline(rows[0][1]["value"], color="#C44E52", lw=0.8, ls=":")
    a.set_yticks(range(len(rows)), [r[0] for r in rows])
    a.invert_yaxis()
    a.set_xlabel(f"{metric} with 95% CI (patient bootstrap)")
    a.set_title(title)


def _forest(ev):
    panels = _forest_rows(ev)
    if not panels:
        return None
    from ..data.report import figure

    tall = max(len(p[0]) for p in panels)
    fig, ax = figure(5.2 * len(panels) + 1.5, 0.9 + 0.28 * tall, 1, len(panels))
    for a, panel in zip(ax[0], panels):
        _forest_panel(a, *panel)
    return fig


_FIGURES = {"roc": _roc, "reliability": _reliability, "confusion": _confusion, "subgroups": _forest}
_TITLES = {"roc": "ROC curves", "reliability": "Calibration (reliability diagrams)",
           "confusion": "Confusion matrix", "subgroups": "Results by subgroup and source dataset"}


# --------------------------------------------------------------------------- page


def _summary_rows(r) -> list[list[str]]:
    m = r["metrics"]
    rows = [[f"primary: {m['primary']['name']}", _ci(m["primary"])], ["mean AUROC", _ci(m["mean_auroc"])],
            ["accuracy", _ci(m["accuracy"])]]
    if "macro_f1" in m and m["primary"]["name"] != "macro_f1":
        rows.append(["macro-F1", _ci(m["macro_f1"])])
    c = r["calibration"]
    rows.append([f"ECE ({m['ece']['kind']})", f"{_f(c['ece_raw'])} raw → {_f(c['ece'])} at temperature "
                                              f"{c['temperature']:.3g}" + (" with label offsets" if c.get("bias")
                                                                           else "")])
    return rows


def _label_table(ev) -> tuple[list[str], list[list[str]]]:
    per = ev.result["metrics"]["per_label"]
    if ev.spec.multilabel:
        head = ["label", "n+", "n−", "AUROC [95% CI]", "AP", "threshold", "sensitivity", "specificity", "F1", "ECE"]
        rows = [[k, d["n_positive"], d["n_negative"], _ci({"value": d["auroc"], "ci": d["auroc_ci"]}), _f(d["ap"]),
                 _f(d["threshold"]), _f(d["sensitivity"]), _f(d["specificity"]), _f(d["f1"]), _f(d["ece"])]
                for k, d in per.items()]
    else:
        head = ["class", "n", "AUROC (one vs rest) [95% CI]", "AP", "precision", "recall", "F1"]
        rows = [[k, d["support"], _ci({"value": d["auroc"], "ci": d["auroc_ci"]}), _f(d["ap"]),
                 _f(d["precision"]), _f(d["recall"]), _f(d["f1"])] for k, d in per.items()]
    return head, rows


def _group_rows(groups: dict, prefix: str = "") -> list[list[str]]:
    rows = []
    for k, g in groups.items():
        if g.get("too_few"):
            rows.append([prefix + k, g["n"], "", "too few to measure", "", ""])
        else:
            rows.append([prefix + k, g["n"], g["n_patients"], _ci(g["primary"]), _ci(g["mean_auroc"]),
                         _ci(g["accuracy"])])
    return rows


def _probe_rows(s: dict) -> list[list[str]]:
    rows = []
    for scope, p in [("all images", s.get("all", {}))] + [(f"within {k}", v) for k, v in
                                                          s.get("within_label", {}).items()]:
        if "skipped" in p or not p:
            continue
        rows.append([scope, p["n"], len(p["datasets"]), _f(p["accuracy"]), _f(p["majority_baseline"]),
                     _f(p["balanced_accuracy"]), _f(p["chance_balanced"])])
    return rows


def _photo_rows(r) -> list[list[str]]:
    ph = r["photos"]
    m = r["metrics"]
    rows = [["digital", _ci(m["primary"]), "", _ci(m["mean_auroc"]), _ci(m["accuracy"]), _f(m["ece"]["value"])]]
    for name, v in ph["variants"].items():
        vm = v["metrics"]
        rows.append([VARIANT_NAMES[name], _ci(vm["primary"]), _ci(v["gap_vs_digital"]), _ci(vm["mean_auroc"]),
                     _ci(vm["accuracy"]), _f(vm["ece"]["value"])])
    return rows


def _facts(r) -> list[str]:
    mo, d, m = r["model"], r["data"], r["metrics"]
    b = m["bootstrap"]
    facts = [f"model: {mo['kind']} {mo['path']}" + (f" ({mo['file']}, sha256 {mo['sha256'][:12]}…)"
                                                     if mo.get("file") else ""),
             f"task {mo['task']}, input {mo['input']['size']} px; backend {mo.get('backend')}",
             f"temperature {mo.get('temperature', 1.0):g}; thresholds: "
             + (f"profile {mo['profile']!r}" if mo.get("profile") else "the task's defaults"),
             f"data: {d['path']} (data_sha256 {d['data_sha256'][:12]}…), split {d['split']}: {d['n_images']} images "
             f"of {d['n_patients']} patients; pixels from the {d['pixels']}",
             f"95% CIs: {b['n_resamples']} bootstrap resamples by {b['unit']}, seed {b['seed']}",
             f"cxr-edge {r['toolkit_version']}, {r['created']}"]
    return facts


def _page(ev, figures: list[str], missing: str | None) -> Page:
    r = ev.result
    page = Page(f"Evaluation: {r['model']['task']} on split {r['data']['split']!r}")
    for flag in r["leakage"]["flags"]:
        page.alert(flag)
    page.bullets(_facts(r))
    page.bullets(r["notes"])
    if missing:
        page.text(f"Figures are missing: {missing}", muted=True)
    page.heading("Summary").table(["metric", "value [95% CI]"], _summary_rows(r))
    page.heading("Per label").table(*_label_table(ev))
    if "photos" in r:
        ph = r["photos"]
        rc = ph["rectify"]
        page.heading(f"Digital vs simulated phone photos (severity {ph['severity']})")
        page.table(["images", f"{r['metrics']['primary']['name']} [95% CI]", "gap vs digital [95% CI]",
                    "mean AUROC", "accuracy", "ECE"], _photo_rows(r))
        page.text(f"Photos simulated from the original images (seed {ph['seed']}, {ph['photo_long_side']} px long "
                  f"side), then run through the device path. Rectification: film found in {rc['found']}, "
                  f"taken as cropped to the film (no edges found) in {rc.get('cropped', 0)}, passed through "
                  f"{rc['passthrough']}, not found in {rc['not_found']} (those evaluated unrectified)."
                  if rc["available"] else "Rectification was not available.", muted=True)
    for name in figures:
        page.heading(_TITLES[name]).image(f"{name}.png", _TITLES[name])
    head = ["group", "images", "patients", f"{r['metrics']['primary']['name']} [95% CI]", "mean AUROC", "accuracy"]
    sub = [row for col, g in r["subgroups"].items() for row in _group_rows(g, f"{col}: ")]
    if sub:
        page.heading("Subgroups").table(head, sub)
    if r["datasets"]:
        page.heading("Per source dataset").table(["source", *head[1:]], _group_rows(r["datasets"]))
    page.heading("Shortcut check: can the model's features tell the source dataset?")
    s = r["shortcut"]
    rows = _probe_rows(s)
    if rows:
        page.table(["scope", "images", "sources", "probe accuracy", "majority baseline", "balanced accuracy",
                    "chance"], rows)
        page.text("A multinomial logistic regression on the model's pooled last feature map, cross-validated by "
                  "patient. Accuracy well above the majority baseline — especially *within* one label — means the "
                  "features encode the hospital/source, so a score on data whose classes come from different "
                  "sources may reflect the source rather than the disease.", muted=True)
    else:
        page.text(s.get("skipped") or s.get("all", {}).get("skipped", "no source probe"), muted=True)
    page.text("Decision support only, not a diagnosis.", muted=True)
    return page
