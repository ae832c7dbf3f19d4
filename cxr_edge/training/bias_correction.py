"""Bias correction for post-training quantization: remove the mean shift that rounding the weights to int8 adds.

The TFLite converter rounds every convolution kernel to int8, symmetric and narrow-range (-127..127), one scale
per output channel (per channel for a depthwise kernel). A rounded kernel ``W + dW`` moves each output channel's
mean over real images by ``dW . E[x]``: a bias the float model never had, which the layers after it carry on.
On a retrained cxr4 float model this rounding alone (activations left float) changed 5% of the export check's
decisions, more than the 8-bit activations did (``benchmarks/int8_weights_only.py``,
``benchmarks/int16_activations.py``).

:func:`correct_bias` is the empirical bias correction of Nagel et al. 2019 ("Data-Free Quantization Through
Weight Equalization and Bias Correction", section 4.2), measured on images rather than derived from BatchNorm
statistics: layer by layer, in graph order, with every earlier kernel already rounded and corrected, the mean per
channel of this convolution's output with its kernel rounded minus the float model's, over calibration images, is
added to the moving mean of the BatchNormalization that follows (``(y - mean) / std``: the shift comes out
exactly; the converter folds the mean into the int8 bias). The returned model keeps the float kernels: the
converter rounds them itself, to the values used here (:func:`round_kernel` is its rounding). Only the moving
means differ from the float model, so the corrected model is a float model like any other; a convolution not
followed by a BatchNormalization is rounded in the measurement but not corrected.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .tf_env import load

__all__ = ["bias_correction_images", "correct_bias", "kernel_axis", "round_kernel", "rounded_copy"]

log = logging.getLogger(__name__)


def round_kernel(w: np.ndarray, axis: int) -> np.ndarray:
    """``w`` rounded as the converter rounds int8 weights: symmetric, -127..127, one scale per index of ``axis``."""
    moved = np.moveaxis(np.asarray(w), axis, -1)
    scale = np.abs(moved).reshape(-1, moved.shape[-1]).max(axis=0) / 127.0
    scale = np.where(scale > 0, scale, 1.0)
    rounded = np.clip(np.round(moved / scale), -127, 127) * scale
    return np.moveaxis(rounded, -1, axis).astype(np.asarray(w).dtype)


def bias_correction_images(n: int, k: int) -> np.ndarray:
    """Indices of ``min(k, n)`` images evenly spaced through a set of ``n`` (a calibration manifest is grouped
    by class, so its first images would all be one class)."""
    if n < 1 or k < 1:
        raise ValueError(f"bias correction needs at least one image (set of {n}, asked for {k})")
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))


def kernel_axis(layer) -> int | None:
    """The axis the converter gives one scale per (depthwise: the channel axis; Conv2D/Dense: the last), or None
    for a layer whose int8 rounding this module does not model (transposed convolutions, depth multipliers > 1)."""
    _, keras = load()
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return 2 if int(getattr(layer, "depth_multiplier", 1)) == 1 else None
    if isinstance(layer, keras.layers.Conv2DTranspose):
        return None
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
        return -1
    return None


def rounded_copy(model):
    """A copy of ``model`` with every kernel rounded as the converter rounds it, activations float: what the int8
    model's weights compute without its activation rounding."""
    _, keras = load()
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        axis = kernel_axis(layer)
        if axis is not None:
            weights = layer.get_weights()
            weights[0] = round_kernel(weights[0], axis)
            layer.set_weights(weights)
    return copy


def _batchnorm_after(model) -> dict[str, object]:
    """{layer name: the BatchNormalization that is the only consumer of that layer's only output}: where a mean
    shift can be taken out exactly. A layer used twice, read by another layer too, or followed by a BN that does not
    normalize the last axis is left out (its rounding is still applied when the later layers are measured)."""
    _, keras = load()
    consumers: dict[str, list[str]] = {}
    single_input: dict[str, str] = {}
    for entry in model.get_config()["layers"]:
        nodes = entry.get("inbound_nodes") or []
        if not isinstance(nodes, list):          # not the tf-keras 2 functional format: nothing is corrected
            return {}
        inputs = [inbound[0] for node in nodes if isinstance(node, list) for inbound in node
                  if isinstance(inbound, list) and inbound]
        for name in inputs:
            consumers.setdefault(name, []).append(entry["name"])
        if len(nodes) == 1 and len(inputs) == 1:
            single_input[entry["name"]] = inputs[0]
    after = {}
    for name, producer in single_input.items():
        bn = model.get_layer(name)
        if not isinstance(bn, keras.layers.BatchNormalization) or consumers.get(producer) != [name]:
            continue
        axis = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
        rank = len(bn.input.shape)
        if [a % rank for a in axis] == [rank - 1]:
            after[producer] = bn
    return after


