"""Recipes: the shipped ones load; a bad recipe is refused with the key named; resolved recipes round-trip."""

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from cxr_edge.cli import main
from cxr_edge.errors import RecipeError
from cxr_edge.training.recipe import load_recipe, parse_value
from conftest import REPO

BASE = """
task = "cxr4"
[data]
dir = "prep"
[model]
alpha = 0.35
weights = "none"
[[stages]]
trainable = "head"
epochs = 2
lr = 1e-3
[[stages]]
name = "top"
trainable = "block_13"
epochs = 1
lr = 1e-5
"""


@pytest.fixture
def recipe_dir(tmp_path):
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "prepared.json").write_text("{}")  # a prepared folder (its content is checked at train)
    return tmp_path


def write(recipe_dir, text=BASE, name="r.toml"):
    path = recipe_dir / name
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_recipe_resolves_defaults(recipe_dir):
    r = load_recipe(write(recipe_dir))
    assert r.name == "r" and r.task == "cxr4" and r.spec.input.size == 224
    assert r.data.dir == str((recipe_dir / "prep").resolve()) and not r.data.prepares
    assert r.model.weights is None and r.model.dropout == 0.2
    assert [s.name for s in r.stages] == ["stage1", "top"]
    assert r.stages[0].cache_features and not r.stages[1].cache_features
    assert r.stages[1].train_bn  # from scratch: BN statistics are learnt (except on the cached frozen stage)
    assert (r.loss.kind, r.loss.label_smoothing, r.loss.class_weights) == ("ce", 0.1, "auto")  # cxr4 defaults
    assert r.qat.epochs >= 1 and r.qat.lr <= 1e-4


@pytest.mark.parametrize("edit,key", [
    (("[[stages]]\ntrainable = \"head\"", "[[stages]]\ntrainable = \"head\"\nlrr = 3"), r"stages\[0\]\.lrr"),
    (("lr = 1e-5", "lr = -1e-5"), r"stages\[1\]\.lr must be a learning rate in \(0, 1\]"),
    (("lr = 1e-5", "lr = \"fast\""), r"stages\[1\]\.lr must be a number"),
    (("epochs = 1", "epochs = 1.5"), r"stages\[1\]\.epochs must be a whole number"),
    (("trainable = \"block_13\"", "trainable = \"block_99\""), r"stages\[1\]\.trainable .*'block_N'"),
    (("trainable = \"block_13\"", "trainable = \"block_13\"\ncache_features = true"),
     r"stages\[1\]\.cache_features = true needs trainable = 'head'"),
    (("task = \"cxr4\"", "task = \"cxr5\""), r"task 'cxr5' is unknown.*cxr4"),
    (("task = \"cxr4\"", "task = \"cxr4\"\nstagez = 1"), r"stagez is not a recipe key.*valid keys in the top level"),
    (("alpha = 0.35", "alpha = 0.4"), r"model\.alpha must be one of"),
    (("alpha = 0.35", "alpha = 0.35\ndropout = 1.0"), r"model\.dropout must be in \[0, 1\)"),
    (("weights = \"none\"", "weights = \"imagenet\""), r"model\.weights = 'imagenet' would download"),
    (("weights = \"none\"", "weights = \"nope.h5\""), r"model\.weights 'nope.h5' does not exist"),
    (("weights = \"none\"\n", ""), r"model\.weights is required.*\"none\""),
    (("dir = \"prep\"", "dir = \"elsewhere\""), r"data\.dir .* is not a prepared data folder"),
    (("dir = \"prep\"", "dir = \"prep\"\nsources = [\"missing.csv\"]"),
     r"data\.sources\[0\] 'missing.csv' does not exist"),
    (("dir = \"prep\"", "dir = \"prep\"\nofficial_test = true"), r"data\.official_test is a prepare argument"),
    (("[model]", "[loss]\nkind = \"bce\"\n[model]"), r"loss\.kind = 'bce' needs a sigmoid head.*softmax.*'ce'"),
    (("[model]", "[loss]\npos_weights = \"auto\"\n[model]"), r"loss\.pos_weights applies to sigmoid heads only"),
    (("[model]", "[loss]\nclass_weights = [1, 2]\n[model]"), r"loss\.class_weights must be .*4 positive numbers"),
    (("[model]", "[augment]\nrotate = 3\n[model]"), r"augment\.rotate is not a recipe key .*did you mean 'rotation'"),
    (("[model]", "[augment]\nphoto_prob = 2\n[model]"), r"augment\.photo_prob is a probability in \[0, 1\]"),
    (("[model]", "[train]\nbatch_size = 0\n[model]"), r"train\.batch_size must be in 1\.\.4096"),
    (("[model]", "[train]\nschedule = \"step\"\n[model]"), r"train\.schedule must be one of 'plateau', 'cosine'"),
    (("[model]", "[qat]\nepochs = -1\n[model]"), r"qat\.epochs must be in 0\.\.1000"),
])
def test_bad_recipe_names_the_key(recipe_dir, edit, key):
    old, new = edit
    text = textwrap.dedent(BASE)
    assert old in text
    text = text.replace(old, new, 1)
    with pytest.raises(RecipeError, match=key) as info:
        load_recipe(write(recipe_dir, text))
    assert str(recipe_dir / "r.toml") in str(info.value)  # the file is named too


