"""Calibrate a model pack: a temperature per model and named threshold profiles, written atomically.

For each prepared data folder given, the pack's model for that task runs on
the chosen split through the device path (as ``cxr-edge predict`` runs it),
then:

1. a temperature is fitted to the raw outputs, for sigmoid heads with a logit offset per label
   (:func:`~cxr_edge.tools.posthoc_fit.fit_temperature_and_bias`; softmax:
   :func:`~cxr_edge.tools.posthoc_fit.fit_temperature`);
2. per-label thresholds are chosen on the temperature-scaled probabilities by
   a rule (:func:`~cxr_edge.tools.posthoc_fit.choose_thresholds`: ``max-f1``,
   ``youden``, ``sensitivity:0.90``, ``specificity:0.80``) and stored as a
   named profile (``screening``, ``balanced``, ...); a pack holds several;
3. profiles calibrated earlier under another temperature/offsets get their
   thresholds mapped to the new ones, so their decisions do not change;
4. the pack's metadata is rewritten atomically
   (:func:`~cxr_edge.tools.pack_writer.rewrite_metadata`). What was used — prepared data
   (``data_sha256``), split, a fingerprint of its images, n, rule, ECE before
   and after — is recorded in ``ModelMetadata.extras["posthoc_calibration"]``
   (``ModelMetadata.calibration`` stays the int8 calibration-set record of
   export), so ``cxr-edge evaluate`` can refuse to score a model on the very
   images it was calibrated on.

The test split is refused (calibrating on it leaks the test set into the
thresholds) unless explicitly allowed, and so are images the model trained on.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
from pathlib import Path

import numpy as np

from .. import __version__
from ..data.prepared import Prepared, open_prepared
from ..errors import CxrEdgeError, DataError
from ..runtime.metadata import ModelMetadata, utc_now
from ..runtime.posthoc import POSTHOC_KEY, apply_calibration
from .leakage import check_leakage, split_fingerprint
from .metrics import jsonable, binary_stats, task_ece
from .paths import portable_path
from .posthoc_fit import (T_MAX, T_MIN, choose_thresholds, fit_calibration, parse_rule,
                          remap_threshold)
from .split_runner import Progress, model_outputs, open_pack_model, select_pack_model

__all__ = ["calibrate", "calibrate_model", "default_profile_name", "RARE_POSITIVES"]

log = logging.getLogger(__name__)

_PROFILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
RARE_POSITIVES = 5   # fewer positives than this make a chosen threshold a guess
PHOTO_SEED = 0       # --photos: evaluate's photos of the same images (its default seed)
PHOTO_SIZE = 1280    # ... and its default long side


def default_profile_name(rule) -> str:
    """The profile name used when none is given: the rule's text, e.g. 'max-f1', 'sensitivity-0.9'."""
    return str(parse_rule(rule)).replace(":", "-")


def _check_profile(name: str) -> str:
    if not _PROFILE.match(name):
        raise CxrEdgeError(f"profile name {name!r} is not allowed; use 1-40 letters, digits, '_', '.' or '-' "
                           "starting with a letter or digit, e.g. screening or balanced.")
    return name


def _calibration_of(rec: dict, labels, fallback: tuple[float, np.ndarray]) -> tuple[float, np.ndarray]:
    """(T, per-label offsets) a profile record was chosen under (older records have no offsets)."""
    t = float(rec.get("temperature", fallback[0]))
    bias = rec.get("bias")
    if bias is None:
        return t, (fallback[1] if "temperature" not in rec else np.zeros(len(labels)))
    return t, np.array([float(bias.get(lbl, 0.0)) for lbl in labels])


def _remap_profiles(meta: ModelMetadata, posthoc: dict, new: tuple[float, np.ndarray], old_default,
                    skip: str) -> dict:
    """Re-express calibrated sigmoid profiles under the new (T, offsets); returns {profile: old temperature}."""
    remapped = {}
    if not meta.activation == "sigmoid":
        return remapped
    for name, rec in (posthoc.get("profiles") or {}).items():
        t_old, b_old = _calibration_of(rec, meta.labels, old_default)
        if (name == skip or name not in meta.thresholds or
                (math.isclose(t_old, new[0], rel_tol=1e-9) and np.allclose(b_old, new[1], rtol=0, atol=1e-12))):
            continue
        meta.thresholds[name] = {lbl: remap_threshold(t, (t_old, b_old[meta.labels.index(lbl)]),
                                                      (new[0], new[1][meta.labels.index(lbl)]))
                                 for lbl, t in meta.thresholds[name].items()}
        rec.update(temperature=new[0], bias=_label_dict(meta.labels, new[1]), remapped_from_temperature=t_old,
                   remapped_from_bias=_label_dict(meta.labels, b_old))
        remapped[name] = t_old
    return remapped


def _label_dict(labels, values) -> dict[str, float]:
    return {lbl: float(v) for lbl, v in zip(labels, values)}


