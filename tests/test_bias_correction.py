"""Bias correction for PTQ (cxr_edge.training.bias_correction): the rounding is the converter's, and the corrected
model's rounded layers keep the float model's channel means.

A tiny MobileNetV2 (alpha 0.35, 48 px, random weights) with BatchNorm statistics set away from their initial
values, so that folding them changes the kernels as in a trained model. No ../shared needed.
"""

import numpy as np
import pytest

pytest.importorskip("tf_keras", reason="needs the [train] extra (TensorFlow, tf-keras)")

from cxr_edge.tasks import get_task  # noqa: E402
from cxr_edge.training.bias_correction import (  # noqa: E402
    bias_correction_images, correct_bias, kernel_axis, round_kernel, rounded_copy)

SIZE = 48


@pytest.fixture(scope="module")
def model_and_images():
    from cxr_edge.training.model import build_model
    from cxr_edge.training.tf_env import load

    _, keras = load()
    keras.utils.set_random_seed(3)
    spec = get_task("cxr4").with_input(size=SIZE)
    model = build_model(spec, alpha=0.35, input_size=SIZE, weights=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.2, n).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, n).astype(np.float32))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
    images = rng.uniform(-1, 1, (24, SIZE, SIZE, spec.input.channels)).astype(np.float32)
    return model, images


def _channel_mean(model, name, images):
    from cxr_edge.training.tf_env import load

    _, keras = load()
    out = keras.Model(model.input, model.get_layer(name).output)(images, training=False).numpy()
    return out.reshape(-1, out.shape[-1]).astype(np.float64).mean(axis=0)


def test_round_kernel_is_symmetric_per_channel_narrow_range():
    w = np.array([[[[1.0, -0.5]], [[0.3, 0.01]]]], np.float32)      # (1, 2, 1, 2): two output channels
    r = round_kernel(w, -1)
    scale = np.array([1.0, 0.5]) / 127
    assert np.allclose(r / scale, np.round(r / scale), atol=1e-4)    # on each channel's own grid
    assert np.isclose(np.abs(r[..., 0]).max(), 1.0) and np.isclose(np.abs(r[..., 1]).max(), 0.5)
    assert round_kernel(np.zeros((3, 3, 4, 1), np.float32), 2).sum() == 0     # an all-zero channel stays zero
    assert list(bias_correction_images(300, 4)) == [0, 100, 199, 299]         # spread over a class-grouped set
    assert list(bias_correction_images(3, 128)) == [0, 1, 2]
    with pytest.raises(ValueError):
        bias_correction_images(0, 8)


def _stored(interp, shape):
    """Every int8 tensor of ``shape`` in the converted model, dequantized with its per-channel scales."""
    out = []
    for t in interp.get_tensor_details():
        if t["dtype"] == np.int8 and tuple(t["shape"]) == shape:
            scales = t["quantization_parameters"]["scales"]
            axis = t["quantization_parameters"]["quantized_dimension"]
            shape_b = [1] * len(shape)
            shape_b[axis] = len(scales)
            out.append(interp.get_tensor(t["index"]).astype(np.float64) * scales.reshape(shape_b))
    return out


def _folded(model, conv, bn):
    gamma, _, _, var = model.get_layer(bn).get_weights()
    layer = model.get_layer(conv)
    factor = gamma / np.sqrt(var + model.get_layer(bn).epsilon)
    w = layer.get_weights()[0]
    return w * (factor[None, None, :, None] if kernel_axis(layer) == 2 else factor)


@pytest.mark.slow
def test_round_kernel_gives_the_converters_int8_weights(model_and_images):
    """The folded kernels rounded by round_kernel equal what the TFLite converter stores: a depthwise, a 1x1
    projection (Conv2D) and the Dense head."""
    from cxr_edge.training.convert import convert
    from cxr_edge.training.tf_env import load

    tf, _ = load()
    model, images = model_and_images
    interp = tf.lite.Interpreter(model_content=convert(model, "int8", representative=images))
    interp.allocate_tensors()
    dw = round_kernel(_folded(model, "block_3_depthwise", "block_3_depthwise_BN"), 2).transpose(3, 0, 1, 2)
    project = round_kernel(_folded(model, "block_5_project", "block_5_project_BN"), -1).transpose(3, 0, 1, 2)
    head = model.get_layer("head")
    dense = round_kernel(head.get_weights()[0], kernel_axis(head)).T                     # TFLite: (out, in)
    for name, expected in (("depthwise", dw), ("project", project), ("head", dense)):
        stored = _stored(interp, expected.shape)
        errors = [np.abs(got - expected).max() / np.abs(expected).max() for got in stored]
        assert errors and min(errors) < 1e-5, (name, errors)


@pytest.mark.slow
def test_only_a_batchnorm_fed_by_its_convolution_alone_is_corrected():
    """A conv whose output another layer also reads keeps its BN mean (the other reader would keep the shift);
    a Sequential model has no functional graph to read: nothing is corrected, and the record says so."""
    from cxr_edge.training.tf_env import load

    _, keras = load()
    keras.utils.set_random_seed(1)
    x = keras.Input((16, 16, 3))
    shared = keras.layers.Conv2D(8, 3, use_bias=False, name="shared")(x)
    alone = keras.layers.Conv2D(8, 3, use_bias=False, name="alone")(x)
    y = keras.layers.Add()([keras.layers.BatchNormalization(name="shared_bn")(shared), shared,
                            keras.layers.BatchNormalization(name="alone_bn")(alone)])
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(y)))
    images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    corrected, record = correct_bias(model, images)
    assert record["layers"] == 1 and set(record["largest_shifts"]) == {"alone"}
    assert np.array_equal(corrected.get_layer("shared_bn").moving_mean.numpy(),
                          model.get_layer("shared_bn").moving_mean.numpy())
    assert not np.array_equal(corrected.get_layer("alone_bn").moving_mean.numpy(),
                              model.get_layer("alone_bn").moving_mean.numpy())
    seq = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, use_bias=False),
                            keras.layers.BatchNormalization()])
    assert correct_bias(seq, images)[1]["layers"] == 0
    with pytest.raises(ValueError, match="NaN"):
        correct_bias(model, np.full((2, 16, 16, 3), np.nan, np.float32))


@pytest.mark.slow
def test_corrected_model_keeps_the_float_channel_means_under_rounding(model_and_images):
    model, images = model_and_images
    before = [w.copy() for w in model.get_weights()]
    corrected, record = correct_bias(model, images)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))     # the input is untouched
    assert record["layers"] == 52 and record["images"] == len(images)
    for layer in model.layers:                  # kernels stay float: the converter does the rounding
        if kernel_axis(layer) is not None:
            assert np.array_equal(layer.get_weights()[0], corrected.get_layer(layer.name).get_weights()[0])
    plain, fixed = rounded_copy(model), rounded_copy(corrected)
    for name in ("block_2_project_BN", "block_9_depthwise_BN", "Conv_1_bn"):   # the corrections act in the BN
        want = _channel_mean(model, name, images)
        err_plain = np.abs(_channel_mean(plain, name, images) - want).mean()
        err_fixed = np.abs(_channel_mean(fixed, name, images) - want).mean()
        assert err_fixed < 1e-3 * max(np.abs(want).mean(), 1e-3) + 1e-5 and err_fixed < err_plain / 10, name
