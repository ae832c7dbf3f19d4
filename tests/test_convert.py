"""TFLite conversion: full int8 from float (PTQ) and from QAT, float16, dynamic range; output roles.

Conversions are the slow part (~5-15 s each for these tiny models), so each converted model is
built once per module and shared.

About the tolerances: these models have random weights (BN statistics set from one batch), and
a random MobileNetV2 amplifies rounding error layer by layer. Measured here, QAT Keras vs its
int8 TFLite: at Conv1_relu at most 1 LSB (mean 0.03 LSB), then ~10 LSB by block 2, ~50-80 LSB at
out_relu, and up to ~0.3 on a probability. A trained network amplifies much less, and export
measures the real deltas on held-out data. So deep outputs get loose bounds that only catch
gross errors (wrong input quantization, mixed-up outputs, float fallbacks), and exactness is
checked where it is measurable: the QAT model's first layer to within 1 LSB.
The QAT tests are marked slow: wrapping (~12 s), a step and a conversion (~15-20 s).
"""

import numpy as np
import pytest

pytest.importorskip("tf_keras", reason="needs the [train] extra (TensorFlow, tf-keras, tfmot)")
pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert to run converted models")

from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from cxr_edge.errors import CxrEdgeError, RecipeError  # noqa: E402
from cxr_edge.runtime.interpreter import TFLiteModel  # noqa: E402
from cxr_edge.tasks import get_task  # noqa: E402
from cxr_edge.training import model as M  # noqa: E402
from cxr_edge.training.convert import convert, output_roles, roles_from_shapes  # noqa: E402
from cxr_edge.training.qat import is_qat_model, quantize_for_training  # noqa: E402
from cxr_edge.training.tf_env import load  # noqa: E402

tf, keras = load()
SIZE = 64
# Ops a full-int8 MobileNetV2 may contain: BN folded into the convs, ReLU6 fused, padding fused.
INT8_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED", "SOFTMAX", "LOGISTIC",
            "QUANTIZE", "DEQUANTIZE", "PAD"}
# Stated tolerances on probabilities, |converted - reference| over all labels and images of the
# random-weight test models (see the module docstring): (mean, max).
INT8_PROB_TOL = (0.15, 0.5)     # PTQ int8 vs float, and QAT int8 TFLite vs the QAT Keras model
DYNAMIC_PROB_TOL = (0.05, 0.2)  # int8 weights, float activations
F16_PROB_TOL = (0.01, 0.05)     # float16 weights
FEATURE_CORR_MIN = 0.5          # correlation of the int8 out_relu map with the reference


def assert_close_probs(got, ref, tol):
    diff = np.abs(got - ref)
    assert diff.mean() < tol[0] and diff.max() < tol[1], f"mean {diff.mean():.4f} max {diff.max():.4f}"


