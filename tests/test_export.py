"""cxr-edge export --int8: conversion, the mandatory float-vs-int8 check, refusals, metadata, packs, predict.

The model under test is a gate (chest X-ray or not) run made here per the run-directory contract:
MobileNetV2 alpha 1.0 with the local ImageNet weights at 64 px and a logistic-regression head
fitted in closed form on its pooled features of real images (no Keras fit: seconds, deterministic).
ImageNet features separate CXRs from other images with wide margins, so this is a model where
int8 should hold: measured here, PTQ int8 makes the same decision on every val image and moves
AUROC by < 0.001, well inside the shipped gate policy. (A random-weight MobileNetV2, by contrast,
amplifies int8 rounding layer by layer and fails the check: see tests/test_convert.py.)

Conversions cost 10-20 s each, so the exported pack is built once per module and shared.
"""

import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("tf_keras", reason="needs the [train] extra (TensorFlow, tf-keras, tfmot)")
pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert to run converted models")

from test_device_side import BLOCKER  # noqa: E402

from cxr_edge.runtime import metadata as md  # noqa: E402
from cxr_edge.tools.ptq_set import build_calibration_set, write_calibration_set  # noqa: E402
from cxr_edge.cli import main  # noqa: E402
from cxr_edge.data.prepare import PrepareConfig, prepare  # noqa: E402
from cxr_edge.data.sources import SourceOptions, SourceSpec  # noqa: E402
from cxr_edge.data.splits import SplitConfig  # noqa: E402
from cxr_edge.errors import RecipeError  # noqa: E402
from cxr_edge.tools.evaluate import fit_softmax  # noqa: E402
from cxr_edge.runtime.pack import load_pack  # noqa: E402
from cxr_edge.runtime.pipeline import Pipeline  # noqa: E402
from cxr_edge.runtime.preprocess import normalize  # noqa: E402
from cxr_edge.training.export import write_into_pack  # noqa: E402
from cxr_edge.training.export_check import parse_policy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
WEIGHTS = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


# --------------------------------------------------------------------------- builders


def gate_prepared(shared_data, root: Path, n_each: int = 120):
    """A balanced gate data set (CXRs and non-CXRs) from ../shared, prepared at 64 px."""
    rows = list(csv.DictReader(open(shared_data / "gate" / "manifest.csv")))
    rng = np.random.default_rng(0)
    pos = [r for r in rows if r["is_cxr"] == "1"]
    neg = [r for r in rows if r["is_cxr"] == "0"]
    chosen = [pos[i] for i in rng.choice(len(pos), n_each, replace=False)]
    chosen += [neg[i] for i in rng.choice(len(neg), min(n_each, len(neg)), replace=False)]
    manifest = root / "gate_manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    config = PrepareConfig(task="gate", sources=(SourceSpec(str(manifest)),),
                           source_options=SourceOptions(root=str(shared_data)), size=SIZE,
                           split=SplitConfig(fractions=(0.4, 0.3, 0.3), seed=1), shard_size=256)
    return prepare(config, root / "gate-prepared")


def gate_run(prepared, weights: Path, run: Path) -> Path:
    """A run directory (run.json + float.h5) holding an ImageNet-feature gate with a fitted head."""
    from cxr_edge.training import model as M
    from cxr_edge.training.runs import save_model_atomic, write_json_atomic
    from cxr_edge.training.tf_env import load

    _, keras = load()
    keras.utils.set_random_seed(0)
    spec = prepared.task
    model = M.build_model(spec, alpha=1.0, weights=weights)
    x = normalize(prepared.images("train")[:], spec)
    feats = M.feature_extractor(model).predict(x, verbose=0)
    mu, sd = feats.mean(axis=0), feats.std(axis=0) + 1e-6
    w = fit_softmax((feats - mu) / sd, prepared.labels("train")[:, 0].astype(int), 2, l2=1.0)
    wd = w[:, 1] - w[:, 0]   # two-class softmax -> one sigmoid logit
    M.find_layer(model, "head").set_weights([(wd[:-1] / sd)[:, None], np.array([wd[-1] - (mu / sd) @ wd[:-1]])])
    run.mkdir(parents=True, exist_ok=True)
    save_model_atomic(model, run / "float.h5")
    write_json_atomic(run / "run.json", {
        "format": "cxr-edge-run", "format_version": 1, "task": "gate", "recipe": "test-gate-imagenet-64",
        "input": spec.input.to_dict(), "alpha": 1.0, "prepared": str(prepared.path),
        "data_sha256": prepared.data_sha256, "status": "complete"})
    return run


