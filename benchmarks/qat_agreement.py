"""How closely int8 models agree with their float model: PTQ (from float.h5) vs int8 from QAT (qat.h5).

Run (workstation; a few minutes per run at 224 px on 2 cores, mostly conversion and the int8 interpreter):

    TF_USE_LEGACY_KERAS=1 nice -n 5 python benchmarks/qat_agreement.py runs/cxr4 [RUN_DIR ...] \
        [--splits val,test] [--calib 200] [--json out.json]

For each run and split (digital films, the device preprocessing, no photo simulation) it prints the
task's primary metric and accuracy of: the float Keras model, the QAT Keras model, PTQ int8 (full
integer, uint8 I/O, per-channel, calibrated on ``--calib`` train images) and int8 converted from QAT;
and, for each int8 model against float, the agreement (softmax: same argmax; sigmoid: same decision at
0.5 over all labels) and the max / mean absolute probability difference; and the int8-from-QAT model
against the QAT Keras model it was converted from (the conversion's own fidelity: QAT fine-tuning
itself moves the model away from float). Conversion goes through
``cxr_edge.training.convert.convert`` and the int8 models run through the device-side
``cxr_edge.runtime.interpreter.TFLiteModel``, as export does. The float baseline is measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def split_inputs(prepared, split):
    from cxr_edge.training.dataset import make_dataset

    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in make_dataset(prepared, split, batch_size=64, shuffle=False)])
    return np.concatenate(xs), np.concatenate(ys)


def tflite_probs(tflite: bytes, x: np.ndarray, num_labels: int) -> np.ndarray:
    from cxr_edge.runtime.interpreter import TFLiteModel
    from cxr_edge.training.convert import output_roles

    model = TFLiteModel(tflite, threads=2)
    index = output_roles(tflite, num_labels)["probs"]
    return np.concatenate([model.run(x[i:i + 32])[index] for i in range(0, len(x), 32)]).reshape(len(x), -1)


def measure(run_dir: Path, splits, n_calib: int) -> dict:
    from cxr_edge.tools.metrics import agreement, task_metrics
    from cxr_edge.training.convert import convert
    from cxr_edge.training.runs import load_run
    from cxr_edge.training.trainer import Predictor

    run = load_run(run_dir)
    spec, prepared = run.task, run.prepared()
    rng = np.random.default_rng(0)
    x_train, _ = split_inputs(prepared, "train")
    calib = x_train[rng.permutation(len(x_train))[:n_calib]]
    del x_train
    float_model = run.float_model()
    models = {"float": ("keras", float_model)}
    t = time.perf_counter()
    models["ptq_int8"] = ("tflite", convert(float_model, "int8", representative=calib))
    seconds = {"ptq_convert_s": round(time.perf_counter() - t, 1)}
    if run.has_qat:
        qat_model = run.qat_model()
        models["qat_keras"] = ("keras", qat_model)
        t = time.perf_counter()
        models["qat_int8"] = ("tflite", convert(qat_model, "int8"))
        seconds["qat_convert_s"] = round(time.perf_counter() - t, 1)
    out = {"run": str(run_dir), "task": spec.name, "qat": run.info.get("qat"), **seconds, "splits": {}}
    for split in splits:
        x, y = split_inputs(prepared, split)
        probs = {name: (Predictor(m)(x) if kind == "keras" else tflite_probs(m, x, spec.num_labels))
                 for name, (kind, m) in models.items()}
        rows = {}
        for name, p in probs.items():
            m = task_metrics(spec, y, p, n_resamples=0)
            row = {"primary": m["primary"]["value"], "accuracy": m["accuracy"]["value"],
                   "mean_auroc": m["mean_auroc"]["value"]}
            if name != "float":
                a = agreement(spec, probs["float"], p)
                row.update(agreement=a["agreement"], max_abs_diff=a["max_abs_diff"], mean_abs_diff=a["mean_abs_diff"])
            if name == "qat_int8":  # the conversion's own fidelity: int8 against the QAT Keras model it came from
                a = agreement(spec, probs["qat_keras"], p)
                row.update(agreement_vs_qat_keras=a["agreement"], mean_abs_diff_vs_qat_keras=a["mean_abs_diff"])
            rows[name] = row
        out["splits"][split] = {"n": int(len(x)), "models": rows}
    return out


def print_table(result: dict) -> None:
    print(f"\n{result['run']}  ({result['task']}; PTQ conversion {result['ptq_convert_s']} s"
          + (f", QAT conversion {result['qat_convert_s']} s" if "qat_convert_s" in result else "") + ")")
    for split, s in result["splits"].items():
        print(f"  {split} (n={s['n']})")
        header = ("model", "primary", "Δprimary", "accuracy", "agree", "max|Δp|", "mean|Δp|")
        print("    {:<10} {:>8} {:>9} {:>8} {:>7} {:>8} {:>9}".format(*header))
        ref = s["models"]["float"]
        for name, r in s["models"].items():
            delta = "" if name == "float" else f"{(r['primary'] or 0) - (ref['primary'] or 0):+9.4f}"
            agree = f"{r['agreement']:7.3f}" if "agreement" in r else ""
            diffs = f"{r['max_abs_diff']:8.3f} {r['mean_abs_diff']:9.4f}" if "agreement" in r else ""
            print(f"    {name:<10} {r['primary']:8.4f} {delta:>9} {r['accuracy']:8.4f} {agree:>7} {diffs}")
        if "qat_int8" in s["models"]:
            r = s["models"]["qat_int8"]
            print(f"    qat_int8 vs qat_keras: agreement {r['agreement_vs_qat_keras']:.3f}, "
                  f"mean|Δp| {r['mean_abs_diff_vs_qat_keras']:.4f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--splits", default="val,test")
    ap.add_argument("--calib", type=int, default=200, help="PTQ calibration images from the train split")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    results = []
    for run in args.runs:
        result = measure(run, args.splits.split(","), args.calib)
        print_table(result)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