def _label_stats(spec, y, p, thresholds: dict) -> tuple[dict, list[str]]:
    stats, warnings = {}, []
    for j, label in enumerate(spec.labels):
        n_pos = int(y[:, j].sum())
        s = binary_stats(y[:, j], p[:, j], thresholds[label])
        stats[label] = {"threshold": thresholds[label], "n_positive": n_pos, "n_negative": int(len(y) - n_pos),
                        **{k: s[k] for k in ("sensitivity", "specificity", "precision", "f1")}}
        if n_pos in (0, len(y)):
            warnings.append(f"{label}: the split holds only {'negatives' if n_pos == 0 else 'positives'}; "
                            f"kept the default threshold {spec.default_threshold:g}")
        elif n_pos < RARE_POSITIVES:
            warnings.append(f"{label}: only {n_pos} positive image(s): its threshold is a guess; calibrate on "
                            "more data")
    return stats, warnings


def calibrate_model(pack_path, prepared: Prepared, *, split: str, rule, profile: str, make_default: bool,
                    temperature: bool, allow_train_split: bool, threads: int, backend, progress,
                    bias: bool | None = None, photos: str | None = None, photo_size: int = PHOTO_SIZE) -> tuple:
    """Calibrate the pack's model for ``prepared``'s task; returns (slot, new metadata, summary).

    ``temperature``: fit the calibration (else keep the pack's). ``bias``: per-label logit offsets with
    the temperature (None = for sigmoid heads, the default; softmax heads get a temperature only).
    ``photos``: a severity; the split's images are then also shown as simulated phone photos, straightened
    as ``cxr-edge predict`` straightens them (``cxr-edge evaluate --photos``' photos, seed 0), and the
    temperature and thresholds are fitted on both looks together.
    """
    rule = parse_rule(rule)
    model = open_pack_model(pack_path, prepared, threads=threads, backend=backend)
    check_leakage(model, prepared, split, allow_train_split=allow_train_split, allow_calibration_split=True,
                  purpose="calibrate")
    spec = model.spec
    pm = select_pack_model(_load(pack_path), prepared)
    if bias and spec.activation != "sigmoid":
        raise CxrEdgeError(f"--bias fits per-label offsets for sigmoid heads; {spec.name} is a softmax task "
                           "(calibrated by a temperature alone). Drop --bias.")
    fit_bias = spec.activation == "sigmoid" if bias is None else bias
    raw, _, how = model_outputs(model, prepared, split, progress)
    y = prepared.labels(split).astype(np.int64)
    photo_record = None
    if photos is not None:
        from .evaluate import photo_outputs

        outs, info = photo_outputs(model, prepared, split, photos, PHOTO_SEED, photo_size, progress)
        shot = outs.get("photo_rectified", outs["photo"])
        raw, y = np.concatenate([raw, shot]), np.concatenate([y, y])
        photo_record = {"severity": info["severity"], "severity_value": info["severity_value"], "seed": PHOTO_SEED,
                        "long_side": photo_size, "n": int(len(shot)),
                        "rectified": "photo_rectified" in outs, "rectify": info["rectify"]}
    t_old = model.temperature
    b_old = np.asarray(pm.metadata.bias_vector() or np.zeros(spec.num_labels), dtype=np.float64)
    t_new, b_new, kept = t_old, b_old, None
    if temperature:
        t_new, b_new, kept = fit_calibration(raw, y, spec.activation, bias=fit_bias, keep=(t_old, b_old))
        temperature = kept is None   # a separable split leaves the calibration as it was
    at_bound = temperature and not T_MIN * 1.01 < t_new < T_MAX / 1.01
    probs = apply_calibration(raw, t_new, spec.activation, b_new)
    thresholds = choose_thresholds(spec, y, probs, rule)
    stats, warnings = _label_stats(spec, y, probs, thresholds)
    if kept:
        warnings.append(kept)
    if at_bound:
        warnings.append(f"the fitted temperature {t_new:.3g} is at the search bound [{T_MIN:g}, {T_MAX:g}]: the "
                        "model's outputs barely depend on the image, or the split holds one class")
    if not spec.multilabel:
        stale = [name for name, rec in (pm.metadata.extras.get(POSTHOC_KEY, {}).get("profiles") or {}).items()
                 if name != profile and not math.isclose(float(rec.get("temperature", t_new)), t_new, rel_tol=1e-9)]
        if stale:
            warnings.append(f"profile(s) {', '.join(stale)} were chosen at another temperature; a softmax's "
                            "one-vs-rest thresholds cannot be carried over exactly: calibrate them again "
                            "(with --keep-temperature)")
    ece = {"raw": task_ece(spec, y, raw),
           "before": task_ece(spec, y, apply_calibration(raw, t_old, spec.activation, b_old)),
           "after": task_ece(spec, y, probs), "n_bins": 15}
    data = {"prepared": portable_path(prepared.path), "data_sha256": prepared.data_sha256, "task": prepared.task.name,
            "split": split, "n": int(len(prepared.table(split))), "n_patients": int(len(np.unique(prepared.patients(split)))),
            "images_sha256": split_fingerprint(prepared, split)}
    if photo_record is not None:
        data["photos"] = photo_record

    meta = dataclasses.replace(pm.metadata, thresholds=copy.deepcopy(pm.metadata.thresholds),
                               extras=copy.deepcopy(pm.metadata.extras))
    posthoc = meta.extras.setdefault(POSTHOC_KEY, {})
    profiles = posthoc.setdefault("profiles", {})
    remapped = _remap_profiles(meta, posthoc, (t_new, b_new), (t_old, b_old), skip=profile)
    created = {"created": utc_now(), "toolkit_version": __version__}
    labels = list(spec.labels)
    if temperature:
        posthoc["temperature"] = {"value": t_new, "previous": t_old, "bias": _label_dict(labels, b_new),
                                  "previous_bias": _label_dict(labels, b_old), "fitted_bias": bool(fit_bias),
                                  "data": data, "ece": ece, **created}
    meta.temperature = t_new
    meta.bias = _label_dict(labels, b_new) if np.any(b_new) else {}
    meta.thresholds[profile] = thresholds
    profiles[profile] = {"rule": str(rule), "temperature": t_new, "bias": _label_dict(labels, b_new), "data": data,
                         "per_label": stats, **created}
    old_default = meta.default_profile
    if make_default:
        meta.default_profile, reason = profile, "--default"
    elif old_default not in profiles:
        meta.default_profile = profile
        reason = f"the previous default {old_default!r} was never calibrated"
    else:
        reason = f"kept {old_default!r} (pass --default to switch)"
    summary = {"task": spec.name, "slot": pm.slot, "file": pm.file, "data": dict(data, **how), "rule": str(rule),
               "profile": profile, "default_profile": meta.default_profile,
               "default_changed": meta.default_profile != old_default, "default_reason": reason,
               "temperature": {"before": t_old, "after": t_new, "fitted": temperature},
               "bias": {"before": _label_dict(labels, b_old), "after": _label_dict(labels, b_new),
                        "fitted": bool(temperature and fit_bias)}, "ece": ece,
               "thresholds": stats, "remapped_profiles": remapped, "profiles": sorted(meta.thresholds),
               "warnings": warnings}
    return pm.slot, meta, summary


