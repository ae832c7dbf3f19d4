"""Where an int8 model converted from a QAT model parts from the QAT Keras model it came from, layer by layer.

Run (workstation; ~2 minutes for cxr4 at 224 px on 2 cores, mostly the conversion):

    TF_USE_LEGACY_KERAS=1 python benchmarks/int8_layer_drift.py runs/cxr4 [--images 16] [--split val] \
        [--json out.json]

The export check compares the int8 model with the float model. QAT fine-tunes a Keras model whose fake-quant
nodes are meant to simulate that int8 model, so the int8 model should decide as the QAT Keras model does; where
it does not, the conversion (or the simulation) is what loses decisions, not the fine-tune. This converts
RUN_DIR's ``qat.h5`` exactly as export does (``cxr_edge.training.convert.convert``), runs the int8 model with
every intermediate tensor kept (``tf.lite.Interpreter(experimental_preserve_all_tensors=True)``) on the first
``--images`` films of the split (device preprocessing, inputs quantized by ``TFLiteModel.quantize``), and
prints for each Keras layer whose output the converted graph keeps (the ReLU6 outputs, the residual adds, the
pooled features, the head; convolutions and batch norms are fused away) the relative RMS difference
``rms(int8 - keras) / rms(keras)``, and at the end the decision agreement of int8 with the QAT Keras model and
of both with float on the whole split. One output step of an 8-bit tensor is ~1/255 of its range: differences
of a few percent are rounding; growth with depth is the simulation parting from the integer arithmetic.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--images", type=int, default=16, help="films compared layer by layer")
    ap.add_argument("--split", default="val")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from cxr_edge.runtime.interpreter import TFLiteModel
    from cxr_edge.runtime.preprocess import normalize
    from cxr_edge.tools.metrics import agreement
    from cxr_edge.training.convert import convert
    from cxr_edge.training.runs import load_run
    from cxr_edge.training.tf_env import load
    from cxr_edge.training.trainer import Predictor

    tf, keras = load()
    run = load_run(args.run_dir)
    spec = run.recipe().spec
    qat = run.qat_model()
    films = normalize(np.asarray(run.prepared().images(args.split)), spec).astype(np.float32)
    x = films[:args.images]
    blob = convert(qat, "int8")

    interp = tf.lite.Interpreter(model_content=blob, experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = next(o for o in interp.get_output_details() if list(o["shape"]) == [1, spec.num_labels])
    scale, zero = inp["quantization"]
    info = type("Info", (), {"quantized": True, "scale": scale, "zero_point": zero, "dtype": inp["dtype"]})
    tensors = [t for t in interp.get_tensor_details() if len(t["shape"]) in (2, 4)]
    kept: dict[str, list] = {}
    int8_probs = []
    for i in range(len(films)):
        interp.set_tensor(inp["index"], TFLiteModel.quantize(films[i:i + 1], info))
        interp.invoke()
        q = interp.get_tensor(out["index"]).astype(np.float32)
        s, z = out["quantization"]
        int8_probs.append((q - z) * s if s else q)
        if i >= len(x):
            continue
        for t in tensors:
            try:
                a = interp.get_tensor(t["index"])
            except ValueError:
                continue
            s, z = t["quantization"]
            kept.setdefault(t["name"], []).append(((a.astype(np.float32) - z) * s if s else a.astype(np.float32))[0])
    int8_probs = np.concatenate(int8_probs)

    layers = [layer for layer in qat.layers if len(layer.output.shape) in (2, 4)]
    outputs = keras.Model(qat.input, [layer.output for layer in layers]).predict(x, verbose=0)
    rows = []
    for layer, ref in zip(layers, outputs):
        pattern = re.compile(r"(^|/)" + re.escape(layer.name) + r"(/|;|$)")
        names = [n for n in kept if pattern.search(n) and np.asarray(kept[n]).shape[1:] == ref.shape[1:]]
        # a fused op's tensor is named after every layer fused into it: keep the layer it ends with
        names = [n for n in names if n.split(";")[0].split("/")[-2] == layer.name]
        if not names:
            continue
        # the head's layer has two taps (logits, softmax): the one the Keras output is, the closer one
        rel = min(float(np.sqrt(((np.stack(kept[n]) - ref) ** 2).mean()) / (np.sqrt((ref ** 2).mean()) + 1e-12))
                  for n in names)
        rows.append({"layer": layer.name, "relative_rms": rel})
        print(f"{layer.name:<40} {rel:8.4f}")

    float_probs = Predictor(run.float_model())(films)
    qat_probs = Predictor(qat)(films)
    summary = {
        "run": str(args.run_dir), "split": args.split, "films": len(films), "layer_images": len(x),
        "int8_vs_qat_keras": float(agreement(spec, int8_probs, qat_probs)["agreement"]),
        "qat_keras_vs_float": float(agreement(spec, qat_probs, float_probs)["agreement"]),
        "int8_vs_float": float(agreement(spec, int8_probs, float_probs)["agreement"]),
    }
    print(f"\ndecision agreement on {len(films)} {args.split} films: int8 vs QAT Keras "
          f"{summary['int8_vs_qat_keras']:.4f}, QAT Keras vs float {summary['qat_keras_vs_float']:.4f}, "
          f"int8 vs float {summary['int8_vs_float']:.4f}")
    if args.json:
        args.json.write_text(json.dumps({**summary, "layers": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