def test_nothing_to_train_is_refused(recipe_dir):
    text = textwrap.dedent(BASE).replace("epochs = 2", "epochs = 0").replace("epochs = 1", "epochs = 0")
    with pytest.raises(RecipeError, match=r"every stage has epochs = 0.*stages\[0\]\.epochs"):
        load_recipe(write(recipe_dir, text))


def test_unknown_key_suggests_the_close_one(recipe_dir):
    text = textwrap.dedent(BASE).replace("lr = 1e-5", "lr = 1e-5\nearly_stoping = 2")
    with pytest.raises(RecipeError, match=r"stages\[1\]\.early_stoping .*did you mean 'early_stopping'"):
        load_recipe(write(recipe_dir, text))


def test_paths_are_relative_to_the_recipe_file(recipe_dir, monkeypatch, tmp_path_factory):
    path = write(recipe_dir)
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert load_recipe(path).data.dir == str((recipe_dir / "prep").resolve())


def test_resolved_recipe_round_trips(recipe_dir):
    r = load_recipe(write(recipe_dir))
    resolved = r.to_dict()
    out = recipe_dir / "run" / "recipe.json"
    out.parent.mkdir()
    out.write_text(json.dumps(resolved))
    again = load_recipe(out)
    assert {**again.to_dict(), "source_file": None} == {**resolved, "source_file": None}
    assert load_recipe(out.parent).to_dict()["stages"] == resolved["stages"]  # a run folder means its recipe.json


def test_overrides_and_cli_replacements(recipe_dir, tmp_path_factory, monkeypatch):
    r = load_recipe(write(recipe_dir), overrides={"stages[1].epochs": 3, "train.batch_size": 8, "qat.lr": 2e-5})
    assert (r.stages[1].epochs, r.train.batch_size, r.qat.lr) == (3, 8, 2e-5)
    with pytest.raises(RecipeError, match=r"stages\[5\]"):
        load_recipe(write(recipe_dir), overrides={"stages[5].epochs": 3})
    other = tmp_path_factory.mktemp("other_prep")
    (other / "prepared.json").write_text("{}")
    monkeypatch.chdir(other.parent)
    r = load_recipe(write(recipe_dir), data_dir=other.name, weights="none")
    assert r.data.dir == str(other.resolve())
    assert parse_value("1e-5") == 1e-5 and parse_value("[0.8, 0.1, 0.1]") == [0.8, 0.1, 0.1]
    assert parse_value("block_12") == "block_12" and parse_value("true") is True


@pytest.mark.parametrize("name", ["gate", "cxr4", "nih14", "tiny"])
def test_shipped_recipes_load(shared_dir, name):
    r = load_recipe(REPO / "train" / f"{name}.toml")
    assert r.task == ("cxr4" if name == "tiny" else name) and r.data.prepares
    assert r.stages[0].trainable == "head" and r.stages[0].cache_features
    if name != "tiny":
        assert r.model.alpha == 1.0 and r.model.weights.endswith("1.0_224_no_top.h5")
        assert [s.trainable for s in r.stages][1:] == ["block_13", "all"]
        # lower than the head's, then lower again (stage 2 at 1e-4 for the classifiers: train/cxr4.toml says why)
        assert r.stages[1].lr <= 1e-4 < r.stages[0].lr and r.stages[2].lr < r.stages[1].lr
        assert r.data.redistributable_only and r.qat.distill == 1.0
        assert r.augment.photo_prob > 0
    assert r.loss.kind == {"gate": "bce", "cxr4": "ce", "nih14": "bce", "tiny": "ce"}[name]
    assert r.data.dir == str((REPO / "prepared" / name).resolve())


@pytest.mark.parametrize("name,task", [("gate", "gate"), ("cxr3", "cxr3")])
def test_permissive_recipes_use_only_permissive_images(shared_dir, name, task):
    r = load_recipe(REPO / "train" / "permissive" / f"{name}.toml")
    assert r.task == task and r.data.permissive_only and r.name == f"{name}-permissive"
    assert r.data.dir == str((REPO / "prepared" / f"{name}-permissive").resolve())  # never the default's data
    assert r.data.sources and all(Path(src).is_file() for src in r.data.sources)


def test_cli_check_and_bad_recipe_exit_code(recipe_dir):
    runner = CliRunner()
    ok = runner.invoke(main, ["train", str(write(recipe_dir)), "--check", "--set", "stages[0].epochs=5"])
    assert ok.exit_code == 0, ok.output
    assert "stage 1 stage1: head, 5 epoch(s)" in ok.output and '"format": "cxr-edge-recipe"' in ok.output
    bad = runner.invoke(main, ["train", str(write(recipe_dir)), "--check", "--set", "stages[1].lr=-1"])
    assert bad.exit_code == 2 and "stages[1].lr" in bad.output
    missing = runner.invoke(main, ["train", str(recipe_dir / "nope.toml"), "--check"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
