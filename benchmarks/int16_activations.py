"""Is the agreement int8 loses the 8-bit activations? The same float model with 16-bit activations ("16x8").

Run (workstation; ~6 minutes for cxr4 at 224 px on 2 cores):

    TF_USE_LEGACY_KERAS=1 python benchmarks/int16_activations.py RUN_DIR [--split val,test] [--rounds 5]

RUN_DIR's float model is converted twice by post-training quantization on export's calibration set (the shipped
policy's), with per-channel int8 weights either way: activations int8 (what export's PTQ candidate is) and
activations int16 (TFLite's ``EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8``, "16x8"). Both keep
float32 input and output, so the two differ only in the activations' precision. For each split the export check's
films and views (as they are and moved by one pixel each way) are run through both, one image at a time, and
compared with the float model on the same view: decision agreement (``tools.metrics.agreement``), and beside it the
float model's own agreement under a one-pixel shift (the export check's bar). Last, the single-image latency of the
two on this CPU, one thread, interleaved rounds, as a ratio: 16x8 kernels are TFLite's integer reference kernels
(XNNPACK, the CPU delegate phones and Pis use, runs 8-bit models only), so the ratio is the price of the precision.

A measurement, not an export mode: the device runtime feeds uint8 models and export ships int8 only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def convert_ptq(tf, model, samples, sixteen: bool) -> bytes:
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([s[None]] for s in samples)
    ops = tf.lite.OpsSet
    conv.target_spec.supported_ops = [ops.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8 if sixteen
                                      else ops.TFLITE_BUILTINS_INT8]
    return conv.convert()


class Runner:
    """One image at a time, float32 in and out, one thread."""

    def __init__(self, tf, content: bytes):
        self.interp = tf.lite.Interpreter(model_content=content, num_threads=1)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]["index"]
        self.out = self.interp.get_output_details()[0]["index"]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self.interp.set_tensor(self.inp, image[None].astype(np.float32))
        self.interp.invoke()
        return np.array(self.interp.get_tensor(self.out)[0], np.float64)

    def many(self, x) -> np.ndarray:
        return np.stack([self(im) for im in x])


def ptq_setup(run_dir):
    """``(tf, run, spec, policy, calibration inputs, float model)`` as export's PTQ sees them (shipped policy)."""
    from cxr_edge.tools.ptq_set import load_calibration_set, resolve_data_root
    from cxr_edge.training.export_check import default_policy_path, load_policy
    from cxr_edge.training.runs import load_run
    from cxr_edge.training.tf_env import load

    tf, _ = load()
    run = load_run(run_dir)
    spec = run.task
    pol = load_policy(default_policy_path(spec))
    cal = load_calibration_set(pol.calibration).inputs(spec, resolve_data_root(None, pol.calibration))
    return tf, run, spec, pol, cal, run.float_model()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--split", default="val,test", help="comma-separated: val (the export check's), test")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds (20 images each)")
    args = ap.parse_args(argv)

    from cxr_edge.tools.metrics import agreement
    from cxr_edge.training.export import held_out, keras_outputs
    from cxr_edge.training.export_check import check_views

    tf, run, spec, pol, cal, model = ptq_setup(args.run_dir)
    runners = {}
    for name, sixteen in (("int8 activations", False), ("int16 activations (16x8)", True)):
        t0 = time.perf_counter()
        blob = convert_ptq(tf, model, cal, sixteen)
        runners[name] = Runner(tf, blob)
        print(f"converted {name}: {len(blob) / 1e6:.2f} MB in {time.perf_counter() - t0:.0f} s", flush=True)

    print(f"\n# {run.path} ({spec.name}), float model, post-training quantization on {len(cal)} calibration "
          f"images\n")
    print("| split | films x views | float under a one-pixel shift (worst / mean) | int8 activations | "
          "int16 activations (16x8) |")
    print("|---|---|---:|---:|---:|")
    for split in [s for s in args.split.split(",") if s]:
        x, _, _ = held_out(run.prepared(), split, spec, [])
        views = check_views(x, pol.views)
        xv = np.concatenate([v for _, v in views])
        pf = keras_outputs(model, xv)[0]
        n = len(x)
        base = pf[:n]
        shifts = [float(agreement(spec, pf[i * n:(i + 1) * n], base)["agreement"]) for i in range(1, len(views))]
        cells = [f"{float(agreement(spec, r.many(xv), pf)['agreement']):.4f}" for r in runners.values()]
        env = f"{min(shifts):.4f} / {statistics.mean(shifts):.4f}" if shifts else "-"
        print(f"| {split} | {n} x {len(views)} | {env} | {' | '.join(cells)} |", flush=True)

    x, _, _ = held_out(run.prepared(), pol.split, spec, [])
    batch = x[:20]
    times = {k: [] for k in runners}
    for _ in range(args.rounds):
        for k, r in runners.items():
            r(batch[0])
            t0 = time.perf_counter()
            r.many(batch)
            times[k].append((time.perf_counter() - t0) / len(batch))
    med = {k: statistics.median(v) for k, v in times.items()}
    base_k = next(iter(runners))
    print(f"\nsingle-image latency, 1 thread, median of {args.rounds} interleaved rounds of {len(batch)} images:")
    for k, v in med.items():
        print(f"  {k:28s} {v * 1e3:8.1f} ms  {v / med[base_k]:5.2f}x")


if __name__ == "__main__":
    main()
