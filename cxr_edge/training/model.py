"""The MobileNetV2 classifier every task trains, and the views training and export need of it.

:func:`build_model` returns one *flat* tf-keras functional model (every
MobileNetV2 layer sits directly in it: no nested Model, no Lambda, no
Rescaling), so tfmot can wrap every layer and the names below find the layers
export needs::

    image (S, S, C) float32 in [-1, 1]      preprocessing happens outside, once
      -> MobileNetV2 backbone layers        ... block_16_project_BN, Conv_1, Conv_1_bn,
      -> "out_relu"  (S/32, S/32, 1280)     the last conv feature map (class activation maps)
      -> "pool"      GlobalAveragePooling2D
      -> "head_dropout"
      -> "head"      Dense(num_labels, sigmoid | softmax)

After :func:`cxr_edge.training.qat.quantize_for_training` the same layers are
called ``quant_<name>``; :func:`find_layer` looks for both.

Weights come only from a local file (``weights='imagenet'`` would make Keras
download, which fails offline and is never done here).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import RecipeError
from .tf_env import load

__all__ = ["base_name", "build_model", "calibrate_batchnorm", "DROPOUT", "feature_extractor", "FEATURES",
           "find_layer", "FIRST_CONV", "HEAD", "head_only_model", "head_weights", "INPUT", "load_backbone_weights",
           "NUM_BLOCKS", "POOL", "QUANT_PREFIX", "resolve_weights", "set_trainable", "with_feature_output"]

log = logging.getLogger(__name__)

INPUT = "image"
FEATURES = "out_relu"
POOL = "pool"
DROPOUT = "head_dropout"
HEAD = "head"
QUANT_PREFIX = "quant_"
FIRST_CONV = "Conv1"
NUM_BLOCKS = 16  # MobileNetV2 inverted-residual blocks block_1 .. block_16 (block 0 is "expanded_conv")

_WEIGHTS_HELP = (
    "Pass a local MobileNetV2 no-top HDF5 weights file for the same alpha (the ImageNet file in "
    "../shared/weights is mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5, "
    "alpha 1.0, any input size), or train from scratch with --weights none (weights=None)"
)


def resolve_weights(weights) -> Path | None:
    """Check a ``weights`` argument: ``None``/``'none'`` (from scratch) or an existing local file.

    ``'imagenet'`` is refused: Keras would download, and cxr-edge never downloads.
    """
    if weights is None or (isinstance(weights, str) and weights.strip().lower() == "none"):
        return None
    if isinstance(weights, str) and weights.strip().lower() == "imagenet":
        raise RecipeError(f"weights='imagenet' would download from the internet, which cxr-edge never does. "
                          f"{_WEIGHTS_HELP}.")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise RecipeError(f"weights file {str(path)!r} does not exist. {_WEIGHTS_HELP}.")
    return path


def build_model(spec, *, alpha: float = 1.0, input_size: int | None = None, weights=None,
                dropout: float = 0.2, head_name: str = HEAD):
    """A flat tf-keras MobileNetV2 classifier for ``spec`` (a :class:`cxr_edge.tasks.TaskSpec`).

    Input ``(S, S, spec.input.channels)`` float32 in [-1, 1], ``S = input_size or spec.input.size``.
    Output ``(None, spec.num_labels)`` with ``spec.activation``. ``weights`` is ``None`` (from
    scratch) or a local no-top HDF5 file for this ``alpha`` (see :func:`load_backbone_weights`).
    """
    if not 0.0 <= dropout < 1.0:
        raise RecipeError(f"dropout must be in [0, 1), got {dropout}")
    path = resolve_weights(weights)
    _, keras = load()
    size = int(input_size or spec.input.size)
    channels = spec.input.channels
    image = keras.Input(shape=(size, size, channels), name=INPUT, dtype="float32")
    # input_tensor= builds the backbone's layers on our input, so Model(image, ...) below lists
    # them directly (flat) instead of nesting a "mobilenetv2" Model that tfmot cannot wrap.
    backbone = keras.applications.MobileNetV2(input_tensor=image, alpha=alpha, include_top=False,
                                              weights=None)
    if path is not None:
        load_backbone_weights(backbone, path, alpha=alpha)
    x = backbone.get_layer(FEATURES).output
    x = keras.layers.GlobalAveragePooling2D(name=POOL)(x)
    x = keras.layers.Dropout(dropout, name=DROPOUT)(x)
    # float32 even under a mixed_float16 policy (GPU): a sigmoid/softmax in float16 saturates and rounds
    # probabilities; with the default float32 policy this changes nothing.
    probs = keras.layers.Dense(spec.num_labels, activation=spec.activation, name=head_name, dtype="float32")(x)
    name = f"cxr_edge_{spec.name}_mobilenetv2_{alpha:g}_{size}"
    return keras.Model(image, probs, name=name)


def load_backbone_weights(backbone, path, *, alpha: float = 1.0) -> None:
    """Load a MobileNetV2 no-top HDF5 file into ``backbone`` (1 or 3 input channels).

    The file is first loaded into a 3-channel template of the same alpha, which checks it layer
    by layer. With one input channel the ImageNet ``Conv1`` kernel (3, 3, 3, k) is summed over
    its RGB axis: conv(grey, sum_c W_c) == conv([grey, grey, grey], W), so the model sees a grey
    film exactly as the ImageNet network sees the same film replicated to RGB.
    """
    _, keras = load()
    path = Path(path)
    size = int(backbone.input_shape[1])
    channels = int(backbone.input_shape[-1])
    template = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha,
                                              include_top=False, weights=None)
    try:
        template.load_weights(str(path))
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise RecipeError(
            f"weights file {str(path)!r} does not fit MobileNetV2 alpha={alpha:g} without top "
            f"({type(exc).__name__}: {str(exc)[:200]}). {_WEIGHTS_HELP}."
        ) from exc
    for src in template.layers:
        values = src.get_weights()
        if not values:
            continue
        if src.name == FIRST_CONV and channels == 1:
            values[0] = values[0].sum(axis=2, keepdims=True)
        backbone.get_layer(src.name).set_weights(values)
    log.info("loaded backbone weights from %s (alpha %g, %d channel(s))", path, alpha, channels)


def find_layer(model, name: str):
    """The layer called ``name`` in a float model, or ``quant_<name>`` in a QAT model."""
    for candidate in (name, QUANT_PREFIX + name):
        try:
            return model.get_layer(candidate)
        except ValueError:
            continue
    raise RecipeError(f"model {model.name!r} has no layer {name!r} (nor {QUANT_PREFIX + name!r}); "
                      f"build it with cxr_edge.training.model.build_model")


def base_name(layer) -> str:
    """A layer's name without the ``quant_`` prefix tfmot adds."""
    name = layer.name
    return name[len(QUANT_PREFIX):] if name.startswith(QUANT_PREFIX) else name


