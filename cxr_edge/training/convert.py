"""Keras model -> TFLite bytes: full int8, float16, dynamic range or float32.

The model is not handed to ``TFLiteConverter.from_keras_model``: that exports a Keras SavedModel
(tracing every layer's call functions), which for MobileNetV2 takes ~30 s for a float model and
~70 s for a QAT model even at 64 px. Instead one serving ``tf.function`` over the model, with
its variables, is saved to a temporary SavedModel and converted from there: the same TFLite
graph (identical int8 outputs checked for PTQ), in ~8 s / ~15 s at 64 px and, measured at alpha 1.0 @224
on the 2-core workstation, 27 s instead of 43 s (PTQ, 100 calibration images; calibration adds
~0.2 s per image) and 21 s instead of 71 s (from QAT). The signature names the input ``image``
and the outputs ``probs`` and ``features``, which TFLite keeps in its signature; the plain output
order of the interpreter is *not* the model's order, so readers identify outputs by shape
(:func:`roles_from_shapes`).

Per-channel weight quantization is the default (and what MobileNetV2 needs: depthwise kernels
have very different ranges per channel). ``per_channel=False`` gives per-tensor weights, only
useful for accelerators that cannot do per-channel (some older NPUs/DSPs), and destructive here:
with the ImageNet backbone on CXRs (alpha 1.0 @128) the pooled features of the int8 model
correlated 0.92 with float per-channel and 0.12 per-tensor.
"""

from __future__ import annotations

import logging
import tempfile
import time

import numpy as np

from ..errors import BackendError, CxrEdgeError, RecipeError
from .qat import is_qat_model
from .tf_env import load

__all__ = ["convert", "IO_DTYPES", "MODES", "output_roles", "ROLES", "roles_from_shapes"]

log = logging.getLogger(__name__)

MODES = ("int8", "float16", "dynamic", "float32")
IO_DTYPES = ("uint8", "int8", "float32")
ROLES = ("probs", "features")
_INPUT_RANGE_SLACK = 1e-3


def convert(model, mode: str = "int8", representative=None, *, io_dtype: str | None = None,
            per_channel: bool = True, batch_size: int | None = 1,
            input_range: tuple[float, float] | None = (-1.0, 1.0)) -> bytes:
    """Convert a tf-keras model (float or QAT) to TFLite and return the flatbuffer bytes.

    mode:
      ``'int8'``    full integer: int8 weights and activations, int8-only builtin ops, I/O as
                    ``io_dtype`` (default ``'uint8'``; ``'int8'``; or ``'float32'`` with
                    quantize/dequantize inside). From a float model this needs ``representative``
                    (calibration data); a QAT model carries its own ranges and needs none.
      ``'float16'`` float16 weights, float32 compute and I/O (float model only).
      ``'dynamic'`` int8 weights, activations quantized on the fly, float32 I/O (float model only).
      ``'float32'`` no quantization (float model only).

    representative: an iterable, or a callable returning one, of float32 arrays shaped like the
    model input, with or without the batch axis (``(N, S, S, C)`` or ``(S, S, C)``), already
    preprocessed; ``(x, y)`` pairs are accepted and ``y`` ignored. Values outside ``input_range``
    (raw 0-255 pixels, say) are an error: calibrating on un-preprocessed data silently breaks int8.

    batch_size: the input's batch dimension in the TFLite model (``None``: dynamic).
    Outputs are, in signature order, ``probs`` and (for a two-output model) ``features``.
    """
    io = _check_args(model, mode, io_dtype)
    tf, _ = load()
    qat = is_qat_model(model)
    if qat and mode != "int8":
        raise RecipeError(f"a QAT model converts only with mode 'int8', not {mode!r}; convert the "
                          f"float model (before quantize_for_training) for {mode!r}")
    if mode == "int8" and not qat and representative is None:
        raise RecipeError("mode 'int8' from a float model needs representative data (calibration "
                          "images, preprocessed like the model input, e.g. ~200-500 from "
                          "a calibration set); a QAT model needs none")
    if representative is not None and (mode != "int8" or qat):
        log.warning("representative data ignored: mode %r of a %s model does not calibrate",
                    mode, "QAT" if qat else "float")
        representative = None
    samples = None
    if representative is not None:
        samples = _calibration_samples(representative, tuple(model.input_shape[1:]), input_range)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cxr_edge_convert_") as tmp:
        _save_serving(model, tmp, batch_size)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        _configure(converter, tf, mode, io, qat, samples, per_channel)
        tflite = converter.convert()
    elapsed = time.perf_counter() - started
    log.info("converted %s to %s TFLite (%s, %d bytes) in %.1f s", model.name, mode,
             "from QAT" if qat else "from float", len(tflite), elapsed)
    if mode == "int8":
        _check_full_integer(tflite, io)
    return tflite


def _check_args(model, mode, io_dtype) -> str:
    if mode not in MODES:
        raise RecipeError(f"unknown conversion mode {mode!r}; valid: {', '.join(MODES)}")
    io = io_dtype or ("uint8" if mode == "int8" else "float32")
    if io not in IO_DTYPES:
        raise RecipeError(f"unknown io_dtype {io!r}; valid: {', '.join(IO_DTYPES)}")
    if mode != "int8" and io != "float32":
        raise RecipeError(f"io_dtype {io!r} needs mode 'int8'; mode {mode!r} has float32 inputs and outputs")
    if len(model.inputs) != 1 or len(model.outputs) > len(ROLES):
        raise RecipeError(f"model {model.name!r} has {len(model.inputs)} input(s) and "
                          f"{len(model.outputs)} output(s); convert expects 1 image input and "
                          f"[probs] or [probs, features]")
    return io