def write_policy(path: Path, manifest: Path, **changes) -> Path:
    """The shipped gate policy with this module's calibration set (60 images: min 20 here), without bias correction
    (this module's plain PTQ baseline; test_bias_corrected_ptq_... turns it on), and changes
    (``section__field=value``; ``None`` drops the field)."""
    policy = json.loads((REPO / "cxr_edge" / "resources" / "export" / "gate.json").read_text())
    policy["calibration"].update(manifest=str(manifest), min_size=20)
    policy["quantization"]["bias_correction"] = False
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if value is None:
            policy[section].pop(field, None)          # None drops the field
        else:
            policy[section][field] = value
    path.write_text(json.dumps(policy))
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def file_hashes(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def setup(shared_data, shared_weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    prepared = gate_prepared(shared_data, root)
    run = gate_run(prepared, shared_weights / WEIGHTS, root / "run")
    cal = build_calibration_set(prepared, split="train", n=60, seed=0, data_root=shared_data)
    manifest = write_calibration_set(cal, root / "cal" / "gate.csv")
    return {"root": root, "prepared": prepared, "run": run, "manifest": manifest, "cal": cal,
            "policy": write_policy(root / "policy.json", manifest), "data_root": shared_data}


@pytest.fixture(scope="module")
def exported(setup):
    """One PTQ export (plus a float16 variant) into a new pack, through the CLI."""
    s = setup
    pack = s["root"] / "pack"
    res = invoke("export", s["run"], "--int8", "--from", "float", "--policy", s["policy"], "--out", pack,
                 "--data-root", s["data_root"], "--variant", "float16")
    assert res.exit_code == 0, res.output
    report = json.loads((s["run"] / "export" / "report.json").read_text())
    return {"pack": pack, "output": res.output, "report": report}


# --------------------------------------------------------------------------- the happy path


def test_export_writes_a_checked_pack_with_metadata(setup, exported):
    pack = load_pack(exported["pack"])
    assert list(pack.models) == ["gate"]
    m = pack["gate"]
    meta = m.metadata
    q = meta.quantization
    assert q["mode"] == "int8" and q["source"] == "ptq" and q["io_dtype"] == "uint8" and q["per_channel"]
    assert q["input"]["dtype"] == "uint8" and q["input"]["scale"] == pytest.approx(2 / 255, rel=1e-3)
    assert set(q["outputs"]) == {"probs", "features"} and set(meta.outputs) == {"probs", "features"}
    assert meta.input.size == SIZE and meta.temperature == 1.0 and meta.thresholds["default"] == {"chest_xray": 0.5}
    cal = meta.calibration
    assert cal["used"] and cal["sha256"] == setup["cal"].sha256 and cal["n"] == 60 and cal["split"] == "train"
    metrics = meta.metrics
    assert metrics["passed"] and metrics["split"] == "val" and metrics["source"] == "ptq"
    films = len(setup["prepared"].table("val"))   # the shipped policy checks every film and its 4 one-pixel shifts
    assert metrics["n"] == 5 * films and metrics["check_views"]["films"] == films
    assert metrics["check_views"]["shifts"] == [[0, 0], [0, 1], [0, -1], [1, 0], [-1, 0]]
    assert set(metrics["float"]) >= {"accuracy", "auroc"} and set(metrics["delta"]) == {"accuracy", "auroc"}
    assert metrics["tolerance"]["agreement"] == 0.98 and {c["metric"] for c in metrics["checks"]} == {
        "accuracy", "auroc", "agreement"}
    training = meta.training
    assert training["data_sha256"] == setup["prepared"].data_sha256 and training["recipe"] == "test-gate-imagenet-64"
    assert training["license"]["most_restrictive_level"] and "licence" in pack.manifest["license"]
    head = np.load(io.BytesIO(m.files["head.npz"]))
    assert head["kernel"].shape == (1280, 1) and head["bias"].shape == (1,)
    assert meta.extras["head"]["file"] == "head.npz"
    # the report: JSON + Markdown, sizes float vs int8, the warning below the recommended calibration size
    r = exported["report"]
    assert r["passed"] and r["written"] and r["chosen"] == "ptq"
    assert r["sizes"]["int8_ptq_bytes"] < 0.4 * r["sizes"]["float32_weights_bytes"]
    assert any("below the recommended 300" in n for n in r["notes"])
    assert any("no qat.h5" in n for n in r["notes"]) is False   # --from float asked for PTQ only
    md_text = (setup["run"] / "export" / "report.md").read_text()
    assert "int8 check PASSED" in md_text and "| auroc |" in md_text and "Δ (int8 − float)" in md_text
    assert f"{5 * films} paired decisions ({films} films x 5 views" in md_text
    # the float16 variant is measured and written beside the report, not into the pack
    (variant,) = r["variants"]
    assert variant["mode"] == "float16" and variant["agreement"] >= 0.95 and Path(variant["file"]).is_file()


def test_int8_agrees_with_float_on_real_images_within_tolerance(setup, exported):
    """Independently of export's own numbers: predict's pipeline against the Keras float model."""
    from cxr_edge.training.runs import load_run

    prepared = setup["prepared"]
    table = prepared.table("val")
    spec = prepared.task
    keras_probs = load_run(setup["run"]).float_model()(normalize(prepared.images("val")[:], spec),
                                                       training=False).numpy()[:, 0]
    pipe = Pipeline(exported["pack"], gate_first=False)
    int8_probs = np.array([pipe.predict(p).gate.score for p in table["path"]])
    y = prepared.labels("val")[:, 0]
    agree = np.mean((keras_probs >= 0.5) == (int8_probs >= 0.5))
    assert agree >= 0.98
    assert np.mean((int8_probs >= 0.5) == y) >= np.mean((keras_probs >= 0.5) == y) - 0.005
    as_is = exported["report"]["candidates"]["ptq"]["by_view"][0]     # the check pools 5 views; the first is the films
    assert as_is["shift"] == [0, 0] and as_is["agreement"] == pytest.approx(agree)


def test_pack_predicts_without_tensorflow(exported, shared_data):
    cxr = shared_data / "nih_cxr14" / "images" / "00000061_012.png"
    other = sorted((shared_data / "noncxr" / "images").glob("*.png"))[0]
    code = (f"from cxr_edge.cli import main\n"
            f"main(['predict', '--json', '--pack', {str(exported['pack'])!r}, {str(cxr)!r}, {str(other)!r}])")
    res = subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    first, second = (json.loads(line) for line in res.stdout.splitlines()[:2])
    assert first["gate"]["accepted"] and first["status"] == "ok"
    assert second["status"] == "rejected" and not second["gate"]["accepted"]


def test_metadata_round_trips_and_info_shows_the_numbers(exported, monkeypatch, tmp_path):
    pack = load_pack(exported["pack"])
    m = pack["gate"]
    meta, files = md.read(m.content)
    assert meta.to_dict() == pack.manifest["models"]["gate"]["metadata"] == m.metadata.to_dict()
    assert md.ModelMetadata.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta and "head.npz" in files
    monkeypatch.setenv("CXR_EDGE_CONFIG", str(tmp_path / "none.json"))
    out = invoke("info", exported["pack"]).output
    auroc = meta.metrics
    for text in ("quantization int8 (ptq), I/O uint8", "calibration  60 images", "int8 check   PASSED",
                 f"auroc          float {auroc['float']['auroc']:.4f}  int8 {auroc['int8']['auroc']:.4f}",
                 "agreement      1.0000" if auroc["agreement"] == 1 else "agreement", "allowed        accuracy drop",
                 "kept ptq"):
        assert text in out, out


def test_export_replaces_only_its_slot_in_an_existing_pack(exported, tmp_path):
    pytest.importorskip("tensorflow")
    from tinypack import build_tiny_pack

    target = build_tiny_pack(tmp_path / "three")
    before = {slot: m.sha256 for slot, m in load_pack(target).models.items()}
    gate = load_pack(exported["pack"])["gate"]
    path, kept = write_into_pack(target, "gate", gate.content, gate.metadata)
    after = load_pack(path)
    assert sorted(kept) == ["cxr4", "nih14"] and set(after.models) == {"gate", "cxr4", "nih14"}
    assert after["gate"].sha256 == gate.sha256 and after["gate"].sha256 != before["gate"]
    assert all(after[s].sha256 == before[s] for s in ("cxr4", "nih14"))
    assert "gate: trained on data" in after.manifest["license"]


# --------------------------------------------------------------------------- refusals


def test_impossible_tolerance_fails_with_exit_3_and_writes_no_pack(setup, exported, tmp_path):
    s = setup
    pack = tmp_path / "existing"
    shutil.copytree(exported["pack"], pack)
    before = file_hashes(pack)
    # the int8 AUROC would have to beat float by 0.5: impossible by construction
    policy = write_policy(tmp_path / "impossible.json", s["manifest"],
                          check__tolerance={"accuracy": 0.005, "mean_auroc": -0.5, "agreement": 0.98},
                          check__envelope="none", check__envelope_limit=None, check__significance=None)
    res = invoke("export", s["run"], "--int8", "--from", "float", "--policy", policy, "--out", pack,
                 "--data-root", s["data_root"], "--report", tmp_path / "report")
    assert res.exit_code == 3, res.output
    out = res.output
    assert "int8 check FAILED for gate (PTQ)" in out and "auroc" in out and "allowed drop -0.5000" in out
    assert f"No pack was written; {pack} is unchanged" in out and "Likely fixes:" in out and "cxr-edge qat" in out
    assert file_hashes(pack) == before                    # byte-identical
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["passed"] is False and not report["written"]
    first = report["candidates"]["ptq"]["failures"][0]
    assert first.startswith(("auroc changed by", "auroc dropped by")) and "allowed drop -0.5000" in first
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []   # no half-written pack


def test_too_small_calibration_set_is_refused_before_converting(setup, tmp_path):
    s = setup
    policy = json.loads(s["policy"].read_text())
    policy["calibration"]["min_size"] = 100
    (tmp_path / "p.json").write_text(json.dumps(policy))
    res = invoke("export", s["run"], "--int8", "--from", "float", "--policy", tmp_path / "p.json",
                 "--out", tmp_path / "pack", "--data-root", s["data_root"])
    assert res.exit_code == 2
    assert "has 60 images, fewer than the policy's minimum 100" in res.output and "--n 300" in res.output
    assert not (tmp_path / "pack").exists()


def test_calibration_files_must_match_their_sha256(setup, tmp_path):
    s = setup
    root = tmp_path / "root"   # a data root where the calibration images are absent
    root.mkdir()
    res = invoke("export", s["run"], "--int8", "--from", "float", "--policy", s["policy"],
                 "--out", tmp_path / "pack", "--data-root", root)
    assert res.exit_code == 2 and "60 file(s) missing" in res.output and not (tmp_path / "pack").exists()


def test_cli_argument_errors(setup, tmp_path):
    s = setup
    res = invoke("export", s["run"], "--policy", s["policy"])
    assert res.exit_code == 2 and "nothing to export" in res.output
    res = invoke("export", s["run"], "--variant", "float16", "--out", tmp_path / "p", "--policy", s["policy"])
    assert res.exit_code == 2 and "add --int8" in res.output
    res = invoke("export", s["run"], "--int8", "--split", "train")
    assert res.exit_code == 2 and "'train' is not one of" in res.output
    res = invoke("export", s["run"], "--int8", "--from", "qat", "--policy", s["policy"])
    assert res.exit_code == 2 and "cxr-edge qat" in res.output
    res = invoke("export", tmp_path, "--int8")
    assert res.exit_code == 2 and "not a training run" in res.output
    assert invoke("export", "--help").exit_code == 0


def test_policy_parsing():
    gate = json.loads((REPO / "cxr_edge" / "resources" / "export" / "gate.json").read_text())
    assert parse_policy(gate).tolerance.agreement == 0.98
    for task in ("gate", "cxr4", "nih14"):   # the shipped policies parse and name existing manifests
        policy = parse_policy(json.loads((REPO / "cxr_edge" / "resources" / "export" / f"{task}.json").read_text()),
                              path=REPO / "cxr_edge" / "resources" / "export" / f"{task}.json")
        assert policy.calibration == (REPO / "cxr_edge" / "resources" / "calibration_data" / f"{task}.csv").resolve()
        assert policy.split == "val" and policy.min_calibration <= policy.recommended_calibration
    bad = json.loads(json.dumps(gate))
    del bad["check"]["tolerance"]["agreement"]
    with pytest.raises(RecipeError, match="lacks \\['agreement'\\]"):
        parse_policy(bad)
    bad = json.loads(json.dumps(gate))
    bad["check"]["split"] = "train"
    with pytest.raises(RecipeError, match="never train"):
        parse_policy(bad)
    bad = json.loads(json.dumps(gate))
    bad["check"]["tolerance"]["typo"] = 1
    with pytest.raises(RecipeError, match="unknown tolerance"):
        parse_policy(bad)
    for value, images in (({"images": 128}, 128), (False, 0), (None, 0)):
        changed = json.loads(json.dumps(gate))
        changed["quantization"]["bias_correction"] = value
        policy = parse_policy(changed)
        assert policy.bias_correction == images
        assert policy.to_dict()["bias_correction"] == ({"images": images} if images else None)
    for value in ({"images": 0}, {"images": 8}, {"images": True}, {"images": "128"}, True, 128, {},
                  {"images": 128, "imgs": 5}):
        bad = json.loads(json.dumps(gate))
        bad["quantization"]["bias_correction"] = value
        with pytest.raises(RecipeError, match="bias_correction must be"):
            parse_policy(bad)
    bad = json.loads(json.dumps(gate))
    bad["quantization"].update(bias_correction={"images": 128}, per_channel=False)
    with pytest.raises(RecipeError, match="per_channel true"):
        parse_policy(bad)


@pytest.mark.slow
def test_bias_corrected_ptq_is_checked_against_the_uncorrected_float_and_recorded(setup, exported, tmp_path):
    """quantization.bias_correction as the shipped policies set it: the PTQ candidate comes from the corrected float
    model, on every one of the 60 calibration images; the check's float reference is the run's own float model
    (the same float numbers as the module's uncorrected export), and the record is in the report and the shipped
    model's metadata."""
    s = setup
    shipped = json.loads((REPO / "cxr_edge" / "resources" / "export" / "gate.json").read_text())
    policy = write_policy(tmp_path / "policy.json", s["manifest"],
                          quantization__bias_correction=shipped["quantization"]["bias_correction"])
    res = invoke("export", s["run"], "--int8", "--from", "float", "--policy", policy, "--out", tmp_path / "pack",
                 "--data-root", s["data_root"], "--report", tmp_path / "report")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    record = report["bias_correction"]
    assert record["images"] == 60 and record["layers"] == 52 and record["largest_shifts"]
    assert report["policy"]["bias_correction"] == {"images": 128}
    assert "bias correction | PTQ from the float model" in (tmp_path / "report" / "report.md").read_text()
    assert report["float"] == exported["report"]["float"]
    assert "bias_correction" not in exported["report"]
    assert exported["report"]["policy"]["bias_correction"] is None
    meta = load_pack(tmp_path / "pack")["gate"].metadata
    assert meta.quantization["source"] == "ptq" and meta.quantization["bias_correction"] == record
    assert "bias_correction" not in load_pack(exported["pack"])["gate"].metadata.quantization
    monkeypatch_env = {"CXR_EDGE_CONFIG": str(tmp_path / "none.json")}
    out = CliRunner(env=monkeypatch_env).invoke(main, ["info", str(tmp_path / "pack")], catch_exceptions=False).output
    assert "quantization int8 (ptq, bias-corrected on 60 images), I/O uint8" in out, out


# --------------------------------------------------------------------------- QAT and auto


@pytest.mark.slow
def test_auto_builds_ptq_and_qat_records_both_and_keeps_the_better(setup, tmp_path):
    """A QAT model fine-tuned for a handful of steps (ranges barely moved: the weaker candidate here)."""
    from cxr_edge.training.qat import quantize_for_training
    from cxr_edge.training.runs import load_run, save_model_atomic
    from cxr_edge.training.tf_env import load

    _, keras = load()
    s = setup
    run = tmp_path / "run"
    shutil.copytree(s["run"], run)
    prepared, spec = s["prepared"], s["prepared"].task
    qat = quantize_for_training(load_run(run).float_model())
    qat.compile(keras.optimizers.Adam(1e-5), spec.loss, run_eagerly=True)
    qat.fit(normalize(prepared.images("train")[:32], spec), prepared.labels("train")[:32], batch_size=16,
            epochs=1, verbose=0)
    save_model_atomic(qat, run / "qat.h5")
    res = invoke("export", run, "--int8", "--from", "auto", "--policy", s["policy"], "--out", tmp_path / "pack",
                 "--data-root", s["data_root"])
    assert res.exit_code == 0, res.output
    report = json.loads((run / "export" / "report.json").read_text())
    cands = report["candidates"]
    assert set(cands) == {"ptq", "qat"} and cands["qat"]["quantization"]["input"]["zero_point"] == 128
    assert "qat_keras" in cands["qat"] and report["sizes"]["int8_qat_bytes"] > 0
    best = max(cands, key=lambda k: (cands[k]["passed"], cands[k]["agreement"]))
    assert report["chosen"] == best
    meta = load_pack(tmp_path / "pack")["gate"].metadata
    assert meta.quantization["source"] == best and set(meta.metrics["candidates"]) == {"ptq", "qat"}
    assert meta.calibration["used"] == (best == "ptq")


@pytest.mark.slow
def test_tiny_recipe_train_qat_export_predict(shared_data, tmp_path):
    """The whole chain through the CLI: train/tiny.toml -> cxr-edge qat -> export --from auto -> predict.

    The tiny model (alpha 0.35 from scratch, ~80 images, 64 px) means nothing, and a random-ish
    MobileNetV2 does not survive int8 within the shipped tolerances; this checks the plumbing, so the
    policy here allows any change (stated, not hidden: agreement >= 0, drops <= 1).
    """
    pytest.importorskip("cxr_edge.cli.train", reason="needs cxr-edge train (the training issue)")
    pytest.importorskip("cxr_edge.cli.qat", reason="needs cxr-edge qat (the QAT trainer)")
    recipe = REPO / "train" / "tiny.toml"
    if not recipe.is_file():
        pytest.skip("train/tiny.toml is not in this checkout")
    run = tmp_path / "run"
    res = invoke("train", recipe, "--out", run, "--data-dir", tmp_path / "prepared")
    assert res.exit_code == 0, res.output
    res = invoke("qat", run)
    assert res.exit_code == 0, res.output
    prepared = json.loads((run / "run.json").read_text())["prepared"]
    cal = write_calibration_set(build_calibration_set(prepared, n=30, data_root=shared_data), tmp_path / "cal.csv")
    policy = json.loads((REPO / "cxr_edge" / "resources" / "export" / "cxr4.json").read_text())
    policy["calibration"].update(manifest=str(cal), min_size=10, recommended_size=30)
    policy["check"]["tolerance"] = {"accuracy": 1.0, "macro_f1": 1.0, "agreement": 0.0}
    policy["check"].pop("envelope_limit", None)      # a ceiling below "anything goes" would be refused
    policy["check"].pop("significance", None)        # ... and chance needs that ceiling
    (tmp_path / "plumbing.json").write_text(json.dumps(policy))
    pack = tmp_path / "pack"
    res = invoke("export", run, "--int8", "--from", "auto", "--policy", tmp_path / "plumbing.json", "--out", pack,
                 "--data-root", shared_data)
    assert res.exit_code == 0, res.output
    meta = load_pack(pack)["cxr4"].metadata
    assert set(meta.metrics["candidates"]) == {"ptq", "qat"} and meta.quantization["source"] in ("ptq", "qat")
    image = sorted((shared_data / "cxr4" / "images").glob("*.png"))[0]
    # a pack of cxr4 alone has no gate, which predict refuses; --all-models (what bench uses) runs it ungated
    code = (f"from cxr_edge.cli import main\nmain(['predict', '--json', '--all-models', '--pack', {str(pack)!r}, "
            f"{str(image)!r}])")
    done = subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["cxr4"]["task"] == "cxr4"


def test_fixes_follow_how_the_check_failed():
    from cxr_edge.tasks import get_task
    from cxr_edge.training.export_check import compare, failures, likely_fixes

    spec = get_task("cxr4")
    rng = np.random.default_rng(0)
    y = np.eye(4)[rng.integers(0, 4, 300)]
    p_float = rng.dirichlet([1, 1, 1, 1], 300)
    p_int8 = np.clip(p_float + rng.normal(0, 0.05, p_float.shape), 0, 1)   # flips only near-ties
    result = compare(spec, y, p_float, p_int8, spec.tolerance)
    assert not result["passed"] and any(f.startswith("agreement") for f in failures(result))
    margin = result["float_margin"]
    assert margin["n_flipped"] and margin["median_flipped"] < margin["median_all"]
    ptq = likely_fixes(result, source="ptq", calibration_n=120, recommended_n=300, per_channel=False, split_n=300)
    assert any("cxr-edge qat" in f for f in ptq) and any("--n 600" in f for f in ptq)
    assert any("per-channel" in f for f in ptq) and any("unsure" in f for f in ptq)
    qat_keras = {"metrics": {"accuracy": 0.5, "macro_f1": 0.4}, "int8_agreement_with_qat_keras": 0.99}
    qat = likely_fixes(result, source="qat", calibration_n=None, recommended_n=300, per_channel=True, split_n=300,
                       qat_keras=qat_keras)
    assert qat[0].startswith("the QAT Keras model itself is off") and not any("cxr-edge qat RUN_DIR" in f for f in qat)
    both = likely_fixes(result, source="ptq", calibration_n=300, recommended_n=300, per_channel=True, split_n=300,
                        tried=("ptq", "qat"))
    assert not any("cxr-edge qat" in f or "QAT is the fix" in f for f in both)   # QAT was tried already
