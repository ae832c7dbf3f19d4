"""The linear probe (cxr_edge.training.probe) and the recipe options built on it: a head stage fitted as the
probe on cached features of several views, a refit stage after the fine-tune, QAT epochs = 0, and a val set of
films plus their photos."""

import json

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the probe needs scikit-learn (the [train] extra)")

from cxr_edge.errors import RecipeError  # noqa: E402
from cxr_edge.training.probe import fit_probe  # noqa: E402


def _blobs(n=240, f=12, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(k, size=n)
    centres = rng.normal(0, 3, (k, f))
    x = centres[y] + rng.normal(0, 1, (n, f)) + 5.0          # offset: the standardisation must fold back
    return x.astype(np.float32), np.eye(k)[y], np.repeat(np.arange(n // 2), 2)


def test_softmax_probe_separates_classes_and_folds_the_standardisation_into_the_weights():
    from sklearn.linear_model import LogisticRegression

    x, y, groups = _blobs()
    probe = fit_probe(x, y, "softmax", groups=groups)
    assert probe.kernel.shape == (12, 3) and probe.bias.shape == (3,)
    p = probe.predict(x)
    assert np.allclose(p.sum(axis=1), 1) and (p.argmax(1) == y.argmax(1)).mean() > 0.95
    mu, sd = x.mean(0), x.std(0) + 1e-6
    ref = LogisticRegression(C=probe.c, max_iter=3000, class_weight="balanced").fit((x - mu) / sd, y.argmax(1))
    assert np.allclose(p, ref.predict_proba((x - mu) / sd), atol=2e-3)   # the same model, over raw features
    assert set(probe.cv_scores) == {"0.001", "0.003", "0.01", "0.03"}


def test_sigmoid_probe_fits_each_label_and_a_single_c_skips_cross_validation():
    x, y, groups = _blobs(k=3, seed=1)
    multi = np.stack([y[:, 0], y[:, 0] + y[:, 1], np.zeros(len(y))], axis=1)   # a label with no positive at all
    probe = fit_probe(x, multi, "sigmoid", groups=groups, c_grid=(0.1,))
    p = probe.predict(x)
    assert p.shape == (len(x), 3) and probe.c[:2] == [0.1, 0.1] and probe.c[2] is None
    assert ((p[:, 0] > 0.5) == (multi[:, 0] > 0)).mean() > 0.95 and p[:, 2].max() < 1e-6
    assert probe.cv_scores == {}


def _recipe(tmp_path, stages: str, extra: str = ""):
    from cxr_edge.training.recipe import load_recipe

    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "prepared.json").write_text("{}")   # a prepared folder (its content is checked at train)
    f = tmp_path / "r.toml"
    f.write_text(f'task = "cxr4"\n[data]\ndir = "data"\n[model]\nweights = "none"\n{extra}\n{stages}')
    return load_recipe(f)


def test_recipe_keys_views_fit_qat_epochs_zero_and_val_photo_copies(tmp_path):
    head = '[[stages]]\ntrainable = "head"\nepochs = 1\nlr = 1e-3\nfit = "probe"\nviews = 3\n'
    r = _recipe(tmp_path, head, '[train]\nval_photo_copies = 1\n[qat]\nepochs = 0\n')
    assert (r.stages[0].fit, r.stages[0].views, r.qat.epochs, r.train.val_photo_copies) == ("probe", 3, 0, 1)
    with pytest.raises(RecipeError, match="epochs = 2: fit = 'probe' is one closed-form fit"):
        _recipe(tmp_path, head.replace("epochs = 1", "epochs = 2"))
    with pytest.raises(RecipeError, match="views.*cached features only"):
        _recipe(tmp_path, '[[stages]]\ntrainable = "all"\nepochs = 1\nlr = 1e-3\nviews = 2\n')
    with pytest.raises(RecipeError, match="fit.*must be one of 'adam', 'probe'"):
        _recipe(tmp_path, head.replace('"probe"', '"lbfgs"'))


@pytest.mark.shared
def test_probe_head_on_augmented_views_then_fine_tune_then_refit(shared_dir, tmp_path_factory):
    """The tiny recipe with the shipped cxr4 stage plan: head = probe on 2 views, a fine-tune epoch, a refit."""
    pytest.importorskip("tf_keras", reason="needs the [train] extra")
    from cxr_edge.training.model import HEAD, find_layer
    from cxr_edge.training.recipe import load_recipe
    from cxr_edge.training.runs import load_run
    from cxr_edge.training.trainer import Trainer, val_labels
    from conftest import REPO

    base = tmp_path_factory.getbasetemp()
    overrides = {"train.run_eagerly": True, "train.val_photo_copies": 1,
                 "stages[0].epochs": 1, "stages[0].fit": "probe", "stages[0].views": 2,
                 "stages[1].epochs": 1, "stages[2].epochs": 1, "stages[2].trainable": "head",
                 "stages[2].cache_features": True, "stages[2].fit": "probe", "stages[2].views": 2,
                 "stages[2].train_bn": False}
    recipe = load_recipe(REPO / "train" / "tiny.toml", overrides=overrides, data_dir=base / "tiny_prepared")
    run_dir = tmp_path_factory.mktemp("probe_run") / "run"
    trainer = Trainer(recipe, run_dir, resume=False, strategy="default", verbose=0)
    trainer.execute("resume")
    hist = json.loads((run_dir / "history.json").read_text())["epochs"]
    assert [r["stage"] for r in hist] == ["head", "top", "all"]
    info = load_run(run_dir).info
    head = next(s for s in info["stages"] if s["name"] == "head")
    assert head["probe"]["C"] in (0.001, 0.003, 0.01, 0.03) and head["feature_extraction"]["views"] == 2
    n_train, n_val = len(trainer.prepared.table("train")), len(trainer.prepared.table("val"))
    assert head["feature_extraction"]["images"] == 2 * n_train + 2 * n_val      # 2 train views; val: films + photos
    assert len(val_labels(trainer.prepared, recipe)) == 2 * n_val
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val_photo_copies"] == 1 and metrics["digital_only"]["n_samples"] == n_val
    kernel, bias = find_layer(load_run(run_dir).float_model(), HEAD).get_weights()
    assert np.isfinite(kernel).all() and kernel.shape[1] == 4
