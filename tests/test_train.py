"""Training on a few dozen real CXRs: every stage runs and learns, the run directory holds what it
promises, a SIGKILLed run resumes at the right epoch with its best checkpoint intact, the trained
model converts to full int8, and the losses match the heads.

The tiny recipe (train/tiny.toml: cxr4, ~80 images at 64 px, MobileNetV2 alpha 0.35 from scratch)
is trained once per session into the session's temp folder; test_qat_train.py reuses that run.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("tf_keras", reason="needs the [train] extra (TensorFlow, tf-keras, tfmot)")

from cxr_edge.errors import RecipeError  # noqa: E402
from cxr_edge.tasks import get_task  # noqa: E402
from cxr_edge.training.callbacks import improved  # noqa: E402
from cxr_edge.training.recipe import load_recipe  # noqa: E402
from cxr_edge.training.runs import load_run, sha256_file  # noqa: E402
from conftest import REPO  # noqa: E402

TINY = REPO / "train" / "tiny.toml"
# test speed: eager steps (no ~8 s graph tracing per stage), short stages
FAST = {"train.run_eagerly": True, "stages[0].epochs": 4, "stages[1].epochs": 2, "stages[2].epochs": 1}


def tiny_recipe(prepared_dir, **overrides):
    return load_recipe(TINY, overrides={**FAST, **overrides}, data_dir=prepared_dir)


def trained_tiny_run(tmp_path_factory):
    """The tiny recipe trained once per session (the data prepared from ../shared on the way)."""
    from cxr_edge.training.trainer import train

    base = tmp_path_factory.getbasetemp()
    run_dir = base / "tiny_run"
    if not (run_dir / "run.json").is_file() or load_run(run_dir).info["status"] != "complete":
        rows = []
        train(tiny_recipe(base / "tiny_prepared"), run_dir, verbose=0, on_epoch=rows.append)
    return load_run(run_dir)


@pytest.fixture(scope="module")
def tiny_run(shared_dir, tmp_path_factory):
    return trained_tiny_run(tmp_path_factory)


@pytest.mark.shared
def test_every_stage_runs_and_the_loss_goes_down(tiny_run):
    hist = json.loads((tiny_run.path / "history.json").read_text())["epochs"]
    assert [r["stage"] for r in hist] == ["head"] * 4 + ["top"] * 2 + ["all"]
    assert [r["epoch"] for r in hist] == list(range(1, 8))
    assert [r["cached"] for r in hist] == [True] * 4 + [False] * 3
    head = [r["loss"] for r in hist if r["stage"] == "head"]
    assert head[-1] < head[0], head  # the head learns on the cached features
    for r in hist:
        assert np.isfinite(r["loss"]) and np.isfinite(r["val_loss"]) and r["val_macro_f1"] is not None
    info = tiny_run.info
    assert info["status"] == "complete" and info["task"] == "cxr4" and info["input"]["size"] == 64
    assert info["data_sha256"] == tiny_run.prepared().data_sha256 and info["split"]["val"] > 0
    assert info["best"]["metric"] == "macro_f1" and info["best"]["sha256"] == sha256_file(tiny_run.path / "float.h5")
    best_row = hist[info["best"]["epoch"] - 1]
    assert best_row["best"] and best_row["val_macro_f1"] == pytest.approx(info["best"]["value"], abs=1e-5)
    stages = {s["name"]: s for s in info["stages"]}
    assert stages["head"]["cached"] and stages["head"]["feature_extraction"]["images"] > 0
    assert stages["head"]["checkpoint"] == "state/after-head.h5" and (tiny_run.path / "state/after-head.h5").is_file()
    assert [stages[s]["epochs_run"] for s in ("head", "top", "all")] == [4, 2, 1]
    # the loss the run used is the task's: CE with label smoothing and balanced class weights
    assert info["loss"]["kind"] == "ce" and info["loss"]["label_smoothing"] == 0.1
    np.testing.assert_allclose(info["loss"]["w_pos"], tiny_run.prepared().class_weights, rtol=1e-6)
    for name in ("recipe.json", "history.csv", "curves.png", "metrics.json"):
        assert (tiny_run.path / name).stat().st_size > 0, name
    metrics = json.loads((tiny_run.path / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["primary"]["name"] == "macro_f1"
    assert metrics["primary"]["value"] == pytest.approx(info["best"]["value"], abs=1e-6)
    model = tiny_run.float_model()
    assert model.input_shape == (None, 64, 64, 1) and model.output_shape == (None, 4)


@pytest.mark.shared
def test_trained_model_converts_to_full_int8(tiny_run):
    from cxr_edge.runtime.interpreter import TFLiteModel
    from cxr_edge.training.convert import convert
    from cxr_edge.training.dataset import make_dataset

    pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert to run the converted model")
    prepared = tiny_run.prepared()
    x = np.concatenate([b for b, _ in make_dataset(prepared, "train", batch_size=32, shuffle=False)])
    tflite = convert(tiny_run.float_model(), "int8", representative=x[:32])  # checks: no float tensors left
    probs = TFLiteModel(tflite).run(x[:2])
    probs = probs[0] if isinstance(probs, (list, tuple)) else probs
    assert np.asarray(probs).reshape(2, -1).shape == (2, 4)


@pytest.mark.shared
def test_a_run_directory_is_not_overwritten_and_resume_checks_the_recipe(tiny_run):
    from cxr_edge.training.trainer import train

    recipe = load_recipe(tiny_run.path / "recipe.json")
    with pytest.raises(RecipeError, match="already holds a run.*--resume"):
        train(recipe, tiny_run.path, verbose=0)
    changed = load_recipe(tiny_run.path, overrides={"stages[1].lr": 0.5})
    with pytest.raises(RecipeError, match=r"differs .*stages\[1\]\.lr"):
        train(changed, tiny_run.path, resume=True, verbose=0)
    before = (tiny_run.path / "float.h5").stat().st_mtime_ns
    assert train(recipe, tiny_run.path, resume=True, verbose=0).info["status"] == "complete"  # nothing to do
    assert (tiny_run.path / "float.h5").stat().st_mtime_ns == before


def _wait_for(predicate, timeout, proc):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.shared
def test_sigkill_mid_training_then_resume_continues_from_the_last_epoch(tiny_run, tmp_path):
    from cxr_edge.training.trainer import train

    run_dir = tmp_path / "killed"
    state_file = run_dir / "state" / "state.json"
    # stage 2 with longer epochs, so the kill lands inside an epoch
    sets = {**FAST, "stages[1].epochs": 4, "train.steps_per_epoch": 12}
    args = [sys.executable, "-m", "cxr_edge", "train", str(TINY), "--out", str(run_dir),
            "--data-dir", str(tiny_run.info["prepared"])]
    for k, v in sets.items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def in_stage_two():
            try:
                return json.loads(state_file.read_text())["epoch"] >= 5
            except (OSError, ValueError, KeyError):
                return False

        reached = _wait_for(in_stage_two, 240, proc)
        assert reached, f"training did not reach epoch 5: {proc.stderr.read().decode()[-2000:] if proc.poll() else ''}"
        time.sleep(1.0)  # inside the next epoch
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_state = json.loads(state_file.read_text())
    done = killed_state["epoch"]
    assert 5 <= done < 7
    best_file = run_dir / "float.h5"
    run_info = json.loads((run_dir / "run.json").read_text())
    assert run_info["status"] == "running"  # SIGKILL: nobody could write "interrupted"
    assert run_info["best"]["sha256"] == sha256_file(best_file)  # the best checkpoint is whole and recorded
    load_run(run_dir).float_model()  # and loads

    rows = []
    run = train(load_recipe(run_dir / "recipe.json"), run_dir, resume=True, verbose=0, on_epoch=rows.append)
    assert rows[0]["epoch"] == done + 1  # continues, does not start over
    assert rows[0]["stage"] == "top" and rows[0]["stage_epoch"] == done + 1 - 4
    hist = json.loads((run_dir / "history.json").read_text())["epochs"]
    assert [r["epoch"] for r in hist] == list(range(1, len(hist) + 1))  # no epoch twice, none missing
    assert [r["stage"] for r in hist] == ["head"] * 4 + ["top"] * 4 + ["all"]
    assert run.info["status"] == "complete"
    assert run.info["best"]["value"] >= run_info["best"]["value"]
    assert run.info["best"]["sha256"] == sha256_file(best_file)
    run.float_model()


# --- losses and callbacks (no training) -------------------------------------------------------------

class _FakePrepared:
    def __init__(self, spec, class_w, pos_w, neg_w=None):
        self.class_weights, self.pos_weights = np.array(class_w, np.float32), np.array(pos_w, np.float32)
        self.info = {"neg_class_weights": dict(zip(spec.labels, neg_w or [1.0] * spec.num_labels))}
        self.path = "fake"


def test_losses_match_the_head_and_weight_the_classes():
    import tf_keras as keras

    from cxr_edge.training.losses import make_loss, resolve_weights
    from cxr_edge.training.recipe import LossConfig

    gate = get_task("gate")
    w = resolve_weights(gate, LossConfig(kind="bce", class_weights="auto"), _FakePrepared(gate, [0.5], [0.07], [7.9]))
    assert (w.w_pos, w.w_neg) == (pytest.approx((0.5,)), pytest.approx((7.9,)))
    y = np.array([[1.0], [0.0], [1.0]], np.float32)
    p = np.array([[0.9], [0.3], [0.2]], np.float32)
    plain = make_loss(gate, resolve_weights(gate, LossConfig(kind="bce"), None))(y, p).numpy()
    np.testing.assert_allclose(plain, keras.losses.binary_crossentropy(y, p).numpy(), rtol=1e-5)
    weighted = make_loss(gate, w)(y, p).numpy()
    np.testing.assert_allclose(weighted, plain * np.array([0.5, 7.9, 0.5]), rtol=1e-5)
    focal = make_loss(gate, resolve_weights(gate, LossConfig(kind="focal", focal_gamma=2.0), None))(y, p).numpy()
    assert focal[0] < 0.02 * plain[0] and focal[2] > 0.5 * plain[2]  # easy examples count less
    cxr4 = get_task("cxr4")
    ce = resolve_weights(cxr4, LossConfig(kind="ce", label_smoothing=0.1, class_weights="auto"),
                         _FakePrepared(cxr4, [2.0, 1.0, 1.0, 0.5], [1, 1, 1, 1]))
    y4 = np.eye(4, dtype=np.float32)[[0, 3]]
    p4 = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]], np.float32)
    ref = keras.losses.categorical_crossentropy(y4, p4, label_smoothing=0.1).numpy()
    np.testing.assert_allclose(make_loss(cxr4, ce)(y4, p4).numpy(), ref * np.array([2.0, 0.5]), rtol=1e-5)
    nih = get_task("nih14")
    pos = resolve_weights(nih, LossConfig(kind="bce", pos_weights="auto", weight_cap=30),
                          _FakePrepared(nih, [1] * 14, [2.0] * 13 + [80.0]))
    assert pos.w_pos[-1] == 30 and pos.w_pos[0] == 2 and pos.w_neg == (1.0,) * 14
    with pytest.raises(RecipeError, match="needs a softmax head"):
        resolve_weights(gate, LossConfig(kind="ce"), None)


def test_a_distillation_temperature_teaches_the_teachers_logit_gaps_not_only_its_class():
    """qat.temperature T: teacher and student are softened (logits / T) and the loss is scaled by T^2. A
    confident teacher then tells a student that picks the right class but nearly flips apart from one that
    matches it, and the loss's minimum is still the teacher's own output (softmax and sigmoid heads)."""
    from dataclasses import replace

    import tensorflow as tf

    from cxr_edge.training.losses import LossWeights, make_loss, soften

    cxr4 = get_task("cxr4")
    plain = LossWeights(kind="ce", w_pos=(1.0,) * 4, w_neg=(1.0,) * 4, label_smoothing=0.0, focal_gamma=0.0)
    teacher = np.array([[0.990, 0.006, 0.002, 0.002]], np.float32)
    same = teacher.copy()
    barely = np.array([[0.52, 0.46, 0.01, 0.01]], np.float32)     # the right class, nearly flipped
    np.testing.assert_allclose(soften(tf, teacher, "softmax", 1.0), teacher)
    soft = soften(tf, teacher, "softmax", 4.0).numpy()
    assert soft.sum() == pytest.approx(1.0) and 0.4 < soft[0, 0] < 0.6 and soft.argmax() == 0
    # the logits divided by T: log-ratios shrink by T
    assert np.log(soft[0, 0] / soft[0, 1]) == pytest.approx(np.log(0.990 / 0.006) / 4, rel=1e-4)
    gap = {}
    for t in (1.0, 4.0):
        loss = make_loss(cxr4, replace(plain, temperature=t))
        target = soften(tf, teacher, "softmax", t)
        gap[t] = float(loss(target, barely)[0] - loss(target, same)[0])
    assert gap[4.0] > 3 * gap[1.0] > 0
    gate = get_task("gate")
    sig = soften(tf, np.array([[0.99], [0.5]], np.float32), "sigmoid", 3.0).numpy()
    assert sig[1, 0] == pytest.approx(0.5) and 0.8 < sig[0, 0] < 0.9      # sigmoid(logit(0.99) / 3) = 0.822
    bce = make_loss(gate, replace(plain, kind="bce", w_pos=(1.0,), w_neg=(1.0,), temperature=3.0))
    at_teacher = bce(sig, np.array([[0.99], [0.5]], np.float32)).numpy()
    for other in ((0.9, 0.5), (0.999, 0.5), (0.99, 0.6)):
        assert bce(sig, np.array([[other[0]], [other[1]]], np.float32)).numpy().sum() > at_teacher.sum()


def test_ties_on_a_saturated_metric_are_broken_by_the_validation_loss():
    assert improved(0.9, None) and improved(0.91, 0.9) and not improved(0.89, 0.9)
    assert not improved(float("nan"), 0.5) and not improved(None, 0.5)
    assert improved(1.0, 1.0, 0.0, 0.01, 0.02) and not improved(1.0, 1.0, 0.0, 0.03, 0.02)
    assert not improved(0.905, 0.9, 0.01)  # min_delta


@pytest.mark.slow
@pytest.mark.shared
def test_mixed_precision_trains_and_saves_a_float32_model(tiny_run, tmp_path):
    """The GPU path (float16 compute, loss scaling), forced on CPU: the saved model is float32."""
    import tf_keras as keras

    from cxr_edge.training.trainer import train

    short = {"stages[0].epochs": 1, "stages[1].epochs": 1, "stages[2].epochs": 0, "train.steps_per_epoch": 2,
             "train.mixed_precision": "on"}
    try:
        run = train(tiny_recipe(tiny_run.info["prepared"], **short), tmp_path / "mixed", verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert run.info["mixed_precision"] is True and run.info["status"] == "complete"
    model = run.float_model()
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    assert model.output.dtype == "float32"


@pytest.mark.shared
def test_val_photos_can_be_the_straightened_photos_the_device_sees(tiny_run):
    """train.val_photo_scene: the val copy of each film is a whole photo straightened as the device does (the look
    augment.photo_scene makes), not training's own photo view; without it the val photos follow augment."""
    from dataclasses import replace

    from cxr_edge.data.prepared import open_prepared
    from cxr_edge.training.augment import AugmentConfig, photo_batch
    from cxr_edge.training.trainer import validation_set

    prepared = open_prepared(tiny_run.info["prepared"])
    films = np.asarray(prepared.images("val"))
    n = len(films)
    base = {"train.val_photo_prob": 0.0, "train.val_photo_copies": 1}
    scene = tiny_recipe(tiny_run.info["prepared"], **base, **{"train.val_photo_scene": 1.0})
    views = tiny_recipe(tiny_run.info["prepared"], **base)
    assert views.train.val_photo_scene is None and views.augment.photo_scene == 0

    def expected(photo_scene):
        a = scene.augment
        every = replace(AugmentConfig.off(), photo_prob=1.0, photo_severity=a.photo_severity,
                        photo_effects=a.photo_effects, photo_scene=photo_scene)
        return photo_batch(films, every, np.random.default_rng([scene.train.seed, 2 ** 20 + 1]))

    got_scene, got_views = np.asarray(validation_set(prepared, scene)[:]), np.asarray(validation_set(prepared, views)[:])
    np.testing.assert_array_equal(got_scene[:n], got_views[:n])          # the films themselves, unchanged
    from cxr_edge.runtime.preprocess import normalize

    np.testing.assert_array_equal(got_scene[n:], normalize(expected(1.0), prepared.task))
    np.testing.assert_array_equal(got_views[n:], normalize(expected(0.0), prepared.task))
    assert (got_scene[n:] != got_views[n:]).any()