def images(n, seed):
    """Smooth random grey images in [-1, 1] that reach both ends of the range."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1.4, 1.4, (n, 8, 8, 1))
    x = np.kron(coarse, np.ones((1, SIZE // 8, SIZE // 8, 1))) + rng.normal(0, 0.1, (n, SIZE, SIZE, 1))
    return np.clip(x, -1, 1).astype(np.float32)


def run_tflite(tflite, x, num_labels):
    """Run a converted model through the device-side wrapper; returns {role: float outputs}."""
    outputs = TFLiteModel(tflite).run(x)
    return {role: outputs[i] for role, i in output_roles(tflite, num_labels).items()}


def output_scale(tflite, num_labels, role):
    return TFLiteModel(tflite).outputs[output_roles(tflite, num_labels)[role]].scale


def op_names(tflite):
    # _get_ops_details is the only op listing ai-edge-litert offers; read before allocation so
    # the XNNPACK delegate has not replaced the ops yet.
    return {op["op_name"] for op in Interpreter(model_content=tflite)._get_ops_details()}


# --- PTQ from a float model ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def float_model():
    """cxr4 (softmax) alpha 0.35 at 64 px with BN statistics set from data, two outputs."""
    model = M.build_model(get_task("cxr4"), alpha=0.35, input_size=SIZE)
    M.calibrate_batchnorm(model, images(16, seed=10))
    return M.with_feature_output(model)


@pytest.fixture(scope="module")
def ptq(float_model):
    calibration = (images(8, seed=s) for s in range(11, 15))  # a generator of (8, S, S, 1) batches
    return convert(float_model, "int8", calibration)


def test_ptq_uint8_input_quantization_is_the_preprocess_range(ptq):
    inp = Interpreter(model_content=ptq).get_input_details()[0]
    scale, zero = inp["quantization"]
    assert inp["dtype"] == np.uint8 and tuple(inp["shape"]) == (1, SIZE, SIZE, 1)
    assert scale == pytest.approx(1 / 127.5, rel=1e-3) and zero in (127, 128)


def test_ptq_outputs_are_found_by_role_and_agree_with_float(ptq, float_model):
    x = images(8, seed=20)
    ref_probs, ref_features = (t.numpy() for t in float_model(x, training=False))
    got = run_tflite(ptq, x, num_labels=4)
    assert got["probs"].shape == (8, 4) and got["features"].shape == (8, 2, 2, 1280)
    assert np.abs(ref_probs - ref_probs.mean(axis=0)).max() > 0.05  # the model does vary with input
    assert_close_probs(got["probs"], ref_probs, INT8_PROB_TOL)
    assert np.corrcoef(got["features"].ravel(), ref_features.ravel())[0, 1] > FEATURE_CORR_MIN


def test_ptq_is_full_integer(ptq):
    interp = Interpreter(model_content=ptq)
    assert op_names(ptq) <= INT8_OPS
    assert all(d["dtype"] == np.uint8 for d in interp.get_output_details())
    assert not [t["name"] for t in interp.get_tensor_details() if t["dtype"] == np.float32]


def test_output_roles_from_a_file(ptq, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(ptq)
    assert output_roles(path, 4) == output_roles(ptq, 4)
    assert set(output_roles(path, 4)) == {"probs", "features"}
    with pytest.raises(CxrEdgeError, match="another task"):
        output_roles(ptq, 14)


@pytest.mark.parametrize("mode,tol", [("float16", F16_PROB_TOL), ("dynamic", DYNAMIC_PROB_TOL)])
def test_float16_and_dynamic_models_run(float_model, mode, tol):
    tflite = convert(float_model, mode)
    interp = Interpreter(model_content=tflite)
    assert interp.get_input_details()[0]["dtype"] == np.float32
    x = images(4, seed=21)
    got = run_tflite(tflite, x, num_labels=4)
    assert_close_probs(got["probs"], float_model(x, training=False)[0].numpy(), tol)


# --- argument checks (no conversion runs) --------------------------------------------------------

def test_int8_from_float_needs_representative_data(float_model):
    with pytest.raises(RecipeError, match="representative"):
        convert(float_model, "int8")


@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "int4"}, "valid: int8, float16, dynamic, float32"),
    ({"mode": "float16", "io_dtype": "uint8"}, "needs mode 'int8'"),
    ({"mode": "int8", "io_dtype": "int16"}, "valid: uint8, int8, float32"),
])
def test_bad_mode_or_io_dtype(float_model, kwargs, match):
    with pytest.raises(RecipeError, match=match):
        convert(float_model, **kwargs)


def test_raw_pixel_calibration_data_is_refused(float_model):
    raw = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 1)).astype(np.float32)
    with pytest.raises(RecipeError, match="preprocess"):
        convert(float_model, "int8", raw)


def test_calibration_data_of_the_wrong_shape_is_refused(float_model):
    with pytest.raises(RecipeError, match=f"\\(N, {SIZE}, {SIZE}, 1\\)"):
        convert(float_model, "int8", [np.zeros((2, 32, 32, 1), np.float32)])


def test_roles_from_shapes():
    assert roles_from_shapes([(1, 7, 7, 1280), (1, 14)], 14) == {"features": 0, "probs": 1}
    assert roles_from_shapes([(1, 1)], 1) == {"probs": 0}
    with pytest.raises(CxrEdgeError):
        roles_from_shapes([(1, 4), (1, 4)], 4)


# --- QAT -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qat_trained():
    """nih14 (sigmoid) alpha 0.35 at 64 px, QAT-wrapped, one training step."""
    spec = get_task("nih14")
    model = M.build_model(spec, alpha=0.35, input_size=SIZE)
    M.calibrate_batchnorm(model, images(16, seed=30))
    qat = quantize_for_training(model)
    M.set_trainable(qat, "all")
    qat.compile(keras.optimizers.Adam(1e-4), spec.loss, run_eagerly=True)  # eager: no 20 s graph trace
    labels = (np.random.default_rng(0).random((16, spec.num_labels)) < 0.3).astype(np.float32)
    qat.fit(images(16, seed=31), labels, batch_size=16, epochs=1, verbose=0)
    return qat


@pytest.fixture(scope="module")
def qat_early(qat_trained):
    """[probs, Conv1_relu]: a second output attached after QAT, early enough to compare exactly.

    (The export shape, with_feature_output -> [probs, out_relu], converts the same way; it is
    checked structurally below and by the PTQ tests, to save a ~20 s conversion.)
    """
    return keras.Model(qat_trained.input, [qat_trained.output, qat_trained.get_layer("quant_Conv1_relu").output])


@pytest.fixture(scope="module")
def qat_tflite(qat_early):
    return convert(qat_early, "int8")  # no representative data: QAT carries its ranges


@pytest.mark.slow
def test_qat_wraps_every_layer_and_finds_the_feature_map(qat_trained):
    assert is_qat_model(qat_trained)
    wrapped = {type(layer).__name__ for layer in qat_trained.layers}
    assert wrapped <= {"InputLayer", "QuantizeLayer", "QuantizeWrapperV2"}
    cam = M.with_feature_output(qat_trained)
    assert M.find_layer(cam, M.FEATURES).name == "quant_out_relu"
    assert [tuple(o.shape) for o in cam.outputs] == [(None, 14), (None, 2, 2, 1280)]


@pytest.mark.slow
def test_qat_int8_agrees_with_the_qat_keras_model(qat_tflite, qat_early):
    """Probabilities within the stated (loose) bound; the first layer to within 1 LSB."""
    x = images(8, seed=40)
    ref_probs, ref_conv1 = (t.numpy() for t in qat_early(x, training=False))
    got = run_tflite(qat_tflite, x, num_labels=14)
    assert_close_probs(got["probs"], ref_probs, INT8_PROB_TOL)
    lsb = output_scale(qat_tflite, 14, "features")
    assert np.abs(got["features"] - ref_conv1).max() <= 1.01 * lsb
    assert np.abs(got["features"] - ref_conv1).mean() < 0.1 * lsb


@pytest.mark.slow
def test_qat_int8_is_full_integer_with_the_pinned_input_range(qat_tflite):
    assert op_names(qat_tflite) <= INT8_OPS
    assert "LOGISTIC" in op_names(qat_tflite)
    inp = Interpreter(model_content=qat_tflite).get_input_details()[0]
    assert inp["dtype"] == np.uint8
    assert inp["quantization"][0] == pytest.approx(2 / 255, rel=1e-4) and inp["quantization"][1] == 128


@pytest.mark.slow
def test_qat_model_is_only_fine_tuned_whole_and_converted_to_int8(qat_trained):
    with pytest.raises(RecipeError, match="scope 'all'"):
        M.set_trainable(qat_trained, "head")
    with pytest.raises(RecipeError, match="only with mode 'int8'"):
        convert(qat_trained, "float16")
