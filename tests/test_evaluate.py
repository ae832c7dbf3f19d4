"""cxr-edge evaluate: the device path, cache vs originals, leakage refusals, photos, probe, report, CLI."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cxr_edge.cli import main
from cxr_edge.data.prepare import PrepareConfig, prepare
from cxr_edge.data.sources import SourceSpec
from cxr_edge.data.splits import SplitConfig
from cxr_edge.errors import CxrEdgeError, DataError, PackError
from cxr_edge.tools.evaluate import fit_softmax, predict_softmax, evaluate, source_probe
from cxr_edge.runtime.pipeline import Pipeline
from cxr_edge.runtime.preprocess import normalize

# --------------------------------------------------------------------------- shared builders
# Also used by test_calibrate.py. They build under the session's base temp folder and reuse what
# exists, so the two modules share one copy (prepare() returns at once when the folder is up to date).


def _root(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "eval-shared"
    root.mkdir(exist_ok=True)
    return root


def small_prepared(shared_data, root, task: str, size: int, fraction: float, name: str | None = None):
    manifest = {"cxr4": "cxr4/manifest.csv", "nih14": "nih_cxr14/manifest.csv"}[task]
    config = PrepareConfig(task=task, sources=(SourceSpec(str(shared_data / manifest)),), size=size,
                           split=SplitConfig(fractions=(0.4, 0.3, 0.3), sample_fraction=fraction, seed=1),
                           duplicates=(str(shared_data / "duplicates.csv"),), shard_size=256)
    return prepare(config, root / (name or f"{task}-{size}-{fraction}"))


def informative_cxr4(prepared, root, scale: float = 4.0):
    """(pack, run): a tiny cxr4 model whose head is a logistic regression on its random conv features, fitted
    on the train split, with logits multiplied by ``scale`` (over-confident); the pack records its training data."""
    pack, run = root / f"informative-pack-{scale:g}", root / f"informative-run-{scale:g}"
    if (pack / "manifest.json").is_file():
        return pack, run
    from tinypack import convert_int8, output_roles, tiny_keras_model

    from cxr_edge.runtime import metadata as md
    from cxr_edge.tools.pack_writer import write_pack

    spec = prepared.task
    model = tiny_keras_model("cxr4", spec.input.size, seed=0)
    x = normalize(prepared.images("train")[:], spec)
    pooled = model.predict(x, verbose=0)[1].mean(axis=(1, 2))
    mu, sd = pooled.mean(axis=0), pooled.std(axis=0) + 1e-6
    w = fit_softmax((pooled - mu) / sd, prepared.labels("train").argmax(axis=1), spec.num_labels, l2=0.01)
    kernel = w[:-1] / sd[:, None]
    model.get_layer("probs").set_weights([scale * kernel, scale * (w[-1] - (mu / sd) @ w[:-1])])
    raw = convert_int8(model, spec.input.size)
    training = {"data_sha256": prepared.data_sha256, "prepared": str(prepared.path)}
    meta = md.ModelMetadata.for_task(spec, output_roles(raw, spec.num_labels), training=training,
                                     quantization={"mode": "int8", "io_dtype": "uint8", "source": "ptq"})
    write_pack(pack, {"cxr4": (md.embed(raw, meta), meta)}, name="informative", license="CC0-1.0")
    run.mkdir()
    model.save(run / "float.h5", save_format="h5", include_optimizer=False)
    (run / "run.json").write_text(json.dumps({
        "format": "cxr-edge-run", "format_version": 1, "task": "cxr4", "input": spec.input.to_dict(),
        "prepared": str(prepared.path), "data_sha256": prepared.data_sha256, "status": "complete"}))
    return pack, run


@pytest.fixture(scope="module")
def cxr4_48(shared_data, tmp_path_factory):
    return small_prepared(shared_data, _root(tmp_path_factory), "cxr4", 48, 0.1)


@pytest.fixture(scope="module")
def cxr4_32(shared_data, tmp_path_factory):
    return small_prepared(shared_data, _root(tmp_path_factory), "cxr4", 32, 0.1)


@pytest.fixture(scope="module")
def cxr4_tiny(shared_data, tmp_path_factory):
    return small_prepared(shared_data, _root(tmp_path_factory), "cxr4", 48, 0.03)


@pytest.fixture(scope="module")
def informative(cxr4_48, tmp_path_factory):
    pytest.importorskip("tensorflow")
    return informative_cxr4(cxr4_48, _root(tmp_path_factory))


@pytest.fixture
def cli(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_EDGE_CONFIG", str(tmp_path / "no-config.json"))
    monkeypatch.delenv("CXR_EDGE_PACK", raising=False)

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


# --------------------------------------------------------------------------- the device path


def test_cached_pixels_and_outputs_are_what_predict_computes(tiny_pack, cxr4_48):
    ev = evaluate(tiny_pack, cxr4_48, split="test", n_boot=0)
    assert ev.result["data"]["pixels"] == "prepared cache" and ev.result["data"]["cache_checked"] == 3
    pipe = Pipeline(tiny_pack)
    spec = pipe.models["cxr4"].spec
    table = cxr4_48.table("test")
    for i in (0, 5, len(table) - 1):
        path = table["path"][i]
        assert np.array_equal(pipe.prepare(pipe.load(path))["cxr4"], normalize(cxr4_48.images("test")[i], spec))
        probs = pipe.predict(path).results["cxr4"].probabilities
        assert np.allclose([probs[lbl] for lbl in spec.labels], ev.probs[i], atol=1e-6)


def test_other_input_size_reads_the_original_images(tiny_pack, cxr4_48, cxr4_32):
    cached = evaluate(tiny_pack, cxr4_48, n_boot=0)
    original = evaluate(tiny_pack, cxr4_32, n_boot=0)   # the pack's cxr4 model takes 48 px, the cache holds 32
    assert original.result["data"]["pixels"] == "original images" and "32 px" in original.result["data"]["reason"]
    assert list(cxr4_32.table("test")["path"]) == list(cxr4_48.table("test")["path"])
    assert np.allclose(original.probs, cached.probs)


# --------------------------------------------------------------------------- results


def test_cli_json_and_report(cli, informative, cxr4_48, tmp_path):
    pack, _ = informative
    res = cli("evaluate", pack, "--data", cxr4_48.path, "--json", "--n-boot", 200, "--report", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    m = r["metrics"]
    assert r["kind"] == "cxr-edge-evaluation" and r["model"]["task"] == "cxr4" and r["data"]["split"] == "test"
    assert m["primary"]["name"] == "macro_f1" and m["primary"]["ci"][0] <= m["primary"]["value"] <= m["primary"]["ci"][1]
    assert m["bootstrap"]["unit"] == "patient" and m["mean_auroc"]["value"] > 0.6   # a fitted head: informative
    assert {"sex", "view", "age"} <= set(r["subgroups"]) and set(r["subgroups"]["view"]) <= {"PA", "AP"}
    assert "TBX11K" in r["datasets"] and r["leakage"]["training"] == {
        "overlap": 0, "n": r["data"]["n_images"], "how": "same prepared data (data_sha256)"}
    probe = r["shortcut"]["all"]
    assert probe["n"] > 0 and 0 <= probe["accuracy"] <= 1 and probe["majority_baseline"] >= 1 / len(probe["datasets"])
    assert "Normal" in r["shortcut"]["within_label"]   # Normal comes from several sources
    rep = tmp_path / "rep"
    pngs = {"roc.png", "reliability.png", "confusion.png", "subgroups.png"}
    assert pngs <= {p.name for p in rep.iterdir()} and all((rep / p).stat().st_size > 5000 for p in pngs)
    html = (rep / "index.html").read_text()
    assert all(f'src="{p}"' in html for p in pngs)
    assert all(f"]({p})" in (rep / "report.md").read_text() for p in pngs)
    assert set(r["report"]["files"]) >= pngs | {"index.html", "report.md"}


def test_text_output_and_subgroup_minimum(cli, informative, cxr4_48):
    pack, _ = informative
    res = cli("evaluate", pack, "--data", cxr4_48.path, "--n-boot", 0, "--min-group", 1000)
    assert res.exit_code == 0, res.output
    assert "macro_f1" in res.stdout and "Tuberculosis" in res.stdout and "source probe" in res.stdout
    ev = evaluate(pack, cxr4_48, n_boot=0, min_group=1000)
    assert all(g.get("too_few") for groups in ev.result["subgroups"].values() for g in groups.values())


def test_photos_raw_and_rectified_beside_digital(cli, tiny_pack, cxr4_tiny, tmp_path):
    pytest.importorskip("cxr_edge.tools.photosim", reason="the phone-photo simulator is not in this checkout")
    res = cli("evaluate", tiny_pack, "--data", cxr4_tiny.path, "--photos", "moderate", "--photo-size", 192,
              "--n-boot", 50, "--json", "--report", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    ph = json.loads(res.stdout)["photos"]
    n = cxr4_tiny.info["counts"]["test"]["images"]
    assert set(ph["variants"]) == {"photo", "photo_rectified"} and ph["severity_value"] == 0.5
    assert sum(ph["rectify"][k] for k in ("found", "cropped", "passthrough", "not_found")) == n
    assert ph["rectify"]["found"] > 0
    for v in ph["variants"].values():
        assert v["metrics"]["n_samples"] == n and v["gap_vs_digital"]["metric"] == "macro_f1"
    again = evaluate(tiny_pack, cxr4_tiny, photos="moderate", photo_size=192, n_boot=0)   # seeded: reproducible
    assert again.result["photos"]["rectify"] == ph["rectify"]
    assert "simulated phone photos" in (tmp_path / "rep" / "report.md").read_text()


def test_float_run_through_keras(informative, cxr4_48):
    from cxr_edge.training.run_model import open_run_model

    _, run = informative
    ev = evaluate(run, cxr4_48, n_boot=0, run_opener=open_run_model)
    r = ev.result
    assert r["model"]["kind"] == "run" and r["model"]["backend"].startswith("tf-keras")
    assert r["metrics"]["mean_auroc"]["value"] > 0.6 and "accuracy" in r["shortcut"]["all"]
    with pytest.raises(DataError, match="refusing to evaluate on training images"):
        evaluate(run, cxr4_48, split="train", n_boot=0, run_opener=open_run_model)
    with pytest.raises(CxrEdgeError, match="profiles live in model packs"):
        evaluate(run, cxr4_48, profile="screening", n_boot=0, run_opener=open_run_model)
    with pytest.raises(CxrEdgeError, match="workstation side"):   # the offline tools never import TensorFlow
        evaluate(run, cxr4_48, n_boot=0)


# --------------------------------------------------------------------------- refusals and errors


def test_train_split_is_refused_unless_allowed_then_flagged(cli, informative, cxr4_48):
    pack, _ = informative
    res = cli("evaluate", pack, "--data", cxr4_48.path, "--split", "train")
    assert res.exit_code == 2 and "refusing to evaluate on training images" in res.output
    assert "--allow-train-split" in res.output and "Traceback" not in res.output
    res = cli("evaluate", pack, "--data", cxr4_48.path, "--split", "train", "--allow-train-split", "--n-boot", 0,
              "--json")
    assert res.exit_code == 0
    r = json.loads(res.stdout)
    assert r["leakage"]["flags"] and "TRAINING DATA" in r["leakage"]["flags"][0]
    assert r["leakage"]["training"]["overlap"] == r["data"]["n_images"]


def test_train_images_found_by_hash_in_other_prepared_data(informative, cxr4_32):
    pack, _ = informative   # trained on the 48 px preparation: same images, other data_sha256
    with pytest.raises(DataError, match=r"\d+ of the \d+ images of split 'train'.*image hashes compared"):
        evaluate(pack, cxr4_32, split="train", n_boot=0)


def test_task_mismatch_says_exactly_what_is_wrong(tiny_pack, cxr4_48, shared_data, tmp_path_factory):
    nih = small_prepared(shared_data, _root(tmp_path_factory), "nih14", 48, 0.05)
    fake13 = tmp_path_factory.mktemp("nih13") / "p"
    shutil.copytree(nih.path, fake13)
    info = json.loads((fake13 / "prepared.json").read_text())
    info["task"] = "nih13"
    (fake13 / "prepared.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="holds nih13 data \\(13 labels\\).*nih14 model \\(14 labels\\).*"
                                        "also predicts Pleural_Thickening"):
        evaluate(tiny_pack, fake13, n_boot=0)


def test_bad_inputs_are_clean_errors(cli, tiny_pack, cxr4_48, tmp_path):
    cases = [
        (("evaluate", tmp_path, "--data", cxr4_48.path), "neither a model pack"),
        (("evaluate", tiny_pack, "--data", tmp_path), "not a prepared data folder"),
        (("evaluate", tiny_pack, "--data", cxr4_48.path, "--profile", "nope"), "profile 'nope' is not in"),
        (("evaluate", tiny_pack, "--data", cxr4_48.path, "--photos", "blurry"), "unknown severity"),
        (("evaluate", tmp_path / "missing", "--data", cxr4_48.path), "does not exist"),
    ]
    for args, message in cases:
        res = cli(*args)
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, (args, res.output)
    gate_only = tmp_path / "gate-only"
    from cxr_edge.runtime.pack import load_pack
    from cxr_edge.tools.pack_writer import write_pack

    pm = load_pack(tiny_pack)["gate"]
    write_pack(gate_only, {"gate": (pm.content, pm.metadata)})
    with pytest.raises(PackError, match="has no 'cxr4' model; it has: gate"):
        evaluate(gate_only, cxr4_48, n_boot=0)


# --------------------------------------------------------------------------- the source probe


def test_probe_fit_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 12))
    y = (x[:, :3] @ rng.standard_normal((3, 3)) + 0.5 * rng.standard_normal((300, 3))).argmax(axis=1)
    l2 = 0.05
    w = fit_softmax(x, y, 3, l2, iters=2000)
    ref = sklearn.LogisticRegression(C=1 / (l2 * len(x)), max_iter=5000, tol=1e-10).fit(x, y)
    assert np.mean(predict_softmax(w, x) == ref.predict(x)) >= 0.98
    assert np.allclose(w[:-1], ref.coef_.T, atol=0.05)


def test_probe_finds_a_planted_source_signal_and_not_a_random_one():
    rng = np.random.default_rng(1)
    sources = np.repeat(["a", "b", "c"], [60, 40, 20])
    patients = np.arange(120)
    planted = rng.standard_normal((120, 8)) + 3.0 * (sources[:, None] == np.array(["a", "b", "c"] + ["z"] * 5))
    r = source_probe(planted, sources, patients)
    assert r["accuracy"] > 0.9 and r["majority_baseline"] == 0.5 and r["chance_balanced"] == pytest.approx(1 / 3)
    noise = source_probe(rng.standard_normal((120, 8)), sources, patients)
    assert noise["balanced_accuracy"] < 0.6
    assert "skipped" in source_probe(planted, np.array(["a"] * 118 + ["b", "b"]), patients)


def test_a_collections_own_train_and_test_subsets_are_one_source():
    from cxr_edge.tools.evaluate import source_names

    names = source_names(["Kermany pediatric CXR (train split)", "Kermany pediatric CXR (test split)",
                          "COVID-19 image data collection (ieee8023)", "TBX11K (validation set)"])
    assert list(names) == ["Kermany pediatric CXR", "Kermany pediatric CXR",
                           "COVID-19 image data collection (ieee8023)", "TBX11K"]