@pytest.mark.shared
def test_validation_inputs_stream_from_uint8_pixels_exactly_as_one_pass_would(tiny_run, tmp_path):
    from dataclasses import replace

    from cxr_edge.data.prepared import open_prepared
    from cxr_edge.runtime.preprocess import normalize
    from cxr_edge.training.augment import AugmentConfig, photo_batch
    from cxr_edge.training.trainer import ValInputs, validation_set

    prepared = open_prepared(tiny_run.info["prepared"])
    recipe = tiny_recipe(tiny_run.info["prepared"], **{"train.val_photo_prob": 0.5})
    # the reference: the whole split through one photo pass, as float32 (what training held before)
    t, a = recipe.train, recipe.augment
    config = replace(AugmentConfig.off(), photo_prob=t.val_photo_prob, photo_severity=a.photo_severity,
                     photo_effects=a.photo_effects)
    whole = normalize(photo_batch(np.asarray(prepared.images("val")), config,
                                  np.random.default_rng([t.seed, 2 ** 20])), prepared.task)
    in_memory = validation_set(prepared, recipe, chunk=3)
    mapped = validation_set(prepared, recipe, tmp_path / "val.npy", chunk=5)
    assert isinstance(in_memory, ValInputs) and in_memory.pixels.dtype == np.uint8
    assert isinstance(mapped.pixels, np.memmap) and not list(tmp_path.glob(".*tmp*"))
    for x in (in_memory, mapped):
        assert x.shape == whole.shape and len(x) == len(whole)
        np.testing.assert_array_equal(x[:], whole)
        np.testing.assert_array_equal(x[2:7], whole[2:7])
    assert (whole != normalize(np.asarray(prepared.images("val")), prepared.task)).any()  # some are photos
