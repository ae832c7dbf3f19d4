"""``export_run``: a training run to a checked int8 model in a model pack, or a clear refusal.

1. Read the run (:func:`~cxr_edge.training.runs.load_run`) and its export policy (``./export/<task>.json``,
   else the one shipped in the package, ``cxr_edge/resources/export/<task>.json``).
2. Build the int8 candidates: ``ptq`` (post-training quantization of ``float.h5`` with the
   policy's calibration set, verified file by file) and/or ``qat`` (``qat.h5``, which carries its
   own ranges); ``auto`` builds both when the run has a QAT model and keeps the better.
3. Run the Keras float model and every int8 candidate on the same held-out split (val by
   default, never train). The int8 side goes through the device path ``cxr-edge predict`` uses:
   :func:`~cxr_edge.runtime.preprocess.fit_to_square` pixels (the prepared cache when its input spec
   matches, checked against the original files, else the originals), :func:`~cxr_edge.runtime.preprocess.normalize`,
   and :class:`~cxr_edge.runtime.pipeline.LoadedModel` over :class:`~cxr_edge.runtime.interpreter.TFLiteModel`,
   one image at a time.
4. Compare (:func:`~cxr_edge.training.export_check.compare`) against the policy's tolerances.
5. Always write a report (JSON + Markdown). Over tolerance: :class:`~cxr_edge.errors.ExportCheckError`
   (exit code 3) naming the failing metric/label, the delta and likely fixes; no pack is written
   and an existing one is not touched. Within tolerance: embed the metadata (and ``head.npz`` for
   class activation maps) and write the model into the pack's slot for its task, atomically,
   keeping the pack's other models: three exports build the gate + cxr4 + nih14 pack.

float16 / dynamic-range / float32 variants (``variants=``) are converted from the float model,
measured against it the same way and written beside the report; they never go into a pack.
"""

from __future__ import annotations

import io
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime import metadata as md
from ..runtime.features import pooled
from ..tools.ptq_set import CalibrationSet, load_calibration_set, resolve_data_root
from ..errors import DataError, ExportCheckError, PackError, RecipeError
from ..tasks import TaskSpec
from .export_check import (VARIANTS, ExportPolicy, by_view, check_views, compare, default_policy_path, failures,
                           likely_fixes, load_policy, one_pixel_envelope, summarize)
from .int8_outputs import device_model, device_outputs
from .runs import FLOAT_MODEL, QAT_MODEL, load_run

__all__ = ["Candidate", "export_run", "HEAD_FILE", "held_out", "keras_outputs", "KERAS_BATCH", "REPORT_DIR",
           "REPORT_JSON", "REPORT_MD", "write_into_pack"]

log = logging.getLogger(__name__)

REPORT_DIR = "export"          # default report folder inside the run directory
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
HEAD_FILE = "head.npz"
KERAS_BATCH = 32


@dataclass
class Candidate:
    """One converted int8 model and how it compared with the float model."""

    source: str                 # "ptq" or "qat"
    content: bytes              # the bare .tflite flatbuffer
    roles: dict
    seconds: float
    result: dict
    quantization: dict = field(default_factory=dict)
    head: tuple[bytes, dict] | None = None     # head.npz and its description, for CAM
    qat_keras: dict | None = None

    @property
    def passed(self) -> bool:
        return bool(self.result["passed"])

    def rank(self) -> tuple:
        """Higher is better: passing first, then agreement with float, then a smaller mean difference."""
        agree = self.result["agreement"] if self.result["agreement"] is not None else -1.0
        return (self.passed, agree, -(self.result["mean_abs_diff"] or 0.0))


# --------------------------------------------------------------------------- inputs


def _policy(spec: TaskSpec, policy, overrides: dict) -> ExportPolicy:
    pol = load_policy(policy if policy else default_policy_path(spec))
    from ..tasks import get_task

    if get_task(pol.task).family != spec.family:
        raise RecipeError(f"export policy {pol.path} is for task {pol.task}; the run is a {spec.name} model. "
                          f"Use --policy with a {spec.family} policy (the shipped one: "
                          f"cxr_edge/resources/export/{spec.family}.json), or leave --policy out")
    return pol.with_overrides(**overrides)


