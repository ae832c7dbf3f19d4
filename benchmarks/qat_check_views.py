"""Where a QAT candidate loses the export check's decisions: in the QAT fine-tune, or in the conversion?

Run (workstation; about 4 minutes for cxr4 at 224 px on 2 cores):

    TF_USE_LEGACY_KERAS=1 python benchmarks/qat_check_views.py RUN_DIR

On exactly the images the export check compares (the policy's split and views: each val film as it is and moved
by one pixel four ways), it prints the decision agreement with the float model of

* the QAT Keras model (``qat.h5``, fake-quantized), on the unshifted films alone -- what ``qat.select =
  "float_agreement"`` scores when it keeps an epoch -- and on all the check's views;
* its int8 conversion, converted as export converts it (``cxr_edge.training.convert.convert``: one serving
  function saved and converted) and, as a cross-check of that path, by ``TFLiteConverter.from_keras_model``
  with the same settings; both run through the device-side ``LoadedModel`` as predict runs a pack model;
* each int8 conversion against the QAT Keras model it came from (the conversion's own fidelity);

and, as the bar those numbers are held to, the float model's worst self-agreement under the four shifts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    args = ap.parse_args()

    from cxr_edge.tools.metrics import agreement
    from cxr_edge.training.convert import convert, output_roles
    from cxr_edge.training.export import held_out, keras_outputs
    from cxr_edge.training.export_check import check_views, default_policy_path, load_policy
    from cxr_edge.training.int8_outputs import device_model, device_outputs
    from cxr_edge.training.model import with_feature_output
    from cxr_edge.training.runs import load_run
    from cxr_edge.training.tf_env import load

    tf, _ = load()
    run = load_run(args.run)
    spec = run.task
    pol = load_policy(default_policy_path(spec))
    x, _, _ = held_out(run.prepared(), pol.split, spec, [])
    views = check_views(x, pol.views)
    xv = np.concatenate([v for _, v in views])
    films = len(x)
    float_two, qat_two = with_feature_output(run.float_model()), with_feature_output(run.qat_model())
    pf, pq = keras_outputs(float_two, xv)[0], keras_outputs(qat_two, xv)[0]

    def agree(a, b) -> float:
        return float(agreement(spec, a, b)["agreement"])

    bar = min(agree(pf[:films], pf[i * films:(i + 1) * films]) for i in range(1, len(views)))
    print(f"# Where the QAT candidate loses decisions: {run.path} ({spec.name}), {films} {pol.split} films x "
          f"{len(views)} views\n")
    print("| model | vs float, unshifted films | vs float, all views (what export checks) | vs its QAT Keras model, "
          "all views |")
    print("|---|---:|---:|---:|")
    print(f"| float, worst one-pixel shift (the bar) | | {bar:.4f} | |")
    print(f"| QAT Keras (qat.h5) | {agree(pf[:films], pq[:films]):.4f} | {agree(pf, pq):.4f} | |")
    served = convert(qat_two, "int8", io_dtype=pol.io_dtype, per_channel=pol.per_channel)
    converter = tf.lite.TFLiteConverter.from_keras_model(qat_two)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = converter.inference_output_type = getattr(tf, pol.io_dtype)
    if not pol.per_channel:
        sys.exit("this cross-check converts per-channel only (every shipped policy is per-channel)")
    for name, content in (("int8, as export converts it", served), ("int8, from_keras_model", converter.convert())):
        lm = device_model(content, spec, output_roles(content, spec.num_labels))
        p = device_outputs(lm, xv)[0]
        print(f"| {name} | {agree(pf[:films], p[:films]):.4f} | {agree(pf, p):.4f} | {agree(pq, p):.4f} |")


if __name__ == "__main__":
    main()