def _channel_means(model, layer_name: str, images: np.ndarray, batch: int) -> np.ndarray:
    """Mean per output channel of ``layer_name``'s output over ``images`` (float64)."""
    tf, keras = load()
    probe = keras.Model(model.input, model.get_layer(layer_name).output)
    total, count = 0.0, 0
    for start in range(0, len(images), batch):
        out = probe(images[start:start + batch], training=False)
        axes = list(range(len(out.shape) - 1))
        total = total + tf.reduce_sum(tf.cast(out, tf.float64), axis=axes).numpy()
        count += int(np.prod(out.shape[:-1]))
    return total / count


def _all_channel_means(model, names: list[str], images: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """``{name: mean per output channel}`` for every layer in ``names``, in one pass (reduced in the graph)."""
    tf, keras = load()
    outs = []
    for n in names:
        out = tf.cast(model.get_layer(n).output, tf.float64)
        outs.append(tf.reduce_mean(out, axis=list(range(1, len(out.shape) - 1))) if len(out.shape) > 2 else out)
    probe = keras.Model(model.input, outs)
    total, count = None, 0
    for start in range(0, len(images), batch):
        got = probe(images[start:start + batch], training=False)
        sums = [g.numpy().sum(axis=0) for g in (got if isinstance(got, (list, tuple)) else [got])]
        total = sums if total is None else [a + b for a, b in zip(total, sums)]
        count += len(images[start:start + batch])
    return {n: t / count for n, t in zip(names, total)}


def correct_bias(model, images: np.ndarray, *, batch: int = 32):
    """``(corrected model, record)``: a copy of float ``model`` whose BatchNorm means cancel the int8 weight
    rounding's mean shift, measured on ``images`` (preprocessed model inputs, e.g. the calibration set).

    ``model`` is left as it was. The record (for the export report and the model's metadata) says how many
    layers were corrected, on how many images, how large the shifts were and how long it took."""
    _, keras = load()
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"bias correction needs a batch of preprocessed model inputs (N, S, S, C), got shape "
                         f"{images.shape}: pass calibration images as export's PTQ uses them")
    if not np.isfinite(images).all():
        raise ValueError("bias correction images hold NaN or infinite values: rebuild the calibration set "
                         "(cxr-edge calibration build) or check the preprocessing")
    low_precision = sorted({str(lay.compute_dtype) for lay in model.layers if kernel_axis(lay) is not None}
                           - {"float32"})
    if low_precision:
        raise ValueError(f"bias correction needs a float32 model (its shifts are smaller than {low_precision} "
                         f"noise); export the float32 twin the trainer saves (float.h5)")
    started = time.perf_counter()
    work = keras.models.clone_model(model)
    work.set_weights(model.get_weights())
    following = _batchnorm_after(work)
    corrected_layers = [lay.name for lay in work.layers if kernel_axis(lay) is not None and lay.name in following]
    if not corrected_layers:
        log.warning("bias correction: no convolution here is followed by a BatchNormalization it alone feeds "
                    "(a Sequential, nested or BN-free model): nothing is corrected")
    log.info("bias correction: the int8 weight rounding's mean shift, %d layers one after another on %d images",
             len(corrected_layers), len(images))
    references = _all_channel_means(model, corrected_layers, images, batch) if corrected_layers else {}
    shifts, relative = {}, []
    for layer in work.layers:
        axis = kernel_axis(layer)
        if axis is None:
            continue
        weights = layer.get_weights()
        weights[0] = round_kernel(weights[0], axis)
        layer.set_weights(weights)
        bn = following.get(layer.name)
        if bn is None:
            continue
        reference = references[layer.name]
        shift = _channel_means(work, layer.name, images, batch) - reference
        if not np.isfinite(shift).all():
            raise ValueError(f"bias correction: the mean shift of {layer.name} is not finite (the float model's "
                             f"outputs overflow on these images); export without quantization.bias_correction")
        bn.moving_mean.assign((bn.moving_mean.numpy() + shift).astype(bn.moving_mean.dtype.as_numpy_dtype))
        shifts[layer.name] = float(np.abs(shift).mean())
        relative.append(float(np.abs(shift).mean() / max(np.abs(reference).mean(), 1e-12)))
    corrected = keras.models.clone_model(model)
    corrected.set_weights(model.get_weights())
    for layer in corrected.layers:   # the float kernels, the corrected means
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights(work.get_layer(layer.name).get_weights())
    seconds = time.perf_counter() - started
    log.info("bias correction: %d layers on %d images in %.1f s (mean |shift| / mean |channel mean| %.4f)",
             len(shifts), len(images), seconds, float(np.mean(relative)) if relative else 0.0)
    record = {"method": "empirical per-channel bias correction (Nagel et al. 2019)", "images": len(images),
              "layers": len(shifts), "seconds": round(seconds, 1),
              "mean_relative_shift": round(float(np.mean(relative)), 5) if relative else 0.0,
              "largest_shifts": dict(sorted(shifts.items(), key=lambda kv: -kv[1])[:3])}
    return corrected, record
