"""Quantization-aware training: wrap a float model with tfmot's default 8-bit scheme.

What was verified here (TF 2.21, tf-keras 2.21, tfmot 0.8.1) on :func:`build_model` models:

* Every MobileNetV2 layer wraps: Conv2D, DepthwiseConv2D, BatchNormalization (tfmot's
  Conv+BN+ReLU transforms put the fake-quant after the ReLU6, and the converter folds BN into
  the conv), ReLU(max_value=6), ZeroPadding2D, Add, GlobalAveragePooling2D, Dropout and the
  sigmoid/softmax Dense head. The converted int8 graph holds only CONV_2D, DEPTHWISE_CONV_2D,
  ADD, MEAN, FULLY_CONNECTED, LOGISTIC/SOFTMAX and QUANTIZE ops.
* tfmot cannot wrap nested Models, Lambda, Rescaling/Normalization and other preprocessing
  layers, or custom layers without a QuantizeConfig; :func:`quantize_for_training` names them.
* A dual-output model ``[probs, out_relu]`` wraps and converts too, but the simpler path is to
  QAT-train the single-output model and attach the feature output afterwards with
  :func:`cxr_edge.training.model.with_feature_output` (it finds ``quant_out_relu``).
* An untrained QAT model converts without complaint into a useless int8 model (its activation
  ranges are still the initial ones): train at least a few steps before converting.
"""

from __future__ import annotations

import logging

from ..errors import CxrEdgeError
from .tf_env import load, load_tfmot

__all__ = ["is_qat_model", "pin_input_range", "quantize_for_training", "unsupported_layers"]

log = logging.getLogger(__name__)

_PREPROCESSING_HINT = (
    "keep preprocessing (scaling, resizing, normalisation) out of the model: cxr_edge's preprocess "
    "feeds it [-1, 1] images"
)


def unsupported_layers(model, registry, keras) -> list[str]:
    """``'name (Class)'`` for every layer the default 8-bit scheme cannot wrap.

    BatchNormalization is not in the registry: tfmot's graph transforms fold it with the
    preceding convolution before wrapping, so it counts as supported here.
    """
    bad = []
    for layer in model.layers:
        if isinstance(layer, (keras.layers.InputLayer, keras.layers.BatchNormalization)):
            continue
        if isinstance(layer, keras.Model) or not registry.supports(layer):
            bad.append(f"{layer.name!r} ({type(layer).__name__})")
    return bad


def quantize_for_training(model, *, input_range: tuple[float, float] | None = (-1.0, 1.0)):
    """``tfmot.quantization.keras.quantize_model(model)``, checked, with a fixed input range.

    Raises :class:`CxrEdgeError` naming every layer tfmot cannot wrap. ``input_range`` pins the
    input quantizer's range (tfmot otherwise learns it as the min/max of the training batches),
    so the int8 model's input quantization is the same (scale 2/255, zero point 128 for
    [-1, 1]) whatever the training data; ``None`` keeps tfmot's learnt range.

    The result is a new model (the float model is left as it was) with layers named
    ``quant_<name>``; compile and fit it like the float model, with a small learning rate.
    """
    _, keras = load()
    tfmot = load_tfmot()
    registry = tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme().get_quantize_registry()
    bad = unsupported_layers(model, registry, keras)
    if bad:
        raise CxrEdgeError(
            f"model {model.name!r} has layer(s) tfmot 0.8.1 cannot wrap for QAT: {', '.join(bad)}. "
            f"Replace them with supported layers (Conv2D, DepthwiseConv2D, Dense, BatchNormalization, "
            f"ReLU, Add, ZeroPadding2D, GlobalAveragePooling2D, Dropout, ...), build the model flat "
            f"(no nested Model) with cxr_edge.training.model.build_model, and {_PREPROCESSING_HINT}."
        )
    try:
        qat = tfmot.quantization.keras.quantize_model(model)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CxrEdgeError(
            f"tfmot could not wrap model {model.name!r} for QAT: {exc}. Build the model with "
            f"cxr_edge.training.model.build_model (flat, standard Keras layers only)."
        ) from exc
    if input_range is not None:
        pin_input_range(qat, input_range)
    return qat


def pin_input_range(qat, input_range) -> None:
    """Set the QuantizeLayer's min/max. Its AllValuesQuantizer only widens them, so data inside
    the range leaves them as set."""
    low, high = (float(v) for v in input_range)
    if not low < 0.0 < high:
        raise CxrEdgeError(f"input_range must contain 0 with low < high, got {input_range}")
    layers = [layer for layer in qat.layers if type(layer).__name__ == "QuantizeLayer"]
    for layer in layers:
        for var in layer.weights:
            short = var.name.split("/")[-1].split(":")[0]
            if short.endswith("_min"):
                var.assign(low)
            elif short.endswith("_max"):
                var.assign(high)
    if not layers:
        log.warning("QAT model %s has no QuantizeLayer; input range not pinned", qat.name)


def is_qat_model(model) -> bool:
    """True when ``model`` was made by tfmot (it holds QuantizeLayer / QuantizeWrapper layers)."""
    return any(type(layer).__name__ in ("QuantizeLayer", "QuantizeWrapper", "QuantizeWrapperV2")
               for layer in model.layers)
