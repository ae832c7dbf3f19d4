"""The MobileNetV2 classifier: flat graph, task heads, grey-input weights, training stages, QAT wrapping."""

import sys

import numpy as np
import pytest

pytest.importorskip("tf_keras", reason="needs the [train] extra (TensorFlow, tf-keras)")

from cxr_edge.errors import CxrEdgeError, RecipeError  # noqa: E402
from cxr_edge.tasks import get_task  # noqa: E402
from cxr_edge.training import model as M  # noqa: E402
from cxr_edge.training.qat import quantize_for_training  # noqa: E402
from cxr_edge.training.tf_env import load  # noqa: E402

tf, keras = load()
WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def grey_images(n, size, seed=0):
    """Smooth random grey images in [-1, 1] (blocky structure, some saturated pixels)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1.4, 1.4, (n, 8, 8, 1))
    x = np.kron(coarse, np.ones((1, size // 8, size // 8, 1))) + rng.normal(0, 0.1, (n, size, size, 1))
    return np.clip(x, -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
    """cxr4, alpha 0.35 at 32 px, no dropout (so training=True/False differ only through BN)."""
    return M.build_model(get_task("cxr4"), alpha=0.35, input_size=32, dropout=0.0)


# --- structure ---------------------------------------------------------------------------------

@pytest.mark.parametrize("task,size", [("gate", None), ("cxr4", 32), ("nih14", 32)])
def test_model_is_flat_with_the_task_head(task, size):
    spec = get_task(task)
    model = M.build_model(spec, alpha=0.35, input_size=size)
    side = size or spec.input.size
    assert model.input_shape == (None, side, side, 1)
    assert model.output_shape == (None, spec.num_labels)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert not any(isinstance(layer, keras.Model) for layer in model.layers), "nested Model"
    assert not kinds & {"Lambda", "Rescaling", "Normalization", "TFOpLambda"}
    head = model.get_layer(M.HEAD)
    assert head.activation.__name__ == spec.activation
    assert model.get_layer(M.FEATURES).output.shape[1:] == (side // 32, side // 32, 1280)
    assert model.get_layer(M.POOL).output.shape[1:] == (1280,)
    cam = M.with_feature_output(model)
    assert [tuple(o.shape) for o in cam.outputs] == [(None, spec.num_labels), (None, side // 32, side // 32, 1280)]
    kernel, bias = M.head_weights(model)
    assert kernel.shape == (1280, spec.num_labels) and bias.shape == (spec.num_labels,)


def test_softmax_head_sums_to_one(tiny):
    probs = tiny(grey_images(3, 32), training=False).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


# --- weights -----------------------------------------------------------------------------------

def test_weights_imagenet_is_refused_without_downloading():
    with pytest.raises(RecipeError, match="never"):
        M.build_model(get_task("gate"), alpha=0.35, input_size=32, weights="imagenet")


def test_missing_or_broken_weights_file_says_what_to_do(tmp_path):
    with pytest.raises(RecipeError, match="--weights none"):
        M.build_model(get_task("gate"), alpha=0.35, input_size=32, weights=tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(RecipeError, match="does not fit"):
        M.build_model(get_task("gate"), alpha=0.35, input_size=32, weights=junk)


def test_none_string_means_from_scratch():
    assert M.resolve_weights("none") is None and M.resolve_weights(None) is None
    with pytest.raises(RecipeError):
        M.resolve_weights("")  # an empty value is not silently "from scratch"


def test_missing_tensorflow_says_how_to_install(monkeypatch):
    from cxr_edge.errors import DependencyError

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` fail
    with pytest.raises(DependencyError, match=r'pip install "cxr-edge\[train\]"'):
        load()


@pytest.fixture(scope="module")
def pretrained(shared_weights):
    """1- and 3-channel alpha 1.0 models at 96 px with the real ImageNet weights; downloads forbidden."""
    path = shared_weights / WEIGHTS_FILE
    if not path.is_file():
        pytest.skip(f"needs {path}")
    import tf_keras.src.utils.data_utils as data_utils

    calls = []

    def no_download(*args, **kwargs):
        calls.append(args)
        raise AssertionError("tried to download")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data_utils, "get_file", no_download)
        mp.setattr(keras.utils, "get_file", no_download)
        spec = get_task("cxr4")
        grey = M.build_model(spec, alpha=1.0, input_size=96, weights=path)
        rgb = M.build_model(spec.with_input(channels=3), alpha=1.0, input_size=96, weights=str(path))
        scratch = M.build_model(spec, alpha=1.0, input_size=96, weights=None)
    return {"grey": grey, "rgb": rgb, "scratch": scratch, "calls": calls, "path": path}


@pytest.mark.shared
def test_grey_model_equals_rgb_model_on_replicated_grey(pretrained):
    x = grey_images(4, 96)
    grey = M.feature_extractor(pretrained["grey"])(x, training=False).numpy()
    rgb = M.feature_extractor(pretrained["rgb"])(np.repeat(x, 3, axis=-1), training=False).numpy()
    assert np.abs(grey).mean() > 0.05  # real, non-vanishing ImageNet features
    np.testing.assert_allclose(grey, rgb, atol=2e-4 * np.abs(rgb).max())
    conv_grey = pretrained["grey"].get_layer("Conv1").kernel.numpy()
    conv_rgb = pretrained["rgb"].get_layer("Conv1").kernel.numpy()
    assert conv_grey.shape[2] == 1 and conv_rgb.shape[2] == 3
    np.testing.assert_allclose(conv_grey[:, :, 0], conv_rgb.sum(axis=2), rtol=1e-6)


@pytest.mark.shared
def test_real_weights_are_loaded_from_the_file_only(pretrained):
    assert pretrained["calls"] == []
    x = grey_images(2, 96)
    loaded = M.feature_extractor(pretrained["grey"])(x, training=False).numpy()
    scratch = M.feature_extractor(pretrained["scratch"])(x, training=False).numpy()
    assert np.abs(loaded - scratch).mean() > 0.1 * np.abs(loaded).mean()
    # every backbone layer with weights matches the 3-channel model loaded straight from the file
    for layer in pretrained["rgb"].layers:
        if layer.weights and layer.name not in ("Conv1", M.HEAD):
            for a, b in zip(layer.get_weights(), pretrained["grey"].get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b)


@pytest.mark.shared
def test_weights_for_another_alpha_are_refused(pretrained):
    with pytest.raises(RecipeError, match=r"(?s)alpha=0.35.*--weights none"):
        M.build_model(get_task("gate"), alpha=0.35, input_size=32, weights=pretrained["path"])


# --- training stages ---------------------------------------------------------------------------

def _trainable_layer_names(model):
    return {layer.name for layer in model.layers if layer.trainable and layer.trainable_weights}


def _is_bn(layer):
    return isinstance(layer, keras.layers.BatchNormalization)


def test_scope_head_trains_only_the_head(tiny):
    info = M.set_trainable(tiny, "head")
    assert _trainable_layer_names(tiny) == {M.HEAD}
    assert info["trainable_params"] == 1280 * 4 + 4


def test_scope_block_trains_that_block_onwards(tiny):
    M.set_trainable(tiny, "block_13")
    names = _trainable_layer_names(tiny)
    assert {"block_13_expand", "block_16_project", "Conv_1", M.HEAD} <= names
    assert not any(n.startswith(("block_12_", "block_1_", "Conv1")) for n in names)
    assert not any(_is_bn(tiny.get_layer(n)) for n in names)


def test_scope_all_keeps_batchnorm_frozen_unless_asked(tiny):
    M.set_trainable(tiny, "all")
    bn = [layer for layer in tiny.layers if _is_bn(layer)]
    assert not any(layer.trainable for layer in bn)
    assert all(layer.trainable for layer in tiny.layers if layer.weights and not _is_bn(layer))
    M.set_trainable(tiny, "all", train_bn=True)
    assert all(layer.trainable for layer in bn)


def test_frozen_batchnorm_runs_in_inference_mode(tiny):
    M.calibrate_batchnorm(tiny, grey_images(8, 32, seed=5))
    x = grey_images(4, 32, seed=1)
    M.set_trainable(tiny, "all")
    before = tiny.get_layer("Conv_1_bn").moving_mean.numpy().copy()
    np.testing.assert_allclose(tiny(x, training=True).numpy(), tiny(x, training=False).numpy(), atol=1e-6)
    np.testing.assert_array_equal(tiny.get_layer("Conv_1_bn").moving_mean.numpy(), before)
    M.set_trainable(tiny, "all", train_bn=True)
    assert not np.allclose(tiny(x, training=True).numpy(), tiny(x, training=False).numpy(), atol=1e-6)


@pytest.mark.parametrize("scope", ["block_0", "block_17", "top:5", "everything"])
def test_unknown_scope_lists_the_valid_ones(tiny, scope):
    with pytest.raises(RecipeError, match="'head'.*block_N.*'all'"):
        M.set_trainable(tiny, scope)


def test_cached_feature_head_shares_weights_with_the_model(tiny):
    spec = get_task("cxr4")
    x = grey_images(6, 32, seed=2)
    M.calibrate_batchnorm(tiny, x)
    M.set_trainable(tiny, "head")
    features = M.feature_extractor(tiny).predict(x, verbose=0)
    head = M.head_only_model(tiny)
    np.testing.assert_allclose(head(features).numpy(), tiny(x, training=False).numpy(), atol=2e-4)
    kernel_before = tiny.get_layer(M.HEAD).kernel.numpy().copy()
    head.compile(keras.optimizers.SGD(0.5), spec.loss, run_eagerly=True)
    head.train_on_batch(features, np.eye(4)[np.arange(6) % 4])
    assert head.get_layer(M.HEAD) is tiny.get_layer(M.HEAD)
    assert not np.allclose(tiny.get_layer(M.HEAD).kernel.numpy(), kernel_before)
    np.testing.assert_allclose(head(features).numpy(), tiny(x, training=False).numpy(), atol=2e-4)


def test_calibrate_batchnorm_wakes_up_a_fresh_model():
    model = M.build_model(get_task("nih14"), alpha=0.35, input_size=32)
    extractor = M.feature_extractor(model)
    x = grey_images(8, 32, seed=3)
    assert np.abs(extractor(x, training=False).numpy()).max() < 1e-3  # default BN stats: activations vanish
    M.calibrate_batchnorm(model, x)
    assert np.abs(extractor(x, training=False).numpy()).mean() > 0.05


# --- QAT wrapping errors (fast: refused before tfmot runs) --------------------------------------

def test_qat_names_a_layer_tfmot_cannot_wrap():
    image = keras.Input((32, 32, 1), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="scale_in_model")(image)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    model = keras.Model(image, keras.layers.GlobalAveragePooling2D()(x))
    with pytest.raises(CxrEdgeError, match=r"'scale_in_model' \(Rescaling\).*preprocess"):
        quantize_for_training(model)


def test_qat_refuses_a_nested_model():
    inner = keras.Sequential([keras.layers.Conv2D(4, 3)], name="backbone")
    image = keras.Input((32, 32, 1))
    model = keras.Model(image, keras.layers.GlobalAveragePooling2D()(inner(image)))
    with pytest.raises(CxrEdgeError, match=r"'backbone' \(Sequential\).*flat"):
        quantize_for_training(model)
