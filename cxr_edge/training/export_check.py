"""Export policies and the float-vs-int8 check: what export measures, what it allows, what it says on failure.

A policy is one JSON file per task in ``export/`` (see ``export/README.md``)::

    {"format": "cxr-edge-export-policy", "format_version": 1, "task": "cxr4",
     "quantization": {"mode": "int8", "io_dtype": "uint8", "per_channel": true, "from": "auto"},
     "calibration": {"manifest": "../calibration_data/cxr4.csv", "min_size": 100, "recommended_size": 300},
     "check": {"split": "val", "tolerance": {"accuracy": 0.005, "macro_f1": 0.02, "agreement": 0.98}}}

Relative paths are relative to the policy file. The tolerance names the
:class:`cxr_edge.tasks.Int8Tolerance` fields the task is checked on (:func:`checked_keys`), and
every one of them must be given: a medical export never falls back to a default it did not state.

What is checked (drops are float − int8; improvements never fail):

* softmax tasks (cxr4): top-1 accuracy, macro-F1, top-1 agreement;
* one-label sigmoid tasks (gate): accuracy at the default threshold, AUROC (``mean_auroc``
  tolerance), decision agreement;
* multi-label sigmoid tasks (nih14): mean AUROC, every label's AUROC (``label_auroc``), decision
  agreement over all label decisions.

**The one-pixel envelope** (``check.envelope: "one-pixel-shift"``). A CNN's decisions are not stable
under a one-pixel shift of its input (strided convolutions alias): measured here, the float cxr4
model changed 2-3% of its val decisions and 0.4-1.8 points of accuracy when the films moved by one
pixel, more than int8 changed them. A tolerance below that measures the float model's own noise, not
what quantization lost. With the envelope, the float model is also run on the check images shifted by
one pixel in each of the four directions, and each check allows the larger of the policy's tolerance
and what the float model itself does on the worst of these four equally valid copies of the images
(agreement: the smaller of the policy's minimum and the float model's agreement with itself). The
policy's numbers stay the floor: a stable model is checked exactly as strictly as without it. The
policy's ``check.envelope_limit`` is the ceiling: however unstable the float model, no check is widened
past it (the shipped cxr4 policy: accuracy at most 2 points, agreement at least 0.96). The envelope is
measured, reported beside every check and stored in the pack.

**The check views** (``check.views: "one-pixel-shifts"``). The envelope says how noisy one view of the
check films is; the views make the measurement itself less noisy. Float and int8 are both run on every
film and on its four one-pixel-shifted copies (5 views, the same shifts as the envelope), each int8 output
is compared with the float output of the same view, and every checked number is pooled over all views. A
check set of 273 films then holds 1,365 paired decisions: a film whose decision sits on a boundary counts
by how often int8 moves it across, not by which side one pixel grid happened to put it on. The films,
the tolerances and the envelope are unchanged; ``"original"`` (the default) checks the films as they are.

**Chance** (``check.significance: {"alpha": 0.05, "permutations": 1000}``). A check set of 273 films cannot
tell a 3-film net loss from a coin: when int8 changes ~10 films' decisions and loses no accuracy at all, which
way each change goes is chance, and a 0.5-point tolerance (1.4 films) then refuses such a model about a
quarter of the time (``benchmarks/int8_check_chance.py``). With ``significance``, a drop beyond what is
allowed fails only when a paired permutation test says the films can tell it from chance: float's and
int8's outputs are swapped film by film (all views of a film together), the drop is recomputed for every
swap, and p is the share of swaps whose drop is at least the measured one. A drop with p >= alpha is
reported as within chance and passes -- but never past ``check.envelope_limit``, which ``significance``
requires: beyond that ceiling a drop fails whatever the films say. An agreement below its bar fails only
when a sign-flip test over the films says int8 changes more decisions than the float model's own one-pixel
shifts do (:func:`agreement_permutation`; it needs ``views = "one-pixel-shifts"``), and always below the
floor (the limit's agreement). The tests run only for a check that failed its allowance, are seeded
(the same outputs give the same p), and their p, alpha and film count are in the report.

numpy only (the metrics are :mod:`cxr_edge.tools.metrics`); no TensorFlow.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import RecipeError
from ..tools.metrics import agreement, decisions, f1_from_confusion, task_metrics
from ..tasks import Int8Tolerance, TaskSpec, get_task

__all__ = ["CHECK_SPLITS", "checked_keys", "compare", "default_policy_path", "DELTA_DEFINITION", "describe_failure",
           "ENVELOPES", "ExportPolicy", "failures", "likely_fixes", "load_policy", "one_pixel_envelope",
           "ONE_PIXEL_SHIFTS", "parse_policy", "POLICY_FORMAT", "POLICY_FORMAT_VERSION", "SCALARS", "shift_images",
           "SOURCES", "summarize", "VARIANTS", "VIEWS", "check_views", "by_view", "Significance", "paired_permutation",
           "agreement_permutation"]

POLICY_FORMAT = "cxr-edge-export-policy"
POLICY_FORMAT_VERSION = 1
SOURCES = ("auto", "qat", "float")
CHECK_SPLITS = ("val", "test")
ENVELOPES = ("none", "one-pixel-shift")
VIEWS = ("original", "one-pixel-shifts")   # what the check runs on: the films, or the films and their 1-px shifts
ONE_PIXEL_SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))   # (down, right) in pixels
VARIANTS = ("float16", "dynamic", "float32")
SCALARS = ("accuracy", "auroc", "mean_auroc", "macro_f1")   # the summary numbers with a delta
MAX_PERMUTATIONS = 10_000    # p to 1e-4: plenty for any alpha; each costs a metric pass over the check outputs
PERMUTATION_BLOCK = 1000      # swaps drawn and scored a block at a time (memory: block x films)
DELTA_DEFINITION = "int8 - float (negative: int8 is lower); checks compare the drop float - int8"


def checked_keys(spec: TaskSpec) -> tuple[str, ...]:
    """The Int8Tolerance fields a task is checked on."""
    if not spec.multilabel:
        return ("accuracy", "macro_f1", "agreement")
    if spec.num_labels == 1:
        return ("accuracy", "mean_auroc", "agreement")
    return ("mean_auroc", "label_auroc", "agreement")


@dataclass(frozen=True)
class Significance:
    """``check.significance``: a drop beyond the tolerance fails only when it is not chance (p < alpha)."""

    alpha: float = 0.05
    permutations: int = 1000
    seed: int = 0

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "permutations": self.permutations, "seed": self.seed}


@dataclass(frozen=True)
class ExportPolicy:
    """A parsed export policy (paths resolved)."""

    task: str
    tolerance: Int8Tolerance
    io_dtype: str = "uint8"
    per_channel: bool = True
    source: str = "auto"
    calibration: Path | None = None
    min_calibration: int = 100
    recommended_calibration: int = 300
    split: str = "val"
    envelope: str = "none"       # "one-pixel-shift": widen each tolerance to the float model's own 1-px noise
    envelope_limit: Int8Tolerance | None = None   # ... but never past these (None: no ceiling)
    views: str = "original"      # "one-pixel-shifts": check every film and its 4 one-pixel shifts, pooled
    significance: Significance | None = None   # a drop past the tolerance fails only when not chance
    bias_correction: int = 0     # PTQ: calibration images the weight-rounding bias is measured on (0 = off)
    path: Path | None = None
    raw: dict = field(default_factory=dict, compare=False)

    def with_overrides(self, **changes) -> "ExportPolicy":
        """A copy with command-line overrides (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return {"path": str(self.path) if self.path else None, "task": self.task, "mode": "int8",
                "io_dtype": self.io_dtype, "per_channel": self.per_channel, "from": self.source,
                "calibration": str(self.calibration) if self.calibration else None,
                "min_calibration": self.min_calibration, "recommended_calibration": self.recommended_calibration,
                "split": self.split, "tolerance": self.tolerance.to_dict(), "envelope": self.envelope,
                "envelope_limit": self.envelope_limit.to_dict() if self.envelope_limit else None,
                "views": self.views,
                "significance": self.significance.to_dict() if self.significance else None,
                "bias_correction": {"images": self.bias_correction} if self.bias_correction else None}


def _need(d: dict, key: str, where: str):
    if key not in d:
        raise RecipeError(f"{where}: missing {key!r}; see export/README.md for the policy format")
    return d[key]


def parse_policy(data: dict, *, path: Path | None = None) -> ExportPolicy:
    """Check and parse a policy dict; every problem is a RecipeError naming the key and the fix."""
    where = f"export policy {path}" if path else "export policy"
    if data.get("format") != POLICY_FORMAT or data.get("format_version", 0) > POLICY_FORMAT_VERSION:
        raise RecipeError(f"{where} is not a cxr-edge export policy (format {data.get('format')!r} "
                          f"v{data.get('format_version')}; expected {POLICY_FORMAT!r} v{POLICY_FORMAT_VERSION})")
    spec = get_task(_need(data, "task", where))
    quant = data.get("quantization", {})
    if quant.get("mode", "int8") != "int8":
        raise RecipeError(f"{where}: quantization.mode must be 'int8' (packs hold full-integer models); "
                          f"float16/dynamic variants are asked for with --variant")
    io_dtype = quant.get("io_dtype", "uint8")
    if io_dtype not in ("uint8", "int8"):
        raise RecipeError(f"{where}: quantization.io_dtype {io_dtype!r}; valid: uint8, int8")
    source = quant.get("from", "auto")
    if source not in SOURCES:
        raise RecipeError(f"{where}: quantization.from {source!r}; valid: {', '.join(SOURCES)}")
    bias_correction = _parse_bias_correction(quant.get("bias_correction"), where)
    if bias_correction and not quant.get("per_channel", True):
        raise RecipeError(f"{where}: quantization.bias_correction models per-channel weight rounding; with "
                          f"per_channel false the converter rounds per tensor. Set per_channel true (recommended) "
                          f"or bias_correction false")
    cal = data.get("calibration", {})
    manifest = cal.get("manifest")
    if manifest:
        manifest = Path(manifest)
        if not manifest.is_absolute() and path is not None:
            manifest = (path.parent / manifest).resolve()
    min_n, rec_n = int(_need(cal, "min_size", where)), int(_need(cal, "recommended_size", where))
    if not 1 <= min_n <= rec_n:
        raise RecipeError(f"{where}: calibration sizes must satisfy 1 <= min_size <= recommended_size "
                          f"(got {min_n}, {rec_n})")
    check = _need(data, "check", where)
    split = check.get("split", "val")
    if split not in CHECK_SPLITS:
        raise RecipeError(f"{where}: check.split {split!r}; valid: {', '.join(CHECK_SPLITS)} (never train: a "
                          f"model agrees with itself on its training images more than anywhere else)")
    tolerance = _parse_tolerance(spec, _need(check, "tolerance", where), where)
    envelope = check.get("envelope", "none")
    if envelope not in ENVELOPES:
        raise RecipeError(f"{where}: check.envelope {envelope!r}; valid: {', '.join(ENVELOPES)}")
    limit = None
    if "envelope_limit" in check:
        if envelope == "none":
            raise RecipeError(f"{where}: check.envelope_limit caps the one-pixel envelope; set "
                              "check.envelope to 'one-pixel-shift' or drop envelope_limit")
        limit = _parse_tolerance(spec, check["envelope_limit"], where, key="check.envelope_limit")
        looser = [k for k in checked_keys(spec)
                  if (getattr(limit, k) < getattr(tolerance, k) if k != "agreement"
                      else getattr(limit, k) > getattr(tolerance, k))]
        if looser:
            raise RecipeError(f"{where}: check.envelope_limit {looser} is stricter than check.tolerance; the "
                              "limit is how far the envelope may widen a tolerance, so it must be at least as "
                              "loose")
    views = check.get("views", "original")
    if views not in VIEWS:
        raise RecipeError(f"{where}: check.views {views!r}; valid: {', '.join(VIEWS)} (one-pixel-shifts checks "
                          "every film and its four one-pixel-shifted copies, pooled)")
    significance = _parse_significance(check, limit, where)
    return ExportPolicy(spec.name, tolerance, io_dtype, bool(quant.get("per_channel", True)), source,
                        manifest, min_n, rec_n, split, envelope, limit, views, significance, bias_correction, path,
                        data)


def _parse_bias_correction(value, where: str) -> int:
    """``quantization.bias_correction``: ``{"images": N}`` (N calibration images) -> N; absent/null/false -> 0."""
    if value is None or value is False:
        return 0
    images = value.get("images") if isinstance(value, dict) else None
    if (isinstance(value, dict) and set(value) - {"images"}) or isinstance(images, bool) \
            or not isinstance(images, int) or not 16 <= images <= 10000:
        raise RecipeError(f"{where}: quantization.bias_correction must be {{\"images\": N}} with N in 16..10000 "
                          f"calibration images the weight-rounding bias is measured on (128 in the shipped "
                          f"policies), or false; got {value!r}")
    return images


def _parse_significance(check: dict, limit, where: str) -> Significance | None:
    sig = check.get("significance")
    if sig is None:
        return None
    if not isinstance(sig, dict) or set(sig) - {"alpha", "permutations", "seed"}:
        raise RecipeError(f"{where}: check.significance must be an object with alpha (and optionally "
                          f"permutations, seed), e.g. {{\"alpha\": 0.05}}; got {sig!r}")
    if limit is None:
        raise RecipeError(f"{where}: check.significance needs check.envelope_limit: the limit is the drop that "
                          "fails whatever a test on the films says")
    try:
        alpha = float(_need(sig, "alpha", f"{where}: check.significance"))
        perms, seed = int(sig.get("permutations", 1000)), int(sig.get("seed", 0))
    except (TypeError, ValueError, OverflowError) as exc:
        raise RecipeError(f"{where}: check.significance: {exc}") from exc
    if not (math.isfinite(alpha) and 0 < alpha < 0.5) or not 99 <= perms <= MAX_PERMUTATIONS:
        raise RecipeError(f"{where}: check.significance needs 0 < alpha < 0.5 and 99 <= permutations <= "
                          f"{MAX_PERMUTATIONS} "
                          f"(got alpha {alpha}, permutations {perms})")
    return Significance(alpha, perms, seed)


def _parse_tolerance(spec: TaskSpec, tol: dict, where: str, key: str = "check.tolerance") -> Int8Tolerance:
    if not isinstance(tol, dict):
        raise RecipeError(f"{where}: {key} must be an object of allowed deltas, e.g. {{\"accuracy\": 0.005}}")
    missing = [k for k in checked_keys(spec) if k not in tol]
    if missing:
        raise RecipeError(f"{where}: {key} lacks {missing}, which task {spec.name} is checked on "
                          f"(it needs {list(checked_keys(spec))}); state every allowed delta explicitly")
    try:
        parsed = Int8Tolerance.from_dict({k: float(v) for k, v in tol.items()})
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{where}: {key}: {exc}") from exc
    for name, value in parsed.to_dict().items():
        if not math.isfinite(value) or not -1.0 <= value <= 1.0:
            raise RecipeError(f"{where}: {key} {name}={value} must be a number in [-1, 1]")
    return parsed


def load_policy(path) -> ExportPolicy:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"export policy {path} does not exist; the shipped ones are gate.json, cxr4.json and "
                          "nih14.json in cxr_edge/resources/export/ (leave --policy out to use them)") from None
    except (OSError, ValueError) as exc:
        raise RecipeError(f"export policy {path} cannot be read ({exc})") from exc
    return parse_policy(data, path=path.resolve())


