"""The EDA report users look at before training: PNG plots plus ``index.html`` and ``report.md``.

It shows the label distribution per split, the label co-occurrence heatmap,
images and patients per split, view/sex/age breakdowns, labels by source
dataset (a classifier can learn the hospital instead of the disease: this
plot shows where that risk is), the class and positive weights of the train split, sample
images per label from the cache, licences and every warning from prepare.

matplotlib is imported inside :func:`write_report` only (workstation extra),
through its object API (no pyplot global state).
"""

from __future__ import annotations

import html
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import require
from .prepared import Prepared, open_prepared
from .splits import SPLITS

__all__ = ["figure", "heatmap", "SPLIT_COLORS", "write_report"]

log = logging.getLogger(__name__)

SPLIT_COLORS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}


def write_report(prepared, out=None) -> Path:
    """Write the report for a prepared folder (or :class:`Prepared`); returns the report folder."""
    mpl = require("matplotlib", "train", "the data report")
    mpl.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    p = prepared if isinstance(prepared, Prepared) else open_prepared(prepared)
    out = Path(out) if out else p.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for name, title, fn in _FIGURES:
        fig = fn(p)
        if fig is None:
            continue
        fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
        figures.append((name, title))
    (out / "index.html").write_text(_html(p, figures), encoding="utf-8")
    (out / "report.md").write_text(_markdown(p, figures), encoding="utf-8")
    log.info("report written to %s", out)
    return out


