"""Training throughput, measured in one run: cached-feature head training vs training the head through the
frozen backbone, and float vs QAT fine-tuning, in images/s with ratio tables.

Run (workstation, TensorFlow; ~3-5 minutes on 2 cores at the defaults):

    TF_USE_LEGACY_KERAS=1 nice -n 5 python benchmarks/train_throughput.py \
        [--alpha 1.0 --size 160 --weights ../shared/weights/mobilenet_v2_..._1.0_224_no_top.h5] \
        [--images 256 --batch 32 --epochs 30] [--json out.json]

What is timed (after one untimed warm-up epoch each, so graph tracing is excluded):

* ``head, through the backbone``: ``fit`` of the whole model with only the head trainable (what stage 1
  costs without caching: every epoch runs MobileNetV2 forward on every image);
* ``features (once)``: the frozen backbone's pooled features of every image, one pass;
* ``head, cached``: ``fit`` of the head on those features (what stage 1 costs per epoch with caching);
* ``head, cached, amortised``: ``epochs`` cached epochs plus the one feature pass, per image-epoch;
* ``float, all layers`` and ``QAT, all layers``: full fine-tuning of the float and the tfmot-wrapped
  model (BN frozen, as stage 3 and ``cxr-edge qat`` train).

The images are random grey inputs in [-1, 1] (throughput does not depend on content); the model is
:func:`cxr_edge.training.model.build_model` as the recipes build it. Numbers on a shared machine vary with
its load: compare the ratios, which come from the same run.
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


def timed_fit(model, x, y, batch, epochs=2) -> float:
    """images/s of ``fit`` (one warm-up epoch, then ``epochs`` timed)."""
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=True)
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, shuffle=True)
    return epochs * len(x) / (time.perf_counter() - start)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--weights", default=None, help="local MobileNetV2 no-top .h5 (default: from scratch)")
    ap.add_argument("--task", default="gate")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=30, help="stage-1 epochs for the amortised cached figure")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from cxr_edge.tasks import get_task
    from cxr_edge.training.losses import LossWeights, make_loss
    from cxr_edge.training.model import build_model, feature_extractor, head_only_model, set_trainable
    from cxr_edge.training.qat import quantize_for_training
    from cxr_edge.training.qat_trainer import freeze_wrapped_batchnorm
    from cxr_edge.training.tf_env import load
    from cxr_edge.training.trainer import Predictor

    tf, keras = load()
    spec = get_task(args.task).with_input(size=args.size)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (args.images, args.size, args.size, 1)).astype(np.float32)
    y = (rng.random((args.images, spec.num_labels)) < 0.5).astype(np.float32)
    n = spec.num_labels
    loss = make_loss(spec, LossWeights("bce" if spec.multilabel else "ce", (1.0,) * n, (1.0,) * n, 0.0, 0.0))
    model = build_model(spec, alpha=args.alpha, input_size=args.size, weights=args.weights)
    res = {"alpha": args.alpha, "size": args.size, "images": args.images, "batch": args.batch,
           "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}

    set_trainable(model, "head")
    model.compile(keras.optimizers.Adam(1e-3), loss)
    res["head_through_backbone"] = timed_fit(model, x, y, args.batch)

    extract = Predictor(feature_extractor(model))
    extract(x[:64], batch_size=64)  # trace (same batch shape as the timed pass)
    start = time.perf_counter()
    feats = extract(x, batch_size=64)
    res["features_once"] = len(x) / (time.perf_counter() - start)
    head = head_only_model(model)
    head.compile(keras.optimizers.Adam(1e-3), loss)
    res["head_cached"] = timed_fit(head, feats, y, args.batch, epochs=5)
    e = args.epochs
    res["head_cached_amortised"] = e * len(x) / (len(x) / res["features_once"] + e * len(x) / res["head_cached"])

    set_trainable(model, "all")
    model.compile(keras.optimizers.Adam(1e-5), loss)
    res["float_all"] = timed_fit(model, x, y, args.batch)
    qat = quantize_for_training(model)
    set_trainable(qat, "all")
    freeze_wrapped_batchnorm(qat)
    qat.compile(keras.optimizers.Adam(1e-5), loss)
    res["qat_all"] = timed_fit(qat, x, y, args.batch)
    res["load_avg_end"] = os.getloadavg()[0]

    print(f"MobileNetV2 alpha {args.alpha:g} @{args.size}, {args.images} images, batch {args.batch}, "
          f"{os.cpu_count()} CPU(s), load {res['load_avg_start']:.1f} -> {res['load_avg_end']:.1f}")
    print(f"{'':<38}{'images/s':>10}")
    for key, label in (("head_through_backbone", "head, through the frozen backbone"),
                       ("features_once", "features (one pass, once)"),
                       ("head_cached", "head, on cached features"),
                       ("head_cached_amortised", f"head, cached, amortised over {e} epochs"),
                       ("float_all", "float, all layers"), ("qat_all", "QAT, all layers")):
        print(f"{label:<38}{res[key]:>10.1f}")
    print("ratios (same run)")
    print(f"  cached head per epoch / through backbone      {res['head_cached'] / res['head_through_backbone']:8.1f}x")
    amortised = res["head_cached_amortised"] / res["head_through_backbone"]
    print(f"  cached head amortised ({e} ep) / through backbone {amortised:6.1f}x")
    print(f"  QAT / float (all layers)                      {res['qat_all'] / res['float_all']:8.2f}x")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