def default_policy_path(spec: TaskSpec) -> Path:
    """``export/<task>.json`` (else ``export/<family>.json``) under the working directory, then the policies
    shipped in the package (``cxr_edge/resources/export``)."""
    from ..config import package_data

    roots = [Path.cwd() / "export", package_data("resources", "export")]
    for root in roots:
        for name in dict.fromkeys((spec.name, spec.family)):
            if (root / f"{name}.json").is_file():
                return root / f"{name}.json"
    raise RecipeError(f"no export policy for task {spec.name}: looked for {spec.name}.json in "
                      f"{', '.join(str(r) for r in roots)}. Pass --policy PATH, e.g. a copy of "
                      f"cxr_edge/resources/export/{spec.family}.json")


# --------------------------------------------------------------------------- measuring


def summarize(spec: TaskSpec, y, probs) -> dict:
    """The numbers export compares, from :func:`cxr_edge.tools.metrics.task_metrics` (no bootstrap)."""
    m = task_metrics(spec, y, probs, n_resamples=0)
    out = {"accuracy": m["accuracy"]["value"]}
    if "auroc" in m:       # one-label sigmoid: its AUROC is the mean AUROC
        out["auroc"] = m["auroc"]["value"]
    else:
        out["mean_auroc"] = m["mean_auroc"]["value"]
    if "macro_f1" in m:
        out["macro_f1"] = m["macro_f1"]["value"]
        out["confusion_matrix"] = m["confusion_matrix"]["counts"]
    if spec.num_labels > 1:
        out["per_label_auroc"] = {lbl: d["auroc"] for lbl, d in m["per_label"].items()}
    out["n_positive"] = {lbl: d["n_positive"] for lbl, d in m["per_label"].items()}
    return out


