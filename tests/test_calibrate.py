"""cxr-edge calibrate: temperature lowers ECE, profiles land in the pack and predict applies them, refusals."""

import json
import shutil

import numpy as np
import pytest
from test_evaluate import _root, cli, cxr4_48, informative_cxr4, small_prepared  # noqa: F401 (fixtures)

from cxr_edge.tools.posthoc_pack import calibrate
from cxr_edge.runtime.posthoc import apply_calibration, apply_temperature
from cxr_edge.tools.posthoc_fit import (fit_temperature, fit_temperature_and_bias,
                                  remap_threshold)
from cxr_edge.errors import CxrEdgeError, DataError
from cxr_edge.tools.evaluate import evaluate
from cxr_edge.tools.metrics import expected_calibration_error
from cxr_edge.runtime.pack import load_pack
from cxr_edge.runtime.pipeline import Pipeline


@pytest.fixture
def cxr(shared_data):
    return shared_data / "nih_cxr14" / "images" / "00000061_012.png"


@pytest.fixture(scope="module")
def nih_48(shared_data, tmp_path_factory):
    return small_prepared(shared_data, _root(tmp_path_factory), "nih14", 48, 0.15)


@pytest.fixture
def overconfident(cxr4_48, tmp_path_factory, tmp_path):
    """A writable copy of an informative cxr4 pack whose logits are 4x too large."""
    pytest.importorskip("tensorflow")
    pack, _ = informative_cxr4(cxr4_48, _root(tmp_path_factory), scale=4.0)
    return shutil.copytree(pack, tmp_path / "pack")


def test_calibration_lowers_ece_of_an_overconfident_model(cli, overconfident, cxr4_48):
    before = evaluate(overconfident, cxr4_48, n_boot=0).result
    res = cli("calibrate", overconfident, "--data", cxr4_48.path, "--json")
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)["models"]["cxr4"]
    assert m["temperature"]["after"] > 1.5 and m["ece"]["after"] < 0.7 * m["ece"]["before"]
    assert m["data"]["split"] == "val" and m["data"]["data_sha256"] == cxr4_48.data_sha256
    meta = load_pack(overconfident)["cxr4"].metadata
    assert meta.temperature == m["temperature"]["after"]
    record = meta.extras["posthoc_calibration"]
    assert record["temperature"]["data"]["n"] == cxr4_48.info["counts"]["val"]["images"]
    assert record["profiles"]["max-f1"]["rule"] == "max-f1" and meta.default_profile == "max-f1"
    # on held-out test images the calibrated pack is better calibrated too, and its ranking is unchanged
    after = evaluate(overconfident, cxr4_48, n_boot=0).result
    assert after["calibration"]["ece"] < before["calibration"]["ece"]
    assert after["metrics"]["mean_auroc"]["value"] == pytest.approx(before["metrics"]["mean_auroc"]["value"], abs=0.01)
    # and evaluating on the split it was calibrated on is refused
    with pytest.raises(DataError, match="refusing to evaluate on calibration data"):
        evaluate(overconfident, cxr4_48, split="val", n_boot=0)


