"""Does correcting the bias that int8 weight rounding adds keep the float model's decisions? (DFQ bias correction)

Run (workstation; ~8 minutes for cxr4 at 224 px on 2 cores):

    TF_USE_LEGACY_KERAS=1 python benchmarks/int8_bias_correction.py RUN_DIR [--images 128] [--split val,test]

``benchmarks/int8_weights_only.py`` found that rounding the depthwise and 1x1 projection kernels to int8 (as the
converter does: symmetric, one scale per channel) costs most of the decisions int8 loses, with float activations.
Rounding a kernel changes each output channel's mean over real images by ``dW . E[x]``: a bias. Empirical bias
correction (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction", section
4.2, measured rather than derived from BatchNorm statistics) removes it layer by layer, in order: with every
earlier layer already rounded and corrected, the per-channel mean of this convolution's output with its kernel
rounded, minus the float model's, over ``--images`` images of export's calibration set (evenly spaced through it) (training images; never the
check's films), is added to the BatchNormalization's moving mean that follows (``(y - mean) / std``: the shift
comes out exactly). The kernels are left unrounded in the saved model: the converter rounds them itself, to the
same values, and folds the corrected mean into the int8 bias.

Printed, each on the export check's films and views (``check_views`` of the shipped policy), against the float
model on the same view: the weights-only model (float activations) before and after correction, and the int8
model the real converter makes by post-training quantization on the calibration set (float32 input and output)
before and after, beside the float model's own one-pixel-shift agreement (the check's bar).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--images", type=int, default=128, help="calibration images the shifts are measured on")
    ap.add_argument("--split", default="val,test")
    args = ap.parse_args(argv)

    from int16_activations import Runner, convert_ptq, ptq_setup

    from cxr_edge.tools.metrics import agreement
    from cxr_edge.training.bias_correction import bias_correction_images, correct_bias, rounded_copy
    from cxr_edge.training.export import held_out, keras_outputs
    from cxr_edge.training.export_check import check_views

    tf, run, spec, pol, cal, model = ptq_setup(args.run_dir)
    rounded = rounded_copy(model)
    picked = cal[bias_correction_images(len(cal), args.images)]
    corrected, record = correct_bias(model, picked)
    print(f"# {run.path} ({spec.name}): {record['layers']} layers corrected on {record['images']} calibration "
          f"images in {record['seconds']} s; largest mean shifts {record['largest_shifts']}\n", flush=True)
    corrected_rounded = rounded_copy(corrected)   # what the int8 weights compute, activations float
    runners = {"int8 (PTQ)": Runner(tf, convert_ptq(tf, model, cal, False)),
               "int8 (PTQ), corrected": Runner(tf, convert_ptq(tf, corrected, cal, False))}
    print("| split | films x views | float one-pixel shift (worst) | weights rounded | rounded, corrected | "
          "int8 (PTQ) | int8 (PTQ), corrected |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for split in [s for s in args.split.split(",") if s]:
        x, _, _ = held_out(run.prepared(), split, spec, [])
        views = check_views(x, pol.views)
        xv = np.concatenate([v for _, v in views])
        n = len(x)
        pf = keras_outputs(model, xv)[0]
        worst = min((float(agreement(spec, pf[i * n:(i + 1) * n], pf[:n])["agreement"])
                     for i in range(1, len(views))), default=float("nan"))
        cells = [float(agreement(spec, keras_outputs(m, xv)[0], pf)["agreement"])
                 for m in (rounded, corrected_rounded)]
        cells += [float(agreement(spec, r.many(xv), pf)["agreement"]) for r in runners.values()]
        print(f"| {split} | {n} x {len(views)} | {worst:.4f} | " + " | ".join(f"{c:.4f}" for c in cells) + " |",
              flush=True)


if __name__ == "__main__":
    main()