def _delta(a, b):
    return None if a is None or b is None else b - a


def _feature_correlation(features) -> float | None:
    if features is None or any(f is None for f in features):
        return None
    a, b = (np.asarray(f, np.float64).ravel() for f in features)
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _margins(spec: TaskSpec, probs_float, probs_int8) -> dict:
    """How close to a decision boundary the float model is on all decisions and on those int8 flips.

    Softmax: top-1 minus top-2 probability per image; sigmoid: |p - 0.5| per label decision. Flips
    concentrated at small margins mean an uncertain model, where any perturbation changes decisions.
    """
    a, b = np.asarray(probs_float, np.float64), np.asarray(probs_int8, np.float64)
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    if not spec.multilabel:
        top2 = np.sort(a, axis=1)[:, -2:]
        margin, flipped = top2[:, 1] - top2[:, 0], a.argmax(axis=1) != b.argmax(axis=1)
    else:
        thr = spec.default_threshold
        margin, flipped = np.abs(a - thr).ravel(), ((a >= thr) != (b >= thr)).ravel()
    return {"median_all": float(np.median(margin)) if margin.size else None,
            "median_flipped": float(np.median(margin[flipped])) if flipped.any() else None,
            "max_flipped": float(margin[flipped].max()) if flipped.any() else None,
            "n_flipped": int(flipped.sum()), "share_below_0.1": float(np.mean(margin < 0.1)) if margin.size else None}


