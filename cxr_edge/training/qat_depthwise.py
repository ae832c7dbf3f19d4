"""QAT that simulates what the int8 converter does with depthwise convolutions: per-channel weights.

tfmot 0.8.1's default 8-bit scheme gives ``DepthwiseConv2D`` a "per-axis" weight quantizer whose
axis is the kernel's *last* one, ``(3, 3, C, 1)[-1] == 1``: during QAT every depthwise kernel is
fake-quantized **per tensor** (tensorflow/model-optimization#808, open). The TFLite converter then
re-quantizes the BatchNorm-folded depthwise weights **per channel** (checked here: C scales,
quantized_dimension 3). So the default QAT model trains against, and is validated with, a much
coarser depthwise quantization than the int8 model has: MobileNetV2's depthwise channels have very
different ranges. On cxr4 at 224 px the default QAT model lost 0.09 macro-F1 before fine-tuning.

:func:`quantize_depthwise_per_channel` builds the QAT model with the default scheme everywhere
except: each ``DepthwiseConv2D`` gets :class:`DepthwisePerChannelQuantizeConfig` (symmetric,
narrow-range, one range per channel: the kernel is transposed so the channel axis is last) and no
output quantizer, and the BatchNormalization right after it gets no quantizer either, exactly as
tfmot's own Conv+BN+ReLU transform arranges it (a custom config switches that transform off for
the layers it touches). The fake-quant is then where the converter puts the real one: after the
ReLU6.

Models saved with these configs load inside :func:`custom_objects` (``runs.load_keras_model`` uses it).
"""

from __future__ import annotations

import logging

from .tf_env import load, load_tfmot

__all__ = ["custom_objects", "quantize_depthwise_per_channel", "quantize_for_qat"]

log = logging.getLogger(__name__)

_CLASSES: dict = {}


def _classes() -> dict:
    """The quantizer and config classes (defined on first use: they subclass tfmot's)."""
    if _CLASSES:
        return _CLASSES
    tf, keras = load()
    tfmot = load_tfmot()
    from tensorflow_model_optimization.python.core.quantization.keras import quantizers
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs,
    )

    class DepthwisePerChannelWeightsQuantizer(quantizers.LastValueQuantizer):
        """Symmetric 8-bit, one range per channel of a (kh, kw, C, multiplier) depthwise kernel."""

        def __init__(self, **kwargs):
            super().__init__(num_bits=8, per_axis=True, symmetric=True, narrow_range=True)

        def build(self, tensor_shape, name, layer):
            channels = int(tensor_shape[-2]) * int(tensor_shape[-1])
            return {
                "min_var": layer.add_weight(name + "_min", shape=(channels,), trainable=False,
                                            initializer=keras.initializers.Constant(-6.0)),
                "max_var": layer.add_weight(name + "_max", shape=(channels,), trainable=False,
                                            initializer=keras.initializers.Constant(6.0)),
            }

        def __call__(self, inputs, training, weights, **kwargs):
            kh, kw, c, m = (int(d) for d in inputs.shape)
            flat = tf.reshape(inputs, [kh, kw, 1, c * m])  # the same order, channels last
            out = super().__call__(flat, training, weights, **kwargs)
            return tf.reshape(out, [kh, kw, c, m])

        def get_config(self):
            return {}

        def __eq__(self, other):
            return isinstance(other, DepthwisePerChannelWeightsQuantizer)

        def __ne__(self, other):
            return not self.__eq__(other)

    class DepthwisePerChannelQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
        """Per-channel depthwise weights; the output is quantized after the BN/ReLU6 that follow."""

        def __init__(self, **kwargs):
            self.weight_quantizer = DepthwisePerChannelWeightsQuantizer()

        def get_weights_and_quantizers(self, layer):
            return [(layer.depthwise_kernel, self.weight_quantizer)]

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            layer.depthwise_kernel = quantize_weights[0]

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {}

    _CLASSES.update(DepthwisePerChannelWeightsQuantizer=DepthwisePerChannelWeightsQuantizer,
                    DepthwisePerChannelQuantizeConfig=DepthwisePerChannelQuantizeConfig,
                    NoOpQuantizeConfig=default_8bit_quantize_configs.NoOpQuantizeConfig)
    return _CLASSES


def custom_objects() -> dict:
    """What ``quantize_scope`` needs to load a model quantized by :func:`quantize_depthwise_per_channel`."""
    return dict(_classes())


def quantize_for_qat(model, *, depthwise_per_channel: bool = True):
    """The QAT model ``cxr-edge qat`` trains: per-channel depthwise weights (default) or tfmot's scheme as is.

    Layers tfmot cannot wrap are named first (:func:`cxr_edge.training.qat.quantize_for_training`'s
    check and message); the input range is pinned to [-1, 1] either way.
    """
    from ..errors import CxrEdgeError
    from .qat import pin_input_range, unsupported_layers, quantize_for_training

    if not depthwise_per_channel:
        return quantize_for_training(model)
    _, keras = load()
    registry = load_tfmot().quantization.keras.default_8bit.Default8BitQuantizeScheme().get_quantize_registry()
    if unsupported_layers(model, registry, keras):
        return quantize_for_training(model)  # raises, naming every layer it cannot wrap
    try:
        qat = quantize_depthwise_per_channel(model)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CxrEdgeError(f"tfmot could not wrap model {model.name!r} for QAT: {exc}. Build the model with "
                           "cxr_edge.training.model.build_model (flat, standard Keras layers only).") from exc
    pin_input_range(qat, (-1.0, 1.0))
    return qat


def quantize_depthwise_per_channel(model):
    """``tfmot.quantization.keras.quantize_model(model)`` with per-channel depthwise weights (module doc).

    Every DepthwiseConv2D must be followed by a BatchNormalization and that by a ReLU (true of
    MobileNetV2 and of :func:`cxr_edge.training.model.build_model`); otherwise the default scheme's
    placement is kept for that layer and a warning names it.
    """
    _, keras = load()
    tfmot = load_tfmot()
    q = tfmot.quantization.keras
    classes = _classes()
    consumers: dict[str, list] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for inbound in node.inbound_layers if isinstance(node.inbound_layers, list) else [node.inbound_layers]:
                consumers.setdefault(inbound.name, []).append(layer)
    custom: dict[str, object] = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.DepthwiseConv2D):
            continue
        nxt = consumers.get(layer.name, [])
        bn = nxt[0] if len(nxt) == 1 and isinstance(nxt[0], keras.layers.BatchNormalization) else None
        after = consumers.get(bn.name, []) if bn is not None else []
        if (bn is None or layer.get_config().get("activation") != "linear" or len(after) != 1
                or not isinstance(after[0], keras.layers.ReLU)):
            log.warning("depthwise layer %s is not followed by BatchNormalization + ReLU: default (per-tensor) "
                        "QAT weights kept for it", layer.name)
            continue
        custom[layer.name] = classes["DepthwisePerChannelQuantizeConfig"]()
        custom[bn.name] = classes["NoOpQuantizeConfig"]()

    def annotate(layer):
        if layer.name in custom:
            return q.quantize_annotate_layer(layer, quantize_config=custom[layer.name])
        return q.quantize_annotate_layer(layer)

    with q.quantize_scope(custom_objects()):
        annotated = keras.models.clone_model(model, clone_function=annotate)
        annotated.set_weights(model.get_weights())
        qat = q.quantize_apply(annotated)
    log.info("QAT with per-channel depthwise weights on %d depthwise layer(s)", len(custom) // 2)
    return qat