def _load(pack_path):
    from ..runtime.pack import load_pack

    return load_pack(pack_path)


def calibrate(pack, data, *, split: str = "val", rule="max-f1", profile: str | None = None,
              make_default: bool = False, temperature: bool = True, bias: bool | None = None,
              allow_test_split: bool = False,
              allow_train_split: bool = False, dry_run: bool = False, threads: int = 1, backend: str | None = None,
              progress: Progress | None = None, photos: str | None = None, photo_size: int = PHOTO_SIZE) -> dict:
    """Calibrate the pack's model for each prepared folder in ``data`` (a path or a list) and write the pack.

    Returns a JSON-ready summary per slot. ``dry_run`` computes everything
    and writes nothing. Raises :class:`~cxr_edge.errors.CxrEdgeError`
    subclasses for what the user can fix. ``photos``: see :func:`calibrate_model`.
    """
    rule = parse_rule(rule)
    profile = _check_profile(profile or default_profile_name(rule))
    if split == "test" and not allow_test_split:
        raise DataError("refusing to calibrate on the test split: thresholds and temperature fitted on it make every "
                        "later test result optimistic. Use --split val (the default), or --allow-test-split if this "
                        "test split will never be used to report results.")
    if photos is not None:   # before any model runs: a bad severity is a typo, not a late failure
        from .photosim import resolve_severity

        try:
            resolve_severity(photos)
        except ValueError as exc:
            raise CxrEdgeError(f"--photos {photos!r}: {exc}") from None
    paths = [data] if isinstance(data, (str, Path, Prepared)) else list(data)
    if not paths:
        raise CxrEdgeError("no prepared data given: pass --data PREPARED (once per task to calibrate).")
    pack_path = _load(pack).path
    updates, models = {}, {}
    for d in paths:
        prepared = d if isinstance(d, Prepared) else open_prepared(d)
        prepared.check_split(split)
        if not len(prepared.table(split)):
            raise DataError(f"split {split!r} of {prepared.path} holds no images; choose one of "
                            f"{', '.join(prepared.splits)}.")
        slot, meta, summary = calibrate_model(pack_path, prepared, split=split, rule=rule, profile=profile,
                                              make_default=make_default, temperature=temperature, bias=bias,
                                              allow_train_split=allow_train_split, threads=threads,
                                              backend=backend, progress=progress, photos=photos,
                                              photo_size=photo_size)
        if slot in updates:
            raise CxrEdgeError(f"two --data folders are for the {slot} model ({models[slot]['data']['prepared']} and "
                               f"{prepared.path}); give one per task.")
        updates[slot], models[slot] = meta, summary
    if not dry_run:
        from .pack_writer import rewrite_metadata

        rewrite_metadata(pack_path, updates)
        log.info("wrote calibration of %s into %s", ", ".join(updates), pack_path)
    return jsonable({"pack": str(pack_path), "written": not dry_run, "split": split, "rule": str(rule),
                      "profile": profile, "models": models})