def shift_images(x: np.ndarray, down: int, right: int) -> np.ndarray:
    """Model inputs (N, S, S[, C]) moved by whole pixels; the edge rows/columns are repeated into the gap."""
    x = np.asarray(x)
    pad = [(0, 0), (abs(down), abs(down)), (abs(right), abs(right))] + [(0, 0)] * (x.ndim - 3)
    padded = np.pad(x, pad, mode="edge")
    h, w = x.shape[1:3]
    top, left = abs(down) - down, abs(right) - right
    return padded[:, top:top + h, left:left + w]


def check_views(x: np.ndarray, views: str) -> list[tuple[tuple[int, int], np.ndarray]]:
    """The check images of one policy: ``[((0, 0), x)]`` for ``"original"``; for ``"one-pixel-shifts"`` also
    ``x`` moved by each of :data:`ONE_PIXEL_SHIFTS`, in that order. Each entry is ``((down, right), images)``."""
    if views not in VIEWS:
        raise ValueError(f"views {views!r}; valid: {', '.join(VIEWS)}")
    out = [((0, 0), np.asarray(x))]
    if views == "one-pixel-shifts":
        out += [((down, right), shift_images(x, down, right)) for down, right in ONE_PIXEL_SHIFTS]
    return out


def by_view(spec: TaskSpec, y, probs_float, probs_int8, shifts) -> list[dict]:
    """The pooled check taken apart: per view (``shifts``, in the order the outputs were stacked), the
    agreement and each scalar metric float -> int8. JSON-ready; reported, not checked."""
    n = len(shifts)
    y, a, b = (np.asarray(v) for v in (y, probs_float, probs_int8))
    if n < 1 or len(a) % n:
        raise ValueError(f"{len(a)} outputs do not split into {n} views")
    rows = []
    for i, (yy, fa, fb) in enumerate(zip(np.split(y, n), np.split(a, n), np.split(b, n))):
        f, q = summarize(spec, yy, fa), summarize(spec, yy, fb)
        rows.append({"shift": list(shifts[i]), "agreement": agreement(spec, fa, fb)["agreement"],
                     "float": {k: f[k] for k in SCALARS if k in f}, "int8": {k: q[k] for k in SCALARS if k in q}})
    return rows


