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


@pytest.mark.slow
def test_round_kernel_gives_the_converters_int8_weights(model_and_images):
    """The folded depthwise kernel rounded by round_kernel equals what the TFLite converter stores."""
    from cxr_edge.training.convert import convert
    from cxr_edge.training.tf_env import load

    tf, _ = load()
    model, images = model_and_images
    content = convert(model, "int8", representative=images)
    interp = tf.lite.Interpreter(model_content=content)
    interp.allocate_tensors()
    dw = model.get_layer("block_3_depthwise")
    bn = model.get_layer("block_3_depthwise_BN")
    gamma, _, _, var = bn.get_weights()
    folded = dw.get_weights()[0] * (gamma / np.sqrt(var + bn.epsilon))[None, None, :, None]   # (3, 3, C, 1)
    expected = round_kernel(folded, 2).transpose(3, 0, 1, 2)                                 # (1, 3, 3, C)
    matches = []
    for t in interp.get_tensor_details():
        if t["dtype"] == np.int8 and tuple(t["shape"]) == expected.shape:
            q = t["quantization_parameters"]
            stored = interp.get_tensor(t["index"]).astype(np.float64) * q["scales"][None, None, None, :]
            matches.append(np.abs(stored - expected).max() / np.abs(expected).max())
    assert matches and min(matches) < 1e-5, matches


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
