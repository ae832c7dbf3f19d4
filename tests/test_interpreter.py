"""The interpreter wrapper on a real int8 model: the ImageNet MobileNetV2 in ../shared/weights."""

import numpy as np
import pytest

from cxr_edge.errors import BackendError
from cxr_edge.runtime.interpreter import TFLiteModel, available_backends
from cxr_edge.runtime.preprocess import preprocess
from cxr_edge.tasks import InputSpec

# The Coral model's input is uint8 with scale 1/128 and zero point 128: x = pixel/128 - 1 maps back exactly.
IMAGENET_INPUT = InputSpec(size=224, channels=3, scale=1 / 128, offset=-1.0, resize="stretch")


@pytest.fixture(scope="module")
def imagenet(shared_weights):
    model = TFLiteModel(shared_weights / "mobilenet_v2_1.0_224_quant.tflite", threads=1)
    labels = (shared_weights / "imagenet_labels.txt").read_text().splitlines()
    return model, labels


@pytest.mark.parametrize("image,expected", [("chelsea.png", "Egyptian cat"), ("coffee.png", "espresso")])
def test_imagenet_int8_model_names_the_documented_classes(imagenet, shared_weights, image, expected):
    model, labels = imagenet
    x = preprocess(shared_weights / "test_images" / image, IMAGENET_INPUT)
    (probs,) = model.run(x)
    assert probs.shape == (1, 1001) and probs.dtype == np.float32
    assert labels[int(np.argmax(probs))] == expected
    assert 0.3 < probs.max() <= 1.0  # dequantized probabilities, not raw uint8 counts


def test_wrapper_reports_backend_and_quantization(imagenet):
    model, _ = imagenet
    assert model.backend == available_backends()[0] == "ai-edge-litert"
    assert "XNNPACK" in model.delegate
    inp = model.inputs[0]
    assert inp.dtype == np.uint8 and inp.scale == pytest.approx(1 / 128) and inp.zero_point == 128
    assert model.describe()["input_shape"] == [224, 224, 3]


def test_quantize_dequantize_roundtrip_at_the_boundary(imagenet):
    model, _ = imagenet
    inp = model.inputs[0]
    pixels = np.arange(256, dtype=np.float32)
    q = model.quantize(pixels / 128 - 1, inp)
    assert q.dtype == np.uint8 and np.array_equal(q, np.arange(256))  # exact: no off-by-one rounding
    assert np.allclose(model.dequantize(q, inp), pixels / 128 - 1)
    assert model.quantize(np.array([5.0, -5.0]), inp).tolist() == [255, 0]  # saturates, no wrap-around


def test_batches_and_single_samples(imagenet, shared_weights):
    model, _ = imagenet
    x = preprocess(shared_weights / "test_images" / "chelsea.png", IMAGENET_INPUT)
    one = model.run(x)[0]
    two = model.run(np.stack([x, x]))[0]
    assert two.shape == (2, 1001) and np.allclose(two[0], one[0]) and np.allclose(two[1], one[0])
    with pytest.raises(BackendError, match="does not fit"):
        model.run(np.zeros((96, 96, 3), np.float32))


def test_threads_and_backend_choice_are_validated(shared_weights):
    path = shared_weights / "mobilenet_v2_1.0_224_quant.tflite"
    assert TFLiteModel(path, threads=2).threads == 2
    with pytest.raises(BackendError, match="threads"):
        TFLiteModel(path, threads=0)
    with pytest.raises(BackendError, match="valid: ai-edge-litert"):
        TFLiteModel(path, backend="onnx")


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"definitely not a flatbuffer" * 10)
    with pytest.raises(BackendError, match="refused this model"):
        TFLiteModel(bad)
