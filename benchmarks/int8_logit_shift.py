"""Is int8's disagreement with float a systematic shift (fixable by bias correction) or spread noise?

Run (workstation; about 3 minutes per source at 224 px on 2 cores):

    TF_USE_LEGACY_KERAS=1 python benchmarks/int8_logit_shift.py RUN_DIR [--source qat,ptq] [--recalibrate]

For each int8 candidate export would build (``ptq``: from float.h5, calibrated on the policy's calibration set;
``qat``: from qat.h5), converted and run as export does (``convert``, the device-side ``LoadedModel``):

* the mean change of every output's logit (int8 - float) on the calibration set (training images: never the
  check split), and the median absolute change;
* the agreement with float on the export check's films and views (val, as they are and moved by one pixel;
  ``--split test``: the test films, which the check never sees),
  as it is and with that mean change subtracted from int8's logits (softmax: centred first) -- bias correction
  (Nagel et al. 2019; Finkelstein et al. 2019) done on the head, estimated without looking at the check films;
* with ``--recalibrate`` (QAT only): the QAT model's activation ranges set again from the calibration set's
  images (no augmentation; ``calibrate_ranges``, BatchNormalization frozen) before converting -- whether the
  ranges QAT learnt on augmented training batches are what costs the agreement.

A systematic shift shows as a mean change close to the median absolute one and an agreement that rises when it
is subtracted; spread noise as a small mean against the median and no gain.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _logits(p, multilabel: bool):
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    if multilabel:
        return np.log(p / (1 - p))
    lg = np.log(p)
    return lg - lg.mean(1, keepdims=True)


def _probs(lg, multilabel: bool):
    if multilabel:
        return 1 / (1 + np.exp(-lg))
    e = np.exp(lg - lg.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--source", default="qat,ptq")
    ap.add_argument("--recalibrate", action="store_true", help="also: QAT ranges re-set on the calibration images")
    ap.add_argument("--split", choices=("val", "test"), help="the films to measure agreement on (default: the "
                    "export policy's check split; test: films neither the check nor any selection saw)")
    args = ap.parse_args()

    from cxr_edge.tools.metrics import agreement
    from cxr_edge.tools.ptq_set import load_calibration_set, resolve_data_root
    from cxr_edge.training.convert import convert, output_roles
    from cxr_edge.training.export import held_out, keras_outputs
    from cxr_edge.training.export_check import check_views, default_policy_path, load_policy
    from cxr_edge.training.int8_outputs import device_model, device_outputs
    from cxr_edge.training.model import with_feature_output
    from cxr_edge.training.runs import load_run

    run = load_run(args.run)
    spec = run.task
    multi = spec.multilabel
    pol = load_policy(default_policy_path(spec))      # the shipped policy, as export uses it without --policy
    cal = load_calibration_set(pol.calibration).inputs(spec, resolve_data_root(None, pol.calibration))
    split = args.split or pol.split
    x, _, _ = held_out(run.prepared(), split, spec, [])     # the films and pixel path export's check uses
    xv = np.concatenate([v for _, v in check_views(x, pol.views)])
    float_two = with_feature_output(run.float_model())
    pf_cal, pf_val = keras_outputs(float_two, cal)[0], keras_outputs(float_two, xv)[0]
    print(f"# int8 logit shift: {run.path} ({spec.name}); calibration set {len(cal)} images, check "
          f"{len(x)} {split} films x {len(xv) // len(x)} views\n")
    print("| candidate | mean logit change per output (calibration set) | median abs change | agreement "
          f"(calibration set) as is -> corrected | agreement ({split}) as is -> corrected |")
    print("|---|---|---|---|---|")
    cases = [s for s in args.source.split(",") if s]
    if args.recalibrate:
        cases.append("qat-recalibrated")
    for case in cases:
        if case == "ptq":
            content = convert(float_two, "int8", representative=cal, io_dtype=pol.io_dtype,
                              per_channel=pol.per_channel)
        else:
            qat = run.qat_model()
            if case == "qat-recalibrated":
                from cxr_edge.training.qat_trainer import calibrate_ranges
                from cxr_edge.training.tf_env import load

                _, keras = load()
                for layer in qat.layers:
                    inner = getattr(layer, "layer", layer)
                    if isinstance(inner, keras.layers.BatchNormalization):
                        inner.trainable = False
                calibrate_ranges(qat, [(cal[i:i + 32], None) for i in range(0, len(cal), 32)])
            content = convert(with_feature_output(qat), "int8", io_dtype=pol.io_dtype, per_channel=pol.per_channel)
        lm = device_model(content, spec, output_roles(content, spec.num_labels))
        pq_cal, pq_val = device_outputs(lm, cal)[0], device_outputs(lm, xv)[0]
        d = _logits(pq_cal, multi) - _logits(pf_cal, multi)
        shift = d.mean(0)
        corrected = {name: _probs(_logits(pq, multi) - shift, multi) for name, pq in (("cal", pq_cal), ("val", pq_val))}
        a_cal = (agreement(spec, pf_cal, pq_cal)["agreement"], agreement(spec, pf_cal, corrected["cal"])["agreement"])
        a_val = (agreement(spec, pf_val, pq_val)["agreement"], agreement(spec, pf_val, corrected["val"])["agreement"])
        print(f"| {case} | {' '.join(f'{v:+.3f}' for v in shift)} | "
              f"{' '.join(f'{v:.3f}' for v in np.median(np.abs(d), 0))} | {a_cal[0]:.4f} -> {a_cal[1]:.4f} | "
              f"{a_val[0]:.4f} -> {a_val[1]:.4f} |")


if __name__ == "__main__":
    main()