def test_profiles_are_written_and_predict_applies_them(cli, tiny_pack, nih_48, shared_data, tmp_path):
    pack = shutil.copytree(tiny_pack, tmp_path / "pack")
    res = cli("calibrate", pack, "--data", nih_48.path, "--rule", "sensitivity:0.9", "--profile", "screening", "--json")
    assert res.exit_code == 0, res.output
    screening = json.loads(res.stdout)["models"]["nih14"]
    for label, s in screening["thresholds"].items():   # the rule holds on the data it was fitted on
        assert s["n_positive"] == 0 or s["sensitivity"] >= 0.9, label
    assert screening["default_profile"] == "screening" and screening["default_changed"]   # 'default' was a placeholder
    res = cli("calibrate", pack, "--data", nih_48.path, "--rule", "max-f1", "--profile", "balanced", "--default",
              "--keep-temperature", "--json")
    balanced = json.loads(res.stdout)["models"]["nih14"]
    assert balanced["default_profile"] == "balanced" and balanced["temperature"]["fitted"] is False
    assert balanced["profiles"] == ["balanced", "default", "screening"]

    image = str(shared_data / "nih_cxr14" / "images" / "00000061_012.png")
    for args, profile in (([], "balanced"), (["--profile", "screening"], "screening")):
        res = cli("predict", "--pack", pack, "--json", *args, image)
        out = json.loads(res.stdout.splitlines()[0])["nih14"]
        expected = (balanced if profile == "balanced" else screening)["thresholds"]
        assert out["profile"] == profile
        assert out["thresholds"] == pytest.approx({k: v["threshold"] for k, v in expected.items()})
        assert out["temperature"] == pytest.approx(screening["temperature"]["after"])
    text = cli("calibrate", pack, "--data", nih_48.path, "--profile", "screening", "--dry-run").output
    assert "ECE" in text and "sensitivity" in text and "Pneumonia" in text and "dry run: nothing written" in text


def test_photos_join_the_images_the_thresholds_are_chosen_on(cli, tiny_pack, nih_48, tmp_path):
    pack = shutil.copytree(tiny_pack, tmp_path / "pack")
    n = nih_48.info["counts"]["val"]["images"]
    res = cli("calibrate", pack, "--data", nih_48.path, "--rule", "sensitivity:0.9", "--profile", "photos",
              "--photos", "moderate", "--json")
    assert res.exit_code == 0, res.output
    assert "digital" in res.stderr and "photos" in res.stderr   # both passes ran, each with its progress bar
    m = json.loads(res.stdout)["models"]["nih14"]
    assert m["data"]["n"] == n and m["data"]["photos"]["n"] == n and m["data"]["photos"]["severity"] == "moderate"
    for label, s in m["thresholds"].items():   # every image counted twice: digital and photographed
        assert s["n_positive"] + s["n_negative"] == 2 * n, label
        assert s["n_positive"] == 0 or s["sensitivity"] >= 0.9, label
    record = load_pack(pack)["nih14"].metadata.extras["posthoc_calibration"]["profiles"]["photos"]
    assert record["data"]["photos"]["seed"] == 0 and record["data"]["photos"]["rectified"] is True
    text = cli("calibrate", pack, "--data", nih_48.path, "--photos", "moderate", "--dry-run").output
    assert f"{n} images + {n} simulated moderate photos of them" in text
    before = {p.name: p.read_bytes() for p in pack.iterdir()}
    for bad in ("blurry", "nan", "1.5"):   # refused before any model runs
        res = cli("calibrate", pack, "--data", nih_48.path, "--photos", bad)
        assert res.exit_code == 2 and f"--photos '{bad}'" in res.output and "Traceback" not in res.output, res.output
        assert "digital" not in res.stderr   # no model ran: the typo is caught first
    assert {p.name: p.read_bytes() for p in pack.iterdir()} == before


def test_refitting_the_calibration_keeps_other_profiles_decisions(nih_48, tiny_pack, tmp_path, cxr):
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.001, 0.999, (500, 3))
    for t in (0.2, 0.5, 0.9):
        for old, new in (((1.0, 0.0), (2.5, 0.0)), ((3.0, 0.0), (0.7, -1.5)), ((1.3, -2.0), (0.9, 0.4))):
            before = apply_calibration(raw, old[0], "sigmoid", [old[1]] * 3) >= t
            after = apply_calibration(raw, new[0], "sigmoid", [new[1]] * 3) >= remap_threshold(t, old, new)
            assert (before == after).all()
    pack = shutil.copytree(tiny_pack, tmp_path / "pack")
    calibrate(pack, nih_48, rule="youden", profile="a", temperature=False)
    before = {p: Pipeline(pack, profile="a").predict(cxr).results["nih14"].positive for p in ("a",)}
    first = load_pack(pack)["nih14"].metadata.thresholds["a"]
    out = calibrate(pack, nih_48, rule="max-f1", profile="b")["models"]["nih14"]
    meta = load_pack(pack)["nih14"].metadata
    assert out["remapped_profiles"] == {"a": 1.0} and out["bias"]["fitted"] and meta.bias
    t_new, labels = meta.temperature, meta.labels
    assert meta.thresholds["a"] == pytest.approx(
        {k: remap_threshold(v, (1.0, 0.0), (t_new, meta.bias[k])) for k, v in first.items()})
    assert meta.extras["posthoc_calibration"]["profiles"]["a"]["temperature"] == t_new
    # a real image gets the same findings under profile 'a' before and after the new calibration
    assert Pipeline(pack, profile="a").predict(cxr).results["nih14"].positive == before["a"]
    assert sorted(meta.bias) == sorted(labels)


