"""``cxr-edge qat RUN_DIR``: QAT fine-tune of the tiny run into qat.h5 (calibrated ranges, run.json entry,
int8 conversion without calibration data), refusals, an unwrappable layer named, resume after Ctrl-C.

QAT steps run eagerly here (--eager): tracing a QAT MobileNetV2 costs ~25 s, more than the tiny epochs.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("tf_keras", reason="needs the [train] extra (TensorFlow, tf-keras, tfmot)")
pytest.importorskip("tensorflow_model_optimization", reason="needs tensorflow-model-optimization")

from cxr_edge.cli import main  # noqa: E402
from cxr_edge.errors import ExportCheckError  # noqa: E402
from cxr_edge.training.runs import load_run, sha256_file  # noqa: E402
from test_train import trained_tiny_run  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(shared_dir, tmp_path_factory):
    return trained_tiny_run(tmp_path_factory)


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A private copy of the trained tiny run (QAT writes into the run directory)."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run.path, dst, ignore=shutil.ignore_patterns("qat*", "after-*"))
    shutil.rmtree(dst / "state" / "qat", ignore_errors=True)
    info = json.loads((dst / "run.json").read_text())
    info.pop("qat", None)
    (dst / "run.json").write_text(json.dumps(info))
    return dst


def _activation_ranges(model):
    """(min, max) of every moving-average activation quantizer of a QAT model."""
    found = {}
    for w in model.weights:
        name = w.name.split(":")[0]
        for end in ("_min", "_max"):
            if name.endswith(end) and ("post_activation" in name or "pre_activation" in name or "output" in name):
                found.setdefault(name[:-len(end)], {})[end] = float(np.max(w.numpy()) if end == "_max"
                                                                    else np.min(w.numpy()))
    return found


@pytest.mark.slow
@pytest.mark.shared
def test_qat_command_writes_a_calibrated_qat_model(run_copy):
    from cxr_edge.training.convert import convert
    from cxr_edge.training.qat import is_qat_model

    float_best = json.loads((run_copy / "run.json").read_text())["best"]
    result = CliRunner().invoke(main, ["qat", str(run_copy), "--eager"])
    assert result.exit_code == 0, result.output
    assert "qat.h5: complete" in result.output
    run = load_run(run_copy)
    q = run.info["qat"]
    assert q["status"] == "complete" and q["metric"] == "macro_f1" and q["epoch"] in (0, 1)
    assert q["sha256"] == sha256_file(run_copy / "qat.h5") and q["calibrate_batches"] == 2
    assert q["float_value"] == pytest.approx(float_best["value"], abs=1e-6)
    assert run.info["best"] == float_best  # the float model's record is left alone
    hist = json.loads((run_copy / "qat_history.json").read_text())["epochs"]
    assert [r["stage"] for r in hist] == ["qat"] and np.isfinite(hist[0]["loss"])
    assert (run_copy / "qat_metrics.json").is_file()
    model = run.qat_model()
    assert is_qat_model(model)
    ranges = _activation_ranges(model)
    assert ranges and any(abs(r.get("_max", 6.0) - 6.0) > 1e-3 for r in ranges.values()), \
        "activation ranges are still tfmot's initial [-6, 6]: calibration did not run"
    # depthwise weights are simulated per channel, as the converter quantizes them (tfmot's own: per tensor)
    dw = model.get_layer("quant_block_1_depthwise")
    ranges = {w.name.split("/")[-1].split(":")[0]: tuple(w.shape) for w in dw.weights}
    channels = dw.layer.depthwise_kernel.shape[2]
    assert ranges["depthwise_kernel_min"] == ranges["depthwise_kernel_max"] == (channels,) and channels > 1
    assert q["depthwise_per_channel"] is True
    tflite = convert(model, "int8")  # a QAT model carries its own ranges: no representative data
    assert len(tflite) > 10_000
    again = CliRunner().invoke(main, ["qat", str(run_copy), "--eager"])
    assert again.exit_code == 2 and "--restart" in again.output


@pytest.mark.shared
def test_an_unwrappable_layer_is_named(run_copy):
    import tf_keras as keras

    from cxr_edge.training.runs import save_model_atomic

    x = keras.Input((64, 64, 1), name="image")
    y = keras.layers.Rescaling(2.0, name="prescale")(x)
    y = keras.layers.Conv2D(4, 3, name="conv")(y)
    y = keras.layers.GlobalAveragePooling2D(name="pool")(y)
    y = keras.layers.Dense(4, activation="softmax", name="head")(y)
    save_model_atomic(keras.Model(x, y), run_copy / "float.h5")
    result = CliRunner().invoke(main, ["qat", str(run_copy), "--eager"])
    assert result.exit_code == 2, result.output
    assert "'prescale' (Rescaling)" in result.output and "preprocessing" in result.output
    assert not (run_copy / "qat.h5").exists()


@pytest.mark.shared
def test_qat_refuses_an_unfinished_run(run_copy):
    info = json.loads((run_copy / "run.json").read_text())
    info["status"] = "interrupted"
    (run_copy / "run.json").write_text(json.dumps(info))
    result = CliRunner().invoke(main, ["qat", str(run_copy)])
    assert result.exit_code == 2 and "--resume" in result.output and "has not finished training" in result.output


@pytest.mark.slow
@pytest.mark.shared
def test_interrupted_qat_resumes_at_the_next_epoch(run_copy):
    from cxr_edge.errors import RecipeError
    from cxr_edge.training.qat_trainer import qat

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        qat(run_copy, epochs=2, verbose=0, run_eagerly=True, on_epoch=stop_after_first)
    info = json.loads((run_copy / "run.json").read_text())
    assert info["qat"]["status"] == "interrupted" and (run_copy / "qat.h5").is_file()
    with pytest.raises(RecipeError, match="--resume"):
        qat(run_copy, epochs=2, verbose=0, run_eagerly=True)
    rows = []
    run = qat(run_copy, epochs=2, resume=True, verbose=0, run_eagerly=True, on_epoch=rows.append)
    assert [r["epoch"] for r in rows] == [2]
    hist = json.loads((run_copy / "qat_history.json").read_text())["epochs"]
    assert [r["epoch"] for r in hist] == [1, 2]
    assert run.info["qat"]["status"] == "complete" and run.info["qat"]["epochs_done"] == 2


@pytest.mark.slow
@pytest.mark.shared
def test_distillation_trains_on_the_float_models_outputs(run_copy):
    """qat.distill = 1: the targets are the float model's outputs on the same augmented images, the loss is
    the plain cross-entropy (its minimum is the float output), and run.json records it."""
    from cxr_edge.training.qat_trainer import QatTrainer, qat
    from cxr_edge.training.recipe import with_qat

    run = load_run(run_copy)
    trainer = QatTrainer(run, with_qat(run.recipe(), distill=1.0, epochs=1), resume=False, restart=True,
                         strategy="default", verbose=0, run_eagerly=True)
    assert trainer.setup()
    weights = trainer.loss_weights
    assert weights.kind == "ce" and set(weights.w_pos) == {1.0} and weights.label_smoothing == 0.0
    x, soft = next(iter(trainer._dataset("train", augment=False, shuffle=False, batch_size=8)))
    # the targets come from the float model in the tf.data graph, the reference from an eager call: float32
    # kernels may differ in the last digits (1.02e-5 seen once); another model's outputs differ by far more
    np.testing.assert_allclose(soft.numpy(), trainer.float_model(x, training=False).numpy(), atol=1e-4)
    val_x, hard = next(iter(trainer._dataset("val", augment=False, shuffle=False, batch_size=8)))
    assert set(np.unique(hard.numpy())) <= {0.0, 1.0}          # validation keeps the real labels
    # with a temperature, the targets are the float outputs softened by it, and the loss softens the QAT model's
    import tensorflow as tf

    from cxr_edge.training.losses import soften

    warm = QatTrainer(run, with_qat(run.recipe(), distill=1.0, temperature=3.0, epochs=1), resume=False,
                      restart=True, strategy="default", verbose=0, run_eagerly=True)
    assert warm.setup() and warm.loss_weights.temperature == 3.0
    xt, softer = next(iter(warm._dataset("train", augment=False, shuffle=False, batch_size=8)))
    expected = soften(tf, warm.float_model(xt, training=False), run.recipe().spec.activation, 3.0)
    np.testing.assert_allclose(softer.numpy(), expected.numpy(), atol=1e-4)
    assert softer.numpy().max() < trainer.float_model(xt, training=False).numpy().max()   # softened
    done = qat(run_copy, epochs=1, distill=1.0, temperature=3.0, restart=True, verbose=0, run_eagerly=True)
    assert done.info["qat"]["status"] == "complete" and done.info["qat"]["distill"] == 1.0
    assert done.info["qat"]["temperature"] == 3.0


@pytest.mark.slow
@pytest.mark.shared
def test_select_float_agreement_keeps_the_epoch_closest_to_float(run_copy):
    """--select float_agreement: every epoch logs its val decision agreement with the float model, and qat.h5
    is the epoch (or the calibrated start, epoch 0) with the highest one -- checked by predicting again."""
    from cxr_edge.runtime.preprocess import normalize
    from cxr_edge.tools.metrics import agreement
    from cxr_edge.training.trainer import Predictor, validation_set

    result = CliRunner().invoke(main, ["qat", str(run_copy), "--eager", "--epochs", "2", "--distill", "1",
                                       "--select", "float_agreement"])
    assert result.exit_code == 0, result.output
    assert "agree_float" in result.output and "best float_agreement" in result.output
    run = load_run(run_copy)
    q = run.info["qat"]
    assert q["metric"] == "float_agreement" and q["select"] == "float_agreement"
    hist = json.loads((run_copy / "qat_history.json").read_text())["epochs"]
    scores = [r["val_float_agreement"] for r in hist]
    assert len(scores) == 2 and all(0.0 <= a <= 1.0 for a in scores)
    assert q["value"] >= max(scores) - 1e-6          # nothing beat the kept checkpoint (history: 6 decimals)
    if q["epoch"] > 0:
        assert q["value"] == pytest.approx(scores[q["epoch"] - 1], abs=1e-6)
    recipe = run.recipe()
    spec = recipe.spec
    # scored on the export check's images: the val films, digital, through the device preprocessing -- not on
    # the photo-mixed val set the other val metrics use
    films = normalize(np.asarray(run.prepared().images("val")), spec)
    float_probs = Predictor(run.float_model(), eager=True)(films)
    qat_probs = Predictor(run.qat_model(), eager=True)(films)
    assert agreement(spec, qat_probs, float_probs)["agreement"] == pytest.approx(q["value"], abs=1e-6)
    mixed = validation_set(run.prepared(), recipe)
    assert recipe.train.val_photo_prob == 0 or not np.array_equal(np.asarray(mixed)[:len(films)], films)


@pytest.mark.slow
@pytest.mark.shared
def test_select_int8_agreement_keeps_what_the_export_check_then_measures(run_copy):
    """--select int8_agreement: each epoch's model is converted to int8 and run as export runs it; the value
    qat.h5 was kept for is the decision agreement the export check then finds for the QAT candidate."""
    from cxr_edge.training.export import REPORT_JSON, export_run

    result = CliRunner().invoke(main, ["qat", str(run_copy), "--eager", "--epochs", "2", "--distill", "1",
                                       "--select", "int8_agreement"])
    assert result.exit_code == 0, result.output
    assert "agree_int8" in result.output and "best int8_agreement" in result.output
    q = load_run(run_copy).info["qat"]
    assert q["metric"] == "int8_agreement" and q["select"] == "int8_agreement"
    hist = json.loads((run_copy / "qat_history.json").read_text())["epochs"]
    scores = [r["val_int8_agreement"] for r in hist]
    assert len(scores) == 2 and all(0.0 <= a <= 1.0 for a in scores)
    assert q["value"] >= max(scores) - 1e-6
    try:
        report = export_run(run_copy, source="qat", report_dir=run_copy / "export-check")
    except ExportCheckError:   # a tiny model may fail the check; the report is written all the same
        report = json.loads((run_copy / "export-check" / REPORT_JSON).read_text())
    assert report["split"] == "val"
    qat = report["candidates"]["qat"]   # QAT scores the films as they are: the check's first view
    as_is = qat["by_view"][0] if "by_view" in qat else qat
    assert as_is["agreement"] == pytest.approx(q["value"], abs=1e-6)


def test_recipe_refuses_an_unknown_qat_selection():
    from cxr_edge.errors import RecipeError
    from cxr_edge.training.recipe import load_recipe, with_qat

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "train" / "tiny.toml")
    assert recipe.qat.select == "primary"                      # the default
    assert with_qat(recipe, select="float_agreement").qat.select == "float_agreement"
    assert with_qat(recipe, select="int8_agreement").qat.select == "int8_agreement"
    with pytest.raises(RecipeError, match="select"):
        with_qat(recipe, select="auroc")                       # checked as the [qat] table is


@pytest.mark.shared
def test_zero_epochs_calibrates_the_ranges_and_keeps_that_model(run_copy):
    """qat.epochs = 0: no fine-tuning epoch; qat.h5 is the range-calibrated model, recorded complete."""
    result = CliRunner().invoke(main, ["qat", str(run_copy), "--eager", "--epochs", "0", "--calibrate-batches", "2"])
    assert result.exit_code == 0, result.output
    q = load_run(run_copy).info["qat"]
    assert q["status"] == "complete" and q["epochs_done"] == 0 and q["stage"] == "calibrated"
    assert q["calibrate_batches"] == 2 and sha256_file(run_copy / "qat.h5") == q["sha256"]