def _inner(layer):
    """The wrapped layer inside a tfmot QuantizeWrapper, else the layer itself."""
    return getattr(layer, "layer", layer)


def head_weights(model, head_name: str = HEAD):
    """``(kernel (F, num_labels), bias (num_labels,))`` of the head Dense, as numpy (for CAM)."""
    dense = _inner(find_layer(model, head_name))
    return dense.kernel.numpy(), dense.bias.numpy()


# --- training stages -------------------------------------------------------------------------

_HEAD_LAYERS = (POOL, DROPOUT, HEAD)


def _first_trainable_index(model, scope: str, head_name: str) -> int:
    """Index in ``model.layers`` from which layers train, for a scope string."""
    names = [base_name(layer) for layer in model.layers]
    if scope == "all":
        return 0
    if scope == "head":
        marker = POOL if POOL in names else head_name
        return names.index(marker)
    if scope.startswith("block_") and scope[6:].isdigit() and 1 <= int(scope[6:]) <= NUM_BLOCKS:
        prefix = scope + "_"
        for i, name in enumerate(names):
            if name.startswith(prefix):
                return i
    raise RecipeError(
        f"unknown trainable scope {scope!r}; valid: 'head' (backbone frozen), "
        f"'block_N' with N in 1..{NUM_BLOCKS} (MobileNetV2 block N onwards plus Conv_1 and the head, "
        f"e.g. 'block_13'), or 'all'"
    )