def _calibration(pol: ExportPolicy, spec: TaskSpec, data_root, notes: list) -> tuple[CalibrationSet, np.ndarray]:
    """The policy's calibration set, size-checked, every file verified, preprocessed at the model's input."""
    from ..tasks import get_task

    if pol.calibration is None:
        raise RecipeError(f"post-training quantization needs a calibration set and policy {pol.path} names none; "
                          "pass --calibration MANIFEST.csv (cxr-edge calibration build makes one)")
    cs = load_calibration_set(pol.calibration)
    if get_task(cs.task).family != spec.family:
        raise DataError(f"calibration set {pol.calibration} holds {cs.task} images; a {spec.name} model must be "
                        f"calibrated on its own kind of images. Use a {spec.family} set (the shipped one: "
                        f"cxr_edge/resources/calibration_data/{spec.family}.csv)")
    if cs.n < pol.min_calibration:
        raise DataError(f"calibration set {pol.calibration} has {cs.n} images, fewer than the policy's minimum "
                        f"{pol.min_calibration} (recommended {pol.recommended_calibration}): int8 ranges measured "
                        f"on so few images clip real inputs. Build a larger set: cxr-edge calibration build "
                        f"PREPARED --n {pol.recommended_calibration} --out {pol.calibration}")
    if cs.n < pol.recommended_calibration:
        msg = (f"calibration set has {cs.n} images, below the recommended {pol.recommended_calibration}; "
               "int8 activation ranges may not cover all inputs")
        log.warning("%s", msg)
        notes.append(msg)
    root = resolve_data_root(data_root, pol.calibration)
    return cs, cs.inputs(spec, root)


def held_out(prepared, split: str, spec: TaskSpec, notes: list) -> tuple[np.ndarray, np.ndarray, dict]:
    """The check's films: model inputs (N, S, S, C), labels (N, L) and how the pixels were obtained, in table
    order (never the train split)."""
    from ..tools.split_runner import cache_usable, digital_batches  # the pixel path evaluate (and predict) use

    if split == "train":
        raise DataError("the float-vs-int8 check never runs on the train split; use val (default) or test")
    if len(prepared.table(split)) == 0:
        raise DataError(f"{prepared.path}: split {split!r} holds no images to check the int8 model on")
    use_cache, how = cache_usable(prepared, split, spec, notes)
    x = np.concatenate(list(digital_batches(prepared, split, spec, use_cache)))
    return x, prepared.labels(split), how


