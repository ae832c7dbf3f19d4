#!/usr/bin/env python3
"""Write a pack's MODEL_CARD.md from what the build measured: no number in it is typed by hand.

    .venv/bin/python release/model_card.py build/default-pack            # -> build/default-pack/pack/MODEL_CARD.md

Reads, in the build folder (release/build_default_pack.py writes them):

* ``pack/manifest.json``: each model's metadata (export check float vs int8 on val, PTQ vs QAT,
  calibration set, temperature, thresholds with their val sensitivity/specificity, training record);
* ``eval/<slot>-int8.json`` / ``eval/<slot>-float.json``: ``cxr-edge evaluate --json`` of the int8
  pack (with simulated phone photos) and of the Keras float run on the test split;
* ``eval/staged_vs_head_only.json``: ``benchmarks/staged_vs_head_only.py``;
* ``build.json``: the wall time of every step;
* ``prepared/<slot>.json``: each model's ``prepared.json`` (split counts, sources, licences).

``--pack`` reads the manifest from another pack folder: the test suite re-renders the bundled card from
the committed ``release/default-pack/`` and ``cxr_edge/packs/default`` and checks it is unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SLOTS = ("gate", "cxr4", "nih14")


# --------------------------------------------------------------------------- formatting


def num(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def ci(entry: dict | None, digits: int = 3) -> str:
    """'0.912 (0.880-0.941)' from a {value, ci} entry."""
    if not entry or entry.get("value") is None:
        return "n/a"
    lo_hi = entry.get("ci") or [None, None]
    if lo_hi[0] is None:
        return num(entry["value"], digits)
    return f"{entry['value']:.{digits}f} ({lo_hi[0]:.{digits}f}–{lo_hi[1]:.{digits}f})"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


# --------------------------------------------------------------------------- inputs


class Build:
    """What the card is made from: a build folder, or the committed copy of one (release/default-pack/)."""

    def __init__(self, folder: Path, pack: Path | None = None):
        self.dir = folder
        self.manifest = json.loads(((pack or folder / "pack") / "manifest.json").read_text())
        self.models = self.manifest["models"]
        self.eval = {}
        for slot in self.models:
            for kind in ("int8", "float"):
                f = folder / "eval" / f"{slot}-{kind}.json"
                if f.is_file():
                    self.eval[slot, kind] = json.loads(f.read_text())
        f = folder / "eval" / "staged_vs_head_only.json"
        self.staged = json.loads(f.read_text()) if f.is_file() else None
        f = folder / "eval" / "linear_probe.json"
        self.probe = json.loads(f.read_text()) if f.is_file() else None
        #: `cxr-edge evaluate PACK --real-photos FOLDER --json` (issue 15 item 7), written by the build's
        #: real-photos step when the shared real-photo set is there; rendered by real_photos()
        f = folder / "eval" / "real_photos.json"
        self.real_photos = json.loads(f.read_text()) if f.is_file() else None
        f = folder / "build.json"
        self.build = json.loads(f.read_text()) if f.is_file() else {"steps": {}}
        self.prepared = {}
        for slot, entry in self.models.items():
            copy = folder / "prepared" / f"{slot}.json"
            path = Path(entry["metadata"]["training"].get("prepared") or "") / "prepared.json"
            for f in (copy, path):
                if f.is_file():
                    self.prepared[slot] = json.loads(f.read_text())
                    break

    def meta(self, slot: str) -> dict:
        return self.models[slot]["metadata"]


# --------------------------------------------------------------------------- sections


def header(b: Build) -> str:
    m = b.manifest
    total = sum(e["bytes"] for e in b.models.values())
    rows = []
    for slot in SLOTS:
        if slot not in b.models:
            continue
        md = b.meta(slot)
        q = md["quantization"]
        rows.append([slot, f"`{md['task']}`", ", ".join(md["labels"]), f"{md['input']['size']} px grey",
                     mb(b.models[slot]["bytes"]),
                     f"int8 ({q.get('source', '?')}{', bias-corrected' if q.get('bias_correction') else ''})",
                     num(md["temperature"], 2),
                     ", ".join(sorted(md["thresholds"])) + f" (default {md['default_profile']})"])
    return f"""# Model card: {m['name']} (cxr-edge {m['toolkit_version']})

**These models are demonstrations of the cxr-edge toolkit, not clinical devices.** They were trained on a
few thousand public images on a 2-core workstation. Their results are decision support at most: a
clinician must read every film. They are not cleared or approved for any clinical use.

Pack created {m['created']}; {COUNTS.get(len(b.models), len(b.models))} int8 MobileNetV2 (alpha 1.0) model{'s' if len(b.models) != 1 else ''}, {mb(total)} in all.

{table(["slot", "task", "labels", "input", "size", "weights", "temperature", "threshold profiles"], rows)}