def set_trainable(model, scope: str, *, train_bn: bool = False, head_name: str = HEAD) -> dict:
    """Choose what trains: ``'head'``, ``'block_N'`` (block N of 16 onwards) or ``'all'``.

    BatchNormalization layers stay frozen (``trainable=False``) unless ``train_bn=True``; in
    tf-keras a BN layer with ``trainable=False`` also runs in *inference* mode (moving statistics,
    no updates) even when the model is called with ``training=True``. That is the standard
    transfer-learning caveat: small fine-tuning batches would otherwise overwrite the ImageNet
    statistics and wreck the pretrained features. Use ``train_bn=True`` when training from
    scratch (``weights=None``), where the statistics have to be learnt.

    On a QAT model only ``'all'`` is accepted: tfmot's QuantizeWrapper lists the float kernel it
    quantizes among its own trainable weights whatever ``trainable`` says, so a frozen wrapped
    Conv/Dense would still train. BN freezing does work there (BN weights are not wrapped).

    Returns ``{"trainable_layers": n, "trainable_params": n}`` for logging. Recompile afterwards.
    """
    _, keras = load()
    if scope != "all" and any(layer.name.startswith(QUANT_PREFIX) for layer in model.layers):
        raise RecipeError(f"QAT model {model.name!r} can only be fine-tuned with scope 'all' (got "
                          f"{scope!r}): tfmot wrappers train their kernels even when frozen")
    start = _first_trainable_index(model, scope, head_name)
    for i, layer in enumerate(model.layers):
        is_bn = isinstance(_inner(layer), keras.layers.BatchNormalization)
        train = i >= start and (train_bn or not is_bn)
        layer.trainable = train
        if layer is not _inner(layer):
            _inner(layer).trainable = train
    n_params = sum(int(w.shape.num_elements()) for w in model.trainable_weights)
    n_layers = sum(1 for layer in model.layers if layer.trainable and layer.weights)
    log.info("trainable scope %s (train_bn=%s): %d layers with weights, %d parameters",
             scope, train_bn, n_layers, n_params)
    return {"trainable_layers": n_layers, "trainable_params": n_params}


def calibrate_batchnorm(model, images) -> None:
    """Set every BatchNormalization's moving statistics to those of one batch of ``images``.

    One forward pass in training mode with momentum 0, so in inference the model normalises
    exactly as in training on that batch. For freshly initialised models (tests, smoke runs),
    whose default statistics (mean 0, variance 1) make MobileNetV2 activations vanish; also a
    cheap re-estimation after changing the input size. Frozen BN layers are unfrozen for the pass
    and restored.
    """
    _, keras = load()
    saved = []
    for layer in model.layers:
        bn = _inner(layer)
        if isinstance(bn, keras.layers.BatchNormalization):
            saved.append((layer, bn, layer.trainable, bn.trainable, bn.momentum))
            layer.trainable = bn.trainable = True
            bn.momentum = 0.0
    try:
        model(images, training=True)
    finally:
        for layer, bn, layer_trainable, bn_trainable, momentum in saved:
            layer.trainable, bn.trainable, bn.momentum = layer_trainable, bn_trainable, momentum


# --- views for cached-feature training and export --------------------------------------------

def feature_extractor(model):
    """Model from the image to the pooled features ("pool" output), sharing ``model``'s layers.

    For caching backbone features once while the backbone is frozen (scope ``'head'``): the
    features do not change between epochs as long as BN runs in inference mode.
    """
    _, keras = load()
    return keras.Model(model.input, find_layer(model, POOL).output, name=f"{model.name}_features")


def head_only_model(model, head_name: str = HEAD):
    """Model from pooled features to probabilities that *shares* the head layers with ``model``.

    Training it on cached :func:`feature_extractor` outputs trains ``model``'s own Dropout and
    Dense layers (same objects, same variables): nothing needs copying back.
    """
    _, keras = load()
    width = int(find_layer(model, POOL).output.shape[-1])
    pooled = keras.Input(shape=(width,), name="pooled_features")
    x = find_layer(model, DROPOUT)(pooled)
    probs = find_layer(model, head_name)(x)
    return keras.Model(pooled, probs, name=f"{model.name}_head_only")


def with_feature_output(model, head_name: str = HEAD):
    """A model with two outputs ``[probs, out_relu feature map]`` for export (CAM on the device).

    Works on a float model and on a QAT model (there it returns the fake-quantised ``quant_out_relu``
    output, whose range the int8 converter uses). Shares all layers and weights with ``model``.
    """
    _, keras = load()
    if len(model.outputs) == 2:
        return model
    probs = find_layer(model, head_name).output
    features = find_layer(model, FEATURES).output
    return keras.Model(model.input, [probs, features], name=f"{model.name}_cam")