def one_pixel_envelope(spec: TaskSpec, y, x, probs_float, predict, shifted: dict | None = None) -> dict:
    """What the float model does to its own metrics and decisions when the images move by one pixel.

    ``predict(x) -> probs`` is the float model; ``shifted`` maps a ``(down, right)`` shift to float outputs
    already computed for it (export's check views), used instead of running it again. Returns, over the
    four one-pixel shifts, the largest drop of every checked metric (never below 0) and the lowest
    self-agreement, with each shift's numbers. JSON-ready.
    """
    base = summarize(spec, y, probs_float)
    shifts = []
    for down, right in ONE_PIXEL_SHIFTS:
        p = (shifted or {}).get((down, right))
        p = predict(shift_images(x, down, right)) if p is None else p
        s, agree = summarize(spec, y, p), agreement(spec, probs_float, p)
        row = {"shift": [down, right], "agreement": agree["agreement"],
               "drop": {k: _drop(base.get(k), s.get(k)) for k in SCALARS if k in base}}
        if "per_label_auroc" in base:
            row["drop"]["per_label_auroc"] = {lbl: _drop(base["per_label_auroc"][lbl], s["per_label_auroc"][lbl])
                                              for lbl in spec.labels}
        shifts.append(row)
    drop = {k: max(max(0.0, r["drop"][k] or 0.0) for r in shifts) for k in base if k in SCALARS}
    if "per_label_auroc" in base:
        drop["per_label_auroc"] = {lbl: max(max(0.0, r["drop"]["per_label_auroc"][lbl] or 0.0) for r in shifts)
                                   for lbl in spec.labels}
    agreements = [r["agreement"] for r in shifts if r["agreement"] is not None]
    return {"kind": "one-pixel-shift", "agreement": min(agreements) if agreements else None, "drop": drop,
            "shifts": shifts}


def _drop(a, b):
    return None if a is None or b is None else a - b


def _metric_of(summary: dict, metric: str, label):
    return summary["per_label_auroc"][label] if label is not None else summary[metric]


def paired_permutation(spec: TaskSpec, y, probs_float, probs_int8, films: int, keys, *, permutations: int = 1000,
                       seed: int = 0) -> dict:
    """One-sided p of each ``(metric, label)`` drop float - int8 under "int8 and float are exchangeable".

    The rows are ``views`` stacked copies of ``films`` films (row ``i`` is film ``i % films``). Every
    permutation swaps float's and int8's outputs on a random half of the films -- all views of a film
    together, since they are one film -- and recomputes the drop. p = (1 + swaps with a drop >= the
    measured one) / (1 + permutations): the chance of a loss this large if quantization cost nothing.
    Seeded: the same outputs give the same p.
    """
    a, b, y = np.asarray(probs_float), np.asarray(probs_int8), np.asarray(y)
    if films < 1 or len(a) % films or len(a) != len(b):
        raise ValueError(f"{len(a)} outputs are not whole views of {films} films")
    views = len(a) // films
    keys = list(keys)
    fs, qs = summarize(spec, y, a), summarize(spec, y, b)
    observed = {k: _metric_of(fs, *k) - _metric_of(qs, *k) for k in keys}
    rng = np.random.default_rng(seed)
    fast = not spec.multilabel and all(m in ("accuracy", "macro_f1") for m, _ in keys)
    hits = dict.fromkeys(keys, 0)
    for start in range(0, permutations, PERMUTATION_BLOCK):   # bounded memory: one block of swaps at a time
        swaps = rng.random((min(PERMUTATION_BLOCK, permutations - start), films)) < 0.5
        if fast:
            drops = _softmax_drops(spec, y, a, b, films, swaps)
        else:
            drops = {k: np.empty(len(swaps)) for k in keys}
            for i, swap in enumerate(swaps):
                swap = np.tile(swap, views)[:, None]
                pa, pb = summarize(spec, y, np.where(swap, b, a)), summarize(spec, y, np.where(swap, a, b))
                for k in keys:
                    drops[k][i] = _metric_of(pa, *k) - _metric_of(pb, *k)
        for k in keys:
            hits[k] += int(np.sum(drops[k] >= observed[k] - 1e-12))
    return {k: (1 + hits[k]) / (1 + permutations) for k in keys}