def _save_serving(model, directory: str, batch_size) -> None:
    """Save a SavedModel with one ``serving_default`` signature: image -> {probs[, features]}."""
    tf, _ = load()
    spec = tf.TensorSpec([batch_size, *model.input_shape[1:]], tf.float32, name="image")
    names = ROLES[:len(model.outputs)]

    @tf.function(input_signature=[spec])
    def serve(image):
        outputs = model(image, training=False)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        return dict(zip(names, outputs))

    module = tf.Module()
    module.model_variables = list(model.variables)  # tracked, so the SavedModel holds them
    module.serve = serve
    tf.saved_model.save(module, directory, signatures={"serving_default": serve})


def _configure(converter, tf, mode, io, qat, samples, per_channel) -> None:
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        dtype = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[io]
        converter.inference_input_type = dtype
        converter.inference_output_type = dtype
        if not qat:
            converter.representative_dataset = lambda: ([s] for s in samples)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # For a QAT model supported_ops is left alone on purpose: TF 2.21 checks for a
        # representative dataset before it looks at the graph's fake-quant ops, so
        # TFLITE_BUILTINS_INT8 without one fails. _check_full_integer verifies the result instead.
    if not per_channel:
        converter._experimental_disable_per_channel = True  # no public switch in TF 2.21


def _calibration_samples(representative, input_shape: tuple, input_range) -> list:
    """Materialise calibration data as a list of (1, S, S, C) float32 arrays, checked."""
    source = representative() if callable(representative) else representative
    samples = []
    low = high = None
    for item in source:
        if isinstance(item, (tuple, list)) and not isinstance(item, np.ndarray):
            item = item[0]
        x = np.asarray(item, dtype=np.float32)
        if x.ndim == len(input_shape):
            x = x[None]
        if tuple(x.shape[1:]) != input_shape:
            raise RecipeError(f"representative batch has shape {x.shape}; the model input is "
                              f"(N, {', '.join(map(str, input_shape))})")
        low = x.min() if low is None else min(low, x.min())
        high = x.max() if high is None else max(high, x.max())
        samples.extend(x[i:i + 1] for i in range(len(x)))
    if not samples:
        raise RecipeError("representative data is empty; give calibration images")
    if input_range is not None and (low < input_range[0] - _INPUT_RANGE_SLACK
                                    or high > input_range[1] + _INPUT_RANGE_SLACK):
        raise RecipeError(
            f"representative data spans [{low:.3g}, {high:.3g}], outside the model input range "
            f"{list(input_range)}: calibrate on preprocessed images (cxr_edge preprocess), not raw pixels"
        )
    log.info("calibrating int8 on %d samples spanning [%.3f, %.3f]", len(samples), low, high)
    return samples


# --- reading converted models (no TensorFlow needed) -------------------------------------------

def _check_full_integer(tflite: bytes, io: str) -> None:
    """Raise if an int8 conversion left float tensors inside the graph."""
    try:  # all tensors, not just I/O: beyond what the device-side wrapper exposes
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise BackendError(f"checking an int8 model needs ai-edge-litert ({exc}); "
                           f"install it with: pip install ai-edge-litert") from exc
    interp = Interpreter(model_content=tflite)
    boundary = set()
    if io == "float32":  # the float I/O tensors and their QUANTIZE/DEQUANTIZE neighbours
        boundary = {d["index"] for d in interp.get_input_details() + interp.get_output_details()}
    floats = [t["name"] for t in interp.get_tensor_details()
              if t["dtype"] in (np.float32, np.float16) and t["index"] not in boundary]
    if floats:
        raise CxrEdgeError(
            f"int8 conversion left {len(floats)} float tensor(s) (e.g. {floats[:3]}); the model has "
            f"layers without int8 kernels or, for a QAT model, layers tfmot did not wrap"
        )


def roles_from_shapes(shapes, num_labels: int) -> dict:
    """Which output index is ``'probs'`` (shape (B, num_labels)) and which ``'features'`` (rank 4).

    Pure function of the output shapes, for any interpreter: TFLite does not keep the Keras
    output order, so outputs are told apart by shape.
    """
    roles = {}
    for index, shape in enumerate(shapes):
        shape = tuple(int(d) for d in shape)
        role = ("probs" if len(shape) == 2 and shape[-1] == num_labels
                else "features" if len(shape) == 4 else None)
        if role is None or role in roles:
            roles = None
            break
        roles[role] = index
    if not roles or "probs" not in roles:
        raise CxrEdgeError(
            f"cannot identify the model outputs {[tuple(int(d) for d in s) for s in shapes]} for "
            f"{num_labels} label(s): expected one (1, {num_labels}) probabilities output and at most "
            f"one (1, H, W, C) feature map; was the model exported for another task?"
        )
    return roles


def output_roles(tflite, num_labels: int) -> dict:
    """``{'probs': i, 'features': j}``: indices into the interpreter's output list.

    ``tflite`` is the model's bytes or a path; read with the device-side interpreter wrapper
    (:class:`cxr_edge.runtime.interpreter.TFLiteModel`), so the indices are those of
    ``TFLiteModel.outputs`` / ``run()``. ``'features'`` is absent for a one-output model.
    """
    from ..runtime.interpreter import TFLiteModel

    return roles_from_shapes([o.shape for o in TFLiteModel(tflite).outputs], num_labels)