Licence of the pack: **{pack_licence(b)}** (the most restrictive licence among the training images decides;
see [Training data](#training-data)).
"""


COUNTS = {1: "one", 2: "two", 3: "three"}


def pack_licence(b: Build) -> str:
    worst = [(b.meta(s)["training"].get("license") or {}) for s in b.models]
    if any("non-commercial" in (w.get("most_restrictive_level") or "") for w in worst):
        return "non-commercial use only (CC BY-NC-SA images in the training data)"
    if any("share-alike" in (w.get("most_restrictive_level") or "") for w in worst):
        return "share-alike conditions apply (copyleft images in the training data)"
    return "permissive (every training image allows commercial use)"


def intended_use(b: Build) -> str:
    permissive = pack_licence(b).startswith("permissive")
    commercial = ("* Commercial use is allowed as far as the training data goes: every training image's licence "
                  + ("permits it. The 'cxr4' slot holds a 3-class model (COVID-19 / Normal / Pneumonia): no "
                     "permissively licensed tuberculosis images exist in the data, so this pack says nothing "
                     "about tuberculosis." if "cxr4" in b.models else
                     "permits it. This pack has **no COVID-19 / Normal / Pneumonia model**: the one this build "
                     "trained was refused by the int8 check (see [Trained but not shipped](#trained-but-not-shipped)); "
                     "it answers whether an image is a chest X-ray and the NIH findings.")
                  if permissive else
                  "* Commercial use of this pack (see the licence above); build the permissive variant for that\n"
                  "  (`release/build_default_pack.py --variant permissive`, trained only on permissively licensed "
                  "images;\n  the published one, `release/permissive-pack/`, lists in its card which of its models "
                  "passed their checks).")
    task = b.models.get("cxr4", {}).get("task")
    classes = {"cxr4": "a 4-class model (COVID-19 / Normal / Pneumonia /\n  Tuberculosis) and ",
               "cxr3": "a 3-class model (COVID-19 / Normal / Pneumonia) and\n  "}.get(task, "")
    return f"""## Intended use

* Trying out and demonstrating the cxr-edge pipeline end to end: a photographed or digital frontal chest
  X-ray goes through the gate (is it a chest X-ray?), then {classes}a 14-label NIH ChestX-ray14 model, on a phone, a Raspberry Pi, a Jetson or a laptop,
  offline.
* A starting point for researchers who retrain the recipes in `train/` on their own, larger data, and a
  reference for what `cxr-edge export --int8` checks.

## Out of scope

* Diagnosis, triage or screening of real patients, alone or as a second reader. No prospective or
  external validation was done; the test sets below come from the same sources as the training data.
* Children (the 4-class Normal/Pneumonia images include paediatric films from one hospital; the other
  classes do not), lateral views, CT, and anything the gate was not trained on.
{commercial}
* Comparing these numbers with published CXR models: the data here is small and not representative
  of any population.
"""


def training_data(b: Build) -> str:
    record = f"release/{b.build.get('variant', 'default')}-pack/training_images.csv"
    out = ["## Training data", "",
           "All images come from `../shared/data` (public CXR and non-CXR images, each with its licence; see "
           "its README). Splits are patient-level (no patient in two splits) and stratified; the exact list of "
           f"images per model and split, with the sha256 of every file, is `{record}` in the repository, and "
           "each model's metadata records the `data_sha256` of its prepared data.", ""]
    rows = []
    for slot in SLOTS:
        info = b.prepared.get(slot)
        if not info:
            continue
        c = info["counts"]
        lic = info["licenses"]
        rows.append([slot, *(f"{c[s]['images']} / {c[s]['patients']}" for s in ("train", "val", "test")),
                     f"{lic['most_restrictive']} ({lic['most_restrictive_level']})",
                     lic["non_permissive_images"]])
    out.append(table(["model", "train images / patients", "val", "test", "most restrictive licence",
                      "non-permissive images"], rows))
    for slot in SLOTS:
        info = b.prepared.get(slot)
        if not info:
            continue
        out += ["", f"**{slot}** — labels in the train split: "
                + ", ".join(f"{k} {v}" for k, v in info["counts"]["train"]["labels"].items())
                + f" (images with no positive label: {info['counts']['train']['no_label']}). "
                + "Licences: " + "; ".join(f"{k or 'none recorded'} ({v})" for k, v in
                                           list(info["licenses"]["counts"].items())[:6])
                + ("; …" if len(info["licenses"]["counts"]) > 6 else "") + "."]
        excluded = {k: v.get("count") for k, v in info.get("warnings", {}).items() if v.get("count")}
        if excluded:
            out.append(f"Left out or flagged while preparing: "
                       + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in excluded.items()) + ".")
    sources = ("**The 4-class data's classes come from different hospitals**: COVID-19 from two COVID "
               "collections (MHH, ieee8023), Normal and Pneumonia mostly from NIH adults and Kermany children, "
               "Tuberculosis only from TBX11K. A model can score well by recognising the source rather than the "
               "disease; the shortcut check below measures how well the source can be read off the features. "
               if "cxr4" in b.models else "")
    out += ["", sources + "**The data is small**: a few hundred test images per model, so every metric carries a "
            "wide confidence interval."]
    return "\n".join(out) + "\n"


def primary_entry(metrics: dict) -> dict:
    return metrics.get(metrics["primary"]["name"]) or metrics["primary"]


def test_metrics(b: Build) -> str:
    out = ["## Test results (float and int8)", "",
           "Test split of each model's own prepared data, never seen in training, calibration or the export "
           "check. 95% confidence intervals from 1,000 bootstrap resamples of patients. Float = the Keras "
           "model (`cxr-edge evaluate runs/<task>`); int8 = the pack through the device path "
           "(`cxr-edge evaluate PACK`), with the pack's temperature and default threshold profile.", ""]
    rows = []
    for slot in SLOTS:
        for kind in ("float", "int8"):
            ev = b.eval.get((slot, kind))
            if not ev:
                continue
            m = ev["metrics"]
            rows.append([slot, kind, m["primary"]["name"], ci(primary_entry(m)), ci(m.get("accuracy")),
                         ci(m.get("macro_f1")) if "macro_f1" in m else "", ev["data"]["n_images"]])
    out.append(table(["model", "weights", "primary metric", "value (95% CI)", "accuracy", "macro-F1", "n"], rows))
    out += ["", per_label(b)]
    return "\n".join(out) + "\n"


def per_label(b: Build) -> str:
    out = []
    for slot in SLOTS:
        ev = b.eval.get((slot, "int8"))
        if not ev:
            continue
        m, fl = ev["metrics"], (b.eval.get((slot, "float")) or {}).get("metrics", {})
        rows = []
        for lbl, e in m["per_label"].items():
            fe = (fl.get("per_label") or {}).get(lbl, {})
            row = [lbl, e.get("n_positive"), ci({"value": fe.get("auroc"), "ci": fe.get("auroc_ci")}),
                   ci({"value": e.get("auroc"), "ci": e.get("auroc_ci")})]
            if m["activation"] == "sigmoid":
                row += [num(e.get("threshold")), num(e.get("sensitivity")), num(e.get("specificity")),
                        num(e.get("f1"))]
            elif e.get("at_threshold"):   # softmax: the class flagged one-vs-rest at its threshold
                a = e["at_threshold"]
                row += [num(e.get("threshold")), num(a.get("sensitivity")), num(a.get("specificity")),
                        num(e.get("f1"))]
            else:
                row += ["argmax", num(e.get("recall")), "", num(e.get("f1"))]
            rows.append(row)
        note = ("; sensitivity and specificity of flagging the class at its threshold (one-vs-rest), F1 of the "
                "argmax answer" if m["activation"] == "softmax" else "")
        out += [f"**{slot}** per label (test; thresholds of the default profile{note}):", "",
                table(["label", "positives", "AUROC float", "AUROC int8", "threshold", "sensitivity",
                       "specificity", "F1"], rows), ""]
        if "confusion_matrix" in m:
            cm = m["confusion_matrix"]
            out += [f"{slot} int8 confusion matrix (rows true, columns predicted):", "",
                    table(["", *cm["labels"]], [[lbl, *row] for lbl, row in zip(cm["labels"], cm["counts"])]), ""]
    return "\n".join(out)


def check_verdict(cand: dict) -> str:
    """passed / FAILED, naming a drop past its tolerance that passed as chance (``check.significance``)."""
    chance = [c for c in cand.get("checks") or [] if c.get("p_value") is not None and c["passed"]]
    verdict = "passed" if cand.get("passed") else "FAILED"
    if chance:
        verdict += " (" + "; ".join(_chance_note(c) for c in chance) + ")"
    return verdict


def _chance_note(c: dict) -> str:
    if c["metric"] == "agreement":
        return (f"agreement {c['value']:.4f} below its {c['allowed_min']:.4f}, within chance: int8 changed "
                f"{100 * c['int8_changes']:.1f}% of decisions, a one-pixel shift {100 * c['shift_changes']:.1f}%, "
                f"p {c['p_value']:.2f} over {c['films']} films")
    return (f"{c['metric']} drop {c['drop']:.4f} past its {c['allowed']:.4f}, within chance: p {c['p_value']:.2f} "
            f"over {c['films']} films")


def export_check(b: Build) -> str:
    rows, chance_checks = [], []
    for slot in SLOTS:
        if slot not in b.models:
            continue
        mt = b.meta(slot)["metrics"]
        for name, cand in (mt.get("candidates") or {}).items():
            chance_checks += [c for c in cand.get("checks") or [] if c.get("p_value") is not None and c["passed"]]
            deltas = ", ".join(f"{k} {v:+.4f}" for k, v in (cand.get("delta") or {}).items()
                               if isinstance(v, (int, float)))
            rows.append([slot, name.upper(), "kept" if name == b.meta(slot)["quantization"].get("source") else "",
                         deltas, num(cand.get("agreement"), 4), num(cand.get("mean_abs_diff"), 4),
                         mb(cand["bytes"]), check_verdict(cand)])
    agreement_chance = any(c["metric"] == "agreement" for c in chance_checks)
    chance = ((", except a drop (or an agreement below its bar) that a permutation test over the check films "
               "cannot tell from chance" if agreement_chance else
               ", except a drop that a paired permutation test over the check films cannot tell from chance")
              + " (p >= 0.05), and never one past the policy's limit (`check.significance`, see "
              "`cxr_edge/resources/export/README.md`)" if chance_checks else "")
    out = ["## int8 against float (the export check)", "",
           "`cxr-edge export --int8` converted each model twice, by post-training quantization (PTQ, with the "
           "300-image calibration set in `cxr_edge/resources/calibration_data/`) and from the quantization-aware fine-tuned model "
           "(QAT), compared both with the float model on the validation split through the device path, and "
           f"kept the one closer to float. Over tolerance (`cxr_edge/resources/export/<task>.json`) nothing would have shipped{chance}.", ""]
    out.append(table(["model", "int8 from", "", "Δ int8 − float (val)", "decision agreement", "mean |Δp|",
                      "size", "check"], rows))
    corrected = [(slot, b.meta(slot)["quantization"]["bias_correction"]) for slot in SLOTS
                 if slot in b.models and b.meta(slot)["quantization"].get("bias_correction")]
    if corrected:
        out += ["", "Bias correction: before PTQ, the mean shift that rounding the weights to int8 adds was measured "
                "on calibration images and taken out of the BatchNorm means (`quantization.bias_correction`, see "
                "`cxr_edge/resources/export/README.md`); the check compares with the uncorrected float model. "
                + "; ".join(f"{slot}: {r['layers']} layers on {r['images']} images" for slot, r in corrected) + "."]
    views = []
    for slot in SLOTS:
        if slot in b.models:
            mt, v = b.meta(slot)["metrics"], b.meta(slot)["metrics"].get("check_views")
            views.append(f"{slot}: {v['films']} films x {len(v['shifts'])} views, as they are and moved by one "
                         f"pixel ({mt['n']} paired decisions)" if v else f"{slot}: {mt.get('n', '?')} images as they are")
    out += ["", "Checked on: " + "; ".join(views) + "."]
    cal = []
    for slot in SLOTS:
        if slot in b.models:
            c = b.meta(slot)["calibration"]
            cal.append(f"{slot}: " + (f"calibration set sha256 `{c['sha256'][:16]}…` ({c['n']} images)"
                                      if c.get("used") else c.get("note", "no calibration set used")))
    out += ["", "Calibration data: " + "; ".join(cal) + "."]
    return "\n".join(out) + "\n"


def temperature_kept(meta: dict) -> bool:
    """Calibrated (it has profiles) but without a fitted temperature: calibrate kept the model's own."""
    posthoc = (meta.get("extras") or {}).get("posthoc_calibration")
    return bool(meta["thresholds"]) and posthoc is not None and "temperature" not in posthoc


def gate_rule(b: Build) -> str:
    """How the gate's thresholds were chosen (read from its calibration record: rule, photos), closing the
    sentence :func:`calibration` opens about the classifiers' profiles."""
    rec = None
    if "gate" in b.models:
        rec = ((b.meta("gate").get("extras") or {}).get("posthoc_calibration") or {}).get("profiles", {}).get("balanced")
    photos = (rec or {}).get("data", {}).get("photos")
    if not photos:   # the gate at Youden's J on the digital val images (packs built before 2026-12-07)
        return ("; the gate keeps its Youden threshold there: a gate held at a sensitivity target takes the highest "
                "threshold that reaches it, which rejects photographed films).")
    return (f"). The gate's threshold (both profiles) is chosen by `{rec.get('rule', '?')}` on its validation images "
            f"each shown twice, digital and as a simulated {photos['severity']} phone photo straightened as "
            "`predict` straightens it (`cxr-edge calibrate --photos`): the highest threshold that still accepts that "
            "share of the chest X-rays and their photos. The 22 val non-CXRs alone cannot place it: every rule finds "
            "them perfectly separated and puts the threshold anywhere in a wide gap.")


def calibration(b: Build) -> str:
    out = ["## Calibration and operating thresholds", "",
           "`cxr-edge calibrate` fitted a temperature per model -- for the sigmoid models (gate, nih14) with a "
           "logit offset per label, which moves each label's probabilities to its base rate: nih14 trained with "
           "positive weights up to 30 over-states every finding, which one temperature cannot undo -- and chose "
           "per-label thresholds on the "
           "validation split: profile `balanced` (the default) by Youden's J (sensitivity + specificity − 1), "
           "and `screening` by sensitivity ≥ 0.90 for the classifiers (`cxr-edge predict --profile screening`"
           + gate_rule(b) + " Max-F1 was measured and not used: it "
           "follows the majority class, so it set the gate's threshold near 0 (325 CXRs against 22 non-CXRs in "
           "val) and fitted rare NIH labels to their one or two val positives."
           + (" The cxr4 answer is the argmax; its "
              "thresholds flag classes one-vs-rest beside it (`predict` reports them as `positive`: under "
              "`screening` Tuberculosis is flagged at its sensitivity-0.90 threshold even when another class is "
              "the most likely)." if "cxr4" in b.models else "")
           + "".join(f" The {slot} model's temperature was not fitted: it gets every image of its validation split "
                     "right, so the fit would have run to its bound and shown every probability as 0 or 1; it keeps "
                     f"T = {b.meta(slot)['temperature']:g} (`cxr-edge calibrate` warns when it does this)."
                     for slot in SLOTS if slot in b.models and temperature_kept(b.meta(slot)))
           + " ECE below is on the test split (15 bins).", ""]
    rows = []
    for slot in SLOTS:
        ev = b.eval.get((slot, "int8"))
        if ev:
            c = ev["calibration"]
            offsets = list((c.get("bias") or {}).values())
            rows.append([slot, num(c["temperature"], 3),
                         f"{min(offsets):+.2f} to {max(offsets):+.2f}" if offsets else "none",
                         num(c["ece_raw"], 4), num(c["ece"], 4)])
    out.append(table(["model", "temperature", "label offsets", "ECE raw outputs", "ECE calibrated"], rows))
    stuck = []
    for slot in SLOTS:
        ev = b.eval.get((slot, "int8"))
        if not ev or ev["metrics"]["activation"] != "sigmoid":
            continue
        for lbl, e in ev["metrics"]["per_label"].items():
            if (e.get("auroc") or 0) > 0.6 and (e.get("f1") or 0) == 0:
                stuck.append(f"{slot}/{lbl}")
    out += ["", "Labels with AUROC above 0.6 but F1 = 0 at the chosen threshold on test: "
            + (", ".join(stuck) if stuck else "none") + "."]
    return "\n".join(out) + "\n"


def photos(b: Build) -> str:
    evals = [ev for ev in (b.eval.get((slot, "int8")) for slot in SLOTS) if ev and "photos" in ev]
    side = {ev["photos"].get("photo_long_side", 1280) for ev in evals} or {1280}
    out = ["## Phone photos against digital films", "",
           ("Real photos cannot be paired with their digital films, so to measure what a photo costs " if b.real_photos
            else "No real phone photographs of films exist in the data, so ")
           + "the test films were turned into simulated "
           "photos (`cxr_edge.tools.photosim`, severity moderate: the film on a lightbox or desk with perspective, "
           f"glare, moiré, blur, JPEG and a colour cast, {' / '.join(f'{n}' for n in sorted(side))} px) and run "
           "through `predict`'s photo path: raw = the whole photo as the model input, rectified = the film found, "
           "straightened and checked first.", ""]
    if b.real_photos and max(side) <= 1600 and any(ev["metrics"]["task"] == "cxr4" for ev in evals):
        out[-2] += (" The simulator's sensor noise and JPEG blocks are per pixel of its photo, so at this size they "
                    "stand for a small camera's: at the model input these photos carry more noise than the real "
                    "phone photos below, and the 4-class model's rectified figure overstates what noise costs "
                    "(benchmarks/RESULTS.md, \"The simulator's noise at the model input, against real photos\").")
    rows = []
    for slot in SLOTS:
        ev = b.eval.get((slot, "int8"))
        if not ev or "photos" not in ev:
            continue
        m = ev["metrics"]
        name = m["primary"]["name"]
        row = [slot, name, ci(primary_entry(m))]
        for v in ("photo", "photo_rectified"):
            var = ev["photos"]["variants"].get(v)
            row += [ci(primary_entry(var["metrics"])) if var else "n/a",
                    ci(var["gap_vs_digital"]) if var else "n/a"]
        r = ev["photos"].get("rectify", {})
        row.append(f"{r.get('found', 0)}/{ev['data']['n_images']}")
        rows.append(row)
    out.append(table(["model", "metric", "digital", "raw photo", "gap", "rectified photo", "gap",
                      "films found"], rows))
    gate = b.eval.get(("gate", "int8"))
    if gate and "photos" in gate:
        acc = []
        for v, label in (("digital", "digital"), ("photo", "raw photos"), ("photo_rectified", "rectified photos")):
            m = gate["metrics"] if v == "digital" else gate["photos"]["variants"][v]["metrics"]
            e = m["per_label"]["chest_xray"]
            acc.append(f"{label}: accepts {num(e.get('sensitivity'))} of CXRs, rejects {num(e.get('specificity'))} "
                       "of non-CXRs")
        out += ["", "Gate at its default threshold — " + "; ".join(acc) + "."]
    return "\n".join(out) + "\n"


def subgroups(b: Build) -> str:
    out = ["## Subgroups (int8, test)", "",
           "Where the data records them. Groups under 10 images are not scored. For the gate only CXRs carry "
           "sex/view/age, so its subgroups have accuracy but no AUROC. For cxr4, sex, view and age are recorded "
           "by some source datasets only, so a subgroup lacks whole classes and its macro-F1 (an average over "
           "all four classes) reads low next to its accuracy.", ""]
    for slot in SLOTS:
        ev = b.eval.get((slot, "int8"))
        if not ev:
            continue
        rows = []
        for kind, groups in ev["subgroups"].items():
            for g, r in groups.items():
                if r.get("too_few"):
                    rows.append([kind, g, r["n"], "too few", "", ""])
                else:
                    rows.append([kind, g, r["n"], ci(r.get("primary")), ci(r.get("accuracy")), num(r.get("ece"), 3)])
        if rows:
            out += [f"**{slot}** ({ev['metrics']['primary']['name']}):", "",
                    table(["by", "group", "n", "primary (95% CI)", "accuracy", "ECE"], rows), ""]
    return "\n".join(out)


def sources(b: Build) -> str:
    out = ["## Per source dataset, and the shortcut check", "",
           "Results per source dataset of the test images, and how well a cross-validated linear probe tells "
           "the source dataset from the model's own pooled features (chance = 1 / number of sources). A probe "
           "far above chance means the features carry the source, which the 4-class model can use instead of "
           "the disease.", ""]
    rows, few = [], []
    for slot in SLOTS:
        ev = b.eval.get((slot, "int8"))
        if not ev:
            continue
        for ds, r in ev.get("datasets", {}).items():
            if r.get("too_few"):
                few.append(f"{slot}/{ds} ({r['n']})")
            else:  # a macro-F1 inside one source averages over classes it does not have: only AUROC is shown
                auroc = ci(r.get("primary")) if ev["metrics"]["primary"]["name"] == "mean_auroc" else ""
                rows.append([slot, ds, r["n"], ci(r.get("accuracy")), auroc])
    out.append(table(["model", "source dataset", "n", "accuracy (95% CI)", "mean AUROC (95% CI)"], rows))
    if few:
        out += ["", "Not scored (under 10 test images): " + ", ".join(few) + "."]
    probe = []
    for slot in SLOTS:
        ev = b.eval.get((slot, "int8"))
        sc = (ev or {}).get("shortcut", {}).get("all")
        if sc and sc.get("balanced_accuracy") is not None:
            probe.append([slot, len(sc["datasets"]), num(sc["balanced_accuracy"]), num(sc["chance_balanced"]),
                          num(sc["accuracy"]), num(sc["majority_baseline"])])
    out += ["", table(["model", "sources", "probe balanced accuracy", "chance", "probe accuracy",
                       "majority baseline"], probe)]
    return "\n".join(out) + "\n"


def staged(b: Build) -> str:
    if not b.staged:
        return ""
    out = ["## The staged recipe against the frozen-backbone baseline", "",
           "`benchmarks/staged_vs_head_only.py`: the best model after stage 1 (frozen ImageNet backbone, new head "
           "only: what the source projects shipped) against the final float model (staged fine-tuning), same "
           "run and split; photo = every image in the training augmentation's rectified-photo look "
           "(`simulate_rectified`: glare, blur, noise, contrast on the already straightened film; 500 bootstrap "
           "resamples). It is milder than a full simulated photo found and straightened by `predict` (the "
           "photo table above): the photo simulator compresses the film's contrast (on a desk to a peak of "
           "about 67/255) far beyond what training shows, and rectification does not undo that.",
           ""]
    rows = []
    for run in b.staged:
        for key, r in run["results"].items():
            split, kind = key.split("/")
            a, s_ = r["head_only"], r["staged"]
            rows.append([run["task"], split, kind, r["n"], run["metric"],
                         ci({"value": a["primary"], "ci": a["ci"]}), ci({"value": s_["primary"], "ci": s_["ci"]}),
                         f"{s_['primary'] - a['primary']:+.3f}"])
    out.append(table(["model", "split", "images", "n", "metric", "head only", "staged", "difference"], rows))
    return "\n".join(out) + "\n"


def probe(b: Build) -> str:
    """The bar a fine-tuned model must clear: a linear probe on frozen ImageNet features, same splits, same run."""
    if not b.probe:
        return ""
    r = b.probe
    pr = r["probe"]
    out = ["## Against a linear probe on frozen ImageNet features", "",
           f"`benchmarks/linear_probe.py`: an L2 logistic regression (balanced classes, C = {pr['C']} chosen by "
           f"{pr['cv_folds']}-fold patient-grouped cross-validation on train) on the pooled features of the frozen "
           f"{pr['backbone']}, fitted on the {r['task']} train split's digital films, against this pack's int8 "
           "model (device path) and the Keras float model, on the digital films of val and test; 95% CIs from "
           f"patient bootstrap, and for the difference a paired bootstrap (the same resamples for both). A "
           "fine-tuned model that does not clear this bar is not earning its training.", ""]
    rows = []
    for split, row in r["splits"].items():
        p = row["probe"]
        rows.append([split, row["n"], "linear probe", ci({"value": p["primary"], "ci": p["ci"]}),
                     ci({"value": p["accuracy"], "ci": p["accuracy_ci"]}), ""])
        for _, m in row["models"].items():
            d = m["minus_probe"]
            lo_hi = d["ci"] or [None, None]
            diff = f"{d['value']:+.3f}" + (f" ({lo_hi[0]:+.3f} to {lo_hi[1]:+.3f})" if lo_hi[0] is not None else "")
            rows.append([split, row["n"], "int8 pack" if m["kind"] == "pack" else "float (Keras)",
                         ci({"value": m["primary"], "ci": m["ci"]}), ci({"value": m["accuracy"],
                                                                          "ci": m["accuracy_ci"]}), diff])
    out.append(table(["split", "n", "model", r["metric"], "accuracy", f"{r['metric']} − probe"], rows))
    return "\n".join(out) + "\n"


def real_photos(b: Build) -> str:
    """The "Real photos" section, rendered by the evaluator's own ``card_section`` from ``eval/real_photos.json``
    (``cxr-edge evaluate PACK --real-photos FOLDER --json``, issue 15 item 7); empty when the build had no
    real-photo set to measure."""
    if not b.real_photos:
        return ""
    from cxr_edge.tools.evaluate_photos import card_section

    return card_section(b.real_photos) + "\n"


def failure_modes(b: Build) -> str:
    if b.real_photos:
        s = b.real_photos["summary"]
        photos = (f"Measured on {s['n']} real photos of films and monitors ({s['answered']} answered, section above) "
                  "and on simulated ones; the real-photo set is small and its photos are all labelled "
                  "COVID-19 or blank, so their hit rate says little about accuracy. A photo with no film edges in "
                  "view is answered as cropped to the film, with a warning; one that fails a quality check is "
                  "answered with warnings (`--on-poor-photo skip` skips it).")
    else:
        photos = ("Photos were only simulated. Real glare, moiré, curled films and monitors may be worse. A photo "
                  "where no film is found, or that fails a quality check, gets a warning or an error rather than "
                  "a silent answer.")
    return """## Known failure modes

* **Source shortcuts (4-class).** Each class comes mostly from its own hospitals, so a high 4-class score
  says the pipeline works, not that the model recognises COVID-19 or tuberculosis; see the probe above.
  On films from a new hospital it may fail silently.
* **Phone photos.** Without rectification the models lose most of their accuracy (table above).
  {photos}
* **The gate** has seen few kinds of non-CXR images (about 220: CT, MRI, photos, documents,
  screenshots) and no other radiographs (hands, knees, spines): such images may be accepted. The OOD guard
  flags some of them as "unusual for this model".
* **Rare NIH labels** (Hernia, Pneumothorax, Emphysema, Fibrosis) have a handful of test positives: their
  AUROC intervals are very wide and their thresholds unstable.
* **Calibration** was fitted on the validation split of the same sources; probabilities on other data may
  be over- or under-confident.
* **Heatmaps** (class activation maps) show where the model's evidence is, not where the disease is; a
  hot spot on a marker or the film edge is a shortcut, not a finding.
""".format(photos=photos)


def reproduce(b: Build) -> str:
    steps = b.build.get("steps", {})
    def secs(step: dict) -> float:  # train/QAT: their epochs across interrupted attempts, when recorded
        return max(step["seconds"], step.get("epoch_seconds", 0.0))

    total = sum(secs(s) for s in steps.values())
    slowest = sorted(steps.items(), key=lambda kv: -secs(kv[1]))[:6]
    command = " ".join(b.build.get("command") or ["release/build_default_pack.py", "--install"])
    reused = b.build.get("reused") or {}
    taken = "".join(
        f" The {slot} model was not trained by this build: it is the bundled default pack's (`--reuse {slot}`; "
        f"sha256 `{r['sha256'][:12]}`, recipe `{r['recipe']}`), with the "
        + ("float evaluation and image list of that pack's record (`{}/`) and its int8 evaluation run again on the "
           "file in this pack".format(r["record"]) if r.get("evaluated_again") else
           f"evaluations and image list of that pack's record (`{r['record']}/`)")
        + f"; making it took {r['built_seconds'] / 60:.0f} minutes of step time there."
        for slot, r in sorted(reused.items()))
    spent = []   # steps that made a model this pack does not hold (refused by its int8 check)
    for report in refused_reports(b).values():
        run = Path(report.get("run") or "").name
        spent.append((run, sum(secs(v) for k, v in steps.items() if k.startswith(f"{run}-"))))
    taken += "".join(f" {t / 60:.0f} minutes of the step time went to `{run}`, which the int8 check refused (see "
                     "[Trained but not shipped](#trained-but-not-shipped))." for run, t in spent if t)
    return f"""## How every number here was made

```
.venv/bin/python {command}     # train, QAT, export, OOD, orientation, calibrate, evaluate, this card
```

One command, resumable; on this project's 2-core workstation it took **{total / 60:.0f} minutes** of step time
(slowest steps: {", ".join(f"{k} {secs(v) / 60:.1f} min" for k, v in slowest)}).{taken} The per-step commands
and times are in the build folder's `build.json`; the JSON every table was rendered from is in its `eval/`.
`cxr-edge info` shows the same metadata from the pack itself.
"""


def refused_reports(b: Build) -> dict[str, dict]:
    """slot -> the failed export report of a model this build trained but the pack does not hold (from
    ``eval/<slot>-export/report.json`` in a build folder, ``eval/<slot>-export.json`` in its committed record)."""
    out = {}
    for slot in SLOTS:
        if slot in b.models:
            continue
        for f in (b.dir / "eval" / f"{slot}-export" / "report.json", b.dir / "eval" / f"{slot}-export.json"):
            if f.is_file():
                report = json.loads(f.read_text())
                if not report.get("passed"):
                    out[slot] = report
                break
    return out


def refused(b: Build) -> str:
    """Models the build trained whose int8 check failed: export wrote no model, so the pack has none in that slot.
    From the export report (``eval/<slot>-export/report.json`` in a build folder, ``eval/<slot>-export.json`` in
    its committed record)."""
    rows = []
    for slot, r in refused_reports(b).items():
        views = r.get("check_views") or {}
        for name, c in sorted((r.get("candidates") or {}).items()):
            failed = []
            for chk in c.get("checks", []):
                if chk.get("passed"):
                    continue
                if chk["metric"] == "agreement":
                    why = ""
                    if chk.get("p_value") is not None:
                        why = (f", below the floor {num(chk['cap'])}" if chk.get("chance") else
                               f", not chance: int8 changed {100 * chk['int8_changes']:.1f}% of decisions, a "
                               f"one-pixel shift {100 * chk['shift_changes']:.1f}%, p {chk['p_value']:.3f}")
                    failed.append(f"agreement {num(chk['value'])} < {num(chk['allowed_min'])}{why}")
                else:
                    failed.append(f"{chk['metric']} {num(chk['float'])} -> {num(chk['int8'])} "
                                  f"(drop {num(chk['drop'])} > {num(chk['allowed'])})")
            rows.append([slot, f"`{r['task']}`", name.upper(), f"{views.get('films', r['data']['n'])} films x "
                         f"{len(views.get('shifts') or [0])} views", "; ".join(failed) or "passed"])
    if not rows:
        return ""
    return "\n".join(["## Trained but not shipped", "",
                      "These models were trained by this build, but neither int8 version (PTQ from the float model, "
                      "or converted from the QAT model) kept the float model's decisions within the export policy "
                      "(`cxr_edge/resources/export/`), so `cxr-edge export` wrote no model and the pack has "
                      "none in that slot. Float and int8 on the validation split:", "",
                      table(["slot", "task", "int8 from", "checked on", "over tolerance"], rows)]) + "\n"


def orientation(b: Build) -> str:
    """The orientation check's record (``cxr-edge orientation fit``), from the gate model's metadata."""
    rec = (b.meta("gate").get("extras") or {}).get("orientation") if "gate" in b.models else None
    if not rec:
        return ""
    h = rec["held_out"]
    pct = (lambda v: "-" if v is None else f"{100 * v:.1f}%")
    return "\n".join([
        "## Orientation check", "",
        f"A film held sideways or upside down is turned upright before the models answer, with a warning: a 4-way "
        f"softmax on the gate model's pooled features (`cxr-edge orientation fit`, fitted on {rec['n_fit']} "
        f"{rec['fit_split']} films of `{Path(rec['data']).name}` shown as they are and turned by 90, 180 and 270 "
        f"degrees). Threshold {rec['threshold']:.2f}, chosen so that at most {pct(rec['max_turned_upright'])} of "
        f"the held-out upright films would be turned. On the {h['upright']} held-out {rec['threshold_split']} "
        f"films: upright films turned by mistake {pct(h['upright_turned_by_mistake'])}; of the {h['turned']} "
        f"turned ones, turned back right {pct(h['turned_corrected'])}, the wrong way "
        f"{pct(h['turned_wrong_way'])}, left as they are {pct(h['turned_left_as_is'])}. "
        "`cxr-edge predict --no-upright` answers a turned film as it is (still warned)."]) + "\n"


def render(b: Build) -> str:
    parts = [header(b), intended_use(b), training_data(b), test_metrics(b), export_check(b), refused(b), calibration(b),
             photos(b), real_photos(b), orientation(b), subgroups(b), sources(b), staged(b), probe(b), failure_modes(b),
             reproduce(b)]
    return "\n".join(p for p in parts if p).rstrip() + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("build", type=Path, help="build folder of release/build_default_pack.py")
    p.add_argument("--pack", type=Path, help="pack folder whose manifest to read (default: BUILD/pack)")
    p.add_argument("--out", type=Path, help="default: PACK/MODEL_CARD.md")
    args = p.parse_args(argv)
    out = args.out or (args.pack or args.build / "pack") / "MODEL_CARD.md"
    text = render(Build(args.build, args.pack))
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print(f"{out}: {len(text.splitlines())} lines", file=sys.stderr)


if __name__ == "__main__":
    main()