def agreement_permutation(spec: TaskSpec, probs_float, probs_int8, films: int, *, permutations: int = 1000,
                          seed: int = 0) -> dict:
    """One-sided p of "int8 changes no more decisions than moving the film by one pixel changes the float model's".

    The rows are whole views of ``films`` films stacked view by view, the first block the films as they are
    and each further block one one-pixel shift (:func:`check_views`' order). Per film ``i``:
    ``d_i`` = the share of its decisions int8 changes (every view, int8 against float on the same view) minus the
    share a shift changes (float on each shifted view against float on the film as it is). If int8 disturbs the
    decisions no more than a shift does, the ``d_i`` centre at or below zero; every permutation flips the sign of
    ``d_i`` on a random half of the films (a film's views stay together: they are one film) and p = (1 + flips
    whose mean is >= the measured mean) / (1 + permutations). Seeded: the same outputs give the same p. Needs at
    least one shifted view (``ValueError`` otherwise). JSON-ready result: ``p_value``, the two shares, ``films``.
    """
    a, b = decisions(spec, probs_float), decisions(spec, probs_int8)
    if films < 1 or len(a) % films or len(a) != len(b):
        raise ValueError(f"{len(a)} outputs are not whole views of {films} films")
    views = len(a) // films
    if views < 2:
        raise ValueError("the agreement test needs the shifted views (check.views = one-pixel-shifts)")
    a = a.reshape(views, films, -1)
    b = b.reshape(views, films, -1)
    int8_share = (a != b).mean(axis=(0, 2))                      # per film, over views and decisions
    shift_share = (a[1:] != a[:1]).mean(axis=(0, 2))             # per film, over the shifts and decisions
    d = int8_share - shift_share
    observed = float(d.mean())
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, permutations, PERMUTATION_BLOCK):
        signs = np.where(rng.random((min(PERMUTATION_BLOCK, permutations - start), films)) < 0.5, -1.0, 1.0)
        hits += int(np.sum(signs @ d / films >= observed - 1e-12))
    return {"p_value": (1 + hits) / (1 + permutations), "int8_changes": float(int8_share.mean()),
            "shift_changes": float(shift_share.mean()), "films": int(films), "views": int(views),
            "permutations": int(permutations)}


def _softmax_drops(spec: TaskSpec, y, a, b, films: int, swaps: np.ndarray) -> dict:
    """Accuracy and macro-F1 drops of every swap at once, from per-film confusion counts (softmax tasks)."""
    k = spec.num_labels
    truth = np.asarray(y).argmax(1)
    film = np.arange(len(truth)) % films
    counts = []
    for probs in (a, b):
        cells = np.zeros((films, k * k))
        np.add.at(cells, (film, truth * k + np.asarray(probs).argmax(1)), 1.0)
        counts.append(cells)
    s = swaps.astype(np.float64)
    cm_a = ((1 - s) @ counts[0] + s @ counts[1]).reshape(-1, k, k)
    cm_b = (s @ counts[0] + (1 - s) @ counts[1]).reshape(-1, k, k)
    n = len(truth)
    acc = (np.trace(cm_a, axis1=1, axis2=2) - np.trace(cm_b, axis1=1, axis2=2)) / n
    f1 = f1_from_confusion(cm_a).mean(axis=-1) - f1_from_confusion(cm_b).mean(axis=-1)
    return {("accuracy", None): acc, ("macro_f1", None): f1}


def _chance(spec, y, probs_float, probs_int8, checks, films, significance: Significance) -> None:
    """Failed checks that the films cannot tell from chance pass, up to their limit (in place).

    A drop: the paired permutation test of float's and int8's outputs (:func:`paired_permutation`). Agreement
    below its bar: the sign-flip test of int8's changed decisions against the one-pixel shifts' own
    (:func:`agreement_permutation`), when the check ran on the shifted views; never below the floor."""
    _agreement_chance(spec, probs_float, probs_int8, checks, films, significance)
    failed = [c for c in checks if not c["passed"] and c["metric"] != "agreement" and c["drop"] is not None]
    if not failed:
        return
    p = paired_permutation(spec, y, probs_float, probs_int8, films, [(c["metric"], c["label"]) for c in failed],
                           permutations=significance.permutations, seed=significance.seed)
    for c in failed:
        cap = max(c["limit"], c["tolerance"]) if c.get("limit") is not None else c["tolerance"]
        c.update(p_value=p[(c["metric"], c["label"])], alpha=significance.alpha, films=films,
                 permutations=significance.permutations, cap=cap)
        c["chance"] = c["p_value"] >= significance.alpha
        c["passed"] = c["chance"] and c["drop"] <= cap + 1e-12


def _agreement_chance(spec, probs_float, probs_int8, checks, films, significance: Significance) -> None:
    c = next((c for c in checks if c["metric"] == "agreement" and not c["passed"] and c["value"] is not None), None)
    rows = len(np.asarray(probs_float))
    if c is None or films < 1 or rows < 2 * films or rows % films:
        return   # passed, or no whole shifted views to measure a shift's own changes on
    r = agreement_permutation(spec, probs_float, probs_int8, films, permutations=significance.permutations,
                              seed=significance.seed)
    floor = c["limit"] if c["limit"] is not None else c["tolerance"]   # no limit: nothing passes below the policy
    c.update(p_value=r["p_value"], alpha=significance.alpha, films=films, permutations=significance.permutations,
             cap=floor, int8_changes=r["int8_changes"], shift_changes=r["shift_changes"])
    c["chance"] = c["p_value"] >= significance.alpha
    c["passed"] = c["chance"] and c["value"] >= floor - 1e-12