def keras_outputs(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(probs (N, L), pooled features or None) of a tf-keras model, in batches."""
    probs, feats = [], []
    for start in range(0, len(x), KERAS_BATCH):
        outs = model(x[start:start + KERAS_BATCH], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        probs.append(np.asarray(outs[0], np.float64))
        if len(outs) > 1:
            feats.append(pooled(outs[1]))
    return np.concatenate(probs), (np.concatenate(feats) if feats else None)


def _tensor_quantization(info) -> dict:
    return {"dtype": info.dtype.name, "scale": info.scale, "zero_point": info.zero_point}


# --------------------------------------------------------------------------- candidates


def _candidate(source: str, keras_model, representative, pol: ExportPolicy, spec: TaskSpec, x, y,
               reference, envelope=None, shifts=((0, 0),), films: int | None = None,
               bias_correction: dict | None = None) -> Candidate:
    from .convert import convert, output_roles

    started = time.perf_counter()
    content = convert(keras_model, "int8", representative=representative, io_dtype=pol.io_dtype,
                      per_channel=pol.per_channel)
    seconds = time.perf_counter() - started
    roles = output_roles(content, spec.num_labels)
    lm = device_model(content, spec, roles)
    probs, feats = device_outputs(lm, x)
    result = compare(spec, y, reference[0], probs, pol.tolerance, features=(reference[1], feats), envelope=envelope,
                     limit=pol.envelope_limit, films=films, significance=pol.significance)
    if len(shifts) > 1:
        result["by_view"] = by_view(spec, y, reference[0], probs, shifts)
    quant = {"mode": "int8", "io_dtype": pol.io_dtype, "source": source, "per_channel": pol.per_channel,
             "input": _tensor_quantization(lm.model.inputs[0]),
             "outputs": {role: _tensor_quantization(lm.model.outputs[i]) for role, i in roles.items()}}
    if bias_correction is not None:
        quant["bias_correction"] = bias_correction
    log.info("%s int8: %d bytes in %.1f s; agreement %.4f, check %s", source, len(content), seconds,
             result["agreement"] or float("nan"), "passed" if result["passed"] else "FAILED")
    return Candidate(source, content, roles, seconds, result, quant, _head_npz(keras_model))


def _qat_keras_diagnostic(qat_two, spec, x, y, int8_probs_source: Candidate) -> dict:
    """How the QAT Keras model itself scores, and how its int8 conversion agrees with it."""
    from ..tools.metrics import agreement

    probs, _ = keras_outputs(qat_two, x)
    lm = device_model(int8_probs_source.content, spec, int8_probs_source.roles)
    q, _ = device_outputs(lm, x)
    agree = agreement(spec, probs, q)
    return {"metrics": summarize(spec, y, probs), "int8_agreement_with_qat_keras": agree["agreement"],
            "int8_mean_abs_diff_vs_qat_keras": agree["mean_abs_diff"]}


def _sources(source: str, run, notes: list) -> list[str]:
    if source == "float":
        return ["ptq"]
    if source == "qat":
        if not run.has_qat:
            raise RecipeError(f"--from qat: {run.path} has no QAT model yet; run: cxr-edge qat {run.path}")
        return ["qat"]
    if not run.has_qat:
        notes.append(f"--from auto: the run has no {QAT_MODEL} (cxr-edge qat {run.path} makes one), so only "
                     "post-training quantization was tried")
        return ["ptq"]
    return ["ptq", "qat"]


def _variant(mode: str, float_two, spec: TaskSpec, x, reference, out_dir: Path, meta_base: dict) -> dict:
    from ..tools.metrics import agreement
    from .convert import convert, output_roles

    started = time.perf_counter()
    content = convert(float_two, mode)
    seconds = time.perf_counter() - started
    roles = output_roles(content, spec.num_labels)
    probs, _ = device_outputs(device_model(content, spec, roles), x)
    agree = agreement(spec, reference[0], probs)
    meta = md.ModelMetadata.for_task(spec, roles, quantization={"mode": mode, "io_dtype": "float32",
                                                                "source": "float"}, **meta_base)
    path = out_dir / f"{spec.name}.{mode}.tflite"
    from ..runtime.atomic import write_atomic

    write_atomic(path, md.embed(content, meta))
    return {"mode": mode, "file": str(path), "bytes": len(content), "convert_seconds": round(seconds, 1),
            "agreement": agree["agreement"], "max_abs_diff": agree["max_abs_diff"],
            "mean_abs_diff": agree["mean_abs_diff"]}


# --------------------------------------------------------------------------- metadata and pack


def _license(prepared) -> dict:
    lic = prepared.info.get("licenses") or {}
    return {k: lic.get(k) for k in ("most_restrictive", "most_restrictive_level", "permissive_only",
                                    "non_permissive_images")}


def _augment_record(run) -> dict | None:
    """The run's training augmentation (from its resolved recipe.json): TTA uses flips only where
    training did (``hflip``), and a reader sees whether the model was trained on simulated photos."""
    import json

    from .runs import RECIPE_JSON

    try:
        return dict(json.loads((run.path / RECIPE_JSON).read_text()).get("augment") or {}) or None
    except (OSError, ValueError) as exc:
        log.warning("%s: no readable %s (%s); the model's training augmentation is not recorded", run.path,
                    RECIPE_JSON, exc)
        return None


def _training_record(run, prepared) -> dict:
    from ..tools.paths import portable_path

    info = run.info
    return {"recipe": info.get("recipe"), "run": run.path.name, "data_sha256": prepared.data_sha256,
            "prepared": portable_path(prepared.path), "alpha": info.get("alpha"), "status": info.get("status"),
            "best": info.get("best"), "qat": info.get("qat"), "augment": _augment_record(run),
            "images": {s: prepared.info["counts"][s]["images"] for s in prepared.splits},
            "license": _license(prepared)}


def _head_arrays(model) -> tuple[np.ndarray, np.ndarray]:
    """The head Dense's (kernel, bias) by variable name: a QAT model loaded from HDF5 has a symbolic
    ``kernel`` attribute on the wrapped layer (model.head_weights fails there), its variables are real."""
    from .model import HEAD, find_layer

    found = {}
    for var in find_layer(model, HEAD).weights:
        short = var.name.split("/")[-1].split(":")[0]
        if short in ("kernel", "bias"):
            found[short] = var.numpy()
    if set(found) != {"kernel", "bias"}:
        raise RecipeError(f"model {model.name!r}: the head layer has no kernel/bias variables; build it with "
                          "cxr_edge.training.model.build_model")
    return found["kernel"], found["bias"]


def _head_npz(model) -> tuple[bytes, dict]:
    kernel, bias = _head_arrays(model)
    buf = io.BytesIO()
    np.savez(buf, kernel=kernel.astype(np.float32), bias=bias.astype(np.float32))
    return buf.getvalue(), {"file": HEAD_FILE, "kernel_shape": list(kernel.shape), "bias_shape": list(bias.shape),
                            "features_output": "features",
                            "use": "class activation map of label j = features (H, W, F) @ kernel[:, j] + bias[j]"}


def _metrics_record(best: Candidate, cands: dict, split: str, prepared, how: dict) -> dict:
    keep = ("n", "float", "int8", "delta", "delta_definition", "agreement", "agreement_kind", "agreement_per_label",
            "max_abs_diff", "mean_abs_diff", "feature_correlation", "tolerance", "envelope", "significance", "checks",
            "passed")
    out = {k: best.result.get(k) for k in keep}
    out.update(split=split, source=best.source, data_sha256=prepared.data_sha256, pixels=how.get("pixels"),
               candidates={s: {"passed": c.passed, "agreement": c.result["agreement"],
                               "checks": c.result["checks"],
                               "mean_abs_diff": c.result["mean_abs_diff"], "delta": c.result["delta"],
                               "bytes": len(c.content), "convert_seconds": round(c.seconds, 1)}
                           for s, c in cands.items()})
    return out


def _pack_license(models: dict) -> str:
    parts = []
    for slot, (_, meta) in sorted(models.items()):
        lic = (meta.training or {}).get("license") or {}
        if lic.get("most_restrictive_level"):
            parts.append(f"{slot}: trained on data whose most restrictive licence is {lic.get('most_restrictive')!r} "
                         f"({lic['most_restrictive_level']})")
        else:
            parts.append(f"{slot}: training-data licence not recorded")
    return "; ".join(parts)


def write_into_pack(out, slot: str, content: bytes, meta: md.ModelMetadata, *,
                    name: str | None = None) -> tuple[Path, list]:
    """Create ``out`` with this model, or replace its ``slot`` in an existing pack (the rest kept), atomically.

    Returns the pack path and the slots it kept from before.
    """
    from ..runtime.pack import load_pack
    from ..tools.pack_writer import write_pack
    from ..runtime.pipeline import QUALITY_KEY
    from ..runtime.photo.quality import QualitySpec

    out = Path(out)
    models, kept, description, extra = {}, [], "", {}
    if out.exists():
        try:
            existing = load_pack(out)
        except PackError as exc:
            raise PackError(f"--out {out} exists but is not a valid model pack ({exc}); refusing to replace it. "
                            "Choose another --out or remove it yourself.") from exc
        for s, m in existing.models.items():
            if s != slot:
                models[s] = (m.content, m.metadata)
                kept.append(s)
            elif len(m.metadata.thresholds) > 1 or m.metadata.temperature != 1.0:
                log.warning("%s: the old %s model's calibrated profiles/temperature are dropped with it; run "
                            "cxr-edge calibrate again for the new model", out, slot)
        name = name or existing.name
        description, extra = existing.manifest.get("description", ""), dict(existing.manifest.get("extra") or {})
    models[slot] = (content, meta)
    if QUALITY_KEY not in extra:   # the photo quality thresholds travel with the pack, where a user can see them
        extra[QUALITY_KEY] = QualitySpec().to_dict()
    description = description or "cxr-edge int8 models (gate -> cxr4 / nih14); decision support only"
    write_pack(out, models, name=name or out.stem, license=_pack_license(models), description=description,
               extra=extra, overwrite=True)
    return out, kept


# --------------------------------------------------------------------------- the export


def export_run(run_dir, *, out=None, int8: bool = True, source: str | None = None, policy=None, calibration=None,
               data_root=None, split: str | None = None, variants=(), report_dir=None, name: str | None = None) -> dict:
    """Export a run (see the module docstring); returns the report (a JSON-ready dict).

    Raises :class:`ExportCheckError` when the best int8 candidate is over tolerance (after writing the
    report; no pack is written). ``out=None`` checks and reports without writing a pack.
    """
    started = time.perf_counter()
    variants = tuple(dict.fromkeys(variants))
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise RecipeError(f"unknown variant(s) {bad}; valid: {', '.join(VARIANTS)}")
    if not int8 and not variants:
        raise RecipeError("nothing to export: pass --int8 (the pack model) and/or --variant float16|dynamic|float32")
    if out is not None and not int8:
        raise RecipeError("--out writes a model pack, which holds int8 models: add --int8")
    run = load_run(run_dir)
    spec = run.task
    pol = _policy(spec, policy, {"source": source, "split": split,
                                 "calibration": Path(calibration).resolve() if calibration else None})
    notes: list[str] = []
    if not run.complete:
        notes.append(f"run status is {run.info.get('status')!r}, not 'complete': {FLOAT_MODEL} is the best "
                     "checkpoint so far")
    prepared = run.prepared()
    report_dir = Path(report_dir) if report_dir else run.path / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    report = {"kind": "cxr-edge-export", "run": str(run.path), "task": spec.name, "slot": spec.family,
              "input": spec.input.to_dict(), "policy": pol.to_dict(), "split": pol.split, "notes": notes,
              "created": md.utc_now(), "pack": str(out) if out else None, "written": False}

    from .model import with_feature_output

    sources = _sources(pol.source, run, notes) if int8 else []
    cs = cal_x = None
    if "ptq" in sources:   # before any model loads: a bad calibration set fails in a second, not a minute
        cs, cal_x = _calibration(pol, spec, data_root, notes)
        overlap = int(np.isin(cs.file_sha256, prepared.table(pol.split)["sha256"]).sum())
        report["calibration"] = dict(cs.record(), overlap_with_check_split=overlap)
        if overlap:
            notes.append(f"{overlap} calibration image(s) are in the {pol.split} split the check runs on: the PTQ "
                         "check is slightly optimistic")
    x, y, how = held_out(prepared, pol.split, spec, notes)
    report["data"] = {"prepared": str(prepared.path), "data_sha256": prepared.data_sha256, "n": len(x), **how}
    float_model = run.float_model()
    float_two = with_feature_output(float_model)
    films = len(x)
    views = check_views(x, pol.views if int8 else "original")
    outputs = {shift: keras_outputs(float_two, xs) for shift, xs in views}
    reference = outputs[(0, 0)]
    report["float"] = summarize(spec, y, reference[0])
    envelope = None
    if int8 and pol.envelope == "one-pixel-shift":
        envelope = one_pixel_envelope(spec, y, x, reference[0], lambda xs: keras_outputs(float_two, xs)[0],
                                      shifted={s: o[0] for s, o in outputs.items() if s != (0, 0)})
        report["envelope"] = envelope
        log.info("one-pixel envelope of the float model: self-agreement %.4f, drops %s", envelope["agreement"],
                 {k: round(v, 4) for k, v in envelope["drop"].items() if isinstance(v, float)})
    if len(views) > 1:   # the check runs on every view, each int8 output paired with float's on the same view
        x = np.concatenate([xs for _, xs in views])
        y = np.concatenate([np.asarray(y)] * len(views))
        feats = [outputs[s][1] for s, _ in views]
        reference = (np.concatenate([outputs[s][0] for s, _ in views]),
                     None if any(f is None for f in feats) else np.concatenate(feats))
        report["check_views"] = {"kind": pol.views, "shifts": [list(s) for s, _ in views], "films": films,
                                 "n": len(x)}
        log.info("int8 check on %d %s films x %d views (%d paired decisions)", films, pol.split, len(views), len(x))
    shifts = tuple(s for s, _ in views)
    del views, outputs
    report["sizes"] = {"float_h5_bytes": (run.path / FLOAT_MODEL).stat().st_size,
                       "float32_weights_bytes": int(float_model.count_params()) * 4}

    cands: dict[str, Candidate] = {}
    for src in sources:
        if src == "ptq":
            ptq_two, correction = float_two, None
            if pol.bias_correction:   # the float model with the int8 weight rounding's mean shift taken out
                from .bias_correction import bias_correction_images, correct_bias

                try:
                    corrected, correction = correct_bias(
                        float_model, cal_x[bias_correction_images(len(cal_x), pol.bias_correction)])
                except ValueError as exc:   # NaN images, a float16 model, an overflowing shift: one CLI line
                    raise DataError(f"{exc} (or set quantization.bias_correction to false in a copy of the "
                                    f"policy, --policy)") from exc
                if correction["layers"]:
                    ptq_two = with_feature_output(corrected)
                    report["bias_correction"] = correction
                    if correction["images"] < pol.bias_correction:
                        notes.append(f"bias correction measured on all {correction['images']} calibration images, "
                                     f"fewer than the policy's {pol.bias_correction}")
                else:
                    notes.append("bias correction found no convolution followed by a BatchNormalization it alone "
                                 "feeds: the PTQ candidate is the float model as it is")
                    correction = None
                del corrected
            cands[src] = _candidate(src, ptq_two, cal_x, pol, spec, x, y, reference, envelope, shifts, films,
                                    bias_correction=correction)
            del ptq_two
            cal_x = None
        else:
            qat_two = with_feature_output(run.qat_model())
            cands[src] = _candidate(src, qat_two, None, pol, spec, x, y, reference, envelope, shifts, films)
            cands[src].qat_keras = _qat_keras_diagnostic(qat_two, spec, x, y, cands[src])
        report["sizes"][f"int8_{src}_bytes"] = len(cands[src].content)
    meta_base = {"training": _training_record(run, prepared)}
    if variants:
        report["variants"] = [_variant(v, float_two, spec, x, reference, report_dir, meta_base) for v in variants]
    best = max(cands.values(), key=Candidate.rank) if cands else None
    report["candidates"] = {s: _candidate_report(c, pol, cs, films, tuple(cands)) for s, c in cands.items()}
    report["chosen"] = best.source if best else None
    report["passed"] = best.passed if best else None

    if best is not None and best.passed and out is not None:
        head, head_info = best.head
        calibration_record = (dict(cs.record(), used=True) if best.source == "ptq" else
                              {"used": False, "n": 0, "sha256": None,
                               "note": "QAT model: int8 ranges were learnt in quantization-aware training",
                               **({"ptq_candidate_set": cs.record()} if cs is not None else {})})
        meta = md.ModelMetadata.for_task(
            spec, best.roles, quantization=best.quantization, calibration=calibration_record,
            metrics=dict(_metrics_record(best, cands, pol.split, prepared, how), sizes=dict(report["sizes"]),
                         check_views=report.get("check_views")),
            extras={"head": head_info, "export": {"policy": pol.path.name if pol.path else None,
                                                  "seconds": round(time.perf_counter() - started, 1)}},
            **meta_base)
        content = md.embed(best.content, meta, files={HEAD_FILE: head})
        path, kept = write_into_pack(out, spec.family, content, meta, name=name)
        report.update(written=True, pack=str(path), pack_slots_kept=kept, pack_model_bytes=len(content))
    report["seconds"] = round(time.perf_counter() - started, 1)
    from .export_report import write_report

    report["report"] = {k: str(v) for k, v in write_report(report, report_dir).items()}
    if best is not None and not best.passed:
        raise ExportCheckError(_failure_message(report, best, cands, out))
    return report


def _candidate_report(c: Candidate, pol: ExportPolicy, cs, split_n: int, tried: tuple) -> dict:
    out = {"source": c.source, "bytes": len(c.content), "convert_seconds": round(c.seconds, 1),
           "quantization": c.quantization, **c.result}
    if c.qat_keras:
        out["qat_keras"] = c.qat_keras
    if not c.passed:
        out["failures"] = failures(c.result)
        out["fixes"] = likely_fixes(c.result, source=c.source, calibration_n=cs.n if cs else None,
                                    recommended_n=pol.recommended_calibration, per_channel=pol.per_channel,
                                    split_n=split_n, qat_keras=c.qat_keras, tried=tried)
    return out


def _fix_kind(fix: str) -> str:
    """A fix without its numbers: the same advice measured on two candidates is given once."""
    return re.sub(r"[\d.]+", "#", fix)[:25]


def _failure_message(report: dict, best: Candidate, cands: dict, out) -> str:
    cand = report["candidates"][best.source]
    views = report.get("check_views")
    where = (f"{views['films']} {report['split']} films x {len(views['shifts'])} views ({cand['n']} paired decisions)"
             if views else f"{cand['n']} {report['split']} images")
    lines = [f"int8 check FAILED for {report['task']} ({best.source.upper()}) on {where} of run {report['run']}:"]
    lines += [f"  - {f}" for f in cand["failures"]]
    fixes = list(cand["fixes"])
    for s, c in cands.items():
        if s != best.source:
            other = report["candidates"][s]
            lines.append(f"  ({s.upper()} was tried too and agreed less with float: "
                         + "; ".join(other.get("failures") or ["passed"]) + ")")
            seen = {_fix_kind(f) for f in fixes}
            fixes += [f for f in other.get("fixes", []) if _fix_kind(f) not in seen]
    lines.append("No pack was written" + (f"; {out} is unchanged." if out and Path(out).exists() else "."))
    lines.append("Likely fixes:")
    lines += [f"  {i}. {fix}" for i, fix in enumerate(fixes, 1)]
    lines.append(f"Report: {report['report'].get('markdown')}")
    return "\n".join(lines)