def test_label_offsets_fix_what_one_temperature_cannot():
    # A multi-label model trained with positive weights w over-states each label by about log(w): its outputs
    # are sigmoid(true logit + log w). One temperature cannot bring them down to the base rate; T + offsets can.
    rng = np.random.default_rng(3)
    n, prevalence, w = 4000, np.array([0.02, 0.05, 0.2]), np.array([30.0, 19.0, 4.0])
    z_true = rng.normal(0, 1.5, (n, 3)) + np.log(prevalence / (1 - prevalence))
    y = (rng.uniform(size=(n, 3)) < 1 / (1 + np.exp(-z_true))).astype(int)
    raw = 1 / (1 + np.exp(-(z_true + np.log(w))))
    fit, test = slice(0, n // 2), slice(n // 2, n)
    t_only = fit_temperature(raw[fit], y[fit], "sigmoid")
    t, b = fit_temperature_and_bias(raw[fit], y[fit])
    ece = {k: expected_calibration_error(y[test], p) for k, p in {
        "raw": raw[test], "temperature": apply_temperature(raw[test], t_only, "sigmoid"),
        "offsets": apply_calibration(raw[test], t, "sigmoid", b)}.items()}
    assert ece["offsets"] < 0.02 < 0.5 * ece["temperature"] and ece["temperature"] > 0.05
    np.testing.assert_allclose(b, -np.log(w), atol=0.35)   # the offsets find the weights' inflation
    assert t == pytest.approx(1.0, abs=0.15)


def test_refusals_and_clean_errors(cli, tiny_pack, cxr4_48, nih_48, tmp_path, tmp_path_factory):
    pack = shutil.copytree(tiny_pack, tmp_path / "pack")
    before = {p.name: p.read_bytes() for p in pack.iterdir()}
    cases = [
        (("--data", cxr4_48.path, "--split", "test"), "refusing to calibrate on the test split"),
        (("--data", cxr4_48.path, "--rule", "sensitivity:2"), "unknown threshold rule"),
        (("--data", cxr4_48.path, "--profile", "bad name!"), "profile name 'bad name!' is not allowed"),
        (("--data", cxr4_48.path, "--data", cxr4_48.path), "two --data folders are for the cxr4 model"),
        (("--data", tmp_path), "not a prepared data folder"),
    ]
    for args, message in cases:
        res = cli("calibrate", pack, *args)
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, (args, res.output)
    res = cli("calibrate", pack, "--data", cxr4_48.path, "--dry-run", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["written"] is False
    assert {p.name: p.read_bytes() for p in pack.iterdir()} == before   # nothing written by any of these
    pytest.importorskip("tensorflow")
    informative = informative_cxr4(cxr4_48, _root(tmp_path_factory))[0]
    with pytest.raises(CxrEdgeError, match="refusing to calibrate on training images"):
        calibrate(informative, cxr4_48, split="train", dry_run=True)
    out = calibrate(pack, nih_48, split="test", allow_test_split=True, dry_run=True)
    assert out["models"]["nih14"]["data"]["split"] == "test"