def _check(metric, label, flt, q, tolerance, envelope=None, limit=None) -> dict:
    drop = None if flt is None or q is None else flt - q
    allowed = tolerance if envelope is None or envelope <= 0 else max(tolerance, envelope)
    if limit is not None:
        allowed = min(allowed, max(limit, tolerance))
    return {"metric": metric, "label": label, "float": flt, "int8": q, "drop": drop, "allowed": allowed,
            "tolerance": tolerance, "envelope": envelope, "limit": limit,
            "passed": drop is None or drop <= allowed + 1e-12}


def compare(spec: TaskSpec, y, probs_float, probs_int8, tolerance: Int8Tolerance, *, features=None,
            envelope: dict | None = None, limit: Int8Tolerance | None = None, films: int | None = None,
            significance: Significance | None = None) -> dict:
    """Measure the int8 model against the float model on the same images and apply ``tolerance``.

    ``features``: optional ``(float, int8)`` pooled feature arrays; their correlation says whether
    drift starts in the backbone (low) or only at the head (high). ``envelope``: the float model's own
    one-pixel-shift noise (:func:`one_pixel_envelope`); each check then allows the larger of the two, but
    never more than ``limit`` (the policy's ``envelope_limit``). ``significance`` with ``films`` (the rows
    are whole views of that many films): a drop past its allowance that a paired permutation test cannot tell
    from chance passes, up to ``limit`` (:func:`paired_permutation`), and an agreement below its bar that int8
    reaches by changing no more decisions than a one-pixel shift does, as far as the films can tell, passes
    down to the limit's floor (:func:`agreement_permutation`; the rows must hold the shifted views). JSON-ready
    result.
    """
    flt, q = summarize(spec, y, probs_float), summarize(spec, y, probs_int8)
    env_drop = (envelope or {}).get("drop", {})
    agree = agreement(spec, probs_float, probs_int8)
    delta = {k: _delta(flt[k], q[k]) for k in SCALARS if k in flt}
    if "per_label_auroc" in flt:
        delta["per_label_auroc"] = {lbl: _delta(flt["per_label_auroc"][lbl], q["per_label_auroc"][lbl])
                                    for lbl in spec.labels}
    checks = []
    for key in checked_keys(spec):
        if key == "agreement":
            env = (envelope or {}).get("agreement")
            allowed_min = tolerance.agreement if env is None or env >= 1 else min(tolerance.agreement, env)
            floor = None if limit is None else min(limit.agreement, tolerance.agreement)
            if floor is not None:
                allowed_min = max(allowed_min, floor)
            checks.append({"metric": "agreement", "label": None, "value": agree["agreement"],
                           "allowed_min": allowed_min, "tolerance": tolerance.agreement, "envelope": env,
                           "limit": floor,
                           "passed": agree["agreement"] is not None and agree["agreement"] >= allowed_min})
        elif key == "label_auroc":
            for lbl in spec.labels:
                env = env_drop.get("per_label_auroc", {}).get(lbl) if envelope else None
                row = _check("auroc", lbl, flt["per_label_auroc"][lbl], q["per_label_auroc"][lbl],
                             tolerance.label_auroc, env, limit.label_auroc if limit else None)
                checks.append(dict(row, n_positive=flt["n_positive"][lbl]))
        else:
            metric = "auroc" if key == "mean_auroc" and "auroc" in flt else key
            checks.append(_check(metric, None, flt[metric], q[metric], getattr(tolerance, key),
                                 env_drop.get(metric) if envelope else None,
                                 getattr(limit, key) if limit else None))
    if significance is not None:
        _chance(spec, y, probs_float, probs_int8, checks, films or len(np.asarray(probs_float)), significance)
    return {"n": int(len(np.asarray(probs_float))), "float": flt, "int8": q, "delta": delta,
            "delta_definition": DELTA_DEFINITION, "agreement": agree["agreement"], "agreement_kind": agree["kind"],
            "agreement_per_label": agree.get("per_label"), "max_abs_diff": agree["max_abs_diff"],
            "mean_abs_diff": agree["mean_abs_diff"], "feature_correlation": _feature_correlation(features),
            "float_margin": _margins(spec, probs_float, probs_int8),
            "tolerance": tolerance.to_dict(), "envelope": envelope, "checks": checks,
            "significance": significance.to_dict() if significance else None,
            "passed": all(c["passed"] for c in checks)}


