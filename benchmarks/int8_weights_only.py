"""Which int8 weights cost the export check's decisions? The float model with only its weights quantized.

Run (workstation; ~1 minute per variant for cxr4 at 224 px on 2 cores):

    TF_USE_LEGACY_KERAS=1 python benchmarks/int8_weights_only.py RUN_DIR [--split val] [--groups all weights,...]

``benchmarks/int16_activations.py`` found that 16-bit activations keep hardly more of the float model's decisions
than 8-bit ones, so the weights are the suspect. Here the activations stay float32 (Keras) and the weights of one
group of layers at a time are rounded as the TFLite converter rounds them: symmetric, narrow range (-127..127), one
scale per output channel (per depthwise channel for depthwise kernels). Per-channel rounding of a kernel before its
BatchNormalization is folded in equals rounding the folded kernel (a per-channel scale moves with it), so this is
the int8 model's weight error without its activation error. Printed: the decision agreement of each variant with
the unchanged model on the export check's films and views (``check_views`` of the shipped policy), beside the
float model's own agreement under a one-pixel shift (the check's bar).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GROUPS = {
    "all weights": lambda n: True,
    "depthwise 3x3": lambda n: "depthwise" in n,
    "1x1 expand": lambda n: n.endswith("_expand"),
    "1x1 project": lambda n: n.endswith("_project"),
    "first conv (Conv1)": lambda n: n == "Conv1",
    "last conv (Conv_1)": lambda n: n == "Conv_1",
    "head (Dense)": lambda n: n == "head",
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--split", choices=("val", "test"), help="default: the export policy's check split")
    ap.add_argument("--groups", default=",".join(GROUPS), help="comma-separated, of: " + ", ".join(GROUPS))
    args = ap.parse_args(argv)

    from cxr_edge.tools.metrics import agreement
    from cxr_edge.training.bias_correction import kernel_axis, round_kernel
    from cxr_edge.training.export import held_out, keras_outputs
    from cxr_edge.training.export_check import check_views, default_policy_path, load_policy
    from cxr_edge.training.runs import load_run

    run = load_run(args.run_dir)
    spec = run.task
    pol = load_policy(default_policy_path(spec))
    split = args.split or pol.split
    x, _, _ = held_out(run.prepared(), split, spec, [])
    views = check_views(x, pol.views)
    xv = np.concatenate([v for _, v in views])
    n = len(x)
    model = run.float_model()
    original = [w.copy() for w in model.get_weights()]
    pf = keras_outputs(model, xv)[0]
    shifts = [float(agreement(spec, pf[i * n:(i + 1) * n], pf[:n])["agreement"]) for i in range(1, len(views))]
    print(f"# {run.path} ({spec.name}): float weights rounded to int8 per channel, activations float; "
          f"{n} {split} films x {len(views)} views\n")
    if shifts:
        print(f"the check's bar, float under a one-pixel shift: worst {min(shifts):.4f}, mean {np.mean(shifts):.4f}\n")
    print("| weights rounded | layers | agreement with float |")
    print("|---|---:|---:|")
    for group in [g for g in args.groups.split(",") if g]:
        chosen = 0
        for layer in model.layers:
            axis = kernel_axis(layer)
            if axis is None or not GROUPS[group](layer.name):
                continue
            ws = layer.get_weights()
            ws[0] = round_kernel(ws[0], axis)
            layer.set_weights(ws)
            chosen += 1
        pq = keras_outputs(model, xv)[0]
        model.set_weights(original)
        print(f"| {group} | {chosen} | {float(agreement(spec, pq, pf)['agreement']):.4f} |", flush=True)


if __name__ == "__main__":
    main()
