"""The staged recipe against the source projects' baseline (frozen ImageNet backbone + new head only),
measured on the same run's splits, on digital films and on simulated phone photos.

Run (workstation; ~1-3 minutes per run at 224 px on 2 cores):

    TF_USE_LEGACY_KERAS=1 nice -n 5 python benchmarks/staged_vs_head_only.py runs/cxr4 [RUN_DIR ...] \
        [--splits val,test] [--photo-severity moderate] [--json out.json]

The baseline is ``RUN_DIR/state/after-<first stage>.h5``: the best model when the first stage (frozen
backbone, head on cached features) ended, i.e. exactly what head-only training gives with this run's
data, split, seed and head settings. The staged model is ``RUN_DIR/float.h5``. Both are scored with
``cxr_edge.tools.metrics.task_metrics`` (patient-bootstrap 95% CIs) on each split as digital films (the
device preprocessing) and with every image turned into a simulated, rectified phone photo
(``cxr_edge.tools.photosim`` via the training augmentation's ``photo_batch``, fixed seed). The difference
column is staged minus baseline. That photo is the training look: effects drawn on the already
straightened film. It is milder than ``photo_pipeline.py accuracy`` (a full photo simulated, then found
and straightened by predict), whose scenes compress the film's contrast far more (a film on a desk
peaks near 67/255): the same cxr4 model scores macro-F1 ~0.82 here and ~0.64 there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def inputs(prepared, split, photo_severity):
    """(digital, photo) float32 model inputs of a split."""
    from cxr_edge.runtime.preprocess import normalize
    from cxr_edge.training.augment import AugmentConfig, photo_batch

    pixels = np.asarray(prepared.images(split))
    config = AugmentConfig(photo_prob=1.0, photo_severity=photo_severity)
    photos = photo_batch(pixels, config, np.random.default_rng([7, len(pixels)]))
    return normalize(pixels, prepared.task), normalize(photos, prepared.task)


def measure(run_dir: Path, splits, photo_severity) -> dict:
    from cxr_edge.tools.metrics import task_metrics
    from cxr_edge.training.runs import load_keras_model, load_run
    from cxr_edge.training.trainer import Predictor

    run = load_run(run_dir)
    spec, prepared = run.task, run.prepared()
    first = run.info["stages"][0]
    models = {"head_only": load_keras_model(run_dir / first["checkpoint"], qat=False), "staged": run.float_model()}
    out = {"run": str(run_dir), "task": spec.name, "metric": spec.primary_metric, "baseline_stage": first["name"],
           "best": run.info["best"], "results": {}}
    for split in splits:
        x = dict(zip(("digital", "photo"), inputs(prepared, split, photo_severity)))
        y, groups = prepared.labels(split), prepared.patients(split)
        for kind, xs in x.items():
            row = {}
            for name, model in models.items():
                m = task_metrics(spec, y, Predictor(model)(xs), groups=groups, n_resamples=500)
                row[name] = {"primary": m["primary"]["value"], "ci": m["primary"]["ci"],
                             "accuracy": m["accuracy"]["value"], "mean_auroc": m["mean_auroc"]["value"]}
            out["results"][f"{split}/{kind}"] = {"n": int(len(y)), **row}
    return out


def print_table(r: dict) -> None:
    print(f"\n{r['run']} ({r['task']}; {r['metric']}; baseline = best after stage '{r['baseline_stage']}', "
          f"staged = float.h5 from stage '{r['best']['stage']}')")
    print(f"  {'split/input':<14} {'n':>4}  {'head only':>22}  {'staged':>22}  {'Δ':>7}  {'acc head/staged':>16}")
    for key, row in r["results"].items():
        a, b = row["head_only"], row["staged"]

        def fmt(m):
            return f"{m['primary']:.4f} [{m['ci'][0]:.3f},{m['ci'][1]:.3f}]"

        print(f"  {key:<14} {row['n']:>4}  {fmt(a):>22}  {fmt(b):>22}  {b['primary'] - a['primary']:+7.4f}  "
              f"{a['accuracy']:.3f}/{b['accuracy']:.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--splits", default="val,test")
    ap.add_argument("--photo-severity", default="moderate")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    results = [measure(run, args.splits.split(","), args.photo_severity) for run in args.runs]
    for r in results:
        print_table(r)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