def describe_failure(check: dict) -> str:
    """One line naming the metric (and label), the measured delta and what was allowed."""
    if check["metric"] == "agreement":
        env = (f"; the float model agrees with itself on {check['envelope']:.4f} under a one-pixel shift"
               if check.get("envelope") is not None else "")
        chance = ""
        if check.get("p_value") is not None:
            chance = (f"; below the floor {check['cap']:.4f} it fails whatever the films say" if check["chance"] else
                      f"; not chance: int8 changes {100 * check['int8_changes']:.1f}% of decisions, a one-pixel "
                      f"shift {100 * check['shift_changes']:.1f}%, and a sign-flip test over the {check['films']} "
                      f"films gives p = {check['p_value']:.3f} < {check['alpha']:g}")
        return (f"agreement {check['value']:.4f} is below the required {check['allowed_min']:.4f} "
                f"(float and int8 decide differently on {100 * (1 - check['value']):.1f}% of decisions{env}){chance}")
    name = check["metric"] + (f"[{check['label']}]" if check["label"] else "")
    extra = f", {check['n_positive']} positive image(s)" if check.get("n_positive") is not None else ""
    change = f"dropped by {check['drop']:.4f}" if check["drop"] > 0 else f"changed by {-check['drop']:+.4f}"
    env = (f" (the policy's {check['tolerance']:.4f}, widened to what a one-pixel shift does to the float model"
           + (f", at most {check['limit']:.4f}" if check.get("limit") is not None else "") + ")"
           if check.get("envelope") is not None and check["envelope"] > check.get("tolerance", check["allowed"])
           else "")
    chance = ""
    if check.get("p_value") is not None:
        chance = (f"; beyond the limit {check['cap']:.4f} it fails whatever the films say (p = "
                  f"{check['p_value']:.3f})" if check["chance"] else
                  f"; not chance: a paired permutation test over the {check['films']} films gives p = "
                  f"{check['p_value']:.3f} < {check['alpha']:g}")
    return (f"{name} {change} (float {check['float']:.4f} -> int8 {check['int8']:.4f}{extra}); "
            f"allowed drop {check['allowed']:.4f}{env}{chance}")


def failures(result: dict) -> list[str]:
    return [describe_failure(c) for c in result["checks"] if not c["passed"]]


def _qat_fixes(qat_keras: dict | None, result: dict, ptq_tried: bool) -> list[str]:
    """QAT: tell a QAT model that itself lost accuracy from a conversion that lost it."""
    fixes = []
    agree = (qat_keras or {}).get("int8_agreement_with_qat_keras")
    if qat_keras and agree is not None and agree >= result["tolerance"]["agreement"]:
        own = ", ".join(f"{k} {qat_keras['metrics'][k]:.4f}" for k in SCALARS
                        if isinstance(qat_keras["metrics"].get(k), float))
        fixes.append(f"the QAT Keras model itself is off ({own}) while its int8 conversion matches it "
                     f"(agreement {agree:.4f}): fix the QAT fine-tuning, not the conversion: calibrate the "
                     "fake-quant ranges on training batches before fine-tuning, keep BatchNormalization frozen, "
                     "train more steps at a low learning rate, and keep the best QAT epoch on validation")
    else:
        fixes.append("more QAT fine-tuning (more epochs or steps at a low learning rate) so the fake-quant "
                     "ranges settle, or QAT from a better float checkpoint")
    if not ptq_tried:
        fixes.append("compare with post-training quantization: --from auto builds both and keeps the better")
    return fixes


def likely_fixes(result: dict, *, source: str, calibration_n: int | None, recommended_n: int,
                 per_channel: bool, split_n: int, qat_keras: dict | None = None, tried=()) -> list[str]:
    """What is most likely to bring an int8 model within tolerance, given how it failed.

    ``tried``: the sources export already built (``'ptq'``, ``'qat'``): trying them again is no advice.
    """
    fixes = []
    corr = result.get("feature_correlation")
    qat_tried = "qat" in tried
    if source == "ptq":
        if not qat_tried:
            fixes.append("quantization-aware training instead of post-training quantization: run `cxr-edge qat "
                         "RUN_DIR`, then export with --from qat (or --from auto to keep the better of the two)")
        if calibration_n is not None and calibration_n < 2 * recommended_n:
            fixes.append(f"more calibration data: the set has {calibration_n} images; build a larger one "
                         f"(cxr-edge calibration build PREPARED --n {max(2 * recommended_n, 500)}) covering "
                         "every class")
        if not per_channel:
            fixes.append("per-channel weight quantization (quantization.per_channel: true): per-tensor "
                         "destroys MobileNetV2's depthwise features")
    else:
        fixes += _qat_fixes(qat_keras, result, "ptq" in tried)
    if corr is not None and corr < 0.95:
        hint = "; QAT is the fix that addresses this" if source == "ptq" and not qat_tried else ""
        fixes.append(f"the pooled features of int8 and float correlate only {corr:.3f}: the drift starts in the "
                     f"backbone, not at the head{hint}")
    margin = result.get("float_margin") or {}
    if margin.get("n_flipped") and margin.get("median_flipped") is not None and margin["median_flipped"] < 0.1:
        fixes.append(f"the {margin['n_flipped']} changed decisions sit where the float model itself is unsure "
                     f"(median float margin {margin['median_flipped']:.3f} vs {margin['median_all']:.3f} overall; "
                     f"{100 * margin['share_below_0.1']:.0f}% of all decisions are within 0.1 of the boundary): "
                     "a more decisive float model (more or cleaner training data, longer training) leaves int8 "
                     "less to flip")
    small = [c for c in result["checks"] if not c["passed"] and c.get("n_positive") is not None
             and c["n_positive"] < 10]
    if small or split_n < 200:
        fixes.append(f"a larger check split: {split_n} images"
                     + (f", and {', '.join(c['label'] + ' has ' + str(c['n_positive']) for c in small)} positive "
                        "image(s), so one swapped rank moves that AUROC by a lot" if small else "")
                     + "; the check measures real loss only as well as the split allows")
    return fixes
