"""Build a real, tiny int8 model pack with TensorFlow, for tests that need one.

The models are small conv nets (not MobileNetV2) so conversion takes seconds;
they exercise the same export format the real models use: int8 weights and
activations, uint8 I/O, two outputs (probabilities and a feature map) and the
embedded metadata. Their answers are meaningless; tests check behaviour.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cxr_edge.runtime import metadata as md
from cxr_edge.tools.pack_writer import write_pack
from cxr_edge.tasks import get_task

TINY_SIZES = {"gate": 32, "cxr4": 48, "nih14": 48}


def _tf():
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf_keras as keras

    return tf, keras


def tiny_keras_model(task: str, size: int, seed: int = 0, gate_bias: float = 4.0):
    tf, keras = _tf()
    keras.utils.set_random_seed(seed)
    spec = get_task(task)
    inp = keras.Input((size, size, 1))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    feats = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="features")(x)
    pooled = keras.layers.GlobalAveragePooling2D()(feats)
    init = keras.initializers.Constant(gate_bias) if task == "gate" else "zeros"
    probs = keras.layers.Dense(spec.num_labels, activation=spec.activation, bias_initializer=init,
                               name="probs")(pooled)
    return keras.Model(inp, [probs, feats])


def convert_int8(model, size: int, seed: int = 0) -> bytes:
    tf, _ = _tf()
    rng = np.random.default_rng(seed)

    def representative():
        for _ in range(16):
            yield [rng.uniform(-1, 1, (1, size, size, 1)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.uint8
    return conv.convert()


def output_roles(model_bytes: bytes, num_labels: int) -> dict[str, int]:
    from cxr_edge.runtime.interpreter import TFLiteModel

    m = TFLiteModel(model_bytes)
    roles = {}
    for i, o in enumerate(m.outputs):
        roles["probs" if o.shape[-1] == num_labels and len(o.shape) == 2 else "features"] = i
    return roles


def head_npz(model) -> tuple[bytes, dict]:
    """``head.npz`` (keys ``kernel`` (F, L), ``bias`` (L,)) of the model's head Dense, and its ``extras['head']``
    record: the same member and keys ``cxr-edge export`` embeds, for class activation maps."""
    import io

    kernel, bias = model.get_layer("probs").get_weights()
    buf = io.BytesIO()
    np.savez(buf, kernel=kernel.astype(np.float32), bias=bias.astype(np.float32))
    return buf.getvalue(), {"file": "head.npz", "kernel_shape": list(kernel.shape), "bias_shape": list(bias.shape),
                            "features_output": "features"}


def tiny_models(sizes=None) -> dict[str, tuple[bytes, md.ModelMetadata]]:
    """slot -> (model bytes with metadata and head.npz, metadata) for gate, cxr4 and nih14."""
    out = {}
    for slot, size in (sizes or TINY_SIZES).items():
        spec = get_task(slot).with_input(size=size)
        keras_model = tiny_keras_model(slot, size)
        raw = convert_int8(keras_model, size)
        head, head_info = head_npz(keras_model)
        meta = md.ModelMetadata.for_task(spec, output_roles(raw, spec.num_labels),
                                         quantization={"mode": "int8", "io_dtype": "uint8", "source": "ptq"},
                                         training={"note": "tiny test model with random weights"},
                                         extras={"head": head_info})
        out[slot] = (md.embed(raw, meta, files={"head.npz": head}), meta)
    return out


def build_tiny_pack(out: Path, models=None, **kwargs) -> Path:
    return write_pack(out, models or tiny_models(), name="tiny-test-pack", license="CC0-1.0",
                      description="random-weight test models", **kwargs)


if __name__ == "__main__":  # build one by hand: python tests/tinypack.py OUT_DIR
    import sys

    print(build_tiny_pack(Path(sys.argv[1])))
