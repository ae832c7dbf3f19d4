"""A trained model against the linear probe: logistic regression on frozen ImageNet MobileNetV2 features.

Run (workstation; ~2 minutes for cxr4 on 2 cores, features cached for the next run):

    TF_USE_LEGACY_KERAS=1 python benchmarks/linear_probe.py MODEL [MODEL ...] --data prepared/cxr4 \
        [--splits val,test] [--json out.json]

MODEL is a model pack (its int8 model for the data's task, run through the device path exactly as
``cxr-edge evaluate`` runs it) or a training run (its Keras float model). The probe, fitted in the same
run: the ImageNet MobileNetV2 (alpha 1.0, ``../shared/weights``, grey input as the models take it) at the
task's input size, frozen; its pooled features of the *train* split's digital films; an L2 logistic
regression on them (``cxr_edge.training.probe``: balanced classes, C by patient-grouped cross-validation
on train). Both are scored on each split's digital films with the task's primary metric and accuracy
(patient-bootstrap 95% CIs), and the difference model - probe gets a paired patient-bootstrap CI (the
same resamples for both). The probe is the bar: a fine-tuned model that does not clear it on val and test
is not earning its training time (issue 15).

The backbone features are cached under ``$CXR_EDGE_BENCH_CACHE`` (default /tmp/cxr-edge-bench-cache),
keyed by the prepared data's sha256 and the weights file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _timing import shared_dir  # noqa: E402

CACHE = Path(os.environ.get("CXR_EDGE_BENCH_CACHE", "/tmp/cxr-edge-bench-cache"))
IMAGENET_H5 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
N_BOOT = 1000


def imagenet_features(prepared, splits, weights: Path) -> dict:
    """Pooled features (N, 1280) of the frozen ImageNet MobileNetV2 for each split's digital films."""
    st = weights.stat()
    key = hashlib.sha256(f"{prepared.data_sha256}|{weights.name}|{st.st_size}|{prepared.task.input.size}"
                         .encode()).hexdigest()[:16]
    path = CACHE / f"probe-features-{prepared.task.name}-{key}.npz"
    cached = dict(np.load(path)) if path.is_file() else {}
    missing = [s for s in splits if s not in cached]
    if missing:
        from cxr_edge.runtime.preprocess import normalize
        from cxr_edge.training.model import build_model, feature_extractor
        from cxr_edge.training.trainer import Predictor

        extractor = Predictor(feature_extractor(build_model(prepared.task, alpha=1.0, weights=weights)))
        for split in missing:
            images = prepared.images(split)
            started = time.perf_counter()
            cached[split] = np.concatenate([extractor(normalize(np.asarray(images.take(np.arange(i, min(i + 64, len(images))))),
                                                                prepared.task))
                                            for i in range(0, len(images), 64)])
            print(f"  features {split}: {len(images)} images in {time.perf_counter() - started:.0f} s", flush=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, **cached)
        os.replace(tmp, path)
    return cached


def paired_difference(spec, y, p_model, p_probe, groups, seed: int = 0) -> dict:
    """Primary metric of model - probe, with a paired patient-bootstrap 95% CI (same resamples for both)."""
    from cxr_edge.tools.metrics import task_metrics

    def primary(idx, p):
        return task_metrics(spec, y[idx], p[idx], n_resamples=0)["primary"]["value"]

    everyone = np.arange(len(y))
    value = primary(everyone, p_model) - primary(everyone, p_probe)
    uniq, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(N_BOOT):
        idx = np.concatenate([members[g] for g in rng.integers(len(uniq), size=len(uniq))])
        a, b = primary(idx, p_model), primary(idx, p_probe)
        if a is not None and b is not None:
            diffs.append(a - b)
    lo, hi = np.percentile(diffs, [2.5, 97.5]) if diffs else (None, None)
    return {"value": value, "ci": [float(lo), float(hi)] if diffs else None,
            "share_of_resamples_model_better": float(np.mean(np.array(diffs) > 0)) if diffs else None}