def figure(w: float, h: float, nrows: int = 1, ncols: int = 1):
    """A matplotlib figure (Agg, constrained layout) of ``w`` x ``h`` inches and its (nrows, ncols) axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


# --------------------------------------------------------------------------- figures


def _label_distribution(p: Prepared):
    labels = list(p.task.labels) + ["(no label)"]
    c = p.info["counts"]
    fig, ax = figure(7.5, 0.9 + 0.38 * len(labels), 1, 2)
    y = np.arange(len(labels))
    h = 0.8 / len(SPLITS)
    for k, s in enumerate(SPLITS):
        n = max(c[s]["images"], 1)
        counts = np.array([c[s]["labels"][lbl] for lbl in p.task.labels] + [c[s]["no_label"]])
        ax[0, 0].barh(y + (k - 1) * h, counts, h, color=SPLIT_COLORS[s], label=f"{s} ({c[s]['images']})")
        ax[0, 1].barh(y + (k - 1) * h, 100 * counts / n, h, color=SPLIT_COLORS[s])
    for a, title in zip(ax[0], ("images per label", "prevalence in split (%)")):
        a.set_yticks(y, labels)
        a.invert_yaxis()
        a.set_title(title)
    ax[0, 1].set_yticklabels([])
    fig.legend(loc="outside lower center", ncol=len(SPLITS), frameon=False)
    fig.suptitle(f"{p.task.name}: label distribution per split (stratified by patient)")
    return fig


def _cooccurrence(p: Prepared):
    y = np.concatenate([p.labels(s) for s in SPLITS])
    labels = p.task.labels
    co = y.T @ y
    diag = np.diag(co).copy()
    cond = np.divide(co, diag[:, None], out=np.zeros_like(co), where=diag[:, None] > 0)
    size = 1.6 + 0.45 * len(labels)
    fig, ax = figure(size + 1.2, size)
    a = ax[0, 0]
    vmax = max(0.5, float(np.max(cond - np.eye(len(labels)) * cond)))
    im = heatmap(a, cond, co, labels, labels, "magma_r", vmax, dark_above=0.35, rotation=60)
    a.set_title(f"label co-occurrence, all splits ({len(y)} images)\ncolour: P(column | row); numbers: images with both")
    fig.colorbar(im, ax=a, shrink=0.8, label="P(column label | row label)")
    return fig


def heatmap(a, colour, counts, xlabels, ylabels, cmap: str, vmax: float, *, dark_above: float, rotation: int):
    """``colour`` as an image with the non-zero ``counts`` written in each cell."""
    im = a.imshow(colour, cmap=cmap, vmin=0, vmax=vmax, aspect="auto")
    for i, j in zip(*np.nonzero(counts)):
        a.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
               color="white" if colour[i, j] > dark_above else "black")
    a.set_xticks(range(len(xlabels)), xlabels, rotation=rotation, ha="right")
    a.set_yticks(range(len(ylabels)), ylabels)
    return im


def _patients(p: Prepared):
    fig, ax = figure(9, 3.2, 1, 2)
    c = p.info["counts"]
    x = np.arange(len(SPLITS))
    imgs = [c[s]["images"] for s in SPLITS]
    pats = [c[s]["patients"] for s in SPLITS]
    ax[0, 0].bar(x - 0.2, imgs, 0.4, color=[SPLIT_COLORS[s] for s in SPLITS], label="images")
    ax[0, 0].bar(x + 0.2, pats, 0.4, color=[SPLIT_COLORS[s] for s in SPLITS], alpha=0.5, hatch="//",
                 label="patients")
    for xi, (i, q) in enumerate(zip(imgs, pats)):
        ax[0, 0].text(xi - 0.2, i, str(i), ha="center", va="bottom", fontsize=8)
        ax[0, 0].text(xi + 0.2, q, str(q), ha="center", va="bottom", fontsize=8)
    ax[0, 0].set_xticks(x, SPLITS)
    ax[0, 0].legend(frameon=False)
    ax[0, 0].set_title("images and patients per split (no patient in two splits)")
    per = [np.array(list(Counter(p.patients(s)).values())) for s in SPLITS]
    top = max([int(v.max()) for v in per if len(v)] + [1])
    bins = np.arange(1, min(top, 30) + 2) - 0.5
    for s, v in zip(SPLITS, per):
        if len(v):
            ax[0, 1].hist(np.minimum(v, bins[-1] - 0.5), bins=bins, histtype="step", lw=1.5,
                          color=SPLIT_COLORS[s], label=s)
    ax[0, 1].set_yscale("log")
    ax[0, 1].set_xlabel("images per patient" + (" (last bin: more)" if top > 30 else ""))
    ax[0, 1].set_ylabel("patients")
    ax[0, 1].legend(frameon=False)
    ax[0, 1].set_title("images per patient")
    return fig


def _demographics(p: Prepared):
    fig, ax = figure(11, 3.4, 1, 3)
    for a, col, title in ((ax[0, 0], "view", "view position"), (ax[0, 1], "sex", "sex")):
        cats = sorted({v or "unknown" for s in SPLITS for v in p.table(s)[col]})
        _stacked_share(a, p, col, cats)
        a.set_title(f"{title} (share of split)")
    a = ax[0, 2]
    any_age = False
    for s in SPLITS:
        ages = np.array([int(v) for v in p.table(s)["age"] if v != ""])
        if len(ages):
            any_age = True
            a.hist(ages, bins=np.arange(0, 101, 5), histtype="step", lw=1.5, density=True,
                   color=SPLIT_COLORS[s], label=f"{s} (n={len(ages)}, median {np.median(ages):.0f})")
    a.set_title("age (years)" if any_age else "age: not recorded in the sources")
    if any_age:
        a.legend(frameon=False, fontsize=7)
    return fig


def _stacked_share(a, p: Prepared, col: str, cats: list[str]):
    cmap = _palette(len(cats))
    left = np.zeros(len(SPLITS))
    for ci, cat in enumerate(cats):
        share = []
        for s in SPLITS:
            vals = [v or "unknown" for v in p.table(s)[col]]
            share.append(vals.count(cat) / max(len(vals), 1))
        a.barh(range(len(SPLITS)), share, left=left, color=cmap[ci], label=cat)
        left += share
    a.set_yticks(range(len(SPLITS)), SPLITS)
    a.invert_yaxis()
    a.set_xlim(0, 1)
    a.legend(frameon=False, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)


def _palette(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(n)]


def _by_dataset(p: Prepared):
    y = np.concatenate([p.labels(s) for s in SPLITS])
    ds = np.concatenate([p.table(s)["dataset"] for s in SPLITS])
    names = sorted(set(ds))
    if len(names) < 2:
        return None
    labels = list(p.task.labels) + ["(no label)"]
    m = np.zeros((len(names), len(labels)))
    for i, name in enumerate(names):
        sel = y[ds == name]
        m[i, :-1] = sel.sum(0)
        m[i, -1] = (sel.sum(1) == 0).sum()
    share = m / np.maximum(m.sum(0, keepdims=True), 1)
    fig, ax = figure(1.5 + 0.55 * len(labels) + 2, 1.2 + 0.4 * len(names))
    a = ax[0, 0]
    im = heatmap(a, share, m, labels, [n[:40] for n in names], "Blues", 1.0, dark_above=0.6, rotation=45)
    a.set_title("images per label by source dataset (colour: share of the label's images)\n"
                "a label that comes from one dataset can be learnt as 'which hospital' — check on held-out sources")
    fig.colorbar(im, ax=a, shrink=0.8)
    return fig


def _weights(p: Prepared):
    labels = p.task.labels
    fig, ax = figure(9, 0.8 + 0.3 * len(labels), 1, 2)
    y = np.arange(len(labels))
    ax[0, 0].barh(y, p.class_weights, color="#4C72B0")
    ax[0, 0].set_title("class_weights (train split)")
    ax[0, 1].barh(y, p.pos_weights, color="#C44E52")
    ax[0, 1].set_title("pos_weights = n_neg / n_pos (weighted BCE)")
    for a, vals in ((ax[0, 0], p.class_weights), (ax[0, 1], p.pos_weights)):
        a.set_yticks(y, labels)
        a.invert_yaxis()
        for yi, v in zip(y, vals):
            a.text(v, yi, f" {v:.2f}", va="center", fontsize=7)
    ax[0, 1].set_yticklabels([])
    fig.suptitle((p.info.get("weights_method", "") + " -- uncapped; a recipe's loss.weight_cap caps them").strip(),
                 fontsize=8)
    return fig


def _samples(p: Prepared, per_label: int = 6):
    split = "train" if "train" in p.splits else p.splits[0]
    y = p.labels(split)
    images = p.images(split)
    labels = list(p.task.labels)
    rows = [(lbl, np.flatnonzero(y[:, j] > 0)) for j, lbl in enumerate(labels)]
    rows.append(("(no label)", np.flatnonzero(y.sum(1) == 0)))
    rows = [(lbl, idx) for lbl, idx in rows if len(idx)]
    rng = np.random.default_rng(0)
    fig, ax = figure(1.3 * per_label + 1.5, 1.35 * len(rows), len(rows), per_label)
    for r, (lbl, idx) in enumerate(rows):
        pick = np.sort(rng.choice(idx, size=min(per_label, len(idx)), replace=False))
        pix = images.take(pick)
        for c in range(per_label):
            a = ax[r, c]
            a.set_xticks([])
            a.set_yticks([])
            for spine in a.spines.values():
                spine.set_visible(False)
            if c < len(pix):
                a.imshow(pix[c], cmap="gray", vmin=0, vmax=255)
        ax[r, 0].set_ylabel(lbl, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"cached inputs ({p.task.input.size} px, as the model sees them): random {split} images per label")
    return fig


_FIGURES = (
    ("label_distribution", "Label distribution per split", _label_distribution),
    ("cooccurrence", "Label co-occurrence", _cooccurrence),
    ("patients", "Images and patients per split", _patients),
    ("demographics", "View, sex and age", _demographics),
    ("labels_by_dataset", "Labels by source dataset", _by_dataset),
    ("class_weights", "Class and positive weights from the train split (training uses them as the "
                      "recipe's [loss] says: loss.weight_cap caps them, e.g. at 30 in the shipped nih14)", _weights),
    ("samples", "Sample images", _samples),
)


# --------------------------------------------------------------------------- pages


def _count_rows(p: Prepared) -> tuple[list[str], list[list[str]]]:
    c = p.info["counts"]
    head = ["", *SPLITS, "class weight", "pos weight"]
    rows = [["images", *(str(c[s]["images"]) for s in SPLITS), "", ""],
            ["patients", *(str(c[s]["patients"]) for s in SPLITS), "", ""]]
    for lbl, cw, pw in zip(p.task.labels, p.class_weights, p.pos_weights):
        rows.append([lbl, *(str(c[s]["labels"][lbl]) for s in SPLITS), f"{cw:.3f}", f"{pw:.3f}"])
    rows.append(["(no label)", *(str(c[s]["no_label"]) for s in SPLITS), "", ""])
    return head, rows


def _facts(p: Prepared) -> list[str]:
    info = p.info
    sp = info["split"]
    lic = info["licenses"]
    facts = [
        f"task <b>{info['task']}</b> ({p.task.activation}, {len(p.task.labels)} labels), input "
        f"{info['input']['size']} px, {info['cache']['shape'][0]} cached images",
        f"split: seed {sp['seed']}, fractions {sp['fractions']}, official test list: {sp['official_test']}, "
        f"patient sampling {sp['sample_fraction']}; {sp['groups']} patient groups; known duplicate groups "
        f"{sp.get('known_duplicate_groups_present', 0)}, exact duplicate groups found "
        f"{sp.get('exact_duplicate_groups_found', 0)} (each kept in one split); patients in two splits: "
        f"<b>{sp['patients_in_two_splits']}</b>",
        f"licences: most restrictive <b>{html.escape(str(lic['most_restrictive']))}</b> "
        f"({lic['most_restrictive_level']}); {lic['non_permissive_images']} non-permissive images; "
        f"permissive only: {info['permissive_only']}",
        f"data_sha256 <code>{info['data_sha256']}</code>, cxr-edge {info['toolkit_version']}, created {info['created']}",
    ]
    for kind, d in info["warnings"].items():
        by = d.get("by")
        facts.append(f"warning — {kind.replace('_', ' ')}: {d['count']}"
                     + (f" ({html.escape(', '.join(f'{k}: {v}' for k, v in list(by.items())[:8]))})" if by else ""))
    return facts


def _html(p: Prepared, figures) -> str:
    head, rows = _count_rows(p)
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in rows) + "</table>"
    lic_rows = "".join(f"<tr><td>{html.escape(k or '(none)')}</td><td>{v}</td></tr>"
                       for k, v in p.info["licenses"]["counts"].items())
    figs = "".join(f'<h2>{html.escape(t)}</h2><img src="{n}.png" alt="{html.escape(t)}">' for n, t in figures)
    facts = "".join(f"<li>{f}</li>" for f in _facts(p))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>cxr-edge data report: {p.task.name}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%;border:1px solid #eee;margin:0.5em 0}}
code{{font-size:85%}}</style></head><body>
<h1>Data report: {html.escape(p.task.name)} <small>({html.escape(str(p.path))})</small></h1>
<ul>{facts}</ul><h2>Counts per split</h2>{table}{figs}
<h2>Licences</h2><table><tr><th>licence</th><th>images</th></tr>{lic_rows}</table>
<p>Rows left out of the splits, with reasons: <code>excluded.csv</code> in the prepared folder.</p>
</body></html>
"""


def _markdown(p: Prepared, figures) -> str:
    head, rows = _count_rows(p)
    lines = [f"# Data report: {p.task.name}", "", *(f"- {f}" for f in _facts(p)), "", "## Counts per split", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    for name, title in figures:
        lines += ["", f"## {title}", "", f"![{title}]({name}.png)"]
    lines += ["", "## Licences", "", "| licence | images |", "|---|---|"]
    lines += [f"| {k or '(none)'} | {v} |" for k, v in p.info["licenses"]["counts"].items()]
    return "\n".join(lines).replace("<b>", "**").replace("</b>", "**").replace("<code>", "`").replace("</code>", "`") + "\n"