def summary(m: dict) -> dict:
    return {"primary": m["primary"]["value"], "ci": m["primary"]["ci"], "accuracy": m["accuracy"]["value"],
            "accuracy_ci": m["accuracy"]["ci"], "mean_auroc": m["mean_auroc"]["value"]}


def measure(models, data: Path, splits, weights: Path) -> dict:
    from cxr_edge.data.prepared import open_prepared
    from cxr_edge.tools.metrics import task_metrics
    from cxr_edge.tools.split_runner import model_outputs, open_model
    from cxr_edge.training.probe import fit_probe

    prepared = open_prepared(data)
    spec = prepared.task
    feats = imagenet_features(prepared, ["train", *splits], weights)
    started = time.perf_counter()
    probe = fit_probe(feats["train"], prepared.labels("train"), spec.activation, groups=prepared.patients("train"))
    fit_s = time.perf_counter() - started
    out = {"data": str(prepared.path), "data_sha256": prepared.data_sha256, "task": spec.name,
           "metric": spec.primary_metric, "probe": {**probe.describe(), "fit_seconds": round(fit_s, 1),
                                                    "backbone": f"ImageNet MobileNetV2 1.0 ({weights.name}), frozen"},
           "splits": {}}
    from cxr_edge.training.run_model import open_run_model     # a training run's float model (TensorFlow)
    opened = [open_model(m, prepared, threads=2, run_opener=open_run_model) for m in models]
    for split in splits:
        y, groups = prepared.labels(split), prepared.patients(split)
        p_probe = probe.predict(feats[split])
        row = {"n": int(len(y)), "probe": summary(task_metrics(spec, y, p_probe, groups=groups, n_resamples=N_BOOT)),
               "models": {}}
        for m in opened:
            raw, _, _ = model_outputs(m, prepared, split)
            p = m.probabilities(raw)
            row["models"][str(m.path)] = {
                "kind": m.kind, **summary(task_metrics(spec, y, p, thresholds=m.thresholds, groups=groups,
                                                       n_resamples=N_BOOT)),
                "minus_probe": paired_difference(spec, y, p, p_probe, groups)}
        out["splits"][split] = row
    return out


def print_table(r: dict) -> None:
    def fmt(m):
        lo_hi = m["ci"] or [float("nan")] * 2
        return f"{m['primary']:.3f} [{lo_hi[0]:.3f},{lo_hi[1]:.3f}]"

    print(f"\n{r['data']} ({r['task']}; {r['metric']} and accuracy on digital films; probe C={r['probe']['C']})")
    print(f"  {'split':<5} {'n':>4}  {'model':<44} {r['metric']:>22} {'accuracy':>9}  {'model - probe (95% CI)':>28}")
    for split, row in r["splits"].items():
        p = row["probe"]
        print(f"  {split:<5} {row['n']:>4}  {'linear probe (ImageNet features)':<44} {fmt(p):>22} {p['accuracy']:>9.3f}")
        for name, m in row["models"].items():
            d = m["minus_probe"]
            ci = d["ci"] or [float("nan")] * 2
            label = f"{m['kind']} {name}"[-44:]
            print(f"  {split:<5} {row['n']:>4}  {label:<44} {fmt(m):>22} {m['accuracy']:>9.3f}  "
                  f"{d['value']:+.3f} [{ci[0]:+.3f},{ci[1]:+.3f}]")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path, help="model packs and/or training run folders")
    ap.add_argument("--data", type=Path, required=True, help="the prepared data (e.g. prepared/cxr4)")
    ap.add_argument("--splits", default="val,test")
    ap.add_argument("--weights", type=Path, default=None, help=f"ImageNet no-top .h5 (default ../shared/weights/"
                                                                f"{IMAGENET_H5})")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    weights = args.weights or shared_dir() / "weights" / IMAGENET_H5
    r = measure(args.models, args.data, args.splits.split(","), weights)
    print_table(r)
    if args.json:
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps(r, indent=2, default=float) + "\n")
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
